// The backward passes of Linear and HeadwiseLinear (math §1.11, design §7):
// for y = x W^T + b, dL/dx = dL/dy W, dL/dW += (dL/dy)^T x, dL/db += sum of
// the rows of dL/dy. A projection's tape is its input x, which the caller
// keeps (a block keeps it in its own tape). Gradients are dense Scalar also
// where the weights are 16-bit (design §7.2).
//
//   xlstm::LinearGradients<float> grads(proj);           // zeros, named like the parameters
//                                                        // (core/layer_gradients.hpp)
//   xlstm::backward(proj, x, grad_y, grads, grad_x);     // grads += ..., grad_x = dL/dx
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/kernels/panelled.hpp"
#include "xlstm/core/layer_gradients.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

namespace detail {
template <typename T>
struct NonDeduced {
  using type = T;
};
}  // namespace detail

/// Matrix arguments of the free backward functions, whose Scalar is deduced
/// from the module alone (so a Matrix, a block or a Ref may be passed).
template <typename Scalar>
using ConstMatrixArg = typename detail::NonDeduced<ConstMatrixRef<Scalar>>::type;
template <typename Scalar>
using MatrixArg = typename detail::NonDeduced<MatrixRef<Scalar>>::type;

/// Whether a backward overwrites the input gradient or adds to it (an input
/// that feeds several layers, e.g. the sLSTM block's conv output, which feeds
/// two gate projections).
enum class InputGradient { replace, add };

namespace detail {

/// The checks every projection backward makes: x N x in, grad_y N x out,
/// grad_x N x in, gradients of the layer's shapes.
template <typename Grads>
void check_projection_backward(const char* where, Index in, Index out, Index x_rows, Index x_cols,
                               Index gy_rows, Index gy_cols, Index gx_rows, Index gx_cols,
                               const Grads& grads, Index weight_rows, Index weight_cols,
                               Index bias_size) {
  check(x_cols == in, where, ": argument 'x' (the forward's input) must have ", in,
        " columns, got ", x_cols);
  check(gy_rows == x_rows && gy_cols == out, where, ": argument 'grad_y' must be ", x_rows, " x ",
        out, " (the forward's output), got ", gy_rows, " x ", gy_cols);
  check(gx_rows == x_rows && gx_cols == in, where, ": argument 'grad_x' must be ", x_rows, " x ",
        in, " (the forward's input), got ", gx_rows, " x ", gx_cols);
  check(grads.weight().rows() == weight_rows && grads.weight().cols() == weight_cols &&
            grads.bias().size() == bias_size,
        where, ": argument 'grads' must have the layer's shapes (weight ", weight_rows, " x ",
        weight_cols, ", bias ", bias_size, "), got ", grads.weight().rows(), " x ",
        grads.weight().cols(), " and ", grads.bias().size());
}

/// bias += the sum of the rows of grad_y (an empty bias: nothing).
template <typename Bias, typename GradY>
void add_row_sum(Bias& bias, const GradY& grad_y) {
  if (bias.size() > 0) bias += grad_y.colwise().sum().transpose();
}

/// grad_x (+)= grad_y W for 16-bit W (out x in): panels of W are decoded into
/// a buffer on the stack, the column blocks of grad_x split over the threads.
template <typename Scalar, typename GradY, typename GradX>
void add_half_input_gradient(const WeightMatrix<Scalar>& w, const GradY& grad_y, GradX& grad_x,
                             bool accumulate) {
  constexpr Index kRows = 32, kCols = 128;
  using Panel =
      Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, kRows, kCols>;
  const Index blocks = (w.cols() + kCols - 1) / kCols;
  const bool parallel = double(grad_y.rows()) * double(w.rows()) * double(w.cols()) >= 1 << 20;
  parallel_for(blocks, parallel, [&](Index block) {
    const Index c0 = block * kCols, cols = std::min(kCols, w.cols() - c0);
    auto out = grad_x.middleCols(c0, cols);
    if (!accumulate) out.setZero();
    for (Index r0 = 0; r0 < w.rows(); r0 += kRows) {
      const Index rows = std::min(kRows, w.rows() - r0);
      Panel panel(rows, cols);
      w.copy_block(r0, c0, panel);
      kernels::panelled_product(grad_y.middleCols(r0, rows), panel.transpose(), out, true);
    }
  });
}

}  // namespace detail

/// The backward pass of `layer` (math §1.11) for the forward y = layer(x):
/// adds dL/dW and dL/db to `grads` and writes (or, with InputGradient::add,
/// adds) dL/dx = grad_y W to `grad_x`, N x in. `grad_x` may be `x` itself
/// (the parameter gradients are formed first). Works for 16-bit weights; throws
/// for quantised ones (math §16.4).
/// Allocates nothing.
template <typename Scalar>
void backward(const Linear<Scalar>& layer, ConstMatrixArg<Scalar> x, ConstMatrixArg<Scalar> grad_y,
              LinearGradients<Scalar>& grads, MatrixArg<Scalar> grad_x,
              InputGradient mode = InputGradient::replace) {
  detail::check_projection_backward("backward (Linear)", layer.in_features(), layer.out_features(),
                                    x.rows(), x.cols(), grad_y.rows(), grad_y.cols(), grad_x.rows(),
                                    grad_x.cols(), grads, layer.out_features(), layer.in_features(),
                                    layer.has_bias() ? layer.out_features() : 0);
  const WeightMatrix<Scalar>& w = layer.weight_matrix();
  // Checked before anything is written: no gradient is formed through
  // quantised weights (they could not take an update; math §16.4).
  check(!w.is_quantized(), "backward (Linear): the layer's weights are quantised (",
        storage_name(w.storage()), "); training needs native or 16-bit weights");
  kernels::parallel_product(grad_y.transpose(), x.transpose(), grads.weight(), true);
  detail::add_row_sum(grads.bias(), grad_y);
  const bool accumulate = mode == InputGradient::add;
  if (w.is_half()) {
    detail::add_half_input_gradient(w, grad_y, grad_x, accumulate);
  } else {
    kernels::parallel_product(grad_y, w.native().transpose(), grad_x, accumulate);
  }
}

/// The backward pass of a HeadwiseLinear (math §1.11): per head h,
/// dL/dx_h = grad_y_h W_h and dL/dW_h += grad_y_h^T x_h; heads in parallel.
/// Same conventions as the Linear backward.
template <typename Scalar>
void backward(const HeadwiseLinear<Scalar>& layer, ConstMatrixArg<Scalar> x,
              ConstMatrixArg<Scalar> grad_y, HeadwiseLinearGradients<Scalar>& grads,
              MatrixArg<Scalar> grad_x, InputGradient mode = InputGradient::replace) {
  detail::check_projection_backward(
      "backward (HeadwiseLinear)", layer.in_features(), layer.out_features(), x.rows(), x.cols(),
      grad_y.rows(), grad_y.cols(), grad_x.rows(), grad_x.cols(), grads, layer.weight().rows(),
      layer.weight().cols(), layer.bias().size());
  const Index in = layer.head_in(), out = layer.head_out();
  const bool accumulate = mode == InputGradient::add;
  if (in <= kernels::kSmallHead && out <= kernels::kSmallHead) {
    // Small heads (the mLSTM block's 4 x 4 q/k/v): directly, as in the
    // forward (kernels/headwise.hpp); a product per head costs more in
    // overhead than in arithmetic.
    kernels::small_heads_backward<Scalar>(x, grad_y, layer.weight().data(), layer.num_heads(), in,
                                          out, grads.weight().data(), grad_x, accumulate);
    detail::add_row_sum(grads.bias(), grad_y);
    return;
  }
  const bool parallel =
      double(x.rows()) * double(in) * double(out) * double(layer.num_heads()) >= 1 << 18;
  parallel_for(layer.num_heads(), parallel, [&](Index h) {
    const auto gy = grad_y.middleCols(h * out, out);
    auto d_weight = grads.weight().middleRows(h * out, out);
    kernels::parallel_product(gy.transpose(), x.middleCols(h * in, in).transpose(), d_weight, true);
    auto gx = grad_x.middleCols(h * in, in);
    kernels::parallel_product(gy, layer.weight().middleRows(h * out, out).transpose(), gx,
                              accumulate);
  });
  detail::add_row_sum(grads.bias(), grad_y);
}

}  // namespace xlstm
