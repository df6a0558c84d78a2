// The backward pass of GroupedNorm: LayerNorm and MultiHeadLayerNorm, with
// any weight convention and with or without bias (math §1.12). A norm's tape
// is its input x, which the caller keeps: the statistics are recomputed from
// it (one pass over a row, cheaper than storing and reading them back).
#pragma once

#include <cmath>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_gradients.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// dL/d(weight, bias) of a GroupedNorm (absent ones stay empty).
template <typename Scalar>
using GroupedNormGradients = WeightBiasGradients<GroupedNorm<Scalar>, Vector<Scalar>>;

namespace detail {

template <typename Norm, typename Grads>
void check_norm_backward(const char* where, const Norm& norm, Index x_rows, Index x_cols,
                         Index gy_rows, Index gy_cols, Index gx_rows, Index gx_cols,
                         const Grads& grads) {
  const Index f = norm.features();
  check(x_cols == f, where, ": argument 'x' (the forward's input) must have ", f, " columns, got ",
        x_cols);
  check(gy_rows == x_rows && gy_cols == f && gx_rows == x_rows && gx_cols == f, where,
        ": arguments 'grad_y' and 'grad_x' must be ", x_rows, " x ", f, ", got ", gy_rows, " x ",
        gy_cols, " and ", gx_rows, " x ", gx_cols);
  check(grads.weight().size() == norm.weight().size() && grads.bias().size() == norm.bias().size(),
        where, ": argument 'grads' must have the norm's shapes (weight ", norm.weight().size(),
        ", bias ", norm.bias().size(), "), got ", grads.weight().size(), " and ",
        grads.bias().size());
}

}  // namespace detail

/// The backward pass of `norm` (math §1.12) for y = norm(x), x and grad_y
/// N x features: adds dL/dweight and dL/dbias to `grads`, writes (or adds)
/// dL/dx to `grad_x`. Exact with eps inside the square root. Allocates nothing.
template <typename Scalar>
void backward(const GroupedNorm<Scalar>& norm, ConstMatrixArg<Scalar> x,
              ConstMatrixArg<Scalar> grad_y, GroupedNormGradients<Scalar>& grads,
              MatrixArg<Scalar> grad_x, InputGradient mode = InputGradient::replace) {
  detail::check_norm_backward("backward (LayerNorm)", norm, x.rows(), x.cols(), grad_y.rows(),
                              grad_y.cols(), grad_x.rows(), grad_x.cols(), grads);
  const Index g = norm.features() / norm.num_groups();
  const NormWeight weight_mode = norm.weight_mode();
  const bool has_bias = norm.bias().size() > 0, add = mode == InputGradient::add;
  auto scale = [&](Index c) {
    if (weight_mode == NormWeight::offset) return Scalar(1) + norm.weight()(c);
    if (weight_mode == NormWeight::direct) return norm.weight()(c);
    return Scalar(1);
  };
  for (Index r = 0; r < x.rows(); ++r) {
    for (Index h = 0; h < norm.num_groups(); ++h) {
      const auto in = x.row(r).segment(h * g, g).array();
      const Scalar mean = in.mean();
      const Scalar var = (in - mean).square().mean();
      const Scalar inv_std = Scalar(1) / std::sqrt(var + norm.eps());
      // mean(s) and mean(s * xhat) of s = grad_y * scale, the parameter gradients.
      Scalar sum_s = 0, sum_s_xhat = 0;
      for (Index j = 0; j < g; ++j) {
        const Index c = h * g + j;
        const Scalar xhat = (x(r, c) - mean) * inv_std, gy = grad_y(r, c);
        if (weight_mode != NormWeight::none) grads.weight()(c) += gy * xhat;
        if (has_bias) grads.bias()(c) += gy;
        const Scalar s = gy * scale(c);
        sum_s += s;
        sum_s_xhat += s * xhat;
      }
      const Scalar mean_s = sum_s / Scalar(g), mean_s_xhat = sum_s_xhat / Scalar(g);
      for (Index j = 0; j < g; ++j) {
        const Index c = h * g + j;
        const Scalar xhat = (x(r, c) - mean) * inv_std;
        const Scalar dx = inv_std * (grad_y(r, c) * scale(c) - mean_s - xhat * mean_s_xhat);
        grad_x(r, c) = add ? grad_x(r, c) + dx : dx;
      }
    }
  }
}

}  // namespace xlstm
