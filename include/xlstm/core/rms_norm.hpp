// RMSNorm of xLSTM-Large (math §9.2): x / sqrt(mean(x^2) + eps) * w (+ b).
#pragma once

#include <cmath>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

template <typename Scalar_>
class RmsNorm {
 public:
  using Scalar = Scalar_;

  RmsNorm() = default;
  RmsNorm(Index features, double eps, bool bias) : eps_(Scalar(eps)) {
    check_positive(features, "RmsNorm", "features");
    weight_.setOnes(features);
    if (bias) bias_.setZero(features);
  }

  Index features() const { return weight_.size(); }
  Vector<Scalar>& weight() { return weight_; }
  const Vector<Scalar>& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// x, y: N x features (y may be x).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y) const;

  XLSTM_PARAMETER_VISITOR

  Scalar eps() const { return eps_; }

  /// Lists `weight` and `bias` (unless empty) under an RmsNorm's names
  /// (shared with RmsNormGradients, core/rms_norm_backward.hpp).
  template <typename Visit, typename Weight, typename Bias>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Weight& weight,
                                  Bias& bias) {
    const Shape shape{std::size_t(weight.size())};
    visit_parameter(visit, prefix, "weight", shape, weight);
    if (bias.size() > 0) visit_parameter(visit, prefix, "bias", shape, bias);
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.weight_, self.bias_);
  }

  Scalar eps_ = Scalar(1e-6);
  Vector<Scalar> weight_, bias_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void RmsNorm<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y) const {
  check(x.cols() == features() && y.cols() == features() && y.rows() == x.rows(),
        "RmsNorm::forward: expected N x ", features(), " input and output, got ", x.rows(), " x ",
        x.cols(), " and ", y.rows(), " x ", y.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    const Scalar inv = Scalar(1) / std::sqrt(x.row(r).squaredNorm() / Scalar(x.cols()) + eps_);
    y.row(r).array() = x.row(r).array() * inv * weight_.transpose().array();
  }
  if (bias_.size() > 0) y.rowwise() += bias_.transpose();
}

}  // namespace xlstm
