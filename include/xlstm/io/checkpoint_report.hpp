// CheckpointReport: what did not match when a checkpoint (or a state file)
// was read into a module, collected so that one Error lists every problem.
// Both model families and the state files use it.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm::io {

class CheckpointReport {
 public:
  void missing(const std::string& name, const Shape& shape) {
    missing_.push_back(name + " " + shape_string(shape));
  }
  void misshaped(const std::string& name, const Shape& expected, const Shape& found) {
    misshaped_.push_back(name + ": expected " + shape_string(expected) + ", file has " +
                         shape_string(found));
  }
  void unexpected(const std::string& name) { unexpected_.push_back(name); }
  void bad_dtype(const std::string& name, const std::string& dtype) {
    bad_dtype_.push_back(name + " (" + dtype + ")");
  }
  void non_finite(const std::string& name) { non_finite_.push_back(name); }
  /// A tensor that cannot be used for another reason (e.g. a quantised
  /// tensor whose format, scales or group size do not fit; math §16.4).
  void unusable(const std::string& name, const std::string& why) {
    unusable_.push_back(name + ": " + why);
  }

  bool ok() const {
    return missing_.empty() && misshaped_.empty() && unexpected_.empty() && bad_dtype_.empty() &&
           non_finite_.empty() && unusable_.empty();
  }

  /// Throws one Error, headed by `what` (e.g. "model.safetensors: checkpoint
  /// does not match the module"), listing every problem; nothing if ok().
  void throw_if_problems(const std::string& what) const {
    if (ok()) return;
    std::ostringstream msg;
    msg << what;
    auto list = [&](const char* title, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg << "\n  " << title << " (" << names.size() << "):";
      for (const auto& n : names) msg << "\n    " << n;
    };
    list("missing tensors", missing_);
    list("misshaped tensors", misshaped_);
    list("unexpected tensors", unexpected_);
    list("tensors with a dtype that is not F32/F64/BF16/F16", bad_dtype_);
    list("tensors with NaN or infinite values", non_finite_);
    list("unusable tensors", unusable_);
    throw Error(msg.str());
  }

 private:
  std::vector<std::string> missing_, misshaped_, unexpected_, bad_dtype_, non_finite_, unusable_;
};

}  // namespace xlstm::io
