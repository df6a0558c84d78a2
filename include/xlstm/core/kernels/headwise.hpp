// Block-diagonal products (HeadwiseLinear, math §1.4): the input splits into
// `num_heads` blocks of in/NH features, each multiplied by its own
// (out/NH x in/NH) matrix; the weights are stored (NH * out/NH) x in/NH,
// row-major. Two strategies, by head size:
//  - small heads (both sides at most kSmallHead; the 125M model's q/k/v
//    projections have 384 heads of 4 x 4): computed directly, row by row and
//    head by head, since one product per head would cost far more in
//    per-product overhead than in arithmetic. Nothing is packed or allocated.
//    The backward (core/linear_backward.hpp) has small-head kernels too.
//  - larger heads: one dense product per head (kernels/dense.hpp): the
//    blocked product for sequences, the allocation-free step kernel for steps.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace kernels {

/// Heads up to this size (in and out) take the small-head kernel.
constexpr Index kSmallHead = 16;

/// Rows [first, last) of the small-head kernel; kOut = 0: any head_out.
/// y_h = W_h x_h over the stored (row-major) weights. The outputs of a head
/// are summed side by side (independent chains, not one dot product after
/// another), which is why the head size is a template argument for the
/// common sizes.
template <Index kOut, typename Scalar>
void small_heads_rows(const ConstMatrixRef<Scalar>& x, const Scalar* weight, Index num_heads,
                      Index in, Index out_runtime, MatrixRef<Scalar>& y, Index first, Index last) {
  const Index out = kOut > 0 ? kOut : out_runtime;
  for (Index n = first; n < last; ++n) {
    const Scalar* x_head = x.data() + n * x.outerStride();
    Scalar* y_head = y.data() + n * y.outerStride();
    const Scalar* w_head = weight;
    for (Index h = 0; h < num_heads; ++h, x_head += in, y_head += out, w_head += out * in) {
      Scalar sum[kOut > 0 ? kOut : kSmallHead] = {};
      for (Index i = 0; i < in; ++i) {
        const Scalar x_i = x_head[i];
        for (Index o = 0; o < out; ++o) sum[o] += w_head[o * in + i] * x_i;
      }
      for (Index o = 0; o < out; ++o) y_head[o] = sum[o];
    }
  }
}

/// The small-head kernel over all rows of x; long sequences split their
/// rows over the threads.
template <typename Scalar>
void small_heads(const ConstMatrixRef<Scalar>& x, const Scalar* weight, Index num_heads, Index in,
                 Index out, MatrixRef<Scalar>& y, Workload workload) {
  const Index rows = x.rows();
  auto rows_from = [&](Index first, Index last) {
    switch (out) {
      case 4:
        return small_heads_rows<4>(x, weight, num_heads, in, out, y, first, last);
      case 8:
        return small_heads_rows<8>(x, weight, num_heads, in, out, y, first, last);
      case 16:
        return small_heads_rows<16>(x, weight, num_heads, in, out, y, first, last);
      default:
        return small_heads_rows<0>(x, weight, num_heads, in, out, y, first, last);
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
                                     Index num_heads, Index in_runtime, Index out,
                                     MatrixRef<Scalar>& grad_x, bool accumulate, Index first,
                                     Index last) {
  const Index in = kIn > 0 ? kIn : in_runtime;
  for (Index n = first; n < last; ++n) {
    const Scalar* g_head = grad_y.data() + n * grad_y.outerStride();
    Scalar* x_head = grad_x.data() + n * grad_x.outerStride();
    const Scalar* w_head = weight;
    for (Index h = 0; h < num_heads; ++h, g_head += out, x_head += in, w_head += out * in) {
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
  auto input_rows = [&](Index first, Index last) {
    switch (in) {
      case 4:
        return small_heads_input_gradient_rows<4>(grad_y, weight, num_heads, in, out, grad_x,
                                                  accumulate, first, last);
      case 8:
        return small_heads_input_gradient_rows<8>(grad_y, weight, num_heads, in, out, grad_x,
                                                  accumulate, first, last);
      case 16:
        return small_heads_input_gradient_rows<16>(grad_y, weight, num_heads, in, out, grad_x,
                                                   accumulate, first, last);
      default:
        return small_heads_input_gradient_rows<0>(grad_y, weight, num_heads, in, out, grad_x,
                                                  accumulate, first, last);
    }
  };
  auto weight_heads = [&](Index first, Index last) {
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
  const Index heads_per_task = (num_heads + head_tasks - 1) / head_tasks;
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
