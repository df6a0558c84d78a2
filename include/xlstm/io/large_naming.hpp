// The naming schemes of xLSTM-Large checkpoints, translated from the
// model's canonical (official, single-weight) parameter names: the Hugging
// Face transformers names and the fused weight mode, in which one tensor
// holds several projections stacked by rows (math §7.2).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "xlstm/core/parameters.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/shard_index.hpp"

namespace xlstm::io {

/// The naming schemes of xLSTM-Large checkpoints.
enum class LargeNaming {
  official,               ///< embedding.weight, mlstm_layer.{q,k,v}
  hugging_face,           ///< backbone.embeddings.weight, mlstm_layer.{q,k,v}
  hugging_face_qkv_names  ///< backbone.embeddings.weight, mlstm_layer.{query,key,value}
};

/// The name a canonical (official) name has in a checkpoint of `naming`.
inline std::string large_file_name(const std::string& canonical, LargeNaming naming) {
  if (naming == LargeNaming::official) return canonical;
  std::string name = canonical;
  if (name == "embedding.weight") return "backbone.embeddings.weight";
  if (naming == LargeNaming::hugging_face_qkv_names) {
    for (const char* part : {"q", "k", "v"}) {
      const std::string from = std::string(".mlstm_layer.") + part + ".";
      const std::string to = std::string(".mlstm_layer.") +
                             (part[0] == 'q'   ? "query"
                              : part[0] == 'k' ? "key"
                                               : "value") +
                             ".";
      const auto at = name.find(from);
      if (at != std::string::npos) name.replace(at, from.size(), to);
    }
  }
  return name;
}


/// The naming of the checkpoint in `files` (names under `prefix`).
inline LargeNaming detect_large_naming(const CheckpointFiles& files, const std::string& prefix) {
  if (!files.contains(prefix + "backbone.embeddings.weight")) return LargeNaming::official;
  return files.contains(prefix + "backbone.blocks.0.mlstm_layer.query.weight")
             ? LargeNaming::hugging_face_qkv_names
             : LargeNaming::hugging_face;
}

namespace detail {

/// The fused tensor a canonical name belongs to in fused weight mode, or ""
/// (e.g. "...mlstm_layer.k.weight" -> "...mlstm_layer.qkv_opreact.weight").
inline std::string fused_name(const std::string& canonical) {
  static const std::map<std::string, std::string> groups = {
      {"mlstm_layer.q.", "mlstm_layer.qkv_opreact."},
      {"mlstm_layer.k.", "mlstm_layer.qkv_opreact."},
      {"mlstm_layer.v.", "mlstm_layer.qkv_opreact."},
      {"mlstm_layer.ogate_preact.", "mlstm_layer.qkv_opreact."},
      {"mlstm_layer.igate_preact.", "mlstm_layer.ifgate_preact."},
      {"mlstm_layer.fgate_preact.", "mlstm_layer.ifgate_preact."},
      {"ffn.proj_up_gate.", "ffn.proj_up_gate_z."},
      {"ffn.proj_up.", "ffn.proj_up_gate_z."},
  };
  for (const auto& [part, fused] : groups) {
    const auto at = canonical.find("." + part);
    if (at == std::string::npos) continue;
    const std::string leaf = canonical.substr(at + 1 + part.size());  // "weight" or "bias"
    if (leaf.find('.') != std::string::npos) continue;
    return canonical.substr(0, at + 1) + fused + leaf;
  }
  return "";
}

}  // namespace detail

/// The file tensors of an xLSTM-Large model's parameters in a checkpoint of
/// `naming`, fused or not. A fused tensor's parts are its projections in
/// the model's order (q, k, v, o; i, f; gate, up), joined by rows.
template <typename Ref>
std::vector<TensorTarget<Ref>> large_targets(const std::vector<Ref>& refs, LargeNaming naming,
                                             bool fused) {
  std::vector<TensorTarget<Ref>> targets;
  std::map<std::string, std::size_t> group_at;
  for (const Ref& ref : refs) {
    const std::string group = fused ? detail::fused_name(ref.name) : "";
    if (group.empty()) {
      targets.push_back(TensorTarget<Ref>{large_file_name(ref.name, naming), ref.shape, {ref}});
      continue;
    }
    auto it = group_at.find(group);
    if (it == group_at.end()) {
      group_at[group] = targets.size();
      targets.push_back(TensorTarget<Ref>{large_file_name(group, naming), ref.shape, {ref}});
    } else {
      TensorTarget<Ref>& t = targets[it->second];
      t.parts.push_back(ref);
      t.shape[0] += ref.shape[0];  // stacked by rows (or vector entries)
    }
  }
  return targets;
}

}  // namespace xlstm::io
