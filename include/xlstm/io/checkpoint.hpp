// Loading and saving module parameters by their official state_dict names.
//
// A module lists its parameters (core/parameters.hpp); these functions match
// that list against a safetensors file. Loading is all-or-nothing: every
// tensor is read and converted into a staging buffer first, and the module is
// written only when the whole file matched, so a failed load leaves the module
// as it was. The error lists every missing, unexpected and misshaped tensor.
#pragma once

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/io/safetensors.hpp"

namespace xlstm::io {

struct LoadOptions {
  /// Prefix of the module's keys in the file (e.g. "xlstm_block_stack." or "model.").
  std::string prefix;
  /// Tensors under `prefix` that the module does not have are an error unless set.
  bool allow_unexpected = false;
  /// Reject NaN or infinite weights.
  bool check_finite = false;
};

namespace detail {

inline std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// sLSTM checkpoints saved by the CUDA backend store `_recurrent_kernel_` as
/// (NH, DH, 4DH) and `_bias_` head-major [h][g][j]; the vanilla layout (ours)
/// is (NH, 4DH, DH) and gate-major [g][h][j] (SPEC §2.2). The kernel's shape
/// tells the layouts apart (4DH != DH), and the bias must follow the kernel:
/// both shapes are the same, so a wrong guess would scramble it silently.
template <typename Scalar>
bool convert_cuda_slstm_layout(const Shape& expected, const Shape& found,
                               std::vector<Scalar>& kernel, std::vector<Scalar>* bias) {
  if (expected.size() != 3 || found.size() != 3) return false;
  const std::size_t nh = expected[0], four_dh = expected[1], dh = expected[2];
  if (four_dh != 4 * dh || found != Shape{nh, dh, four_dh} || four_dh == dh) return false;
  std::vector<Scalar> vanilla(kernel.size());
  for (std::size_t h = 0; h < nh; ++h)
    for (std::size_t i = 0; i < dh; ++i)
      for (std::size_t o = 0; o < four_dh; ++o)
        vanilla[(h * four_dh + o) * dh + i] = kernel[(h * dh + i) * four_dh + o];
  kernel.swap(vanilla);
  if (bias && bias->size() == nh * four_dh) {
    std::vector<Scalar> gate_major(bias->size());
    const std::size_t hidden = nh * dh;
    for (std::size_t h = 0; h < nh; ++h)
      for (std::size_t g = 0; g < 4; ++g)
        for (std::size_t j = 0; j < dh; ++j)
          gate_major[g * hidden + h * dh + j] = (*bias)[h * four_dh + g * dh + j];
    bias->swap(gate_major);
  }
  return true;
}

}  // namespace detail

/// Loads `params` from `file` (names prefixed by options.prefix), converting
/// F32/F64/BF16/F16 to Scalar. Throws Error listing every problem; on error
/// nothing is written.
template <typename Scalar>
void load_parameters(const ParameterList<Scalar>& params, const SafetensorsFile& file,
                     const LoadOptions& options = {}) {
  std::vector<std::string> missing, misshaped, non_finite, bad_dtype;
  std::map<std::string, std::vector<Scalar>> staged;
  std::map<std::string, Shape> staged_shape;
  std::set<std::string> expected_names;

  for (const auto& p : params) {
    const std::string key = options.prefix + p.name;
    expected_names.insert(key);
    if (!file.contains(key)) {
      missing.push_back(key + " " + detail::shape_string(p.shape));
      continue;
    }
    const TensorInfo& info = file.info(key);
    if (info.dtype != DType::F32 && info.dtype != DType::F64 && info.dtype != DType::BF16 &&
        info.dtype != DType::F16) {
      bad_dtype.push_back(key + " (" + dtype_name(info.dtype) + ")");
      continue;
    }
    staged[key] = file.read<Scalar>(key);
    staged_shape[key] = info.shape;
  }

  // Official checkpoint quirk (SPEC §2.2): sLSTM tensors in the CUDA layout.
  for (const auto& p : params) {
    const std::string key = options.prefix + p.name;
    if (!detail::ends_with(key, "_recurrent_kernel_") || !staged.count(key)) continue;
    const std::string bias_key = key.substr(0, key.size() - std::string("_recurrent_kernel_").size()) + "_bias_";
    auto bias = staged.find(bias_key);
    if (detail::convert_cuda_slstm_layout(p.shape, staged_shape[key], staged[key],
                                          bias == staged.end() ? nullptr : &bias->second)) {
      staged_shape[key] = p.shape;
    }
  }

  for (const auto& p : params) {
    const std::string key = options.prefix + p.name;
    auto it = staged_shape.find(key);
    if (it == staged_shape.end()) continue;
    if (it->second != p.shape) {
      misshaped.push_back(key + ": expected " + detail::shape_string(p.shape) + ", file has " +
                          detail::shape_string(it->second));
    } else if (options.check_finite) {
      const auto& v = staged[key];
      if (!std::all_of(v.begin(), v.end(), [](Scalar x) { return std::isfinite(x); })) {
        non_finite.push_back(key);
      }
    }
  }

  std::vector<std::string> unexpected;
  if (!options.allow_unexpected) {
    for (const auto& name : file.names()) {
      if (name.rfind(options.prefix, 0) == 0 && !expected_names.count(name)) {
        unexpected.push_back(name);
      }
    }
  }

  if (!missing.empty() || !misshaped.empty() || !unexpected.empty() || !non_finite.empty() ||
      !bad_dtype.empty()) {
    std::ostringstream msg;
    msg << file.name() << ": checkpoint does not match the module";
    if (!options.prefix.empty()) msg << " (key prefix '" << options.prefix << "')";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg << "\n  " << what << " (" << names.size() << "):";
      for (const auto& n : names) msg << "\n    " << n;
    };
    list("missing tensors", missing);
    list("misshaped tensors", misshaped);
    list("unexpected tensors", unexpected);
    list("tensors with a dtype that is not F32/F64/BF16/F16", bad_dtype);
    list("tensors with NaN or infinite values", non_finite);
    throw Error(msg.str());
  }

  for (const auto& p : params) {
    const auto& v = staged.at(options.prefix + p.name);
    std::copy(v.begin(), v.end(), p.data);
  }
}

/// Loads a module's parameters: `module.collect_parameters("", list)` then load_parameters.
template <typename Module>
void load_module(Module& module, const SafetensorsFile& file, const LoadOptions& options = {}) {
  using Scalar = typename Module::Scalar;
  ParameterList<Scalar> params;
  module.collect_parameters("", params);
  load_parameters(params, file, options);  // stages everything before writing
}

/// Adds a module's parameters to `writer` under `prefix`, in the module's
/// Scalar type (or converted to `dtype` when given, e.g. BF16).
template <typename Module>
void add_module(SafetensorsWriter& writer, const Module& module, const std::string& prefix = "") {
  using Scalar = typename Module::Scalar;
  ParameterList<Scalar> params;
  // collect_parameters only hands out pointers; nothing is modified here.
  const_cast<Module&>(module).collect_parameters(prefix, params);
  for (const auto& p : params) writer.add(p.name, p.shape, p.data);
}

/// Saves a module's parameters as a safetensors file with official names.
template <typename Module>
void save_module(const Module& module, const std::string& path, const std::string& prefix = "") {
  SafetensorsWriter writer;
  add_module(writer, module, prefix);
  writer.save(path);
}

}  // namespace xlstm::io
