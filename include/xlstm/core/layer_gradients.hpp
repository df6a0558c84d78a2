// The gradient object of a layer whose parameters are a weight and a bias
// (design §7.2): Linear, HeadwiseLinear, the norms and the causal conv. One
// class for all of them, listed through the layer's own static
// `visit_parameters_as`, so the names and shapes are written once.
#pragma once

#include <string>

#include "xlstm/core/linear.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

namespace detail {

// The weight's shape and the visiting call differ only for the projections
// (a Linear's weight may be 16-bit; a HeadwiseLinear's shape needs its heads).
template <typename Module>
Index gradient_weight_rows(const Module& m) {
  return m.weight().rows();
}
template <typename Module>
Index gradient_weight_cols(const Module& m) {
  return m.weight().cols();
}
template <typename Scalar>
Index gradient_weight_rows(const Linear<Scalar>& m) {
  return m.out_features();
}
template <typename Scalar>
Index gradient_weight_cols(const Linear<Scalar>& m) {
  return m.in_features();
}
template <typename Module>
Index gradient_heads(const Module&) {
  return 1;
}
template <typename Scalar>
Index gradient_heads(const HeadwiseLinear<Scalar>& m) {
  return m.num_heads();
}
template <typename Module, typename Visit, typename Weight, typename Bias>
void visit_gradients_as(const Module*, Visit& visit, const std::string& prefix, Weight& weight,
                        Bias& bias, Index) {
  Module::visit_parameters_as(visit, prefix, weight, bias);
}
template <typename Scalar, typename Visit, typename Weight, typename Bias>
void visit_gradients_as(const HeadwiseLinear<Scalar>*, Visit& visit, const std::string& prefix,
                        Weight& weight, Bias& bias, Index heads) {
  HeadwiseLinear<Scalar>::visit_parameters_as(visit, prefix, heads, weight, bias);
}

}  // namespace detail

/// dL/d(weight, bias) of `Module`: dense Scalar storage (`Weight`, a Matrix or
/// a Vector) of the layer's shapes, also where the layer keeps 16-bit
/// weights, listed under the layer's names (absent parameters stay empty and
/// are not listed). `backward` adds into it; `zero()` clears it.
template <typename Module, typename Weight>
class WeightBiasGradients {
 public:
  using Scalar = typename Module::Scalar;

  /// Zero gradients for the parameters of `layer`.
  explicit WeightBiasGradients(const Module& layer) : heads_(detail::gradient_heads(layer)) {
    weight_.setZero(detail::gradient_weight_rows(layer), detail::gradient_weight_cols(layer));
    bias_.setZero(layer.bias().size());
  }

  /// In the layout of the layer's weight() (and bias()).
  Weight& weight() { return weight_; }
  const Weight& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  void zero() {
    weight_.setZero();
    bias_.setZero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    detail::visit_gradients_as(static_cast<const Module*>(nullptr), visit, prefix, self.weight_,
                               self.bias_, self.heads_);
  }

  Index heads_ = 1;
  Weight weight_;
  Vector<Scalar> bias_;
};

template <typename Scalar>
using LinearGradients = WeightBiasGradients<Linear<Scalar>, Matrix<Scalar>>;
template <typename Scalar>
using HeadwiseLinearGradients = WeightBiasGradients<HeadwiseLinear<Scalar>, Matrix<Scalar>>;

}  // namespace xlstm
