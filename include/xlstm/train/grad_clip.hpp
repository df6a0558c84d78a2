// Global-norm gradient clipping, as torch 1.13's clip_grad_norm_ (math §14.5).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Scales every gradient of `gradients` (a gradient object, or anything with
/// a parameter visitor) by min(1, max_norm / (norm + 1e-6)), where `norm` is
/// the Euclidean norm of all gradients together, and returns that norm
/// (before clipping). Storage listed twice (a tied head) counts and is scaled
/// once. A non-finite norm throws with `error_if_nonfinite` and leaves the
/// gradients untouched; otherwise it is returned and, like torch, the
/// gradients are scaled by the resulting NaN factor.
template <typename Gradients>
double clip_grad_norm(Gradients& gradients, double max_norm, bool error_if_nonfinite = false) {
  using Scalar = typename Gradients::Scalar;
  check(std::isfinite(max_norm) && max_norm > 0,
        "clip_grad_norm: 'max_norm' must be finite and > 0, got ", max_norm);
  const auto list = parameter_list(gradients);
  std::vector<const Scalar*> seen;
  auto first_use = [&](const Scalar* data) {
    for (const Scalar* s : seen) {
      if (s == data) return false;
    }
    seen.push_back(data);
    return true;
  };
  // torch takes the norm of each tensor, then the norm of those norms, in
  // Scalar; the sums here are in double, which only makes them more exact.
  double sum_of_squares = 0;
  for (const auto& g : list) {
    check(g.data != nullptr, "clip_grad_norm: gradient '", g.name,
          "' must be dense Scalar storage");
    if (!first_use(g.data)) continue;
    const double norm =
        double(Scalar(Eigen::Map<const Vector<Scalar>>(g.data, Index(g.slice_size()))
                          .template cast<double>()
                          .norm()));
    sum_of_squares += norm * norm;
  }
  const double total = double(Scalar(std::sqrt(sum_of_squares)));
  check(std::isfinite(total) || !error_if_nonfinite,
        "clip_grad_norm: the total gradient norm must be finite, got ", total);
  const Scalar coef = std::min(Scalar(max_norm) / (Scalar(total) + Scalar(1e-6)), Scalar(1));
  seen.clear();
  for (const auto& g : list) {
    if (!first_use(g.data)) continue;
    Eigen::Map<Vector<Scalar>>(g.data, Index(g.slice_size())) *= coef;
  }
  return total;
}

}  // namespace xlstm
