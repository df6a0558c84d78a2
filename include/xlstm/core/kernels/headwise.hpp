// Block-diagonal products (HeadwiseLinear, math §1.4): the input splits into
// `num_heads` blocks of in/NH features, each multiplied by its own
// (out/NH x in/NH) matrix; the weights are stored (NH * out/NH) x in/NH,
// row-major. Two strategies, by head size:
//  - small heads (both sides at most kSmallHead; the 125M model's q/k/v
//    projections have 384 heads of 4 x 4): computed directly, row by row and
//    head by head, since one product per head would cost far more in
//    per-product overhead than in arithmetic. Nothing is packed or allocated.
//  - larger heads: one dense product per head (kernels/dense.hpp), Eigen's
//    GEMM for sequences and the allocation-free step kernel for steps.
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
