// The q4_g32 product's input rounded to 8 bits (math §16.7), and the step
// kernel that uses it: integer dot products of 4-bit weights and 8-bit x.
//
// Why: with x in float, every 4-bit weight must be widened to a float and
// multiplied on its own, and on one core that arithmetic, not memory, bounds
// a 4-bit decode (AVX2 reached about 58 % of the DRAM bandwidth, AVX-512
// 75 %). Rounded to int8 per group of 32 columns, x meets the nibbles in
// byte-wise dot products (AVX-512 VNNI's vpdpbusd: 64 products per
// instruction; AVX2's vpmaddubsw + vpmaddwd), and a group's integer sum is
// scaled once. The rounding costs little: x's step is 1/127 of its group's
// largest value, where a 4-bit weight's is 1/7 of its group's.
//
// Every path of the q4_g32 product (this kernel, the decoded fallback, the
// prefill's tiles) multiplies the same rounded x (round_activation_group),
// so they differ only by float rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {
namespace kernels {

/// Columns per scale of x's rounding: q4_g32's group (math §16.2, §16.7).
inline constexpr Index kActivationGroup = 32;

/// Rounds one group of kActivationGroup values of a row of x to 8 bits (math
/// §16.7): scale s = max|x| / 127, q = round(x / s) in [-127, 127], and
/// returns s. A group whose largest magnitude is below the smallest normal
/// Scalar rounds to zero (s = 0); one holding an infinity or a NaN gets s =
/// NaN and q = 0, so that every output it reaches is NaN, as the float
/// product's would be.
template <typename Scalar>
Scalar round_activation_group(const Scalar* x, std::int8_t* q) {
  Scalar max_abs = 0;
  bool finite = true;
  for (Index i = 0; i < kActivationGroup; ++i) {
    const Scalar a = std::abs(x[i]);
    finite = finite && a <= std::numeric_limits<Scalar>::max();  // false for NaN
    max_abs = std::max(max_abs, a);
  }
  if (!finite || max_abs < std::numeric_limits<Scalar>::min()) {
    std::fill(q, q + kActivationGroup, std::int8_t(0));
    return finite ? Scalar(0) : std::numeric_limits<Scalar>::quiet_NaN();
  }
  const Scalar s = max_abs / Scalar(127);
  for (Index i = 0; i < kActivationGroup; ++i) {
    // x / s can pass 127 by a rounding (or by more when s is subnormal).
    const Scalar r = std::nearbyint(x[i] / s);
    q[i] = std::int8_t(std::clamp(r, Scalar(-127), Scalar(127)));
  }
  return s;
}

/// out (rows x cols, row-major) = x with every row rounded as
/// round_activation_group does, as Scalar values q * s: the input of the
/// decoded and the prefill paths (cols a multiple of kActivationGroup).
template <typename Scalar>
void round_activations(const ConstMatrixRef<Scalar>& x, Scalar* out) {
  const Index cols = x.cols();
  std::int8_t q[kActivationGroup];
  for (Index b = 0; b < x.rows(); ++b) {
    for (Index c = 0; c < cols; c += kActivationGroup) {
      const Scalar s = round_activation_group(&x.coeffRef(b, c), q);
      for (Index i = 0; i < kActivationGroup; ++i) out[b * cols + c + i] = Scalar(q[i]) * s;
    }
  }
}

template <typename Scalar>
void round_activations(const ConstMatrixRef<Scalar>& x, Matrix<Scalar>& out) {
  out.resize(x.rows(), x.cols());
  round_activations<Scalar>(x, out.data());
}

/// The thread buffer of the rounded x (design §7.7): it grows, never shrinks,
/// so products of any smaller size do not allocate.
template <typename Scalar>
struct RoundedActivations {
  std::vector<Scalar> values;
};

#if defined(XLSTM_SIMD_Q4_DOT)

/// x rounded to 8 bits and laid out for simd::dot_q4_int8: per row, the
/// values at even and at odd columns (the weights' low and high nibbles), a
/// start value -8 * (sum of the lane's eight values) per integer lane, and
/// the group's scale in each of its four lanes. Rows are padded with zeros
/// to whole chunks, so that a chunk's x is always read in full.
struct Q4Activations {
  Index rows = 0, groups = 0, padded_groups = 0;
  std::vector<std::int8_t> even, odd;  // rows x padded_groups * 16
  std::vector<std::int32_t> start;     // rows x padded_groups * 4
  std::vector<float> scales;           // rows x padded_groups * 4

  /// Index of (row, group) among the rows x padded_groups slots.
  std::size_t slot(Index row, Index group) const {
    return std::size_t(row * padded_groups + group);
  }
  const std::int8_t* even_of(Index row, Index group) const { return &even[slot(row, group) * 16]; }
  const std::int8_t* odd_of(Index row, Index group) const { return &odd[slot(row, group) * 16]; }
  const std::int32_t* start_of(Index row, Index group) const {
    return &start[slot(row, group) * 4];
  }
  const float* scales_of(Index row, Index group) const { return &scales[slot(row, group) * 4]; }
};

/// Fills `a` from x (cols a multiple of kActivationGroup). Grows its
/// vectors only when x is larger than any before (no allocation once warm).
inline void prepare_q4_activations(const ConstMatrixRef<float>& x, Q4Activations& a) {
  constexpr Index chunk = simd::kQ4DotGroups;
  a.rows = x.rows();
  a.groups = x.cols() / kActivationGroup;
  a.padded_groups = (a.groups + chunk - 1) / chunk * chunk;
  const std::size_t slots = std::size_t(a.rows * a.padded_groups);
  auto grow = [](auto& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  };
  grow(a.even, slots * 16);
  grow(a.odd, slots * 16);
  grow(a.start, slots * 4);
  grow(a.scales, slots * 4);
  std::int8_t q[kActivationGroup];
  for (Index b = 0; b < a.rows; ++b) {
    for (Index g = 0; g < a.padded_groups; ++g) {
      float s = 0.0f;  // the padding: zeros
      if (g < a.groups) {
        s = round_activation_group(&x.coeffRef(b, g * kActivationGroup), q);
      } else {
        std::fill(q, q + kActivationGroup, std::int8_t(0));
      }
      std::int8_t* even = &a.even[a.slot(b, g) * 16];
      std::int8_t* odd = &a.odd[a.slot(b, g) * 16];
      std::int32_t* start = &a.start[a.slot(b, g) * 4];
      float* scales = &a.scales[a.slot(b, g) * 4];
      for (Index i = 0; i < 16; ++i) {
        even[i] = q[2 * i];
        odd[i] = q[2 * i + 1];
      }
      for (Index lane = 0; lane < 4; ++lane) {
        std::int32_t sum = 0;
        for (Index i = 4 * lane; i < 4 * lane + 4; ++i) sum += even[i] + odd[i];
        start[lane] = -8 * sum;
        scales[lane] = s;
      }
    }
  }
}

/// The thread buffer of the prepared x (design §7.7).
struct Q4ActivationBuffers {
  Q4Activations activations;
};

/// y(b, o) (+)= sum over groups of W's row o times x's row b, for W rows
/// [o, o + R) and x rows [b0, b0 + B): per chunk, each W row's nibbles are
/// loaded once and meet the B rows of x; a lane accumulates its float
/// scaled sums over the chunks, and the lanes are added at the end. The
/// operations of an element do not depend on R, B or the other rows.
template <int R, int B>
void q4_dot_block(const std::uint8_t* data, const std::uint16_t* scales, Index cols,
                  const Q4Activations& x, Index o, Index b0, MatrixRef<float>& y, bool accumulate,
                  Index prefetch_rows) {
  using Packet = simd::Packet<float>;
  constexpr Index chunk = simd::kQ4DotGroups;
  const Index groups = cols / kActivationGroup, row_bytes = cols / 2;
  Packet acc[R][B];
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) acc[r][b] = simd::zero<float>();
  }
  auto step = [&](Index g, Index n) {
    for (int r = 0; r < R; ++r) {
      const std::uint8_t* w = data + (o + r) * row_bytes + g * 16;
      const std::uint16_t* s = scales + (o + r) * groups + g;
      if (prefetch_rows > 0) {  // the same columns prefetch_rows rows on
        simd::prefetch(w + prefetch_rows * row_bytes);
        if (g % 32 == 0) simd::prefetch(s + prefetch_rows * groups);  // 32 scales per line
      }
      const simd::Q4Excess8 nibbles = simd::load_q4_excess8(w, n);
      const Packet w_scales = simd::q4_group_scales(s, n);
      for (int b = 0; b < B; ++b) {
        const simd::IntPacket sums = simd::dot_q4_int8(nibbles, x.even_of(b0 + b, g),
                                                       x.odd_of(b0 + b, g), x.start_of(b0 + b, g));
        const Packet both =
            Eigen::internal::pmul(w_scales, simd::load<float>(x.scales_of(b0 + b, g)));
        acc[r][b] = simd::add_scaled_sums(sums, both, acc[r][b]);
      }
    }
  };
  const Index full = groups / chunk * chunk;
  for (Index g = 0; g < full; g += chunk) step(g, chunk);
  if (full < groups) step(full, groups - full);
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) {
      const float sum = simd::reduce(acc[r][b]);
      float& out = y(b0 + b, o + r);
      out = accumulate ? out + sum : sum;
    }
  }
}

/// The register block: W rows x (up to) x rows per pass, and how many W
/// rows ahead the kernel prefetches. AVX-512's 32 registers hold 4 x 4
/// accumulators; AVX2 takes one W row at a time with several x rows (16
/// registers: 4 accumulators, the nibbles, the constants; with one x row it
/// takes four W rows, kQ4DotWRowsOneX below). Without the prefetch a row's
/// 2 KiB (4096 columns) end before the hardware prefetcher has ramped up.
/// Scratch kernel, 40 4096 x 4096 q4_g32 matrices, one thread, Intel Xeon,
/// ms per matrix at B = 1 / 8: AVX-512 4 x 4 0.86 / 2.30 (2 x 4: 0.91 /
/// 2.28, 1 x 4: 0.83 / 2.67); x86-64-v3 1 x 4, 2 ahead: 0.87 / 2.85 (2 x 2:
/// 0.99 / 3.05; 2 x 2 without prefetching: 1.64 / 4.14). The float-x kernel
/// before it: 1.17 / 3.39 and 1.44 / 5.94.
inline constexpr int kQ4DotWRows = simd::kVectorRegisters >= 32 ? 4 : 1;
inline constexpr int kQ4DotXRows = 4;
inline constexpr Index kQ4PrefetchRows = simd::kVectorRegisters >= 32 ? 4 : 2;

/// q4_dot_block for x rows [b0, b0 + n), n <= B, as one block of n rows.
template <int R, int B>
void q4_dot_x_block(const std::uint8_t* data, const std::uint16_t* scales, Index cols,
                    const Q4Activations& x, Index o, Index b0, Index n, MatrixRef<float>& y,
                    bool accumulate, Index prefetch_rows) {
  if (n == B) {
    q4_dot_block<R, B>(data, scales, cols, x, o, b0, y, accumulate, prefetch_rows);
  } else if constexpr (B > 1) {
    q4_dot_x_block<R, B - 1>(data, scales, cols, x, o, b0, n, y, accumulate, prefetch_rows);
  }
}

/// W rows [o, o + R) times every row of x, kQ4DotXRows x rows per pass.
template <int R>
void q4_dot_rows(const std::uint8_t* data, const std::uint16_t* scales, Index cols,
                 const Q4Activations& x, Index o, MatrixRef<float>& y, bool accumulate,
                 Index prefetch_rows) {
  for (Index b0 = 0; b0 < x.rows; b0 += kQ4DotXRows) {
    // Prefetch on the first pass only: later passes find the rows in L1.
    q4_dot_x_block<R, kQ4DotXRows>(data, scales, cols, x, o, b0,
                                   std::min<Index>(kQ4DotXRows, x.rows - b0), y, accumulate,
                                   b0 == 0 ? prefetch_rows : 0);
  }
}

/// W rows per pass when x has one row (decode at B = 1): four on AVX2 too,
/// whose registers hold 4 x 1 accumulators with the nibbles. Scratch
/// kernel as above, x86-64-v3, B = 1, with another process on the second
/// core: 4 rows 0.736-0.938 ms per matrix, 1 row 0.790-0.970 (three runs).
inline constexpr int kQ4DotWRowsOneX = 4;

/// q4_integer_rows with R W rows per pass, prefetching max(R,
/// kQ4PrefetchRows) rows ahead.
template <int R>
void q4_integer_rows_of(const std::uint8_t* data, const std::uint16_t* scales, Index cols,
                        const Q4Activations& x, MatrixRef<float>& y, bool accumulate, Index r0,
                        Index count) {
  constexpr Index prefetch = std::max<Index>(R, kQ4PrefetchRows);
  const Index end = r0 + count;
  Index o = r0;
  for (; o + R <= end; o += R) {
    // Prefetch within this range only (another thread's rows are its own).
    const Index ahead = o + R + prefetch <= end ? prefetch : 0;
    q4_dot_rows<R>(data, scales, cols, x, o, y, accumulate, ahead);
  }
  for (; o < end; ++o) q4_dot_rows<1>(data, scales, cols, x, o, y, accumulate, 0);
}

/// y (+)= x W^T over W rows [r0, r0 + count) of q4_g32 W with x prepared.
inline void q4_integer_rows(const std::uint8_t* data, const std::uint16_t* scales, Index cols,
                            const Q4Activations& x, MatrixRef<float>& y, bool accumulate, Index r0,
                            Index count) {
  if (x.rows == 1) {
    q4_integer_rows_of<kQ4DotWRowsOneX>(data, scales, cols, x, y, accumulate, r0, count);
  } else {
    q4_integer_rows_of<kQ4DotWRows>(data, scales, cols, x, y, accumulate, r0, count);
  }
}

#endif  // XLSTM_SIMD_Q4_DOT

/// y (+)= x W^T for q4_g32 W with the integer step kernel, split over the
/// threads by rows of W (no element's operations change with them). Returns
/// false, doing nothing, in builds without it (simd::kQ4IntegerDot).
inline bool q4_integer_product(const ConstMatrixRef<float>& x, const std::uint8_t* data,
                               const std::uint16_t* scales, Index rows, Index cols,
                               MatrixRef<float>& y, bool accumulate) {
#if defined(XLSTM_SIMD_Q4_DOT)
  xlstm::detail::ThreadBuffers<Q4ActivationBuffers> lease;
  Q4Activations& prepared = lease.get().activations;
  prepare_q4_activations(x, prepared);
  const Index work = rows * cols * std::max<Index>(1, x.rows() / 8);
  split_weight_rows(rows, work, [&](Index r0, Index count) {
    q4_integer_rows(data, scales, cols, prepared, y, accumulate, r0, count);
  });
  return true;
#else
  (void)x, (void)data, (void)scales, (void)rows, (void)cols, (void)y, (void)accumulate;
  return false;
#endif
}

}  // namespace kernels
}  // namespace xlstm
