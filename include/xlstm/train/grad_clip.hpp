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

/// The Euclidean norm of all gradients of `gradients` (a gradient object,
/// or anything with a parameter visitor) together, as torch's
/// clip_grad_norm_ computes it (math §14.5): the norm of the per-tensor
/// norms, each rounded to Scalar. Storage listed twice (a tied head) counts
/// once.
template <typename Gradients>
double global_grad_norm(const Gradients& gradients) {
  using Scalar = typename Gradients::Scalar;
  const auto list = parameter_list(gradients);
  std::vector<const Scalar*> seen;
  // torch takes the norm of each tensor, then the norm of those norms, in
  // Scalar; the sums here are in double, which only makes them more exact.
  double sum_of_squares = 0;
  for (const auto& g : list) {
    check(g.data != nullptr, "global_grad_norm: gradient '", g.name,
          "' must be dense Scalar storage");
    if (std::find(seen.begin(), seen.end(), g.data) != seen.end()) continue;
    seen.push_back(g.data);
    const double norm =
        double(Scalar(Eigen::Map<const Vector<Scalar>>(g.data, Index(g.slice_size()))
                          .template cast<double>()
                          .norm()));
    sum_of_squares += norm * norm;
  }
  return double(Scalar(std::sqrt(sum_of_squares)));
}

/// Scales every gradient of `gradients` by min(1, max_norm / (norm + 1e-6)),
/// where `norm` is global_grad_norm(gradients), and returns that norm
/// (before clipping; math §14.5). Storage listed twice (a tied head) counts
/// and is scaled once. A non-finite norm throws with `error_if_nonfinite`
/// and leaves the gradients untouched; otherwise it is returned and, like
/// torch, the gradients are scaled by the resulting NaN factor.
template <typename Gradients>
double clip_grad_norm(Gradients& gradients, double max_norm, bool error_if_nonfinite = false) {
  using Scalar = typename Gradients::Scalar;
  check(std::isfinite(max_norm) && max_norm > 0,
        "clip_grad_norm: 'max_norm' must be finite and > 0, got ", max_norm);
  const double total = global_grad_norm(gradients);
  check(std::isfinite(total) || !error_if_nonfinite,
        "clip_grad_norm: the total gradient norm must be finite, got ", total);
  const Scalar coef = std::min(Scalar(max_norm) / (Scalar(total) + Scalar(1e-6)), Scalar(1));
  std::vector<const Scalar*> seen;
  for (const auto& g : parameter_list(gradients)) {
    if (std::find(seen.begin(), seen.end(), g.data) != seen.end()) continue;
    seen.push_back(g.data);
    Eigen::Map<Vector<Scalar>>(g.data, Index(g.slice_size())) *= coef;
  }
  return total;
}

}  // namespace xlstm
