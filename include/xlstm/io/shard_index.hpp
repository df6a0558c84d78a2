// CheckpointFiles: the tensors of one checkpoint, whether a single
// safetensors file, the shards of a directory listed by
// model.safetensors.index.json (the Hugging Face layout) or the state dict of
// a PyTorch checkpoint (.ckpt, .pt, .pth), looked up by name.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/torch_checkpoint.hpp"

namespace xlstm::io {

/// One checkpoint: a single safetensors file or the shards of a directory.
class CheckpointFiles {
 public:
  /// `path`: a .safetensors file, a directory holding
  /// model.safetensors.index.json (sharded) or model.safetensors, or a
  /// PyTorch checkpoint (.ckpt, .pt, .pth: its state dict, keys unchanged,
  /// copied into memory; see TorchCheckpoint::to_safetensors to rename them).
  static CheckpointFiles open(const std::string& path) {
    namespace fs = std::filesystem;
    CheckpointFiles c;
    c.path_ = path;
    const fs::path native = detail::utf8_path(path);
    if (fs::is_directory(native)) {
      c.directory_ = path;
      const fs::path index = native / "model.safetensors.index.json";
      if (fs::exists(index)) {
        const std::string index_name = detail::utf8_string(index);
        const Json j = read_json_file(index_name);
        check(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index_name,
              ": has no 'weight_map' object");
        std::map<std::string, std::size_t> shard_of_file;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
          check(it.value().is_string(), index_name, ": weight_map entry '", it.key(),
                "' is not a file name");
          const std::string shard = it.value().get<std::string>();
          check(shard.find('/') == std::string::npos && shard.find("..") == std::string::npos,
                index_name, ": shard name '", shard, "' must be a plain file name");
          auto found = shard_of_file.find(shard);
          if (found == shard_of_file.end()) {
            found = shard_of_file.emplace(shard, c.files_.size()).first;
            c.files_.push_back(
                SafetensorsFile::open(detail::utf8_string(native / detail::utf8_path(shard))));
          }
          c.where_[it.key()] = found->second;
        }
        for (const auto& [name, file] : c.where_) {
          check(c.files_[file].contains(name), index_name, ": tensor '", name,
                "' is listed for a shard that does not hold it");
        }
        return c;
      }
      const fs::path single = native / "model.safetensors";
      check(fs::exists(single), path,
            ": directory has neither model.safetensors.index.json nor model.safetensors");
      c.add_file(SafetensorsFile::open(detail::utf8_string(single)));
      return c;
    }
    if (is_torch_checkpoint_path(path)) {
      c.add_file(TorchCheckpoint::open(path).to_safetensors());
      return c;
    }
    c.add_file(SafetensorsFile::open(path));
    return c;
  }

  /// An already open file.
  static CheckpointFiles from_file(SafetensorsFile file) {
    CheckpointFiles c;
    c.path_ = file.name();
    c.add_file(std::move(file));
    return c;
  }

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const {
    auto it = where_.find(name);
    check(it != where_.end(), path_, ": no tensor '", name, "'");
    return files_[it->second];
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : where_) out.push_back(entry.first);
    return out;
  }

  /// The JSON config next to the checkpoint (config.json), if any.
  std::optional<Json> config_json() const {
    if (directory_.empty()) return std::nullopt;
    const auto p = detail::utf8_path(directory_) / "config.json";
    if (!std::filesystem::exists(p)) return std::nullopt;
    return read_json_file(detail::utf8_string(p));
  }

 private:
  void add_file(SafetensorsFile file) {
    for (const auto& name : file.names()) where_[name] = files_.size();
    files_.push_back(std::move(file));
  }

  std::string path_, directory_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t> where_;
};

}  // namespace xlstm::io
