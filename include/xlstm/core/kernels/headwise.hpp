// Block-diagonal products (HeadwiseLinear, math §1.4): the input splits into
// `num_heads` blocks of in/NH features, each multiplied by its own
// (out/NH x in/NH) matrix; the weights are stored (NH * out/NH) x in/NH,
// row-major. Two strategies, by head size:
//  - small heads (both sides at most kSmallHead; the 125M model's q/k/v
//    projections have 384 heads of 4 x 4): computed directly, since one
//    product per head would cost far more in per-product overhead than in
//    arithmetic. Square heads of 4, 8 or 16 in float run side by side in the
//    SIMD registers (kLanes / n heads per packet, each head's inputs handed
//    to its lanes by a lane selection); the others, and the heads past the
//    last full packet, row by row and head by head. Nothing is packed or
//    allocated. The backward (core/linear_backward.hpp) has small-head
//    kernels too.
//  - larger heads: one dense product per head (kernels/dense.hpp): the
//    blocked product for sequences, the allocation-free step kernel for steps.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>

#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace kernels {

/// Heads up to this size (in and out) take the small-head kernel.
constexpr Index kSmallHead = 16;

/// Rows [first, last) of the small-head kernel for heads [head_first,
/// num_heads); kOut = 0: any head_out. y_h = W_h x_h over the stored
/// (row-major) weights. The outputs of a head are summed side by side
/// (independent chains, not one dot product after another), which is why the
/// head size is a template argument for the common sizes.
template <Index kOut, typename Scalar>
void small_heads_rows(const ConstMatrixRef<Scalar>& x, const Scalar* weight, Index head_first,
                      Index num_heads, Index in, Index out_runtime, MatrixRef<Scalar>& y,
                      Index first, Index last) {
  const Index out = kOut > 0 ? kOut : out_runtime;
  for (Index n = first; n < last; ++n) {
    const Scalar* x_head = x.data() + n * x.outerStride() + head_first * in;
    Scalar* y_head = y.data() + n * y.outerStride() + head_first * out;
    const Scalar* w_head = weight + head_first * out * in;
    for (Index h = head_first; h < num_heads;
         ++h, x_head += in, y_head += out, w_head += out * in) {
      Scalar sum[kOut > 0 ? kOut : kSmallHead] = {};
      for (Index i = 0; i < in; ++i) {
        const Scalar x_i = x_head[i];
        for (Index o = 0; o < out; ++o) sum[o] += w_head[o * in + i] * x_i;
      }
      for (Index o = 0; o < out; ++o) y_head[o] = sum[o];
    }
  }
}

/// Square heads of n inputs and n outputs side by side in the SIMD registers
/// (float, n dividing the packet: kLanes / n heads per packet), rows [first,
/// last) of the packet-aligned columns [0, columns): output lane (h, j) of
/// y_h = M_h v_h gains M_h[j][k] v_h[k] for k = 0, 1, ... in order (the
/// order of the scalar kernels), v_h[k] reaching the lanes of head h by a
/// lane selection within groups of n lanes. Step k's coefficients of all the
/// lanes are one row of an arrangement on the stack, made per chunk of
/// columns and reused by every row. The forward takes M_h = W_h
/// (`transposed` false), the input gradient M_h = W_h^T. y = M v, or y += M v
/// with `accumulate` (the sum formed first, then added, as the scalar kernel
/// does).
template <Index kN>
void square_heads_simd_rows(const ConstMatrixRef<float>& v, const float* weight, bool transposed,
                            Index columns, MatrixRef<float>& y, bool accumulate, Index first,
                            Index last) {
  constexpr Index kLanes = simd::kLanes<float>;
  constexpr Index kChunk = 8 * kLanes;
  alignas(64) float coefficients[kN * kChunk];
  simd::LaneSelection select[kN];
  for (Index k = 0; k < kN; ++k) select[k] = simd::lanes_of_group(kN, k);
  for (Index c0 = 0; c0 < columns; c0 += kChunk) {
    const Index width = std::min(kChunk, columns - c0);
    for (Index c = 0; c < width; ++c) {
      // Column c0 + c is output j of head h; the stored W_h[j][k] is
      // weight[(h * n + j) * n + k].
      const Index h = (c0 + c) / kN, j = (c0 + c) % kN;
      const float* w_head = weight + h * kN * kN;
      for (Index k = 0; k < kN; ++k) {
        coefficients[k * kChunk + c] = transposed ? w_head[k * kN + j] : w_head[j * kN + k];
      }
    }
    for (Index n = first; n < last; ++n) {
      const float* v_row = v.data() + n * v.outerStride() + c0;
      float* y_row = y.data() + n * y.outerStride() + c0;
      for (Index c = 0; c < width; c += kLanes) {
        const simd::Packet<float> inputs = simd::load(v_row + c);
        simd::Packet<float> sum = simd::zero<float>();
        for (Index k = 0; k < kN; ++k) {
          sum = simd::fma(simd::load(coefficients + k * kChunk + c),
                          simd::select_lanes(inputs, select[k]), sum);
        }
        if (accumulate) sum = Eigen::internal::padd(simd::load(y_row + c), sum);
        simd::store(y_row + c, sum);
      }
    }
  }
}

/// Whether square_heads_simd_rows takes heads of n x n (in == out == n).
template <typename Scalar>
bool square_heads_in_simd(Index in, Index out) {
  if (!std::is_same<Scalar, float>::value || !simd::kSelectLanes || in != out) return false;
  return (in == 4 || in == 8 || in == 16) && in <= simd::kLanes<float>;
}

/// square_heads_simd_rows for the runtime head size n (4, 8 or 16).
inline void square_heads_simd(const ConstMatrixRef<float>& v, const float* weight, bool transposed,
                              Index n, Index columns, MatrixRef<float>& y, bool accumulate,
                              Index first, Index last) {
  switch (n) {
    case 4:
      return square_heads_simd_rows<4>(v, weight, transposed, columns, y, accumulate, first, last);
    case 8:
      return square_heads_simd_rows<8>(v, weight, transposed, columns, y, accumulate, first, last);
    default:
      return square_heads_simd_rows<16>(v, weight, transposed, columns, y, accumulate, first, last);
  }
}

/// The small-head kernel over all rows of x; long sequences split their
/// rows over the threads. Square heads of 4, 8 or 16 run side by side in
/// the SIMD registers (float), the heads past the last full packet and all
/// others in the scalar kernel.
template <typename Scalar>
void small_heads(const ConstMatrixRef<Scalar>& x, const Scalar* weight, Index num_heads, Index in,
                 Index out, MatrixRef<Scalar>& y, Workload workload) {
  const Index rows = x.rows();
  Index simd_heads = 0;
  if (square_heads_in_simd<Scalar>(in, out)) {
    simd_heads = num_heads * in / simd::kLanes<float> * simd::kLanes<float> / in;
  }
  auto rows_from = [&](Index first, Index last) {
    if constexpr (std::is_same<Scalar, float>::value) {
      if (simd_heads > 0) {
        square_heads_simd(x, weight, false, in, simd_heads * in, y, false, first, last);
      }
    }
    if (simd_heads == num_heads) return;
    switch (out) {
      case 4:
        return small_heads_rows<4>(x, weight, simd_heads, num_heads, in, out, y, first, last);
      case 8:
        return small_heads_rows<8>(x, weight, simd_heads, num_heads, in, out, y, first, last);
      case 16:
        return small_heads_rows<16>(x, weight, simd_heads, num_heads, in, out, y, first, last);
      default:
        return small_heads_rows<0>(x, weight, simd_heads, num_heads, in, out, y, first, last);
    }
  };
  constexpr Index kRowsPerTask = 32;
  const Index tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const bool parallel =
      workload == Workload::sequence && rows * (in * num_heads) * out >= (Index(1) << 18);
  parallel_for(tasks, parallel, [&](Index t) {
    rows_from(t * kRowsPerTask, std::min(rows, (t + 1) * kRowsPerTask));
  });
}

/// The backward of the small-head kernel (math §1.11), rows [first, last):
/// grad_x_h (+)= grad_y_h W_h, i.e. grad_x[n, h*I + i] (+)= sum_o
/// grad_y[n, h*O + o] W[h, o, i], summed over o in order with the input
/// features side by side (the chains the compiler vectorises).
template <Index kIn, typename Scalar>
void small_heads_input_gradient_rows(const ConstMatrixRef<Scalar>& grad_y, const Scalar* weight,
                                     Index head_first, Index num_heads, Index in_runtime, Index out,
                                     MatrixRef<Scalar>& grad_x, bool accumulate, Index first,
                                     Index last) {
  const Index in = kIn > 0 ? kIn : in_runtime;
  for (Index n = first; n < last; ++n) {
    const Scalar* g_head = grad_y.data() + n * grad_y.outerStride() + head_first * out;
    Scalar* x_head = grad_x.data() + n * grad_x.outerStride() + head_first * in;
    const Scalar* w_head = weight + head_first * out * in;
    for (Index h = head_first; h < num_heads;
         ++h, g_head += out, x_head += in, w_head += out * in) {
      Scalar sum[kIn > 0 ? kIn : kSmallHead] = {};
      for (Index o = 0; o < out; ++o) {
        const Scalar g_o = g_head[o];
        for (Index i = 0; i < in; ++i) sum[i] += w_head[o * in + i] * g_o;
      }
      for (Index i = 0; i < in; ++i) x_head[i] = accumulate ? x_head[i] + sum[i] : sum[i];
    }
  }
}

/// dW_h += grad_y_h^T x_h for heads [first, last) over all rows (math §1.11):
/// row by row (the inputs are read in order, the gradients of the heads stay
/// in L1), each head gaining one outer product per row in row order, so a
/// head's sums do not depend on which thread owns it. A head's inputs are
/// copied to locals first: the stores to the gradient then cannot alias them,
/// and the compiler vectorises the outer product.
template <Index kIn, Index kOut, typename Scalar>
void small_heads_weight_gradient(const ConstMatrixRef<Scalar>& x,
                                 const ConstMatrixRef<Scalar>& grad_y, Index in_runtime,
                                 Index out_runtime, Scalar* grad_weight, Index first, Index last) {
  const Index in = kIn > 0 ? kIn : in_runtime, out = kOut > 0 ? kOut : out_runtime;
  for (Index n = 0; n < x.rows(); ++n) {
    const Scalar* x_head = x.data() + n * x.outerStride() + first * in;
    const Scalar* g_head = grad_y.data() + n * grad_y.outerStride() + first * out;
    Scalar* w_head = grad_weight + first * out * in;
    for (Index h = first; h < last; ++h, x_head += in, g_head += out, w_head += out * in) {
      Scalar x_local[kIn > 0 ? kIn : kSmallHead], g_local[kOut > 0 ? kOut : kSmallHead];
      for (Index i = 0; i < in; ++i) x_local[i] = x_head[i];
      for (Index o = 0; o < out; ++o) g_local[o] = g_head[o];
      for (Index o = 0; o < out; ++o) {
        for (Index i = 0; i < in; ++i) w_head[o * in + i] += g_local[o] * x_local[i];
      }
    }
  }
}

/// dW_h += grad_y_h^T x_h for square heads of n side by side in the SIMD
/// registers (float, as square_heads_simd_rows), packet-aligned columns
/// [first, last) of grad_y: lane (h, o) of accumulator k holds dW_h[o][k],
/// starts from the stored gradient and gains grad_y[r, (h, o)] x_h[r, k]
/// for the rows r in order (the scalar kernel's order); kPackets packets of
/// columns at a time give enough independent sums for the FMA latency. The
/// rows are walked once per group of columns, each reading one packet of
/// grad_y and of x.
template <Index kN, Index kPackets>
void square_heads_weight_gradient_simd(const ConstMatrixRef<float>& x,
                                       const ConstMatrixRef<float>& grad_y, float* grad_weight,
                                       Index first, Index last) {
  constexpr Index kLanes = simd::kLanes<float>;
  simd::LaneSelection select[kN];
  for (Index k = 0; k < kN; ++k) select[k] = simd::lanes_of_group(kN, k);
  alignas(64) float lanes[kLanes];
  for (Index c0 = first; c0 < last; c0 += kPackets * kLanes) {
    // Column c0 + l is output o of head h; dW_h[o][k] is grad_weight[(c0 + l) * n + k].
    simd::Packet<float> sum[kPackets][kN];
    for (Index p = 0; p < kPackets; ++p) {
      for (Index k = 0; k < kN; ++k) {
        for (Index l = 0; l < kLanes; ++l) lanes[l] = grad_weight[(c0 + p * kLanes + l) * kN + k];
        sum[p][k] = simd::load<float>(lanes);
      }
    }
    for (Index r = 0; r < x.rows(); ++r) {
      const float* x_row = x.data() + r * x.outerStride() + c0;
      const float* g_row = grad_y.data() + r * grad_y.outerStride() + c0;
      for (Index p = 0; p < kPackets; ++p) {
        const simd::Packet<float> inputs = simd::load(x_row + p * kLanes);
        const simd::Packet<float> grads = simd::load(g_row + p * kLanes);
        for (Index k = 0; k < kN; ++k) {
          sum[p][k] = simd::fma(grads, simd::select_lanes(inputs, select[k]), sum[p][k]);
        }
      }
    }
    for (Index p = 0; p < kPackets; ++p) {
      for (Index k = 0; k < kN; ++k) {
        simd::store<float>(lanes, sum[p][k]);
        for (Index l = 0; l < kLanes; ++l) grad_weight[(c0 + p * kLanes + l) * kN + k] = lanes[l];
      }
    }
  }
}

/// square_heads_weight_gradient_simd for the runtime head size n (4, 8 or
/// 16) over columns [first, last): two packets at a time for heads of 4.
inline void square_heads_weight_gradient(const ConstMatrixRef<float>& x,
                                         const ConstMatrixRef<float>& grad_y, Index n,
                                         float* grad_weight, Index first, Index last) {
  constexpr Index kLanes = simd::kLanes<float>;
  switch (n) {
    case 4: {
      const Index pairs_end = first + (last - first) / (2 * kLanes) * (2 * kLanes);
      square_heads_weight_gradient_simd<4, 2>(x, grad_y, grad_weight, first, pairs_end);
      return square_heads_weight_gradient_simd<4, 1>(x, grad_y, grad_weight, pairs_end, last);
    }
    case 8:
      return square_heads_weight_gradient_simd<8, 1>(x, grad_y, grad_weight, first, last);
    default:
      return square_heads_weight_gradient_simd<16, 1>(x, grad_y, grad_weight, first, last);
  }
}

/// The backward of the small-head kernel: grad_weight += grad_y^T x (groups
/// of heads over the threads), then grad_x (+)= grad_y W (rows over the
/// threads); the bits do not depend on the thread count. grad_weight is the
/// (NH * O) x I gradient, row-major. Allocates nothing.
template <typename Scalar>
void small_heads_backward(const ConstMatrixRef<Scalar>& x, const ConstMatrixRef<Scalar>& grad_y,
                          const Scalar* weight, Index num_heads, Index in, Index out,
                          Scalar* grad_weight, MatrixRef<Scalar>& grad_x, bool accumulate) {
  const Index rows = x.rows();
  const bool parallel = rows * (in * num_heads) * out >= (Index(1) << 18);
  Index simd_heads = 0;
  if (square_heads_in_simd<Scalar>(in, out)) {
    simd_heads = num_heads * in / simd::kLanes<float> * simd::kLanes<float> / in;
  }
  auto input_rows = [&](Index first, Index last) {
    if constexpr (std::is_same<Scalar, float>::value) {
      if (simd_heads > 0) {
        square_heads_simd(grad_y, weight, true, in, simd_heads * in, grad_x, accumulate, first,
                          last);
      }
    }
    if (simd_heads == num_heads) return;
    switch (in) {
      case 4:
        return small_heads_input_gradient_rows<4>(grad_y, weight, simd_heads, num_heads, in, out,
                                                  grad_x, accumulate, first, last);
      case 8:
        return small_heads_input_gradient_rows<8>(grad_y, weight, simd_heads, num_heads, in, out,
                                                  grad_x, accumulate, first, last);
      case 16:
        return small_heads_input_gradient_rows<16>(grad_y, weight, simd_heads, num_heads, in, out,
                                                   grad_x, accumulate, first, last);
      default:
        return small_heads_input_gradient_rows<0>(grad_y, weight, simd_heads, num_heads, in, out,
                                                  grad_x, accumulate, first, last);
    }
  };
  auto weight_heads = [&](Index first, Index last) {
    if constexpr (std::is_same<Scalar, float>::value) {
      if (first < simd_heads) {
        square_heads_weight_gradient(x, grad_y, in, grad_weight, first * in,
                                     std::min(last, simd_heads) * in);
        first = std::min(last, simd_heads);
        if (first == last) return;
      }
    }
    // Unrolled for the square heads of the mLSTM block's q/k/v.
    if (in == 4 && out == 4) {
      return small_heads_weight_gradient<4, 4>(x, grad_y, in, out, grad_weight, first, last);
    }
    if (in == 8 && out == 8) {
      return small_heads_weight_gradient<8, 8>(x, grad_y, in, out, grad_weight, first, last);
    }
    if (in == 16 && out == 16) {
      return small_heads_weight_gradient<16, 16>(x, grad_y, in, out, grad_weight, first, last);
    }
    small_heads_weight_gradient<0, 0>(x, grad_y, in, out, grad_weight, first, last);
  };
  // The weight gradient first: grad_x may be x itself (as for Linear).
  const Index head_tasks = parallel ? std::min<Index>(num_heads, 2 * Index(num_threads())) : 1;
  // Whole packets of heads per task where they run side by side.
  const Index heads_per_packet = simd_heads > 0 ? simd::kLanes<float> / in : 1;
  const Index heads_per_task = (num_heads + head_tasks * heads_per_packet - 1) /
                               (head_tasks * heads_per_packet) * heads_per_packet;
  parallel_for(head_tasks, parallel, [&](Index t) {
    weight_heads(std::min(num_heads, t * heads_per_task),
                 std::min(num_heads, (t + 1) * heads_per_task));
  });
  constexpr Index kRowsPerTask = 64;
  const Index row_tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for(row_tasks, parallel, [&](Index t) {
    input_rows(t * kRowsPerTask, std::min(rows, (t + 1) * kRowsPerTask));
  });
}

/// y[:, h*O + o] = sum_i x[:, h*I + i] W[h, o, i] (no bias) for the stored
/// weights (NH * O) x I. Allocates nothing once warm (kernels/blocked_product.hpp).
template <typename Scalar, typename Weight>
void headwise_product(const ConstMatrixRef<Scalar>& x, const Weight& weight, Index num_heads,
                      MatrixRef<Scalar> y, Workload workload) {
  const Index in = weight.cols(), out = weight.rows() / num_heads;
  if (in <= kSmallHead && out <= kSmallHead) {
    small_heads<Scalar>(x, weight.data(), num_heads, in, out, y, workload);
    return;
  }
  for (Index h = 0; h < num_heads; ++h) {
    matmul_transposed<Scalar>(x.middleCols(h * in, in), weight.middleRows(h * out, out),
                              y.middleCols(h * out, out), false, workload);
  }
}

}  // namespace kernels
}  // namespace xlstm
