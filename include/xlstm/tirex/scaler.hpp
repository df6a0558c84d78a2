// The NaN-aware instance scaler of TiRex (math §13.5; NX-AI/tirex patcher.py `StandardScaler`):
// per series, loc = mean and scale = population standard deviation of the present values,
// scaled = (x - loc) / scale, and its inverse value * scale + loc.
#pragma once

#include <cmath>
#include <type_traits>

#include "xlstm/core/cascade_sum.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm::tirex {

/// The statistics of one series.
template <typename Scalar>
struct ScaleStatistics {
  Scalar loc = Scalar(0);
  Scalar scale = Scalar(1);
};

/// loc and scale of the present (non-NaN) values of the vector `x` (math §13.5):
///   loc   = mean of the present values             (none present: 0)
///   scale = sqrt(mean((x - loc)^2)) over them      (none present: 1)
///   scale = |loc| + 1e-5                           if that is 0 (a constant series)
/// Each mean is a NaN-ignoring sum divided by the count of present values,
/// the sum taken in the order of torch's CPU reduction (torch_cascade_sum),
/// so that loc and scale are the official ones to the bit: an ulp of loc
/// shifts every token, which on offset-heavy series flips bf16 roundings in
/// the blocks (math §13.5). `values` and `squares` are the caller's buffers
/// (no allocation once they have x's length).
template <typename Derived, typename Scalar>
ScaleStatistics<Scalar> instance_statistics(const Eigen::DenseBase<Derived>& x,
                                            Vector<Scalar>& values, Vector<Scalar>& squares) {
  static_assert(std::is_same_v<typename Derived::Scalar, Scalar>, "one scalar type");
  values = x.derived().transpose();
  const Index count = (values.array() == values.array()).count();  // NaN != NaN
  ScaleStatistics<Scalar> s;
  if (count == 0) return s;  // the official NaN -> 0 and NaN -> 1 fallbacks
  s.loc = torch_cascade_sum(values.data(), values.size(), true) / Scalar(count);
  squares = (values.array() - s.loc).square().matrix();
  s.scale = std::sqrt(torch_cascade_sum(squares.data(), squares.size(), true) / Scalar(count));
  if (s.scale == Scalar(0)) s.scale = std::abs(s.loc) + Scalar(1e-5);
  return s;
}

/// The same with buffers of its own.
template <typename Derived>
ScaleStatistics<typename Derived::Scalar> instance_statistics(const Eigen::DenseBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  Vector<Scalar> values, squares;
  return instance_statistics(x, values, squares);
}

/// (value - loc) / scale: a subtraction, then a division; NaN stays NaN (math §13.5).
template <typename Scalar>
Scalar scaled(Scalar value, const ScaleStatistics<Scalar>& s) {
  return (value - s.loc) / s.scale;
}

/// The inverse for a model output: value * scale + loc (a multiply, then an add).
template <typename Scalar>
Scalar unscale(Scalar value, const ScaleStatistics<Scalar>& s) {
  return value * s.scale + s.loc;
}

}  // namespace xlstm::tirex
