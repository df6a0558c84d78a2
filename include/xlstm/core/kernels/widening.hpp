// Products y = x W^T with 16-bit weights (bfloat16 or IEEE half, row-major
// out x in), accumulated in Scalar. The weights stay 16-bit in memory (often
// a memory-mapped checkpoint) and are widened on the way in:
//  - few rows (decode, short batches): the dense step kernel
//    (kernels/dense.hpp) with a row loader that widens inside the SIMD
//    registers, so the product reads half the bytes of float weights. Builds
//    without in-register widening (kernels/simd.hpp) widen a piece of a row
//    at a time into a stack buffer instead. Never allocates.
//  - many rows (prefill): tiles of W are widened into a Scalar buffer that
//    the calling thread keeps (at most about 8 MiB) and multiplied with
//    kernels::parallel_product, the float weights' sequence product.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

namespace kernels {

/// Rows of 16-bit W (bfloat16 if kBf16, else IEEE half), widened to float
/// packets as they are loaded.
template <bool kBf16>
struct HalfRows {
  const std::uint16_t* data;
  Index stride;
  static constexpr Index kPrefetchColumns = kCacheLineBytes / 2;
  static constexpr Index kPrefetchMinRows = 1;
  // Decode of one row only: at B = 8 the 7B-shaped block's BF16 step went
  // 7.4 -> 8.2 ms with prefetching natively (Intel Xeon, one thread; even on
  // x86-64-v3), at B = 1 36.1 -> 33.2 ms.
  static constexpr Index kPrefetchMaxRows = 1;
  simd::Packet<float> load(Index row, Index col) const {
    const std::uint16_t* p = data + row * stride + col;
    if constexpr (kBf16) {
      return simd::load_bf16(p);
    } else {
      return simd::load_f16(p);
    }
  }
  float at(Index row, Index col) const {
    const std::uint16_t bits = data[row * stride + col];
    return kBf16 ? bf16_to_float(bits) : f16_to_float(bits);
  }
  void prefetch(Index row, Index col, Index ahead) const {
    simd::prefetch(data + row * stride + col + ahead * stride);
  }
};
using Bf16Rows = HalfRows<true>;
using F16Rows = HalfRows<false>;

/// Fallback for compressed weights without an in-register widening loader
/// (or a Scalar other than float): each row is decoded to Scalar into a stack
/// buffer, a piece at a time, by decode_piece(row, c0, n, out) (out[0, n) =
/// W(row, c0 : c0 + n)). A row's sums go piece by piece whatever the batch,
/// so the result of a row of x does not depend on the others.
template <typename Scalar, typename XRef, typename YRef, typename DecodePiece>
void step_rows_decoded(Index cols, DecodePiece decode_piece, const XRef& x, YRef& y,
                       bool accumulate, Index r0, Index count) {
  constexpr Index kPiece = 1024;
  alignas(64) Scalar buffer[kPiece];
  const Index batch = x.rows(), ldx = x.outerStride(), ldy = y.outerStride();
  for (Index o = r0; o < r0 + count; ++o) {
    for (Index c0 = 0; c0 < cols; c0 += kPiece) {
      const Index n = std::min(kPiece, cols - c0);
      decode_piece(o, c0, n, buffer);
      const NativeRows<Scalar> piece{buffer, 0};
      for (Index b = 0; b < batch; ++b) {
        dot_block<1, 1>(piece, 0, 0, x.data() + b * ldx + c0, ldx, n, y.data() + b * ldy + o, ldy,
                        accumulate || c0 > 0);
      }
    }
  }
}

/// step_rows_decoded for 16-bit weights, widened value by value by `decode`.
template <typename Scalar, typename XRef, typename YRef, typename Decode>
void step_rows_buffered(const std::uint16_t* half, Index cols, Decode decode, const XRef& x,
                        YRef& y, bool accumulate, Index r0, Index count) {
  step_rows_decoded<Scalar>(
      cols,
      [&](Index o, Index c0, Index n, Scalar* out) {
        for (Index i = 0; i < n; ++i) out[i] = Scalar(decode(half[o * cols + c0 + i]));
      },
      x, y, accumulate, r0, count);
}

/// Rows of W per tile of the prefill path: about 2^21 weights (8 MiB of
/// float), at least 16 rows, at most all of them. The product packs x again
/// for every tile: at 4096 inputs a tile of 512 rows keeps that to a few
/// per cent of its time.
inline Index half_tile_rows(Index rows, Index cols) {
  return std::max<Index>(16, std::min<Index>(rows, (Index(1) << 21) / std::max<Index>(cols, 1)));
}

/// out[0, count * cols) = rows [r0, r0 + count) of W, widened to Scalar.
template <typename Scalar>
void widen_rows(const std::uint16_t* half, Index cols, bool bf16, Index r0, Index count,
                Scalar* out) {
  const std::uint16_t* in = half + r0 * cols;
  const Index n = count * cols;
  if (bf16) {
    // A bfloat16 is the upper half of a float: a shift, which vectorises.
    for (Index i = 0; i < n; ++i) out[i] = Scalar(bf16_to_float(in[i]));
  } else {
    for (Index i = 0; i < n; ++i) out[i] = Scalar(f16_to_float(in[i]));
  }
}

/// The decoded tile of tiled_gemm, kept by the calling thread (design §7.7).
template <typename Scalar>
struct DecodedTile {
  Matrix<Scalar> rows;
};

/// The prefill path: y (+)= x W^T one tile of W at a time, each tile of
/// half_tile_rows(rows, cols) rows decoded by decode_rows(r0, count, out)
/// (out[0, count * cols) = rows [r0, r0 + count) of W, row-major; called
/// for disjoint rows from several threads) into a buffer of the calling
/// thread and multiplied with kernels::parallel_product: a tile's product
/// gives each element the bits the float weights' product would. Any
/// compressed storage reuses it with its own decoder. Allocates only when
/// the thread's tile must grow.
template <typename Scalar, typename DecodeRows>
void tiled_gemm(const ConstMatrixRef<Scalar>& x, Index rows, Index cols, DecodeRows decode_rows,
                MatrixRef<Scalar> y, bool accumulate) {
  constexpr Index kDecodePiece = 16;  // rows per decoding task
  const Index tile_rows = half_tile_rows(rows, cols);
  xlstm::detail::ThreadBuffers<DecodedTile<Scalar>> lease;
  Matrix<Scalar>& tile = lease.get().rows;
  if (tile.rows() < tile_rows || tile.cols() != cols) tile.resize(tile_rows, cols);
  for (Index r0 = 0; r0 < rows; r0 += tile_rows) {
    const Index count = std::min(tile_rows, rows - r0);
    const Index pieces = (count + kDecodePiece - 1) / kDecodePiece;
    parallel_for(pieces, count * cols >= (Index(1) << 16), [&](Index p) {
      const Index first = p * kDecodePiece;
      decode_rows(r0 + first, std::min(kDecodePiece, count - first), tile.data() + first * cols);
    });
    const auto w = tile.topRows(count);
    auto out = y.middleCols(r0, count);
    parallel_product(x, w, out, accumulate);
  }
}

/// tiled_gemm for 16-bit weights.
template <typename Scalar>
void half_tiled_gemm(const ConstMatrixRef<Scalar>& x, const std::uint16_t* half, Index rows,
                     Index cols, bool bf16, MatrixRef<Scalar> y, bool accumulate) {
  tiled_gemm<Scalar>(
      x, rows, cols,
      [&](Index r0, Index count, Scalar* out) { widen_rows(half, cols, bf16, r0, count, out); }, y,
      accumulate);
}

}  // namespace kernels

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
  kernels::split_weight_rows(rows, rows * cols, [&](Index r0, Index count) {
    if constexpr (std::is_same_v<Scalar, float> && simd::kWidenBf16) {
      if (bf16) {
        kernels::step_rows<float>(kernels::Bf16Rows{half, cols}, x, y, accumulate, r0, count);
        return;
      }
      if constexpr (simd::kWidenF16) {
        kernels::step_rows<float>(kernels::F16Rows{half, cols}, x, y, accumulate, r0, count);
        return;
      }
    }
    if (bf16) {
      kernels::step_rows_buffered<Scalar>(
          half, cols, [](std::uint16_t v) { return bf16_to_float(v); }, x, y, accumulate, r0,
          count);
    } else {
      kernels::step_rows_buffered<Scalar>(
          half, cols, [](std::uint16_t v) { return f16_to_float(v); }, x, y, accumulate, r0, count);
    }
  });
}

namespace kernels {

/// y (+)= x W^T for 16-bit W with the strategy of the workload: the step
/// kernel for `step` and for at most kStepKernelMaxRows rows, else the tiled
/// GEMM (neither allocates once warm).
template <typename Scalar>
void half_product(const ConstMatrixRef<Scalar>& x, const std::uint16_t* half, Index rows,
                  Index cols, bool bf16, MatrixRef<Scalar> y, bool accumulate, Workload workload) {
  if (workload == Workload::step || x.rows() <= kStepKernelMaxRows) {
    // Widened inside the kernel: memory traffic is the 16-bit weights only.
    matmul_transposed_half<Scalar>(x, half, rows, cols, bf16, y, accumulate);
    return;
  }
  half_tiled_gemm<Scalar>(x, half, rows, cols, bf16, y, accumulate);
}

}  // namespace kernels
}  // namespace xlstm
