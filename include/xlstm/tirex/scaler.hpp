// The NaN-aware instance scaler of TiRex (math §13.5; NX-AI/tirex patcher.py `StandardScaler`):
// per series, loc = mean and scale = population standard deviation of the present values,
// scaled = (x - loc) / scale, and its inverse value * scale + loc.
#pragma once

#include <cmath>

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
/// The official code sums in float32 with torch's cascade summation, which is
/// nearly exact; the sums here are in double and rounded once, so that loc
/// and scale agree with it to an ulp (a plain float loop would drift by
/// several, and on offset-heavy series that shifts every token; math §13.5).
/// The mean itself is the scalar type's sum / count, as officially.
template <typename Derived>
ScaleStatistics<typename Derived::Scalar> instance_statistics(const Eigen::DenseBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  double sum = 0;
  Index count = 0;
  for (Index i = 0; i < x.size(); ++i) {
    const Scalar v = x.derived()(i);
    if (std::isnan(v)) continue;
    sum += double(v);
    ++count;
  }
  ScaleStatistics<Scalar> s;
  if (count == 0) return s;  // the official NaN -> 0 and NaN -> 1 fallbacks
  s.loc = Scalar(sum) / Scalar(count);
  double squares = 0;
  for (Index i = 0; i < x.size(); ++i) {
    const Scalar v = x.derived()(i);
    if (std::isnan(v)) continue;
    const Scalar d = v - s.loc;
    squares += double(d * d);
  }
  s.scale = std::sqrt(Scalar(squares) / Scalar(count));
  if (s.scale == Scalar(0)) s.scale = std::abs(s.loc) + Scalar(1e-5);
  return s;
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
