// Handling of gate pre-activations shared by the sLSTM and mLSTM cells.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace xlstm {

/// Input and forget gate pre-activations are clamped to ±1e30 before use.
///
/// Why: ±inf would otherwise meet the stabiliser as inf - inf = NaN. With the
/// clamp, an "infinite" input gate makes its step dominate (i' = 1, f' = 0),
/// an "infinite" forget gate keeps everything (log f = 0) and -inf forgets
/// everything: the mathematically right limits. 1e30 leaves room for 1e7
/// steps of cumulative log forget values in float without overflow. Finite
/// values below the bound are untouched; NaN stays NaN.
template <typename Scalar>
constexpr Scalar gate_limit() {
  return Scalar(1e30);
}

template <typename Derived>
auto clamp_gates(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  const Scalar hi = gate_limit<Scalar>();
  // min/max keep a NaN in their first operand (activations.hpp), so NaN
  // passes through unchanged.
  return x.min(hi).max(-hi);
}

template <typename Scalar>
Scalar clamp_gate(Scalar x) {
  const Scalar hi = gate_limit<Scalar>();
  return x > hi ? hi : (x < -hi ? -hi : x);
}

namespace detail {

/// Derivative of clamp_gate: 1 inside the bounds, 0 outside (for the backward passes).
template <typename Scalar>
Scalar clamp_gate_derivative(Scalar x) {
  return std::abs(x) <= gate_limit<Scalar>() ? Scalar(1) : Scalar(0);
}

template <typename Scalar>
Scalar sigmoid_of(Scalar x) {
  return Scalar(1) / (Scalar(1) + std::exp(-x));
}

template <typename Scalar>
Scalar log_sigmoid_of(Scalar x) {
  return std::min(x, Scalar(0)) - std::log1p(std::exp(-std::abs(x)));
}

}  // namespace detail

}  // namespace xlstm
