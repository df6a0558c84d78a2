// y = x W^T, the product every projection is made of, with W stored
// (out x in) row-major as PyTorch stores nn.Linear weights.
//
// Two workloads with different best strategies:
//  - `sequence` (forward over B*T rows): Eigen's GEMM, which packs W into
//    cache-sized blocks (and may take its packing buffers from the heap);
//    products of at most 8 rows use the step kernel below instead.
//  - `step` (one token for each of B rows): never allocates, whatever B. The
//    rows of W are streamed from memory once, split over the threads, and
//    each small block of them is dotted with all B rows of x while it sits in
//    registers and the L1 cache. Decoding is bound by reading the weights, so
//    this kernel sets the decode speed.
//
// 16-bit weights (bf16 / f16, WeightMatrix) use the same kernel with a loader
// that widens 16-bit values to float inside the SIMD registers (AVX2 or
// AVX-512 builds; f16 also needs F16C), so they cost half the memory traffic
// of float weights. Other builds widen a piece of a row at a time into a
// stack buffer first.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "xlstm/core/half.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

#if defined(EIGEN_VECTORIZE_AVX2) || defined(EIGEN_VECTORIZE_AVX512)
#include <immintrin.h>
#endif

namespace xlstm {

/// Which product strategy a caller wants (see the file comment).
enum class Workload { sequence, step };

namespace detail {

/// Rows of W given as Scalar values: packet loads straight from memory.
template <typename Scalar>
struct NativeRows {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  const Scalar* data;
  Index stride;
  Packet load(Index row, Index col) const {
    return Eigen::internal::ploadu<Packet>(data + row * stride + col);
  }
  Scalar at(Index row, Index col) const { return data[row * stride + col]; }
};

#if defined(EIGEN_VECTORIZE_AVX512) || defined(EIGEN_VECTORIZE_AVX2)
/// Rows of bfloat16 W widened in registers: a bfloat16 is the upper half of
/// a float, so widening is a zero-extension and a shift.
struct Bf16Rows {
  using Packet = Eigen::internal::packet_traits<float>::type;
  const std::uint16_t* data;
  Index stride;
  Packet load(Index row, Index col) const {
    const std::uint16_t* p = data + row * stride + col;
#if defined(EIGEN_VECTORIZE_AVX512)
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
#else
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
#endif
  }
  float at(Index row, Index col) const { return bf16_to_float(data[row * stride + col]); }
};
#define XLSTM_HAVE_BF16_ROWS 1
#endif

#if (defined(EIGEN_VECTORIZE_AVX512) || defined(EIGEN_VECTORIZE_AVX2)) && defined(__F16C__)
/// Rows of IEEE half W widened in registers with the F16C instruction.
struct F16Rows {
  using Packet = Eigen::internal::packet_traits<float>::type;
  const std::uint16_t* data;
  Index stride;
  Packet load(Index row, Index col) const {
    const std::uint16_t* p = data + row * stride + col;
#if defined(EIGEN_VECTORIZE_AVX512)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#else
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#endif
  }
  float at(Index row, Index col) const { return f16_to_float(data[row * stride + col]); }
};
#define XLSTM_HAVE_F16_ROWS 1
#endif

/// The register block: R rows of W (from row o, column k0) times B rows of
/// x (`x` points at their column k0), over n columns:
/// y(b, o + r) (+)= sum_k W(o + r, k0 + k) x(b, k0 + k). R * B independent
/// accumulators hide the latency of the fused multiply-adds; each W packet
/// is loaded once for all B rows and each x packet once for all R rows.
template <int R, int B, typename Scalar, typename Rows>
inline void dot_block(const Rows& w, Index o, Index k0, const Scalar* x, Index ldx, Index n,
                      Scalar* y, Index ldy, bool accumulate) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<Scalar>::type;
  constexpr Index kLanes = packet_traits<Scalar>::size;
  Packet acc[R][B];
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) acc[r][b] = pset1<Packet>(Scalar(0));
  }
  Index k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    Packet wv[R];
    for (int r = 0; r < R; ++r) wv[r] = w.load(o + r, k0 + k);
    for (int b = 0; b < B; ++b) {
      const Packet xv = ploadu<Packet>(x + b * ldx + k);
      for (int r = 0; r < R; ++r) acc[r][b] = pmadd(wv[r], xv, acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) {
      Scalar sum = predux(acc[r][b]);
      for (Index j = k; j < n; ++j) sum += w.at(o + r, k0 + j) * x[b * ldx + j];
      Scalar& out = y[b * ldy + o + r];
      out = accumulate ? out + sum : sum;
    }
  }
}

/// Rows [r0, r0 + count) of W against every row of x, in panels of 16 rows
/// of W. Within a panel the columns go in pieces whose slice of x (all B
/// rows) fits the L1 cache, so x is re-read from L2 once per panel rather
/// than once per row of W; each entry of W is still read from memory once.
/// Register blocks: 2 W rows x 4 x rows, then single x rows against 8 (AVX-512)
/// or 4 W rows (one row of x still needs several accumulators to keep the FMA
/// units busy).
template <typename Scalar, typename Rows, typename XRef, typename YRef>
void step_rows(const Rows& w, const XRef& x, YRef& y, bool accumulate, Index r0, Index count) {
  const Index batch = x.rows(), cols = x.cols(), ldx = x.outerStride(), ldy = y.outerStride();
  constexpr Index kPanel = 16;
  constexpr Index kL1Scalars = Index(24 * 1024) / Index(sizeof(Scalar));
  const Index piece = std::max<Index>(256, kL1Scalars / std::max<Index>(batch, 1) / 16 * 16);
  for (Index p0 = r0; p0 < r0 + count; p0 += kPanel) {
    const Index end = std::min(p0 + kPanel, r0 + count);
    for (Index k0 = 0; k0 < cols; k0 += piece) {
      const Index n = std::min(piece, cols - k0);
      const bool acc = accumulate || k0 > 0;
      const Scalar* xs = x.data() + k0;
      Scalar* ys = y.data();
      Index b = 0;
      for (; b + 4 <= batch; b += 4) {
        Index o = p0;
        for (; o + 2 <= end; o += 2) {
          dot_block<2, 4>(w, o, k0, xs + b * ldx, ldx, n, ys + b * ldy, ldy, acc);
        }
        for (; o < end; ++o)
          dot_block<1, 4>(w, o, k0, xs + b * ldx, ldx, n, ys + b * ldy, ldy, acc);
      }
      for (; b < batch; ++b) {
        Index o = p0;
#if defined(EIGEN_VECTORIZE_AVX512)
        // 32 vector registers: 8 W rows at once keep more of W's memory
        // streams in flight (BF16 decode of a 16384 x 4096 matrix on one
        // thread: 16.5 -> 20 GB/s); with 16 registers this would spill.
        for (; o + 8 <= end; o += 8) {
          dot_block<8, 1>(w, o, k0, xs + b * ldx, ldx, n, ys + b * ldy, ldy, acc);
        }
#endif
        for (; o + 4 <= end; o += 4) {
          dot_block<4, 1>(w, o, k0, xs + b * ldx, ldx, n, ys + b * ldy, ldy, acc);
        }
        for (; o < end; ++o)
          dot_block<1, 1>(w, o, k0, xs + b * ldx, ldx, n, ys + b * ldy, ldy, acc);
      }
    }
  }
}

/// Fallback for 16-bit weights without an in-register widening loader:
/// each row is widened to Scalar into a stack buffer, a piece at a time.
template <typename Scalar, typename XRef, typename YRef, typename Decode>
void step_rows_buffered(const std::uint16_t* half, Index cols, Decode decode, const XRef& x,
                        YRef& y, bool accumulate, Index r0, Index count) {
  constexpr Index kPiece = 1024;
  alignas(64) Scalar buffer[kPiece];
  const Index batch = x.rows(), ldx = x.outerStride(), ldy = y.outerStride();
  for (Index o = r0; o < r0 + count; ++o) {
    for (Index c0 = 0; c0 < cols; c0 += kPiece) {
      const Index n = std::min(kPiece, cols - c0);
      for (Index i = 0; i < n; ++i) buffer[i] = Scalar(decode(half[o * cols + c0 + i]));
      const NativeRows<Scalar> piece{buffer, 0};
      for (Index b = 0; b < batch; ++b) {
        dot_block<1, 1>(piece, 0, 0, x.data() + b * ldx + c0, ldx, n, y.data() + b * ldy + o, ldy,
                        accumulate || c0 > 0);
      }
    }
  }
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

}  // namespace detail

/// Products with at most this many rows use the step kernel in every workload.
constexpr Index kStepKernelMaxRows = 8;

/// y = x W^T (or y += x W^T with `accumulate`), W native (out x in).
template <typename Scalar, typename WeightRef>
void matmul_transposed(const ConstMatrixRef<Scalar>& x, const WeightRef& w, MatrixRef<Scalar> y,
                       bool accumulate = false, Workload workload = Workload::sequence) {
  if (x.rows() == 0) return;
  if (w.size() == 0) {  // no input features (or no outputs): x W^T is zero
    if (!accumulate) y.setZero();
    return;
  }
  if (workload == Workload::sequence && x.rows() > kStepKernelMaxRows) {
    if (accumulate) {
      y.noalias() += x * w.transpose();
    } else {
      y.noalias() = x * w.transpose();
    }
    return;
  }
  const detail::NativeRows<Scalar> rows{&w.coeffRef(0, 0), w.outerStride()};
  detail::split_weight_rows(w.rows(), w.size(), [&](Index r0, Index count) {
    detail::step_rows<Scalar>(rows, x, y, accumulate, r0, count);
  });
}

/// y (+)= x W^T for 16-bit W (`bf16` selects bfloat16, else IEEE half),
/// stored row-major rows x cols at `half`, with the step kernel.
template <typename Scalar>
void matmul_transposed_half(const ConstMatrixRef<Scalar>& x, const std::uint16_t* half, Index rows,
                            Index cols, bool bf16, MatrixRef<Scalar> y, bool accumulate) {
  if (x.rows() == 0) return;
  if (rows * cols == 0) {
    if (!accumulate) y.setZero();
    return;
  }
  detail::split_weight_rows(rows, rows * cols, [&](Index r0, Index count) {
#if defined(XLSTM_HAVE_BF16_ROWS)
    if constexpr (std::is_same_v<Scalar, float>) {
      if (bf16) {
        detail::step_rows<float>(detail::Bf16Rows{half, cols}, x, y, accumulate, r0, count);
        return;
      }
#if defined(XLSTM_HAVE_F16_ROWS)
      detail::step_rows<float>(detail::F16Rows{half, cols}, x, y, accumulate, r0, count);
      return;
#endif
    }
#endif
    if (bf16) {
      detail::step_rows_buffered<Scalar>(
          half, cols, [](std::uint16_t v) { return bf16_to_float(v); }, x, y, accumulate, r0,
          count);
    } else {
      detail::step_rows_buffered<Scalar>(
          half, cols, [](std::uint16_t v) { return f16_to_float(v); }, x, y, accumulate, r0, count);
    }
  });
}

}  // namespace xlstm
