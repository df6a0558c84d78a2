// Dense products y = x W^T, the product every projection is made of, with W
// stored (out x in) row-major as PyTorch stores nn.Linear weights. Kept apart
// from the layers so that every layer (Linear, HeadwiseLinear's large heads,
// WeightMatrix, the language model heads) runs the same two strategies:
//  - `sequence` (forward over B*T rows): kernels::parallel_product
//    (kernels/blocked_product.hpp), a register-tiled GEMM over operands packed
//    into cache-sized blocks, buffers kept per thread, tasks split over the
//    threads, the same bits at every thread count; products of at most 8
//    rows use the step kernel below instead.
//  - `step` (one token for each of B rows): never allocates, whatever B. The
//    rows of W are streamed from memory once, split over the threads, and
//    each small block of them is dotted with all B rows of x while it sits in
//    registers and the L1 cache. Decoding is bound by reading the weights, so
//    this kernel sets the decode speed.
// The step kernel reads W through a row loader, so 16-bit weights
// (kernels/widening.hpp) reuse it with a loader that widens as it loads.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Which product strategy a caller wants (see the file comment).
///  - `row_invariant`: a sequence product whose every output element is
///    computed by the same operations in the same order whatever the number
///    of rows, their position and the thread count (row_invariant_rows), so
///    that a row's result does not depend on the other rows of the product.
///    Exact caches need it (TiRex's padding states, math §13.10): the step
///    kernel picks its depth pieces by the row count, and the sequence
///    workload hands products of at most 8 rows to it, which changes the
///    order of the sums.
enum class Workload { sequence, step, row_invariant };

/// Products with at most this many rows use the step kernel in every workload.
constexpr Index kStepKernelMaxRows = 8;

namespace kernels {

/// Bytes of a cache line on every x86 CPU: the unit in which the step
/// kernel prefetches rows of W.
constexpr Index kCacheLineBytes = 64;

/// "No limit" for a loader's kPrefetchMaxRows.
constexpr Index kMaxIndex = std::numeric_limits<Index>::max();

/// Rows of W given as Scalar values: packet loads straight from memory.
/// The loaders of compressed rows (kernels/widening.hpp, quantized.hpp) also
/// say how to prefetch: prefetch(row, col, ahead) requests what a load at
/// (row + ahead, col) will read, kPrefetchColumns is the columns of a row in
/// a cache line, and the kernel prefetches at kPrefetchMinRows to
/// kPrefetchMaxRows rows of x (detail::prefetches_at). Native rows prefetch
/// from two rows of x on. At one row the hardware prefetcher keeps up with
/// float32 rows and the extra load slots cost 4-12 % (Intel host, 7B-shaped
/// block); with more, the block of x rows that reads a piece of W from
/// memory is followed by blocks that find it in the cache, and memory idles
/// unless the next panel was requested: the 125M model's decode went
/// 47 -> 42 ms at B = 2, 61 -> 57 at B = 4, 86 -> 85 at B = 8 (one thread,
/// native, two runs each).
template <typename Scalar>
struct NativeRows {
  const Scalar* data;
  Index stride;
  static constexpr Index kPrefetchColumns = kCacheLineBytes / Index(sizeof(Scalar));
  static constexpr Index kPrefetchMinRows = 2;
  static constexpr Index kPrefetchMaxRows = kMaxIndex;
  void prefetch(Index row, Index col, Index ahead) const {
    simd::prefetch(data + (row + ahead) * stride + col);
  }
  simd::Packet<Scalar> load(Index row, Index col) const {
    return simd::load(data + row * stride + col);
  }
  Scalar at(Index row, Index col) const { return data[row * stride + col]; }
};

namespace detail {

/// Whether a row loader multiplies each row's sums by a scale at the end
/// (Rows::row_scale(row)): its loads and `at` are then in the row's units.
template <typename Rows, typename = void>
struct HasRowScale : std::false_type {};
template <typename Rows>
struct HasRowScale<Rows, std::void_t<decltype(std::declval<const Rows&>().row_scale(Index()))>>
    : std::true_type {};

/// Whether a row loader prefetches (Rows::kPrefetchColumns, prefetch).
template <typename Rows, typename = void>
struct PrefetchesAhead : std::false_type {};
template <typename Rows>
struct PrefetchesAhead<Rows, std::void_t<decltype(Rows::kPrefetchColumns)>> : std::true_type {};

/// Whether the step kernel prefetches W for `batch` rows of x: a loader
/// that prefetches does from Rows::kPrefetchMinRows to
/// Rows::kPrefetchMaxRows rows (past the maximum the kernel spends enough
/// arithmetic per byte of W for the hardware prefetcher to keep up).
template <typename Rows>
constexpr bool prefetches_at(Index batch) {
  if constexpr (PrefetchesAhead<Rows>::value) {
    return batch >= Rows::kPrefetchMinRows && batch <= Rows::kPrefetchMaxRows;
  } else {
    return false;
  }
}

/// Steps of `width` columns per prefetch (dot_block): a cache line of a row
/// for loaders that prefetch, else 1.
template <bool kPrefetch, typename Rows>
constexpr Index steps_per_prefetch(Index width) {
  if constexpr (kPrefetch) {
    return std::max<Index>(1, Rows::kPrefetchColumns / width);
  } else {
    return 1;
  }
}

}  // namespace detail

/// Rows ahead of a register block whose W the step kernel prefetches (for
/// loaders that prefetch): one panel. Rows of a few KiB (a 4096-column
/// int8_rows row is 4 KiB) end before the hardware prefetcher has ramped up
/// on them. Requesting them a panel early, sixteen 4096 x 4096 matrices at
/// B = 1 on one thread (Intel Xeon, ms per matrix): int8_rows 1.45 ->
/// 1.19-1.23 natively and 1.41-1.43 -> 1.28-1.29 on x86-64-v3 (q4_g32's
/// kernel of the time, since replaced by kernels/q4_integer.hpp, 1.49-1.51
/// -> 1.05-1.08 and 2.06-2.07 -> 1.52-1.55).
constexpr Index kPrefetchRows = 16;

/// The register block: R rows of W (from row o, column k0) times B rows of
/// x (`x` points at their column k0), over n columns:
/// y(b, o + r) (+)= sum_k W(o + r, k0 + k) x(b, k0 + k). R * B independent
/// accumulators hide the latency of the fused multiply-adds; each W packet
/// is loaded once for all B rows and each x packet once for all R rows.
/// Loaders with a row scale (int8 rows) are summed in their own units and
/// scaled once per row at the end. With kPrefetch the
/// block also prefetches the same columns of the R rows `prefetch_ahead`
/// rows further on (the caller makes sure they exist).
template <int R, int B, bool kPrefetch = false, typename Scalar, typename Rows>
inline void dot_block(const Rows& w, Index o, Index k0, const Scalar* x, Index ldx, Index n,
                      Scalar* y, Index ldy, bool accumulate, Index prefetch_ahead = 0) {
  using Packet = simd::Packet<Scalar>;
  constexpr Index kLanes = simd::kLanes<Scalar>;
  Packet acc[R * B];  // acc[r * B + b]
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) acc[r * B + b] = simd::zero<Scalar>();
  }
  // Which operand waits in registers while the other streams past: the x
  // packets (B of them) when they fit beside the R * B
  // accumulators and a decoded W packet, so that each W packet is consumed
  // as soon as it is decoded; else the R W packets. Holding all R decoded W
  // packets of a tall block (8 rows, one x row) overflowed AVX2's 16
  // registers: an accumulator then lived on the stack, and its store and
  // reload every step bounded decode. The sums are the same either way.
  constexpr int kRegisters = simd::kVectorRegisters;
  // The steps go in groups that span a cache line of each W row
  // (Rows::kPrefetchColumns); with kPrefetch each group first prefetches its
  // columns of the rows prefetch_ahead further on (its own rows with
  // prefetch_ahead 0: a load slot, nothing else). A group shorter than a
  // line (the last ones) is a single step, and so is every group without
  // kPrefetch (the loops are then the plain loops over steps). A test per
  // step instead kept GCC from holding the accumulators in registers; one
  // prefetch per step cost 5-10 % of the 4-bit decode of the time in
  // prefetches of lines already requested.
  constexpr Index kPerLine = detail::steps_per_prefetch<kPrefetch, Rows>(kLanes);
  Index k = 0;
  constexpr bool kHoldX = R * B + B + 2 <= kRegisters;
  while (k + kLanes <= n) {
    if constexpr (kPrefetch) {
      for (int r = 0; r < R; ++r) w.prefetch(o + r, k0 + k, prefetch_ahead);
    }
    const Index steps = k + kPerLine * kLanes <= n ? kPerLine : 1;
    for (Index step = 0; step < steps; ++step, k += kLanes) {
      if constexpr (kHoldX) {
        Packet xv[B];
        for (int b = 0; b < B; ++b) xv[b] = simd::load(x + b * ldx + k);
        for (int r = 0; r < R; ++r) {
          const Packet wv = w.load(o + r, k0 + k);
          for (int b = 0; b < B; ++b) acc[r * B + b] = simd::fma(wv, xv[b], acc[r * B + b]);
        }
      } else {
        Packet wv[R];
        for (int r = 0; r < R; ++r) wv[r] = w.load(o + r, k0 + k);
        for (int b = 0; b < B; ++b) {
          const Packet xv = simd::load(x + b * ldx + k);
          for (int r = 0; r < R; ++r) acc[r * B + b] = simd::fma(wv[r], xv, acc[r * B + b]);
        }
      }
    }
  }
  // The lane sums: all R * B at once where that pays (simd::reduce_each, the
  // same bits as one at a time), so a block's sums cost little beside its
  // multiply-adds even over a short depth.
  Scalar sums[R * B];
  if constexpr (R * B >= kLanes / 2) {
    simd::reduce_each<Scalar>(acc, sums);
  } else {
    for (int e = 0; e < R * B; ++e) sums[e] = simd::reduce(acc[e]);
  }
  // Then, per element and in this order: the columns after the last whole
  // packet, the row's scale, the earlier value. Each step is a loop of its
  // own, entered only when it has work, so that a short depth does not pay
  // for the checks element by element.
  if (k < n) {
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < B; ++b) {
        for (Index j = k; j < n; ++j) sums[r * B + b] += w.at(o + r, k0 + j) * x[b * ldx + j];
      }
    }
  }
  if constexpr (detail::HasRowScale<Rows>::value) {
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < B; ++b) sums[r * B + b] *= w.row_scale(o + r);
    }
  }
  for (int b = 0; b < B; ++b) {
    Scalar* out = y + b * ldy + o;
    if (accumulate) {
      for (int r = 0; r < R; ++r) out[r] += sums[r * B + b];
    } else {
      for (int r = 0; r < R; ++r) out[r] = sums[r * B + b];
    }
  }
}

/// How far ahead a block of `rows` W rows from row o prefetches: kPrefetchRows
/// while those rows lie before `end`, else 0 (the block's own rows).
inline Index prefetch_distance(Index o, Index rows, Index end) {
  return o + rows + kPrefetchRows <= end ? kPrefetchRows : 0;
}

/// W rows [o0, end) against kXRows rows of x: register blocks of kWRows W
/// rows, then of 4 (when kWRows is larger), then the rows left over one at a
/// time; with kPrefetch, prefetching rows before prefetch_end.
template <int kWRows, int kXRows, bool kPrefetch, typename Scalar, typename Rows>
inline void panel_x_rows(const Rows& w, Index o0, Index end, Index k0, const Scalar* x, Index ldx,
                         Index n, Scalar* y, Index ldy, bool accumulate, Index prefetch_end) {
  Index o = o0;
  for (; o + kWRows <= end; o += kWRows) {
    dot_block<kWRows, kXRows, kPrefetch>(w, o, k0, x, ldx, n, y, ldy, accumulate,
                                         prefetch_distance(o, kWRows, prefetch_end));
  }
  if constexpr (kWRows > 4) {
    for (; o + 4 <= end; o += 4) {
      dot_block<4, kXRows, kPrefetch>(w, o, k0, x, ldx, n, y, ldy, accumulate,
                                      prefetch_distance(o, 4, prefetch_end));
    }
  }
  for (; o < end; ++o) {
    dot_block<1, kXRows, kPrefetch>(w, o, k0, x, ldx, n, y, ldy, accumulate,
                                    prefetch_distance(o, 1, prefetch_end));
  }
}

/// W rows against one row of x: register blocks of 8 W rows with 16 or more
/// vector registers, else 4. 8 W rows at once keep more of W's memory streams
/// in flight (BF16 decode of a 16384 x 4096 matrix on one thread, AVX-512:
/// 16.5 -> 20 GB/s). With 16 registers too: dot_block then holds the x packet
/// and consumes each W packet as it is decoded, and AVX2 decode of sixteen
/// 4096 x 4096 matrices in turn went 3.35 -> 2.6 ms (f32) and 2.1 -> 1.9 ms
/// (BF16) per matrix on one thread.
constexpr int kOneXRowWRows = simd::kVectorRegisters >= 16 ? 8 : 4;

/// panel_x_rows for the block of x rows at `b`: the first (b == 0) prefetches
/// when `prefetch` says so, the later ones find W in the cache.
template <int kWRows, int kXRows, bool kPrefetch, typename Scalar, typename Rows>
inline void panel_x_rows_at(bool prefetch, Index b, const Rows& w, Index o0, Index end, Index k0,
                            const Scalar* x, Index ldx, Index n, Scalar* y, Index ldy,
                            bool accumulate, Index prefetch_end) {
  if (prefetch && b == 0) {
    panel_x_rows<kWRows, kXRows, kPrefetch>(w, o0, end, k0, x, ldx, n, y, ldy, accumulate,
                                            prefetch_end);
  } else {
    panel_x_rows<kWRows, kXRows, false>(w, o0, end, k0, x + b * ldx, ldx, n, y + b * ldy, ldy,
                                        accumulate, 0);
  }
}

/// Rows [r0, r0 + count) of W against every row of x, in panels of `panel`
/// rows of W and pieces of `piece` columns: each piece's slice of W stays in
/// cache while every row of x passes, in register blocks of kWRows W rows x
/// kXRows x rows, then two x rows at a time, then the remaining x row against
/// 8 (with 16 or more vector registers), 4 or 1 W rows. Every block computes
/// an element by the same operations (dot_block), so the bits depend on
/// `piece` only. With kPrefetch, and at most Rows::kPrefetchMaxRows rows of
/// x, the first block of x rows, the one that reads the piece of W from
/// memory, prefetches W kPrefetchRows ahead within [r0, r0 + count); the
/// later blocks find it in the cache and do not.
template <int kWRows, int kXRows, bool kPrefetch, typename Scalar, typename Rows, typename XRef,
          typename YRef>
void panel_rows(const Rows& w, const XRef& x, YRef& y, bool accumulate, Index r0, Index count,
                Index panel, Index piece) {
  const Index batch = x.rows(), cols = x.cols(), ldx = x.outerStride(), ldy = y.outerStride();
  const Index range_end = r0 + count;
  const bool prefetch = kPrefetch && detail::prefetches_at<Rows>(batch);
  for (Index p0 = r0; p0 < range_end; p0 += panel) {
    const Index end = std::min(p0 + panel, range_end);
    for (Index k0 = 0; k0 < cols; k0 += piece) {
      const Index n = std::min(piece, cols - k0);
      const bool acc = accumulate || k0 > 0;
      const Scalar* xs = x.data() + k0;
      Scalar* ys = y.data();
      Index b = 0;
      for (; b + kXRows <= batch; b += kXRows) {
        panel_x_rows_at<kWRows, kXRows, kPrefetch>(prefetch, b, w, p0, end, k0, xs, ldx, n, ys, ldy,
                                                   acc, range_end);
      }
      if constexpr (kXRows > 2) {
        // Two rows of x left: a block of them, not one row twice.
        constexpr int kPairWRows = simd::kVectorRegisters >= 32 ? 8 : 4;
        for (; b + 2 <= batch; b += 2) {
          panel_x_rows_at<kPairWRows, 2, kPrefetch>(prefetch, b, w, p0, end, k0, xs, ldx, n, ys,
                                                    ldy, acc, range_end);
        }
      }
      for (; b < batch; ++b) {
        panel_x_rows_at<kOneXRowWRows, 1, kPrefetch>(prefetch, b, w, p0, end, k0, xs, ldx, n, ys,
                                                     ldy, acc, range_end);
      }
    }
  }
}

/// The step kernel: rows [r0, r0 + count) of W against every row of x, in
/// panels of 16 rows of W. Within a panel the columns go in pieces whose
/// slice of x (all B rows) fits the L1 cache, so x is re-read from L2 once per
/// panel rather than once per row of W; each entry of W is still read from
/// memory once. Register blocks: 8 W rows (4 with 16 vector registers) x 2 x
/// rows, then single x rows (one row of x still needs several accumulators to
/// keep the FMA units busy).
///
/// Why tall and narrow: a block reads its W rows as that many memory streams,
/// and a decode step is bound by how many lines it keeps in flight, not by
/// its multiply-adds. 2 W rows x 4 x rows read W at 12 GB/s where the same
/// machine streams 30 (float32 3072 x 768 matrices, 400 MB of them, 4 rows of
/// x, one thread, AVX-512: 0.76 -> 0.43 ms per matrix with 8 x 2; 8 rows of
/// x: 0.93 -> 0.68; x86-64-v3 with 4 x 2: 0.80 -> 0.57 and 0.96 -> 0.80).
/// Every block computes an element by the same operations, so the bits are
/// those of any other block shape.
template <typename Scalar, typename Rows, typename XRef, typename YRef>
void step_rows(const Rows& w, const XRef& x, YRef& y, bool accumulate, Index r0, Index count) {
  constexpr Index kL1Scalars = Index(24 * 1024) / Index(sizeof(Scalar));
  constexpr Index kGranule = 16;  // pieces start on whole packets
  constexpr int kWRows = simd::kVectorRegisters >= 32 ? 8 : 4;
  constexpr bool kPrefetch = detail::PrefetchesAhead<Rows>::value;
  const Index piece =
      std::max<Index>(256, kL1Scalars / std::max<Index>(x.rows(), 1) / kGranule * kGranule);
  panel_rows<kWRows, 2, kPrefetch, Scalar>(w, x, y, accumulate, r0, count, /*panel=*/16, piece);
}

/// The row-invariant product (Workload::row_invariant) over rows
/// [r0, r0 + count) of W: every output element is the sum of kDepthPiece-long
/// pieces of its dot product, each a fused multiply-add chain over packets
/// (dot_block), reduced, plus the tail, added to the element in piece order.
/// None of that depends on the row count of x or on the register block a row
/// falls into, so the bits of a row do not either. The register block is 3 W
/// rows x 8 x rows with 32 vector registers (24 accumulators; about 1.5x the
/// step kernel's speed on 64-token sequences), the step kernel's 2 x 4 with 16.
template <typename Scalar, typename Rows, typename XRef, typename YRef>
void row_invariant_rows(const Rows& w, const XRef& x, YRef& y, bool accumulate, Index r0,
                        Index count) {
  constexpr Index kDepthPiece = 512;  // fixed: the order of the sums must not depend on x
  constexpr Index kPanel = 48;        // W rows whose piece (96 KiB in float) stays in L2
  constexpr int kWRows = simd::kVectorRegisters >= 32 ? 3 : 2;
  constexpr int kXRows = simd::kVectorRegisters >= 32 ? 8 : 4;
  constexpr bool kPrefetch = detail::PrefetchesAhead<Rows>::value;
  panel_rows<kWRows, kXRows, kPrefetch, Scalar>(w, x, y, accumulate, r0, count, kPanel,
                                                kDepthPiece);
}

/// Calls rows(r0, count) over [0, out) rows of W, split over the threads in
/// contiguous 16-row aligned ranges when the weights are big enough to pay
/// for a parallel region (a few microseconds, more when a core is busy).
template <typename RowsFn>
void split_weight_rows(Index out, Index weight_elements, RowsFn&& rows) {
  constexpr Index kMinParallelWork = Index(1) << 18;
  const int threads = num_threads();
  if (threads > 1 && weight_elements >= kMinParallelWork) {
    const Index per = ((out + threads - 1) / threads + 15) / 16 * 16;
    const Index parts = (out + per - 1) / per;
    parallel_for(parts, true, [&](Index p) { rows(p * per, std::min(per, out - p * per)); });
    return;
  }
  rows(0, out);
}

}  // namespace kernels

/// y = x W^T (or y += x W^T with `accumulate`), W native (out x in): the
/// blocked product for sequences of more than kStepKernelMaxRows rows, else
/// the step kernel (neither allocates once warm).
template <typename Scalar, typename WeightRef>
void matmul_transposed(const ConstMatrixRef<Scalar>& x, const WeightRef& w, MatrixRef<Scalar> y,
                       bool accumulate = false, Workload workload = Workload::sequence) {
  if (x.rows() == 0) return;
  if (w.size() == 0) {  // no input features (or no outputs): x W^T is zero
    if (!accumulate) y.setZero();
    return;
  }
  if (workload == Workload::sequence && x.rows() > kStepKernelMaxRows) {
    kernels::parallel_product(x, w, y, accumulate);
    return;
  }
  const kernels::NativeRows<Scalar> rows{&w.coeffRef(0, 0), w.outerStride()};
  if (workload == Workload::row_invariant) {
    // Threads split the rows of W: no element's operations change with them.
    kernels::split_weight_rows(
        w.rows(), w.size() * std::max<Index>(1, x.rows() / 8), [&](Index r0, Index count) {
          kernels::row_invariant_rows<Scalar>(rows, x, y, accumulate, r0, count);
        });
    return;
  }
  kernels::split_weight_rows(w.rows(), w.size(), [&](Index r0, Index count) {
    kernels::step_rows<Scalar>(rows, x, y, accumulate, r0, count);
  });
}

}  // namespace xlstm
