// The backward pass of RmsNorm (math §1.12). Like the other norms, its tape is
// its input x (the caller keeps it); the statistic is recomputed.
#pragma once

#include <cmath>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_norm_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// dL/d(weight, bias) of an RmsNorm.
template <typename Scalar>
using RmsNormGradients = WeightBiasGradients<RmsNorm<Scalar>, Vector<Scalar>>;

/// The backward pass of `norm` (math §1.12) for y = norm(x): adds the
/// parameter gradients to `grads`, writes (or adds) dL/dx to `grad_x`.
/// Allocates nothing.
template <typename Scalar>
void backward(const RmsNorm<Scalar>& norm, ConstMatrixArg<Scalar> x, ConstMatrixArg<Scalar> grad_y,
              RmsNormGradients<Scalar>& grads, MatrixArg<Scalar> grad_x,
              InputGradient mode = InputGradient::replace) {
  detail::check_norm_backward("backward (RmsNorm)", norm, x.rows(), x.cols(), grad_y.rows(),
                              grad_y.cols(), grad_x.rows(), grad_x.cols(), grads);
  const Index f = norm.features();
  const bool has_bias = norm.bias().size() > 0, add = mode == InputGradient::add;
  for (Index r = 0; r < x.rows(); ++r) {
    const Scalar inv_rms = Scalar(1) / std::sqrt(x.row(r).squaredNorm() / Scalar(f) + norm.eps());
    Scalar sum_s_xhat = 0;  // sum of s * xhat, s = grad_y * weight
    for (Index c = 0; c < f; ++c) {
      const Scalar xhat = x(r, c) * inv_rms, gy = grad_y(r, c);
      grads.weight()(c) += gy * xhat;
      if (has_bias) grads.bias()(c) += gy;
      sum_s_xhat += gy * norm.weight()(c) * xhat;
    }
    const Scalar mean_s_xhat = sum_s_xhat / Scalar(f);
    for (Index c = 0; c < f; ++c) {
      const Scalar xhat = x(r, c) * inv_rms;
      const Scalar dx = inv_rms * (grad_y(r, c) * norm.weight()(c) - xhat * mean_s_xhat);
      grad_x(r, c) = add ? grad_x(r, c) + dx : dx;
    }
  }
}

}  // namespace xlstm
