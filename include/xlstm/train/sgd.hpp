// Stochastic gradient descent with momentum, as torch 1.13's single-tensor
// SGD (math §14.3): L2 weight decay added to the gradient, momentum buffer
// started from the first gradient, optional dampening and Nesterov.
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

/// torch.optim.SGD's hyper-parameters, with torch's defaults (lr has none
/// there; 1e-2 here). The weight decay applies to the decayed group only.
struct SgdOptions {
  double learning_rate = 1e-2;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;

  void validate() const {
    const char* where = "SgdOptions";
    check(std::isfinite(learning_rate) && learning_rate >= 0, where,
          ": 'learning_rate' must be finite and >= 0, got ", learning_rate);
    check(std::isfinite(momentum) && momentum >= 0, where,
          ": 'momentum' must be finite and >= 0, got ", momentum);
    check(std::isfinite(dampening), where, ": 'dampening' must be finite, got ", dampening);
    check(std::isfinite(weight_decay) && weight_decay >= 0, where,
          ": 'weight_decay' must be finite and >= 0, got ", weight_decay);
    check(!nesterov || (momentum > 0 && dampening == 0), where,
          ": 'nesterov' needs momentum > 0 and dampening 0, got momentum ", momentum,
          ", dampening ", dampening);
  }
};

template <typename Scalar_>
class Sgd {
 public:
  using Scalar = Scalar_;

  Sgd(TrainableParameters<Scalar> parameters, const SgdOptions& options)
      : parameters_(std::move(parameters)), options_(options) {
    options_.validate();
    for (const auto& t : parameters_.tensors()) {
      direction_.push_back(Vector<Scalar>::Zero(Index(t.size)));
      if (options_.momentum != 0) momentum_buffer_.push_back(Vector<Scalar>::Zero(Index(t.size)));
    }
  }

  const SgdOptions& options() const { return options_; }
  const TrainableParameters<Scalar>& parameters() const { return parameters_; }
  double learning_rate() const { return options_.learning_rate; }
  void set_learning_rate(double learning_rate) {
    check(std::isfinite(learning_rate) && learning_rate >= 0,
          "Sgd::set_learning_rate: 'learning_rate' must be finite and >= 0, got ", learning_rate);
    options_.learning_rate = learning_rate;
  }
  std::int64_t step_count() const { return step_count_; }
  void set_step_count(std::int64_t steps) {
    check(steps >= 0, "Sgd::set_step_count: 'steps' must be >= 0, got ", steps);
    step_count_ = steps;
  }

  /// One update (math §14.3):
  ///   d = g + wd*p;  buf = d (first step) or momentum*buf + (1-dampening)*d;
  ///   d = buf, or d + momentum*buf (Nesterov);  p -= lr*d
  void step() {
    const bool first = step_count_ == 0;
    ++step_count_;
    const Scalar minus_lr = Scalar(-options_.learning_rate), wd = Scalar(options_.weight_decay);
    const Scalar momentum = Scalar(options_.momentum);
    const Scalar one_minus_dampening = Scalar(1.0 - options_.dampening);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& tensor = parameters_[i];
      const Index n = Index(tensor.size);
      Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> p(tensor.value, n);
      Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> g(tensor.gradient, n);
      auto d = direction_[i].array();
      if (tensor.decay && options_.weight_decay != 0) {
        d = g + wd * p;
      } else {
        d = g;
      }
      if (options_.momentum != 0) {
        auto buf = momentum_buffer_[i].array();
        if (first) {
          buf = d;
        } else {
          buf = buf * momentum + one_minus_dampening * d;
        }
        if (options_.nesterov) {
          d = d + momentum * buf;
        } else {
          d = buf;
        }
      }
      p += minus_lr * d;
    }
  }

  /// The momentum buffers as `momentum_buffer.<key>` (torch's state name);
  /// nothing without momentum.
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    for (std::size_t i = 0; i < self.momentum_buffer_.size(); ++i) {
      const auto& tensor = self.parameters_[i];
      visit_parameter(visit, prefix + "momentum_buffer.", tensor.name.c_str(), tensor.shape,
                      self.momentum_buffer_[i]);
    }
  }

  TrainableParameters<Scalar> parameters_;
  SgdOptions options_;
  std::vector<Vector<Scalar>> direction_;  ///< scratch: step allocates nothing
  std::vector<Vector<Scalar>> momentum_buffer_;
  std::int64_t step_count_ = 0;
};

}  // namespace xlstm
