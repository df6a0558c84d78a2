// The parameters an optimiser updates, paired with their gradients (design §8.1):
// bound once from a module and its gradient object, which list the same names
// in the same order (design §7.2), with each parameter's weight-decay group
// and whether it is frozen.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Chooses parameters by their state_dict key (weight-decay groups, frozen sets).
using ParameterPredicate = std::function<bool(const std::string& name)>;

/// The official grouping of the xLSTM trainers (math §14.1): a parameter is
/// decayed iff its name contains "weight" and not "norm"; the token embedding
/// only with `weight_decay_on_embedding`. A tied head shares the embedding's
/// storage and so follows it (it is updated once, under the embedding's name).
inline ParameterPredicate official_weight_decay_rule(bool weight_decay_on_embedding = false) {
  return [weight_decay_on_embedding](const std::string& name) {
    const auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
    if (has("token_embedding.weight")) return weight_decay_on_embedding;
    return has("weight") && !has("norm");
  };
}

/// Decays every parameter (torch's default of a single group).
inline ParameterPredicate decay_all() {
  return [](const std::string&) { return true; };
}

/// Freezes nothing.
inline ParameterPredicate freeze_none() {
  return [](const std::string&) { return false; };
}

/// One tensor an optimiser updates: `size` scalars of the parameter and of
/// its gradient, both dense and row-major as the visitor lists them.
template <typename Scalar>
struct TrainableTensor {
  std::string name;
  Shape shape;
  Scalar* value = nullptr;
  const Scalar* gradient = nullptr;
  std::size_t size = 0;
  bool decay = false;
};

/// The parameters of `module` with the gradients in `gradients` (a
/// `Module::Gradients`, or anything listing the same names and shapes).
/// Checked when bound: same names, same shapes, same order; every parameter
/// in Scalar storage (16-bit weights cannot be trained in place). Storage
/// listed twice (a tied head) is kept once, under its first name. Frozen
/// parameters are left out. The module and the gradient object must outlive
/// this list and keep their sizes (it points into their storage).
template <typename Scalar>
class TrainableParameters {
 public:
  TrainableParameters() = default;

  template <typename Module, typename Gradients>
  TrainableParameters(Module& module, const Gradients& gradients, const ParameterPredicate& decay,
                      const ParameterPredicate& frozen = freeze_none()) {
    check(bool(decay),
          "TrainableParameters: 'decay' must be a callable predicate, got an empty one");
    check(bool(frozen),
          "TrainableParameters: 'frozen' must be a callable predicate, got an empty one");
    const auto params = parameter_list(module);
    const auto grads = parameter_list(gradients);
    check(params.size() == grads.size(), "TrainableParameters: 'gradients' must list ",
          params.size(), " tensors like the module, got ", grads.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      const auto& g = grads[i];
      check(p.name == g.name, "TrainableParameters: gradient ", i, " must be named '", p.name,
            "' like the module's parameter, got '", g.name, "'");
      check(p.shape == g.shape && p.size() == g.size(), "TrainableParameters: gradient '", g.name,
            "' must have the parameter's shape ", shape_string(p.shape), ", got ",
            shape_string(g.shape));
      check(p.data != nullptr, "TrainableParameters: parameter '", p.name,
            "' must be stored as Scalar to be trained, got 16-bit storage");
      check(g.data != nullptr, "TrainableParameters: gradient '", g.name,
            "' must be dense Scalar storage");
      check(p.parts == 1, "TrainableParameters: parameter '", p.name,
            "' must be one tensor, got slice ", p.part, " of ", p.parts);
      if (frozen(p.name) || listed(p.data)) continue;
      tensors_.push_back({p.name, p.shape, p.data, g.data, p.size(), decay(p.name)});
    }
  }

  const std::vector<TrainableTensor<Scalar>>& tensors() const { return tensors_; }
  std::size_t size() const { return tensors_.size(); }
  const TrainableTensor<Scalar>& operator[](std::size_t i) const { return tensors_[i]; }

  /// Names of the tensors in the decayed (`decayed` true) or the other group.
  std::vector<std::string> names(bool decayed) const {
    std::vector<std::string> out;
    for (const auto& t : tensors_) {
      if (t.decay == decayed) out.push_back(t.name);
    }
    return out;
  }

 private:
  bool listed(const Scalar* data) const {
    for (const auto& t : tensors_) {
      if (t.value == data) return true;
    }
    return false;
  }

  std::vector<TrainableTensor<Scalar>> tensors_;
};

}  // namespace xlstm
