// Derivatives of the activations of core/activations.hpp (math §1.10), for the
// backward passes of the feed-forward and of the conv's SiLU (design §7).
// At the points where an activation is not differentiable they follow torch
// 1.13 (golden README §11.2): relu and relu^2 have derivative 0 at 0, selu the
// left derivative scale * alpha.
#pragma once

#include <Eigen/Core>
#include <cmath>

#include "xlstm/core/activations.hpp"

namespace xlstm {

/// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x).
template <typename Derived>
auto silu_derivative(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  const auto s = sigmoid(x);
  return s * (Scalar(1) + x * (Scalar(1) - s));
}

/// values *= act(x), elementwise.
template <typename X, typename V>
void multiply_by_activation(Activation a, const Eigen::ArrayBase<X>& x,
                            Eigen::ArrayBase<V>& values) {
  switch (a) {
    case Activation::gelu:
      values *= gelu(x);
      return;
    case Activation::relu:
      values *= relu(x);
      return;
    case Activation::relu_squared:
      values *= relu_squared(x);
      return;
    case Activation::swish:
      values *= silu(x);
      return;
    case Activation::selu:
      values *= selu(x);
      return;
    case Activation::sigmoid:
      values *= sigmoid(x);
      return;
  }
}

/// grad *= act'(x), elementwise, for x the activation's input (math §1.10).
template <typename X, typename G>
void multiply_by_activation_derivative(Activation a, const Eigen::ArrayBase<X>& x,
                                       Eigen::ArrayBase<G>& grad) {
  using Scalar = typename X::Scalar;
  switch (a) {
    case Activation::gelu: {
      // Phi(x) + x phi(x) for the exact GELU (math §10.12).
      const Scalar inv_sqrt2 = Scalar(0.70710678118654752440);
      const Scalar inv_sqrt_2pi = Scalar(0.39894228040143267794);
      grad *= Scalar(0.5) * (Scalar(1) + (x * inv_sqrt2).erf()) +
              x * inv_sqrt_2pi * (Scalar(-0.5) * x.square()).exp();
      return;
    }
    case Activation::relu:
      grad *= (x > Scalar(0)).template cast<Scalar>();
      return;
    case Activation::relu_squared:
      grad *= Scalar(2) * x.max(Scalar(0));
      return;
    case Activation::swish:
      grad *= silu_derivative(x);
      return;
    case Activation::selu: {
      const Scalar alpha = Scalar(1.6732632423543772848170429916717);
      const Scalar scale = Scalar(1.0507009873554804934193349852946);
      grad *= (x > Scalar(0)).select(Scalar(scale), scale * alpha * x.exp());
      return;
    }
    case Activation::sigmoid: {
      const auto s = sigmoid(x);
      grad *= s * (Scalar(1) - s);
      return;
    }
  }
}

}  // namespace xlstm
