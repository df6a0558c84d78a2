// The numerics modes of the sLSTM cell: the plain computation of math §2.4 in
// the cell's scalar type, and the official TiRex CPU path (math §12), which
// rounds to bfloat16 at fixed points of every step.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "xlstm/core/activations.hpp"
#include "xlstm/core/half.hpp"

namespace xlstm {

/// How the sLSTM cell rounds (math §12.1).
enum class SLstmNumerics {
  /// Math §2.4 in the cell's scalar type, nothing rounded. Default: what the
  /// xLSTM golden files encode.
  plain,
  /// The official TiRex CPU path (NX-AI/tirex, backend "torch"): gate
  /// pre-activations, recurrent kernel, recurrent product and the four states
  /// rounded to bfloat16 (math §12.2), the forget pre-activation clamped at
  /// +15 and no other gate clamp (math §12.4). Needs function "slstm" and the
  /// whole-batch first-step rule (math §12.5).
  tirex_official,
};

inline const char* numerics_name(SLstmNumerics numerics) {
  return numerics == SLstmNumerics::plain ? "plain" : "tirex_official";
}

/// `x` with every element rounded to the nearest bfloat16 (math §12.2), as
/// an expression of the same scalar type.
template <typename Derived>
auto rounded_to_bf16(const Eigen::DenseBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  return x.unaryExpr([](Scalar v) { return round_to_bf16(v); });
}

/// The upper bound of the forget-gate pre-activation before its log-sigmoid
/// in the official TiRex cell (math §12.4; the official comment: it avoids
/// subnormals). One-sided: there is no lower bound.
template <typename Scalar>
constexpr Scalar tirex_forget_clamp() {
  return Scalar(15);
}

/// One row segment of the official TiRex pointwise update (math §12.3): reads
/// the raw gate pre-activations `raw_i, raw_f, raw_z, raw_o` (bf16 input plus
/// bf16 recurrent product plus float bias, already summed) and the state
/// `y, c, n, m`, and writes the new state rounded to bfloat16.
/// `first_step` is the whole-batch test "every element of n is zero". The raw
/// arrays are workspace: they are overwritten.
template <typename Raw, typename State>
void tirex_official_pointwise(Raw&& raw_i, Raw&& raw_f, Raw&& raw_z, Raw&& raw_o, State&& y,
                              State&& c, State&& n, State&& m, bool first_step) {
  using Scalar = typename std::decay_t<Raw>::Scalar;
  // raw_f becomes log f + m (old m), then f'; raw_i becomes i'.
  auto log_f_plus_m = raw_f;
  log_f_plus_m = m + log_sigmoid(raw_f.min(tirex_forget_clamp<Scalar>()));
  if (first_step) {
    m = raw_i;
  } else {
    m = raw_i.max(log_f_plus_m);
  }
  // exp(min(x, 0)): the gates are capped at 1, written as the official code
  // writes it (the same values as min(exp(x), 1)).
  auto i_gate = raw_i, f_gate = raw_f;
  i_gate = (raw_i - m).min(Scalar(0)).exp();
  f_gate = (log_f_plus_m - m).min(Scalar(0)).exp();
  c = f_gate * c + i_gate * raw_z.tanh();
  n = f_gate * n + i_gate;
  y = sigmoid(raw_o) * c / n;
  y = rounded_to_bf16(y);
  c = rounded_to_bf16(c);
  n = rounded_to_bf16(n);
  m = rounded_to_bf16(m);
}

}  // namespace xlstm
