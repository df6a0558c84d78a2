// Products y = x W^T with quantised weights (math §16): int8 values with one
// float scale per row (int8_rows) or 4-bit values with one bfloat16 scale per
// group of 32 columns (q4_g32), accumulated in Scalar; a q4_g32 product
// rounds its input to 8 bits per group (math §16.7, kernels/q4_integer.hpp,
// whose integer kernel serves the few-row workloads where the build has
// it). The weights stay quantised in memory and are decoded on the way in,
// with the same two strategies as 16-bit weights (kernels/widening.hpp):
//  - few rows (decode, short batches) and the row-invariant workload: the
//    dense step kernel (kernels/dense.hpp) with a row loader that widens and
//    scales inside the SIMD registers (for q4_g32 with float x, the integer
//    kernel of kernels/q4_integer.hpp where the build has one). Builds
//    without in-register widening (kernels/simd.hpp), and Scalar double,
//    decode a piece of a row at a time into a stack buffer instead. No
//    allocation once warm (the rounded x is a buffer of the calling thread).
//  - many rows (prefill): tiles of W decoded into a Scalar buffer of the
//    calling thread and multiplied with kernels::parallel_product
//    (kernels::tiled_gemm).
// Also here: the quantisers of one row (int8) and one group (q4), which
// define the formats' values.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/q4_integer.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/kernels/widening.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {
namespace kernels {

/// Input columns per scale of q4_g32 (math §16.2).
constexpr Index kQ4Group = 32;
static_assert(kActivationGroup == kQ4Group, "x is rounded per group of q4_g32's weights");

namespace detail {

/// round(w / s) clamped to [-limit, limit], computed in double so that the
/// quotient is exact enough that only the clamp's rounding slack (w at the
/// row's or group's maximum) can reach the limit. s == 0: 0.
inline int quantize_value(float w, float s, int limit) {
  if (s == 0.0f) return 0;
  const double q = std::nearbyint(double(w) / double(s));
  return int(std::clamp(q, double(-limit), double(limit)));
}

/// The symmetric scale max|w| / limit of n values, in float (math §16.1).
/// A scale that underflows float is 0 and its values quantise to 0 (the
/// weights were below 127 * 1.4e-45 anyway).
inline float symmetric_scale(const float* w, Index n, int limit) {
  float max_abs = 0.0f;
  for (Index i = 0; i < n; ++i) max_abs = std::max(max_abs, std::abs(w[i]));
  return float(double(max_abs) / double(limit));
}

}  // namespace detail

/// Quantises one row of `n` weights to int8_rows (math §16.1): scale =
/// max|w| / 127, q = round(w / scale) in [-127, 127]; an all-zero row gets
/// scale 0 and q = 0 (no division by zero).
inline void quantize_int8_row(const float* w, Index n, std::int8_t* q, float& scale) {
  scale = detail::symmetric_scale(w, n, 127);
  for (Index i = 0; i < n; ++i) q[i] = std::int8_t(detail::quantize_value(w[i], scale, 127));
}

/// Quantises one group of kQ4Group weights to q4_g32 (math §16.2): scale =
/// max|w| / 7 rounded to bfloat16 (`scale_bits`), q = round(w / scale) with
/// that scale, clamped to [-7, 7] (symmetric: -8 is never produced, though
/// the decoders read it), stored as q + 8 (0..15) two per byte, the even
/// column in the low nibble.
inline void quantize_q4_group(const float* w, std::uint8_t* q, std::uint16_t& scale_bits) {
  scale_bits = float_to_bf16(detail::symmetric_scale(w, kQ4Group, 7));
  const float scale = bf16_to_float(scale_bits);
  for (Index i = 0; i < kQ4Group; i += 2) {
    const int lo = detail::quantize_value(w[i], scale, 7);
    const int hi = detail::quantize_value(w[i + 1], scale, 7);
    q[i / 2] = std::uint8_t((lo + 8) | ((hi + 8) << 4));
  }
}

/// Rows of int8_rows W (`data`: rows x stride bytes, `scales`: one per row),
/// widened to float packets as they are loaded and summed as integers'
/// multiples: the step kernel multiplies a row's sums by its scale once
/// (row_scale), which saves a multiply per packet (decoding int8 is bound
/// by the arithmetic per byte, not by memory, on one core) and rounds less.
struct Int8Rows {
  const std::uint8_t* data;
  const float* scales;
  Index stride;
  static constexpr Index kPrefetchColumns = kCacheLineBytes;
  static constexpr Index kPrefetchMinRows = 1;
  static constexpr Index kPrefetchMaxRows = kMaxIndex;  // B = 8: as fast, 3 % faster on AVX2
  simd::Packet<float> load(Index row, Index col) const {
    return simd::load_i8(reinterpret_cast<const std::int8_t*>(data + row * stride + col));
  }
  /// The value q, in the row's units.
  float at(Index row, Index col) const { return float(std::int8_t(data[row * stride + col])); }
  float row_scale(Index row) const { return scales[row]; }
  /// W(row, col) = q * scale (math §16.1).
  float dequantized(Index row, Index col) const { return at(row, col) * scales[row]; }
  void prefetch(Index row, Index col, Index ahead) const {
    simd::prefetch(data + row * stride + col + ahead * stride);
  }
};

/// Rows of q4_g32 W (`data`: rows x cols / 2 bytes, `scales`: rows x cols /
/// 32 bfloat16 bits): one value at a time (WeightMatrix's element access,
/// the decoders). The products read them in kernels/q4_integer.hpp, or
/// decoded.
struct Q4Rows {
  const std::uint8_t* data;
  const std::uint16_t* scales;
  Index cols;
  float at(Index row, Index col) const {
    return float(simd::q4_nibble(*byte_of(row, col), col)) * scale(row, col);
  }
  // cols is a multiple of kQ4Group (hence even) and col non-negative: the
  // divisions of col are unsigned shifts, not the signed division's
  // several instructions, which the decoders pay per value.
  const std::uint8_t* byte_of(Index row, Index col) const {
    return data + row * (cols / 2) + std::size_t(col) / 2;
  }
  float scale(Index row, Index col) const {
    return bf16_to_float(scales[row * (cols / kQ4Group) + std::size_t(col) / kQ4Group]);
  }
};

/// out[0, n) = W(row, c0 : c0 + n) decoded to Scalar: q4_g32 (bfloat16
/// group scales).
template <typename Scalar>
void decode_quantized(const std::uint8_t* data, const std::uint16_t* scales, Index cols, Index row,
                      Index c0, Index n, Scalar* out) {
  const Q4Rows w{data, scales, cols};
  for (Index i = 0; i < n; ++i) out[i] = Scalar(w.at(row, c0 + i));
}

/// The same for int8_rows (float row scales).
template <typename Scalar>
void decode_quantized(const std::uint8_t* data, const float* scales, Index cols, Index row,
                      Index c0, Index n, Scalar* out) {
  // q * s in float, like the packet loaders: one dequantised value whatever
  // the Scalar (math §16.1). Not Int8Rows::dequantized: with the scale held
  // in a local, the loop vectorises (out may alias scales as far as the
  // compiler knows).
  const auto* q = reinterpret_cast<const std::int8_t*>(data + row * cols + c0);
  const float s = scales[row];
  for (Index i = 0; i < n; ++i) out[i] = Scalar(float(q[i]) * s);
}

namespace detail {

/// y (+)= x W^T for quantised W (the scales' type says which: float for
/// int8_rows, bfloat16 bits for q4_g32), x as given, with the strategy of
/// the workload: the step kernel for `step` and for at most
/// kStepKernelMaxRows rows (never allocates), the row-invariant kernel for
/// `row_invariant` (never allocates), else the tiled GEMM (no allocation
/// once warm).
template <typename Scalar, typename ScaleType>
void quantized_product_of(const ConstMatrixRef<Scalar>& x, const std::uint8_t* data,
                          const ScaleType* scales, Index rows, Index cols, MatrixRef<Scalar>& y,
                          bool accumulate, Workload workload) {
  constexpr bool int8 = std::is_same_v<ScaleType, float>;
  if (workload == Workload::sequence && x.rows() > kStepKernelMaxRows) {
    tiled_gemm<Scalar>(
        x, rows, cols,
        [&](Index r0, Index count, Scalar* out) {
          for (Index r = 0; r < count; ++r) {
            decode_quantized(data, scales, cols, r0 + r, 0, cols, out + r * cols);
          }
        },
        y, accumulate);
    return;
  }
  const bool row_invariant = workload == Workload::row_invariant;
  const Index work = rows * cols * (row_invariant ? std::max<Index>(1, x.rows() / 8) : 1);
  split_weight_rows(rows, work, [&](Index r0, Index count) {
    if constexpr (std::is_same_v<Scalar, float> && simd::kWidenQuantized && int8) {
      const Int8Rows loader{data, scales, cols};
      if (row_invariant) {
        row_invariant_rows<float>(loader, x, y, accumulate, r0, count);
      } else {
        step_rows<float>(loader, x, y, accumulate, r0, count);
      }
      return;
    }
    // Row by row in pieces (q4_g32 in builds without its integer kernel): a
    // row's sums do not depend on the other rows of x either, so this serves
    // the row-invariant workload too.
    step_rows_decoded<Scalar>(
        cols,
        [&](Index o, Index c0, Index n, Scalar* out) {
          decode_quantized(data, scales, cols, o, c0, n, out);
        },
        x, y, accumulate, r0, count);
  });
}

}  // namespace detail

/// y (+)= x W^T for int8_rows W (`scales`: one float per row).
template <typename Scalar>
void int8_product(const ConstMatrixRef<Scalar>& x, const std::uint8_t* data, const float* scales,
                  Index rows, Index cols, MatrixRef<Scalar> y, bool accumulate, Workload workload) {
  if (x.rows() == 0) return;
  if (rows * cols == 0) {
    if (!accumulate) y.setZero();
    return;
  }
  detail::quantized_product_of<Scalar>(x, data, scales, rows, cols, y, accumulate, workload);
}

/// y (+)= x W^T for q4_g32 W (`scales`: rows x cols / 32 bfloat16 bits). It
/// multiplies x rounded to 8 bits per group of 32 columns (math §16.7): with
/// integer dot products in the step kernel where the build has them
/// (kernels/q4_integer.hpp: every workload but a sequence of more than
/// kStepKernelMaxRows rows), else with the rounded values in Scalar through
/// the paths of int8_rows.
template <typename Scalar>
void q4_product(const ConstMatrixRef<Scalar>& x, const std::uint8_t* data,
                const std::uint16_t* scales, Index rows, Index cols, MatrixRef<Scalar> y,
                bool accumulate, Workload workload) {
  if (x.rows() == 0) return;
  if (rows * cols == 0) {
    if (!accumulate) y.setZero();
    return;
  }
  if constexpr (std::is_same_v<Scalar, float>) {
    if ((workload != Workload::sequence || x.rows() <= kStepKernelMaxRows) &&
        q4_integer_product(x, data, scales, rows, cols, y, accumulate)) {
      return;
    }
  }
  xlstm::detail::ThreadBuffers<RoundedActivations<Scalar>> lease;
  std::vector<Scalar>& buffer = lease.get().values;
  if (buffer.size() < std::size_t(x.size())) buffer.resize(std::size_t(x.size()));
  round_activations<Scalar>(x, buffer.data());
  const Eigen::Map<const Matrix<Scalar>> rounded(buffer.data(), x.rows(), x.cols());
  detail::quantized_product_of<Scalar>(rounded, data, scales, rows, cols, y, accumulate, workload);
}

}  // namespace kernels
}  // namespace xlstm
