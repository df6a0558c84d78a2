// AdamW with decoupled weight decay, step for step as torch 1.13's
// single-tensor AdamW (math §14.2), the optimiser of the official xLSTM
// trainers.
//
//   xlstm::SLstmCellGradients<float> grads(cell);
//   xlstm::AdamW<float> adamw({cell, grads, xlstm::official_weight_decay_rule()},
//                             {/*learning_rate*/ 1e-3});
//   grads.zero();  /* forward, backward into grads */  adamw.step();
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/train/trainable_parameters.hpp"

namespace xlstm {

/// torch.optim.AdamW's hyper-parameters, with torch's defaults. The weight
/// decay applies to the decayed group of TrainableParameters only.
struct AdamWOptions {
  double learning_rate = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;

  void validate() const {
    const char* where = "AdamWOptions";
    check(std::isfinite(learning_rate) && learning_rate >= 0, where,
          ": 'learning_rate' must be finite and >= 0, got ", learning_rate);
    check(beta1 >= 0 && beta1 < 1, where, ": 'beta1' must be in [0, 1), got ", beta1);
    check(beta2 >= 0 && beta2 < 1, where, ": 'beta2' must be in [0, 1), got ", beta2);
    check(std::isfinite(eps) && eps >= 0, where, ": 'eps' must be finite and >= 0, got ", eps);
    check(std::isfinite(weight_decay) && weight_decay >= 0, where,
          ": 'weight_decay' must be finite and >= 0, got ", weight_decay);
  }
};

template <typename Scalar_>
class AdamW {
 public:
  using Scalar = Scalar_;

  AdamW(TrainableParameters<Scalar> parameters, const AdamWOptions& options)
      : parameters_(std::move(parameters)), options_(options) {
    options_.validate();
    for (const auto& t : parameters_.tensors()) {
      exp_avg_.push_back(Vector<Scalar>::Zero(Index(t.size)));
      exp_avg_sq_.push_back(Vector<Scalar>::Zero(Index(t.size)));
    }
  }

  const AdamWOptions& options() const { return options_; }
  const TrainableParameters<Scalar>& parameters() const { return parameters_; }

  /// The learning rate of the next step (a schedule sets it before each step).
  double learning_rate() const { return options_.learning_rate; }
  void set_learning_rate(double learning_rate) {
    check(std::isfinite(learning_rate) && learning_rate >= 0,
          "AdamW::set_learning_rate: 'learning_rate' must be finite and >= 0, got ", learning_rate);
    options_.learning_rate = learning_rate;
  }

  /// Steps taken so far (torch's per-parameter `step`, the same for all here).
  std::int64_t step_count() const { return step_count_; }
  /// For resuming from a checkpoint, with the moments loaded through
  /// for_each_parameter.
  void set_step_count(std::int64_t steps) {
    check(steps >= 0, "AdamW::set_step_count: 'steps' must be >= 0, got ", steps);
    step_count_ = steps;
  }

  /// One update of every parameter from its gradient (math §14.2):
  ///   p *= 1 - lr*wd (decayed group);  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
  ///   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
  /// The scalar factors are formed in double and applied in Scalar, as torch
  /// applies its Python floats to a float32 tensor. Allocates nothing.
  void step() {
    ++step_count_;
    const double lr = options_.learning_rate, b1 = options_.beta1, b2 = options_.beta2;
    const double t = double(step_count_);
    const double bias_correction1 = 1.0 - std::pow(b1, t);
    const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
    const Scalar decay_factor = Scalar(1.0 - lr * options_.weight_decay);
    const Scalar minus_step_size = Scalar(-(lr / bias_correction1));
    const Scalar one_minus_b1 = Scalar(1.0 - b1), one_minus_b2 = Scalar(1.0 - b2);
    const Scalar sb1 = Scalar(b1), sb2 = Scalar(b2), eps = Scalar(options_.eps);
    const Scalar sqrt_bc2 = Scalar(bias_correction2_sqrt);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& tensor = parameters_[i];
      const Index n = Index(tensor.size);
      Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> p(tensor.value, n);
      Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> g(tensor.gradient, n);
      auto m = exp_avg_[i].array();
      auto v = exp_avg_sq_[i].array();
      if (tensor.decay) p *= decay_factor;
      m = m * sb1 + one_minus_b1 * g;
      v = v * sb2 + one_minus_b2 * g * g;
      p += minus_step_size * m / (v.sqrt() / sqrt_bc2 + eps);
    }
  }

  /// The moments, as `exp_avg.<key>` and `exp_avg_sq.<key>` (the names the
  /// golden files and torch's state use), so they save and load like
  /// parameters (io/checkpoint.hpp).
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    auto list = [&](const std::string& moment, auto& storage) {
      for (std::size_t i = 0; i < self.parameters_.size(); ++i) {
        const auto& tensor = self.parameters_[i];
        visit_parameter(visit, prefix + moment, tensor.name.c_str(), tensor.shape, storage[i]);
      }
    };
    list("exp_avg.", self.exp_avg_);
    list("exp_avg_sq.", self.exp_avg_sq_);
  }

  TrainableParameters<Scalar> parameters_;
  AdamWOptions options_;
  std::vector<Vector<Scalar>> exp_avg_, exp_avg_sq_;
  std::int64_t step_count_ = 0;
};

}  // namespace xlstm
