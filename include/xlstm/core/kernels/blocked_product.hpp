// out (+)= a * b^T for the layers' large products: every sequence forward
// (kernels/dense.hpp, Workload::sequence) and the backward passes' dL/dW =
// grad_y^T x and dL/dx = grad_y W (design §7.6). A cache-blocked product with
// a register-tiled kernel of its own (design §7.8), in the SIMD vocabulary of
// kernels/simd.hpp:
//
//  - The kernel keeps a tile of out in registers, kTileRows rows (values of a,
//    broadcast) by two packets of columns (rows of b, loaded as vectors): 24
//    accumulators with AVX-512's 32 registers, 12 with AVX2's 16. Per step of
//    the depth it loads two packets and broadcasts kTileRows values for
//    2 * kTileRows fused multiply-adds, which keeps both FMA units busy where
//    Eigen's own kernel (3 packets by 4 columns) stalls on loads.
//  - Operands are packed per block of kDepthBlock along the depth: a's rows
//    once per block by all threads (tile rows x depth, the broadcast side, in
//    L1 while a tile row of tasks runs), b's rows per task (kColumnBlock x
//    depth, in L2). Either operand may be stored either way (the backward
//    passes transposed gradients); one stored by columns already holds a
//    panel's values of a step side by side, and its full panels are read
//    where they lie.
//  - Every element of out is the sum over the depth in order, one
//    accumulator per depth block, added to out block after block: the same
//    operations whatever the tiling, the task split or the thread count, so
//    the bits depend on neither (nor on the storage orders). Tasks are
//    blocks of columns, cut into bands of rows when too few for the threads
//    (with a single column block each band packs its own rows of a).
//    An output of a few columns over row-major operands (the mLSTM gates)
//    takes dot products instead: packing would copy all of a for them.
//  - The packing buffers are kept by the calling thread (design §7.7), so
//    nothing is allocated once a product of a size has run.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {
namespace kernels {
namespace detail {

/// The register tile: kTileRows rows of out by kTileCols columns.
template <typename Scalar>
inline constexpr Index kTileCols = 2 * simd::kLanes<Scalar>;
inline constexpr Index kTileRows = simd::kVectorRegisters == 32 ? 12 : 6;
/// Depth of one packed block: a tile row of a (12 x 384 floats, 18 KiB)
/// stays in L1 while it meets every packed column of b.
inline constexpr Index kDepthBlock = 384;
/// Columns of out (rows of b) per task: 192 x 384 floats (288 KiB) of b in L2.
inline constexpr Index kColumnBlock = 192;

/// Column blocks of a product with `cols` columns: at most kColumnBlock
/// columns each, whole panels of `tile_cols` but the last, and on `threads`
/// threads a multiple of their count when there are at least as many, so
/// that the static schedule gives every thread the same number of panels
/// (to within one). 2048 columns on two threads in blocks of 192 would be
/// 11 blocks, 1152 columns for one thread and 896 for the other; as 12
/// blocks of 5 or 6 panels, 1024 each. The blocks change no element's
/// operations (design §7.8).
inline Index column_block_count(Index cols, Index tile_cols, int threads) {
  const Index panels = (cols + tile_cols - 1) / tile_cols;
  const Index per_block = std::max<Index>(1, kColumnBlock / tile_cols);
  const Index blocks = (panels + per_block - 1) / per_block;
  if (threads <= 1 || blocks < threads) return blocks;
  return std::min(panels, (blocks + threads - 1) / threads * threads);
}

/// The packed operands: a's tile rows for one depth block (shared by the
/// tasks), and per library thread a packed column block of b.
template <typename Scalar>
struct GemmBuffers {
  /// Per library thread: its column block of b, and its rows of a when
  /// every task packs its own.
  struct PerThread {
    Vector<Scalar> a, b;
  };
  Vector<Scalar> a;  ///< a's packed rows, shared by the tasks
  std::vector<PerThread> per_thread;
};

/// Packs `rows` (<= tile) rows of `x`, depth [k0, k0 + depth), as a
/// tile x depth column-major panel: the `tile` values of step k together;
/// rows past `rows` are zero.
template <typename X, typename Scalar>
void pack_panel(const X& x, Index r0, Index rows, Index k0, Index depth, Index tile, Scalar* dst) {
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>> panel(
      dst, tile, depth);
  if constexpr (bool(X::IsRowMajor) && std::is_same_v<Scalar, float> &&
                simd::kTransposeInRegisters) {
    if (x.innerStride() == 1) {
      simd::transpose_rows(&x.coeffRef(r0, k0), x.outerStride(), rows, depth, dst, tile);
      if (rows < tile) panel.bottomRows(tile - rows).setZero();
      return;
    }
  }
  // Eigen walks the panel in its (column) order: the tile values of a step
  // together, which measured faster than copying rows of a row-major x.
  panel.topRows(rows) = x.block(r0, k0, rows, depth);
  if (rows < tile) panel.bottomRows(tile - rows).setZero();
}

/// out[0..rows) x [0..cols) (+)= the tile of one depth block:
/// sum_k a_panel(i, k) * b_panel(j, k), with a_panel kTileRows x depth and
/// b_panel (Packets * lanes) x depth, both column-major with a step of a_step
/// and b_step between columns (packed panels, or an operand stored by
/// columns read where it lies). `add`: add to
/// out (else overwrite). Packets = 1 serves a last column panel of at most
/// one packet (a narrow output such as the mLSTM gates' NH columns). The
/// kTileRows broadcasts of a step are written out as a fold, so that every
/// compiler keeps the accumulators in registers.
template <int Packets, typename Scalar, Index... I>
void gemm_tile(const Scalar* a_panel, Index a_step, const Scalar* b_panel, Index b_step,
               Index depth, Scalar* out, Index out_stride, Index rows, Index cols, bool add,
               std::integer_sequence<Index, I...>) {
  using Packet = simd::Packet<Scalar>;
  constexpr Index lanes = simd::kLanes<Scalar>, tile_rows = sizeof...(I);
  constexpr Index width = Packets * lanes;
  Packet acc0[tile_rows] = {((void)I, simd::zero<Scalar>())...};
  Packet acc1[tile_rows] = {((void)I, simd::zero<Scalar>())...};
  for (Index k = 0; k < depth; ++k) {
    const Packet b0 = simd::load(b_panel);
    if constexpr (Packets == 2) {
      const Packet b1 = simd::load(b_panel + lanes);
      ((acc0[I] = simd::fma(simd::broadcast(a_panel[I]), b0, acc0[I]),
        acc1[I] = simd::fma(simd::broadcast(a_panel[I]), b1, acc1[I])),
       ...);
    } else {
      ((acc0[I] = simd::fma(simd::broadcast(a_panel[I]), b0, acc0[I])), ...);
    }
    a_panel += a_step;
    b_panel += b_step;
  }
  if (rows == tile_rows && cols == width) {
    for (Index i = 0; i < tile_rows; ++i) {
      Scalar* o = out + i * out_stride;
      simd::store(o, add ? Eigen::internal::padd(simd::load(o), acc0[i]) : acc0[i]);
      if constexpr (Packets == 2) {
        simd::store(o + lanes,
                    add ? Eigen::internal::padd(simd::load(o + lanes), acc1[i]) : acc1[i]);
      }
    }
    return;
  }
  // An edge tile: through a buffer, the part inside out.
  Scalar part[tile_rows][width];
  for (Index i = 0; i < tile_rows; ++i) {
    simd::store(part[i], acc0[i]);
    if constexpr (Packets == 2) simd::store(part[i] + lanes, acc1[i]);
  }
  for (Index i = 0; i < rows; ++i) {
    Scalar* o = out + i * out_stride;
    for (Index j = 0; j < cols; ++j) o[j] = add ? o[j] + part[i][j] : part[i][j];
  }
}

/// The product for an output of at most kNarrowColumns columns with both
/// operands stored by rows (the mLSTM gates' NH columns over the 3I-wide
/// qkv): dot products, no packing (which would copy all of a for a few
/// columns). A register block of rows of a by all the columns: each packet
/// of b, loaded once, meets every row of the block, so b (the gates' weights,
/// more than L1 holds) is read once per block instead of once per row. Each
/// element sums its packets in order, then the lanes, then the tail: the
/// same bits at every thread count and whatever the block.
inline constexpr Index kNarrowColumns = 8;

/// Rows of a per register block for `cols` columns: rows x cols
/// accumulators plus a packet per row and one of b in the registers.
constexpr int narrow_block_rows(int cols) {
  const int rows = (simd::kVectorRegisters - 6) / cols;
  return rows < 1 ? 1 : rows > 4 ? 4 : rows;
}

/// out(i0 + r, j) (+)= a.row(i0 + r) . b.row(j) for r < Rows, j < Cols.
template <int Rows, int Cols, typename A, typename B, typename Out>
void narrow_block(const A& a, const B& b, Out& out, Index i0, bool accumulate) {
  using Scalar = typename Out::Scalar;
  using Packet = simd::Packet<Scalar>;
  constexpr Index lanes = simd::kLanes<Scalar>;
  const Index depth = a.cols(), body = depth / lanes * lanes;
  const Scalar* x[Rows];
  const Scalar* w[Cols];
  for (int r = 0; r < Rows; ++r) x[r] = &a.coeffRef(i0 + r, 0);
  for (int j = 0; j < Cols; ++j) w[j] = &b.coeffRef(j, 0);
  Packet acc[Rows][Cols];
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < Cols; ++j) acc[r][j] = simd::zero<Scalar>();
  }
  for (Index k = 0; k < body; k += lanes) {
    Packet xk[Rows];
    for (int r = 0; r < Rows; ++r) xk[r] = simd::load(x[r] + k);
    for (int j = 0; j < Cols; ++j) {
      const Packet wk = simd::load(w[j] + k);
      for (int r = 0; r < Rows; ++r) acc[r][j] = simd::fma(xk[r], wk, acc[r][j]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < Cols; ++j) {
      Scalar sum = simd::reduce(acc[r][j]);
      for (Index k = body; k < depth; ++k) sum += x[r][k] * w[j][k];
      Scalar& o = out(i0 + r, j);
      o = accumulate ? o + sum : sum;
    }
  }
}

template <int Cols, typename A, typename B, typename Out>
void narrow_product_of(const A& a, const B& b, Out& out, bool accumulate, bool parallel) {
  constexpr int block = narrow_block_rows(Cols);
  constexpr Index kRowsPerTask = 64;
  const Index rows = out.rows();
  const Index tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for(tasks, parallel, [&](Index task) {
    const Index last = std::min(rows, (task + 1) * kRowsPerTask);
    Index i = task * kRowsPerTask;
    for (; i + block <= last; i += block) narrow_block<block, Cols>(a, b, out, i, accumulate);
    for (; i < last; ++i) narrow_block<1, Cols>(a, b, out, i, accumulate);
  });
}

/// narrow_product_of for the instance with out.cols() columns (1 to
/// kNarrowColumns), chosen among the compiled widths Widths + 1.
template <typename A, typename B, typename Out, int... Widths>
void narrow_product(const A& a, const B& b, Out& out, bool accumulate, bool parallel,
                    std::integer_sequence<int, Widths...>) {
  (void)((out.cols() == Widths + 1 &&
          (narrow_product_of<Widths + 1>(a, b, out, accumulate, parallel), true)) ||
         ...);
}

template <typename A, typename B, typename Out>
void narrow_product(const A& a, const B& b, Out& out, bool accumulate, bool parallel) {
  narrow_product(a, b, out, accumulate, parallel,
                 std::make_integer_sequence<int, int(kNarrowColumns)>());
}

}  // namespace detail

namespace detail {

/// The blocked product; `split` false: on the calling thread only.
template <typename A, typename B, typename Out>
void blocked_product(const A& a, const B& b, Out& out, bool accumulate, bool split) {
  using Scalar = typename Out::Scalar;
  static_assert(int(Out::Flags) & Eigen::RowMajorBit, "blocked product: out must be row-major");
  constexpr Index tile_rows = detail::kTileRows, tile_cols = detail::kTileCols<Scalar>;
  constexpr Index lanes = simd::kLanes<Scalar>;
  constexpr auto tile_sequence = std::make_integer_sequence<Index, tile_rows>();
  const Index rows = out.rows(), cols = out.cols(), depth = a.cols();
  if (rows == 0 || cols == 0) return;
  if (depth == 0) {
    if (!accumulate) out.setZero();
    return;
  }
  eigen_assert(out.innerStride() == 1);
  const bool parallel = split && double(rows) * double(cols) * double(depth) >= double(1 << 20);
  if constexpr (bool(A::IsRowMajor) && bool(B::IsRowMajor)) {
    if (cols <= detail::kNarrowColumns && a.innerStride() == 1 && b.innerStride() == 1) {
      detail::narrow_product(a, b, out, accumulate, parallel);
      return;
    }
  }
  const Index row_panels = (rows + tile_rows - 1) / tile_rows;
  const Index kc = std::min(depth, detail::kDepthBlock);
  // Tasks: column blocks, each packing its part of b once per depth block;
  // split into row bands too only when there are too few of them to keep
  // every thread busy (each band packs its b again). The split changes no
  // element's operations.
  const int threads = parallel ? num_threads() : 1;
  const Index col_blocks = detail::column_block_count(cols, tile_cols, threads);
  const Index col_panels_all = (cols + tile_cols - 1) / tile_cols;
  // Column block j: panels [j P / blocks, (j + 1) P / blocks) of the P panels.
  auto block_start = [&](Index j) { return (j * col_panels_all / col_blocks) * tile_cols; };
  const Index wanted_tasks = parallel ? 2 * Index(threads) : 1;
  const Index bands = col_blocks >= wanted_tasks
                          ? 1
                          : std::min(row_panels, (wanted_tasks + col_blocks - 1) / col_blocks);
  const Index band_panels = (row_panels + bands - 1) / bands;
  const Index tasks = col_blocks * bands;
  // With one column block the bands share nothing: each packs its own rows
  // of a and runs the whole depth, in one parallel region (a depth of many
  // blocks, as dL/dW's over the tokens, would otherwise fork and join twice
  // per block). Else a is packed once per depth block for all the tasks.
  const bool own_a = col_blocks == 1;
  // An operand stored by columns (a transposed row-major matrix: the
  // backward's grad_y^T and x^T, W^T) already holds a panel's values of a
  // step side by side: its full panels are read where they lie, unpacked.
  constexpr bool direct_a = !bool(A::IsRowMajor), direct_b = !bool(B::IsRowMajor);
  auto a_at = [&](Index r, Index k) {
    return a.data() + r * a.innerStride() + k * a.outerStride();
  };
  auto b_at = [&](Index r, Index k) {
    return b.data() + r * b.innerStride() + k * b.outerStride();
  };
  auto a_full = [&](Index p) { return direct_a && (p + 1) * tile_rows <= rows; };

  xlstm::detail::ThreadBuffers<detail::GemmBuffers<Scalar>> lease;
  detail::GemmBuffers<Scalar>& buffers = lease.get();
  const Index b_size =
      ((std::min(cols, detail::kColumnBlock) + tile_cols - 1) / tile_cols) * tile_cols * kc;
  const Index a_size = (own_a ? band_panels : row_panels) * tile_rows * kc;
  if (!own_a && buffers.a.size() < a_size) buffers.a.resize(a_size);  // own_a: per thread
  if (buffers.per_thread.size() < std::size_t(threads)) {
    buffers.per_thread.resize(std::size_t(threads));
  }
  for (auto& mine : buffers.per_thread) {
    if (mine.b.size() < b_size) mine.b.resize(b_size);
    if (own_a && mine.a.size() < a_size) mine.a.resize(a_size);
  }

  // One task's part of one depth block: pack its b (and, with own_a, its
  // rows of a), then every tile. a_packed points at panel `first_a_panel`.
  auto run_task = [&](Index task, int thread, Index k0, Scalar* a_packed, Index first_a_panel) {
    const Index block_depth = std::min(kc, depth - k0);
    const bool add = accumulate || k0 > 0;
    const Index c0 = block_start(task % col_blocks);
    const Index width = std::min(block_start(task % col_blocks + 1), cols) - c0;
    const Index first_panel = (task / col_blocks) * band_panels;
    const Index last_panel = std::min(row_panels, first_panel + band_panels);
    Scalar* b_packed = buffers.per_thread[std::size_t(thread)].b.data();
    const Index col_panels = (width + tile_cols - 1) / tile_cols;
    // Panels of two packets; a last one of at most one packet packs one.
    auto panel_width = [&](Index q) { return width - q * tile_cols <= lanes ? lanes : tile_cols; };
    auto b_full = [&](Index q) { return direct_b && (q + 1) * tile_cols <= width; };
    for (Index q = 0; q < col_panels; ++q) {
      if (b_full(q)) continue;
      detail::pack_panel(b, c0 + q * tile_cols, std::min(tile_cols, width - q * tile_cols), k0,
                         block_depth, panel_width(q), b_packed + q * tile_cols * block_depth);
    }
    if (own_a) {
      for (Index p = first_panel; p < last_panel; ++p) {
        if (a_full(p)) continue;
        detail::pack_panel(a, p * tile_rows, std::min(tile_rows, rows - p * tile_rows), k0,
                           block_depth, tile_rows,
                           a_packed + (p - first_a_panel) * tile_rows * block_depth);
      }
    }
    for (Index p = first_panel; p < last_panel; ++p) {
      const Index r0 = p * tile_rows, height = std::min(tile_rows, rows - r0);
      const bool a_direct = a_full(p);
      const Scalar* a_panel =
          a_direct ? a_at(r0, k0) : a_packed + (p - first_a_panel) * tile_rows * block_depth;
      const Index a_step = a_direct ? a.outerStride() : tile_rows;
      for (Index q = 0; q < col_panels; ++q) {
        const Index j0 = c0 + q * tile_cols;
        const bool b_direct = b_full(q);
        const Scalar* b_panel = b_direct ? b_at(j0, k0) : b_packed + q * tile_cols * block_depth;
        const Index b_step = b_direct ? b.outerStride() : panel_width(q);
        const Index tile_width = std::min(tile_cols, cols - j0);
        if (panel_width(q) == lanes) {
          detail::gemm_tile<1>(a_panel, a_step, b_panel, b_step, block_depth, &out(r0, j0),
                               out.outerStride(), height, tile_width, add, tile_sequence);
        } else {
          detail::gemm_tile<2>(a_panel, a_step, b_panel, b_step, block_depth, &out(r0, j0),
                               out.outerStride(), height, tile_width, add, tile_sequence);
        }
      }
    }
  };

  if (own_a) {
    parallel_for_indexed(tasks, parallel, [&](Index task, int thread) {
      Scalar* a_packed = buffers.per_thread[std::size_t(thread)].a.data();
      for (Index k0 = 0; k0 < depth; k0 += kc) {
        run_task(task, thread, k0, a_packed, task * band_panels);
      }
    });
    return;
  }
  for (Index k0 = 0; k0 < depth; k0 += kc) {
    const Index block_depth = std::min(kc, depth - k0);
    Scalar* a_packed = buffers.a.data();
    parallel_for(row_panels, parallel && row_panels > 1, [&](Index p) {
      if (a_full(p)) return;
      detail::pack_panel(a, p * tile_rows, std::min(tile_rows, rows - p * tile_rows), k0,
                         block_depth, tile_rows, a_packed + p * tile_rows * block_depth);
    });
    parallel_for_indexed(tasks, parallel,
                         [&](Index task, int thread) { run_task(task, thread, k0, a_packed, 0); });
  }
}

}  // namespace detail

/// out = a * b^T, or out += a * b^T with `accumulate` (a: N x K, b: M x K,
/// either stored either way; out: N x M, row-major with unit inner stride,
/// not aliasing a or b), tasks split over the threads. Same bits at every
/// thread count; allocates only when the calling thread's buffers must grow.
template <typename A, typename B, typename Out>
void parallel_product(const A& a, const B& b, Out& out, bool accumulate) {
  detail::blocked_product(a, b, out, accumulate, /*split=*/true);
}

/// The same product on the calling thread only, with the same bits: for
/// products inside a parallel loop of their own (the mLSTM cell's chunk
/// products, one (batch row, head) item per task; math §4.4, §4.7).
template <typename A, typename B, typename Out>
void serial_product(const A& a, const B& b, Out& out, bool accumulate) {
  detail::blocked_product(a, b, out, accumulate, /*split=*/false);
}

}  // namespace kernels
}  // namespace xlstm
