// Learning-rate schedules (math §14.4). A schedule maps the number of
// optimiser steps already taken, s = 0, 1, ..., to the learning rate of the
// next step, as torch's LR schedulers do when stepped after every optimiser
// step: optimiser step k (counting from 1) runs with lr(k - 1).
#pragma once

#include <cmath>
#include <cstdint>

#include "xlstm/core/error.hpp"

namespace xlstm {

/// The same learning rate at every step.
struct ConstantLr {
  double learning_rate = 1e-3;

  double operator()(std::int64_t /*steps_taken*/) const { return learning_rate; }
  void validate() const {
    check(std::isfinite(learning_rate) && learning_rate >= 0,
          "ConstantLr: 'learning_rate' must be finite and >= 0, got ", learning_rate);
  }
};

/// The official LinearWarmupCosineAnnealing of the xLSTM experiments (math
/// §14.4): lr rises linearly from 0 over `warmup_steps` (so the first step
/// runs at lr 0), then follows half a cosine from `max_lr` down to `min_lr`
/// at `decay_until_step`, and stays there.
struct LinearWarmupCosine {
  std::int64_t warmup_steps = 0;
  std::int64_t decay_until_step = 0;
  double max_lr = 1e-3;
  double min_lr = 0;

  void validate() const {
    const char* where = "LinearWarmupCosine";
    check(warmup_steps >= 0, where, ": 'warmup_steps' must be >= 0, got ", warmup_steps);
    check(decay_until_step >= warmup_steps, where,
          ": 'decay_until_step' must be >= ", "'warmup_steps' (", warmup_steps, "), got ",
          decay_until_step);
    check(std::isfinite(max_lr) && max_lr >= 0, where, ": 'max_lr' must be finite and >= 0, got ",
          max_lr);
    check(std::isfinite(min_lr) && min_lr >= 0, where, ": 'min_lr' must be finite and >= 0, got ",
          min_lr);
  }

  /// Each branch evaluated in double as the official Python does.
  double operator()(std::int64_t steps_taken) const {
    constexpr double kPi = 3.141592653589793;  // math.pi
    const double s = double(steps_taken);
    if (steps_taken < warmup_steps) return max_lr * s / double(warmup_steps);
    if (steps_taken >= decay_until_step) return min_lr;
    const double decay_ratio = (s - double(warmup_steps)) / double(decay_until_step - warmup_steps);
    const double coeff = 0.5 * (1.0 + std::cos(kPi * decay_ratio));
    return min_lr + coeff * (max_lr - min_lr);
  }
};

}  // namespace xlstm
