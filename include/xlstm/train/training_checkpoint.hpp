// A training run in one safetensors file, to stop and resume it bit for bit:
// the module's parameters under their state_dict names, AdamW's moments as
// `exp_avg.<key>` and `exp_avg_sq.<key>` (train/adamw.hpp), and in the
// metadata the optimiser's step count (torch's `step`, which sets the bias
// corrections of math §14.2), the schedule's position (math §14.4), the data
// position (batches drawn; math §15.5) and any strings the caller adds (its
// config, an RNG state).
//
//   xlstm::TrainingPosition position{adamw.step_count(), schedule_steps, batches.batches_drawn()};
//   xlstm::save_training_checkpoint("run.safetensors", model, adamw, position);
//   ...  // later, a model and an optimiser built the same way:
//   const auto resumed = xlstm::load_training_checkpoint("run.safetensors", model, adamw);
//   batches.skip(resumed.batches_drawn);
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/train/adamw.hpp"

namespace xlstm {

/// Where a run stands, beside its tensors. `step_count` is the optimiser's
/// (restored into it on load); the others are for the caller to restore.
struct TrainingPosition {
  std::int64_t step_count = 0;      ///< optimiser steps taken
  std::int64_t schedule_steps = 0;  ///< steps the lr schedule has taken (math §14.4)
  std::int64_t batches_drawn = 0;   ///< batches the data source has handed out
  double learning_rate = 0;         ///< the optimiser's learning rate when saved
  /// The caller's own strings (a config as JSON, an RNG state); keys must not
  /// start with "xlstm.".
  std::map<std::string, std::string> extra;
};

namespace detail {

inline const char* training_checkpoint_format() { return "xlstm-cpp training checkpoint 1"; }

inline std::int64_t metadata_integer(const std::map<std::string, std::string>& metadata,
                                     const std::string& key, const std::string& path) {
  const auto found = metadata.find(key);
  check(found != metadata.end(), "load_training_checkpoint: '", path, "' has no metadata '", key,
        "'");
  const std::string& text = found->second;
  std::int64_t value = -1;
  const auto parsed = std::from_chars(text.data(), text.data() + text.size(), value);
  check(parsed.ec == std::errc() && parsed.ptr == text.data() + text.size() && value >= 0,
        "load_training_checkpoint: '", path, "': metadata '", key,
        "' must be an integer >= 0, got '", text, "'");
  return value;
}

}  // namespace detail

/// Saves `module`'s parameters, `optimizer`'s moments and `position` to
/// `path` (one safetensors file; scalars in its metadata). Throws Error if a
/// key of `position.extra` is reserved or the file cannot be written.
template <typename Module, typename Scalar>
void save_training_checkpoint(const std::string& path, const Module& module,
                              const AdamW<Scalar>& optimizer, const TrainingPosition& position) {
  io::SafetensorsWriter writer;
  for (const auto& [key, value] : position.extra) {
    check(key.rfind("xlstm.", 0) != 0, "save_training_checkpoint: 'position.extra' key '", key,
          "' must not start with 'xlstm.' (reserved)");
    writer.set_metadata(key, value);
  }
  writer.set_metadata("xlstm.format", detail::training_checkpoint_format());
  writer.set_metadata("xlstm.step_count", std::to_string(position.step_count));
  writer.set_metadata("xlstm.schedule_steps", std::to_string(position.schedule_steps));
  writer.set_metadata("xlstm.batches_drawn", std::to_string(position.batches_drawn));
  // 17 significant digits: the double comes back exactly.
  char lr[32];
  std::snprintf(lr, sizeof lr, "%.17g", position.learning_rate);
  writer.set_metadata("xlstm.learning_rate", lr);
  io::add_module(writer, module);
  io::add_module(writer, optimizer);
  writer.save(path);
}

/// Loads a file written by save_training_checkpoint into `module` and
/// `optimizer` (built as when it was saved: same config, same parameter
/// groups) and returns its position; the optimiser's step count and learning
/// rate are restored. Everything is checked before anything is written: on
/// error (missing or misshapen tensors, another file) nothing changes. The
/// values are copied into the existing storage, so an optimiser bound to
/// `module` stays valid.
template <typename Module, typename Scalar>
TrainingPosition load_training_checkpoint(const std::string& path, Module& module,
                                          AdamW<Scalar>& optimizer) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const auto format = metadata.find("xlstm.format");
  check(format != metadata.end() && format->second == detail::training_checkpoint_format(),
        "load_training_checkpoint: '", path, "' must be a training checkpoint (metadata ",
        "'xlstm.format' = '", detail::training_checkpoint_format(), "'), got ",
        format == metadata.end() ? std::string("none") : "'" + format->second + "'");
  TrainingPosition position;
  position.step_count = detail::metadata_integer(metadata, "xlstm.step_count", path);
  position.schedule_steps = detail::metadata_integer(metadata, "xlstm.schedule_steps", path);
  position.batches_drawn = detail::metadata_integer(metadata, "xlstm.batches_drawn", path);
  const auto lr = metadata.find("xlstm.learning_rate");
  check(lr != metadata.end(), "load_training_checkpoint: '", path,
        "' has no metadata 'xlstm.learning_rate'");
  char* end = nullptr;
  position.learning_rate = std::strtod(lr->second.c_str(), &end);
  check(end != lr->second.c_str() && *end == '\0' && std::isfinite(position.learning_rate) &&
            position.learning_rate >= 0,
        "load_training_checkpoint: '", path,
        "': metadata 'xlstm.learning_rate' must be a finite number >= 0, got '", lr->second, "'");
  for (const auto& [key, value] : metadata) {
    if (key.rfind("xlstm.", 0) != 0) position.extra[key] = value;
  }
  // Parameters and moments as one load, so a mismatch in either leaves both.
  // Written in place: the optimiser points into the parameters' storage, so
  // a weight matrix stored as Scalar is filled through its data (a plain
  // load_module replaces the matrix, and the optimiser would keep pointing
  // at the freed one).
  auto refs = parameter_list(module);
  const auto moments = parameter_list(optimizer);
  refs.insert(refs.end(), moments.begin(), moments.end());
  for (auto& ref : refs) {
    if (ref.data != nullptr) ref.matrix = nullptr;
  }
  const auto targets = io::tensor_targets(refs);
  io::load_targets(targets, io::CheckpointFiles::from_file(file), io::LoadOptions{},
                   path + ": training checkpoint does not match the module and optimiser");
  optimizer.set_step_count(position.step_count);
  optimizer.set_learning_rate(position.learning_rate);
  return position;
}

}  // namespace xlstm
