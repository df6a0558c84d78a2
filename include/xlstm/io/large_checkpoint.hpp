// Loading and saving xLSTM-Large checkpoints (SPEC §7.2): the official naming
// (`embedding.weight`, `backbone.blocks.N...`, `lm_head.weight`) and the
// Hugging Face transformers naming (`backbone.embeddings.weight`, projections
// `query`/`key`/`value` in some revisions), in single or fused weight mode,
// from one `model.safetensors` or a sharded directory with
// `model.safetensors.index.json`. Detected automatically.
//
// BF16/F16 weight matrices stay 16-bit: they are views into the memory-mapped
// files (or a 16-bit copy when a tensor is not 2-byte aligned). Vectors (norm
// weights, biases) are converted to Scalar.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/model/large_model.hpp"

namespace xlstm::io {

/// One checkpoint: a single safetensors file or the shards of a directory.
class CheckpointFiles {
 public:
  /// `path`: a .safetensors file, or a directory holding
  /// model.safetensors.index.json (sharded) or model.safetensors.
  static CheckpointFiles open(const std::string& path) {
    namespace fs = std::filesystem;
    CheckpointFiles c;
    c.path_ = path;
    if (fs::is_directory(path)) {
      c.directory_ = path;
      const fs::path index = fs::path(path) / "model.safetensors.index.json";
      if (fs::exists(index)) {
        const Json j = read_json_file(index.string());
        check(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              index.string(), ": has no 'weight_map' object");
        std::map<std::string, std::size_t> shard_of_file;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
          check(it.value().is_string(), index.string(), ": weight_map entry '", it.key(),
                "' is not a file name");
          const std::string shard = it.value().get<std::string>();
          check(shard.find('/') == std::string::npos && shard.find("..") == std::string::npos,
                index.string(), ": shard name '", shard, "' must be a plain file name");
          auto found = shard_of_file.find(shard);
          if (found == shard_of_file.end()) {
            found = shard_of_file.emplace(shard, c.files_.size()).first;
            c.files_.push_back(SafetensorsFile::open((fs::path(path) / shard).string()));
          }
          c.where_[it.key()] = found->second;
        }
        for (const auto& [name, file] : c.where_) {
          check(c.files_[file].contains(name), index.string(), ": tensor '", name,
                "' is listed for a shard that does not hold it");
        }
        return c;
      }
      const fs::path single = fs::path(path) / "model.safetensors";
      check(fs::exists(single), path,
            ": directory has neither model.safetensors.index.json nor model.safetensors");
      c.add_file(SafetensorsFile::open(single.string()));
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
    const auto p = std::filesystem::path(directory_) / "config.json";
    if (!std::filesystem::exists(p)) return std::nullopt;
    return read_json_file(p.string());
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

/// xLSTMLargeConfig from JSON: the official field names, and the Hugging Face
/// config.json names (hidden_size, num_hidden_layers) as alternatives.
inline LargeModelConfig large_model_config_from_json(const Json& j) {
  check(j.is_object(), "xLSTMLargeConfig: the config must be a JSON object");
  LargeModelConfig c;
  using detail::read_field;
  read_field(j, "hidden_size", c.embedding_dim, "");
  read_field(j, "embedding_dim", c.embedding_dim, "");
  read_field(j, "num_hidden_layers", c.num_blocks, "");
  read_field(j, "num_blocks", c.num_blocks, "");
  read_field(j, "num_heads", c.num_heads, "");
  read_field(j, "vocab_size", c.vocab_size, "");
  read_field(j, "use_bias", c.use_bias, "");
  read_field(j, "norm_eps", c.norm_eps, "");
  read_field(j, "norm_reduction_force_float32", c.norm_reduction_force_float32, "");
  read_field(j, "add_out_norm", c.add_out_norm, "");
  read_field(j, "qk_dim_factor", c.qk_dim_factor, "");
  read_field(j, "v_dim_factor", c.v_dim_factor, "");
  read_field(j, "chunkwise_kernel", c.chunkwise_kernel, "");
  read_field(j, "sequence_kernel", c.sequence_kernel, "");
  read_field(j, "step_kernel", c.step_kernel, "");
  read_field(j, "mode", c.mode, "");
  read_field(j, "chunk_size", c.chunk_size, "");
  read_field(j, "return_last_states", c.return_last_states, "");
  read_field(j, "autocast_kernel_dtype", c.autocast_kernel_dtype, "");
  read_field(j, "eps", c.eps, "");
  read_field(j, "inference_state_dtype", c.inference_state_dtype, "");
  read_field(j, "ffn_proj_factor", c.ffn_proj_factor, "");
  read_field(j, "ffn_round_up_to_multiple_of", c.ffn_round_up_to_multiple_of, "");
  // null means "no cap" in the official config.
  if (j.contains("gate_soft_cap") && j["gate_soft_cap"].is_null()) c.gate_soft_cap = 0;
  if (j.contains("output_logit_soft_cap") && j["output_logit_soft_cap"].is_null()) {
    c.output_logit_soft_cap = 0;
  }
  read_field(j, "gate_soft_cap", c.gate_soft_cap, "");
  read_field(j, "output_logit_soft_cap", c.output_logit_soft_cap, "");
  read_field(j, "weight_mode", c.weight_mode, "");
  c.validate();
  return c;
}

inline Json to_json(const LargeModelConfig& c) {
  auto cap = [](double v) { return v > 0 ? Json(v) : Json(nullptr); };
  return Json{{"embedding_dim", c.embedding_dim},
              {"num_heads", c.num_heads},
              {"num_blocks", c.num_blocks},
              {"vocab_size", c.vocab_size},
              {"use_bias", c.use_bias},
              {"norm_eps", c.norm_eps},
              {"norm_reduction_force_float32", c.norm_reduction_force_float32},
              {"add_out_norm", c.add_out_norm},
              {"qk_dim_factor", c.qk_dim_factor},
              {"v_dim_factor", c.v_dim_factor},
              {"chunkwise_kernel", c.chunkwise_kernel},
              {"sequence_kernel", c.sequence_kernel},
              {"step_kernel", c.step_kernel},
              {"mode", c.mode},
              {"chunk_size", c.chunk_size},
              {"return_last_states", c.return_last_states},
              {"autocast_kernel_dtype", c.autocast_kernel_dtype},
              {"eps", c.eps},
              {"inference_state_dtype", c.inference_state_dtype},
              {"ffn_proj_factor", c.ffn_proj_factor},
              {"ffn_round_up_to_multiple_of", c.ffn_round_up_to_multiple_of},
              {"gate_soft_cap", cap(c.gate_soft_cap)},
              {"output_logit_soft_cap", cap(c.output_logit_soft_cap)},
              {"weight_mode", c.weight_mode}};
}

/// The naming schemes of xLSTM-Large checkpoints.
enum class LargeNaming {
  official,               ///< embedding.weight, mlstm_layer.{q,k,v}
  hugging_face,           ///< backbone.embeddings.weight, mlstm_layer.{q,k,v}
  hugging_face_qkv_names  ///< backbone.embeddings.weight, mlstm_layer.{query,key,value}
};

struct LargeLoadOptions {
  /// Keep BF16/F16 weight matrices 16-bit in memory (views into the mapped files).
  bool keep_half_weights = true;
  /// Reject NaN or infinite values.
  bool check_finite = false;
  /// Prefix of the model's names in the files; other names are ignored.
  std::string prefix;
};

namespace detail {

/// Where one checkpoint tensor goes: weight matrices (a fused tensor feeds
/// several, split by rows) or a vector.
template <typename Scalar>
struct LargeEntry {
  std::string name;  ///< canonical (official, single or fused) name
  Shape shape;
  std::vector<WeightMatrix<Scalar>*> matrices;  ///< row blocks in order
  Vector<Scalar>* vector = nullptr;
};

template <typename Scalar>
std::vector<LargeEntry<Scalar>> large_entries(LargeModel<Scalar>& model, bool fused) {
  using E = LargeEntry<Scalar>;
  const auto& c = model.config();
  const auto e = std::size_t(c.embedding_dim), v = std::size_t(c.vocab_size),
             nh = std::size_t(c.num_heads), qk = std::size_t(c.qk_dim()),
             vd = std::size_t(c.v_dim()), u = std::size_t(c.ffn_dim());
  std::vector<E> out;
  auto add_vector = [&](const std::string& name, Vector<Scalar>& vec) {
    if (vec.size() > 0) out.push_back(E{name, {std::size_t(vec.size())}, {}, &vec});
  };
  auto add_projection = [&](const std::string& name, Projection<Scalar>& p, std::size_t rows,
                            std::size_t cols) {
    out.push_back(E{name + ".weight", {rows, cols}, {&p.weight}, nullptr});
    add_vector(name + ".bias", p.bias);
  };
  out.push_back(E{"embedding.weight", {v, e}, {&model.embedding()}, nullptr});
  for (std::size_t i = 0; i < model.blocks().size(); ++i) {
    auto& b = model.blocks()[i];
    const std::string p = "backbone.blocks." + std::to_string(i) + ".";
    add_vector(p + "norm_mlstm.weight", b.norm_mlstm.weight());
    add_vector(p + "norm_mlstm.bias", b.norm_mlstm.bias());
    const std::string m = p + "mlstm_layer.";
    if (fused) {
      out.push_back(E{m + "qkv_opreact.weight",
                      {2 * qk + 2 * vd, e},
                      {&b.q.weight, &b.k.weight, &b.v.weight, &b.ogate.weight},
                      nullptr});
      out.push_back(
          E{m + "ifgate_preact.weight", {2 * nh, e}, {&b.igate.weight, &b.fgate.weight}, nullptr});
      // Fused biases are concatenated vectors; the model keeps them apart, so
      // they are listed per part with the fused name and an offset below.
    } else {
      add_projection(m + "q", b.q, qk, e);
      add_projection(m + "k", b.k, qk, e);
      add_projection(m + "v", b.v, vd, e);
      add_projection(m + "ogate_preact", b.ogate, vd, e);
      add_projection(m + "igate_preact", b.igate, nh, e);
      add_projection(m + "fgate_preact", b.fgate, nh, e);
    }
    add_vector(m + "multihead_norm.weight", b.multihead_norm.weight());
    add_vector(m + "multihead_norm.bias", b.multihead_norm.bias());
    add_projection(m + "out_proj", b.out_proj, e, vd);
    add_vector(p + "norm_ffn.weight", b.norm_ffn.weight());
    add_vector(p + "norm_ffn.bias", b.norm_ffn.bias());
    if (fused) {
      out.push_back(E{p + "ffn.proj_up_gate_z.weight",
                      {2 * u, e},
                      {&b.ffn_gate.weight, &b.ffn_up.weight},
                      nullptr});
    } else {
      add_projection(p + "ffn.proj_up_gate", b.ffn_gate, u, e);
      add_projection(p + "ffn.proj_up", b.ffn_up, u, e);
    }
    add_projection(p + "ffn.proj_down", b.ffn_down, e, u);
  }
  add_vector("backbone.out_norm.weight", model.out_norm().weight());
  add_vector("backbone.out_norm.bias", model.out_norm().bias());
  add_projection("lm_head", model.lm_head(), v, e);
  return out;
}

/// The fused-mode bias vectors: (name, parts in order).
template <typename Scalar>
std::vector<std::pair<std::string, std::vector<Vector<Scalar>*>>> fused_biases(
    LargeModel<Scalar>& model) {
  std::vector<std::pair<std::string, std::vector<Vector<Scalar>*>>> out;
  for (std::size_t i = 0; i < model.blocks().size(); ++i) {
    auto& b = model.blocks()[i];
    const std::string p = "backbone.blocks." + std::to_string(i) + ".";
    out.push_back({p + "mlstm_layer.ifgate_preact.bias", {&b.igate.bias, &b.fgate.bias}});
    if (model.config().use_bias) {
      out.push_back(
          {p + "mlstm_layer.qkv_opreact.bias", {&b.q.bias, &b.k.bias, &b.v.bias, &b.ogate.bias}});
      out.push_back({p + "ffn.proj_up_gate_z.bias", {&b.ffn_gate.bias, &b.ffn_up.bias}});
    }
  }
  return out;
}

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

}  // namespace detail

/// Infers the config from tensor shapes (no config JSON available):
/// embedding (V, E), igate (NH, E), q (QK, E), v (VD, E), proj_up (U, E),
/// the number of blocks and the presence of out_norm and biases.
inline LargeModelConfig infer_large_model_config(const CheckpointFiles& files,
                                                 const std::string& prefix = "") {
  const bool hf = files.contains(prefix + "backbone.embeddings.weight");
  const std::string emb = prefix + (hf ? "backbone.embeddings.weight" : "embedding.weight");
  check(files.contains(emb), files.path(),
        ": no embedding tensor ('embedding.weight' or "
        "'backbone.embeddings.weight'): not an xLSTM-Large checkpoint");
  auto shape = [&](const std::string& n) {
    check(files.contains(n), files.path(), ": missing tensor '", n, "'");
    return files.file_of(n).info(n).shape;
  };
  // Rows of a 2-D weight with `columns` columns. Checking the rank before
  // indexing keeps a 0-D or 1-D tensor from being read out of bounds, and the
  // columns bound the rows by the file size, so the factors below stay finite.
  auto rows_of = [&](const std::string& n, std::size_t columns) {
    const Shape s = shape(n);
    check(s.size() == 2 && s[1] == columns, files.path(), ": '", n, "' must be 2-D with ", columns,
          " columns, got shape ", detail::shape_string(s));
    return s[0];
  };
  LargeModelConfig c;
  const Shape es = shape(emb);
  check(es.size() == 2, files.path(), ": '", emb, "' must be 2-D");
  c.vocab_size = Index(es[0]);
  c.embedding_dim = Index(es[1]);
  Index blocks = 0;
  while (
      files.contains(prefix + "backbone.blocks." + std::to_string(blocks) + ".norm_mlstm.weight"))
    ++blocks;
  c.num_blocks = blocks;
  const std::string m = prefix + "backbone.blocks.0.mlstm_layer.";
  const bool fused = files.contains(m + "qkv_opreact.weight");
  c.weight_mode = fused ? "fused" : "single";
  check(c.embedding_dim > 0 && c.vocab_size > 0, files.path(), ": '", emb,
        "' must have rows and columns, got shape ", detail::shape_string(es));
  const double e = double(c.embedding_dim);
  const auto columns = std::size_t(c.embedding_dim);
  // The factor f with int(E * f) == dim: dim / E alone can come out one ulp
  // low, e.g. 22 * (15 / 22.) = 14.999999999999998, which int() makes 14.
  auto factor_for = [e](std::size_t dim) {
    double f = double(dim) / e;
    while (double(Index(e * f)) < double(dim)) f = std::nextafter(f, 2 * f + 1);
    return f;
  };
  if (fused) {
    c.num_heads = Index(rows_of(m + "ifgate_preact.weight", columns) / 2);
    const std::size_t rows = rows_of(m + "qkv_opreact.weight", columns);
    // rows = 2 QK + 2 VD; out_proj (E, VD) gives VD.
    const Shape out = shape(m + "out_proj.weight");
    check(out.size() == 2 && out[0] == columns, files.path(), ": '", m,
          "out_proj.weight' must be 2-D with ", columns, " rows, got shape ",
          detail::shape_string(out));
    const std::size_t vd = out[1];
    check(rows > 2 * vd && (rows - 2 * vd) % 2 == 0, files.path(), ": '", m,
          "qkv_opreact.weight' has ", rows, " rows, which is not 2 QK + 2 VD with VD = ", vd);
    c.v_dim_factor = factor_for(vd);
    c.qk_dim_factor = factor_for((rows - 2 * vd) / 2);
    c.ffn_proj_factor =
        factor_for(rows_of(prefix + "backbone.blocks.0.ffn.proj_up_gate_z.weight", columns) / 2);
  } else {
    c.num_heads = Index(rows_of(m + "igate_preact.weight", columns));
    const std::string q = files.contains(m + "q.weight") ? m + "q.weight" : m + "query.weight";
    const std::string v = files.contains(m + "v.weight") ? m + "v.weight" : m + "value.weight";
    c.qk_dim_factor = factor_for(rows_of(q, columns));
    c.v_dim_factor = factor_for(rows_of(v, columns));
    c.ffn_proj_factor =
        factor_for(rows_of(prefix + "backbone.blocks.0.ffn.proj_up.weight", columns));
  }
  c.ffn_round_up_to_multiple_of = 1;  // the shapes are already rounded
  c.add_out_norm = files.contains(prefix + "backbone.out_norm.weight");
  c.use_bias = files.contains(prefix + "backbone.blocks.0.norm_mlstm.bias");
  c.mode = "inference";
  c.return_last_states = true;
  c.validate();
  return c;
}

/// Loads an xLSTM-Large checkpoint (file or directory). The config comes from
/// `config` if given, else from the directory's config.json, else from the
/// tensor shapes; the shapes are checked against it either way.
template <typename Scalar>
LargeModel<Scalar> load_large_model(const CheckpointFiles& files,
                                    std::optional<LargeModelConfig> config = std::nullopt,
                                    const LargeLoadOptions& options = {}) {
  const std::string& prefix = options.prefix;
  if (!config) {
    if (auto j = files.config_json()) {
      config = large_model_config_from_json(*j);
    } else {
      config = infer_large_model_config(files, prefix);
    }
  }
  const bool hf = files.contains(prefix + "backbone.embeddings.weight");
  const bool query_key_value =
      files.contains(prefix + "backbone.blocks.0.mlstm_layer.query.weight");
  const LargeNaming naming = !hf               ? LargeNaming::official
                             : query_key_value ? LargeNaming::hugging_face_qkv_names
                                               : LargeNaming::hugging_face;
  const bool fused = files.contains(prefix + "backbone.blocks.0.mlstm_layer.qkv_opreact.weight");
  config->weight_mode = fused ? "fused" : "single";
  LargeModel<Scalar> model(*config);

  std::vector<std::string> missing, misshaped, bad;
  std::set<std::string> used;
  auto file_name = [&](const std::string& canonical) {
    return prefix + detail::large_file_name(canonical, naming);
  };
  auto lookup = [&](const std::string& canonical, const Shape& shape) -> const SafetensorsFile* {
    const std::string name = file_name(canonical);
    if (!files.contains(name)) {
      missing.push_back(name + " " + detail::shape_string(shape));
      return nullptr;
    }
    used.insert(name);
    const SafetensorsFile& f = files.file_of(name);
    Shape found = f.info(name).shape;
    // multihead_norm.weight may be stored as (NH, DHV) (SPEC §7.2): flatten.
    if (found.size() == 2 && shape.size() == 1 && found[0] * found[1] == shape[0] &&
        canonical.find("multihead_norm") != std::string::npos) {
      found = shape;
    }
    if (found != shape) {
      misshaped.push_back(name + ": expected " + detail::shape_string(shape) + ", file has " +
                          detail::shape_string(found));
      return nullptr;
    }
    const DType dt = f.info(name).dtype;
    if (dt != DType::F32 && dt != DType::F64 && dt != DType::BF16 && dt != DType::F16) {
      bad.push_back(name + " (dtype " + dtype_name(dt) + ")");
      return nullptr;
    }
    return &f;
  };
  auto read_checked = [&](const SafetensorsFile& f, const std::string& name) {
    std::vector<Scalar> values = f.read<Scalar>(name);
    if (options.check_finite) {
      for (Scalar x : values) {
        if (!std::isfinite(x)) {
          bad.push_back(name + " (NaN or infinite values)");
          break;
        }
      }
    }
    return values;
  };

  for (auto& entry : detail::large_entries(model, fused)) {
    const SafetensorsFile* f = lookup(entry.name, entry.shape);
    if (!f) continue;
    const std::string name = file_name(entry.name);
    if (entry.vector) {
      const auto values = read_checked(*f, name);
      std::copy(values.begin(), values.end(), entry.vector->data());
      continue;
    }
    const Index cols = Index(entry.shape[1]);
    const DType dt = f->info(name).dtype;
    WeightMatrix<Scalar> whole;
    if (options.keep_half_weights && (dt == DType::BF16 || dt == DType::F16)) {
      const WeightStorage storage = dt == DType::BF16 ? WeightStorage::bf16 : WeightStorage::f16;
      const std::uint8_t* bytes = f->bytes(name);
      const Index rows = Index(entry.shape[0]);
      if (reinterpret_cast<std::uintptr_t>(bytes) % alignof(std::uint16_t) == 0) {
        whole =
            WeightMatrix<Scalar>::half_view(storage, reinterpret_cast<const std::uint16_t*>(bytes),
                                            rows, cols, std::make_shared<SafetensorsFile>(*f));
      } else {
        whole = WeightMatrix<Scalar>::half_zeros(storage, rows, cols);
        std::memcpy(whole.owned_half_bits(), bytes, std::size_t(rows * cols) * 2);
      }
      if (options.check_finite) read_checked(*f, name);
    } else {
      const auto values = read_checked(*f, name);
      whole = WeightMatrix<Scalar>(
          Matrix<Scalar>(ConstMatrixMap<Scalar>(values.data(), Index(entry.shape[0]), cols)));
    }
    Index row = 0;
    for (WeightMatrix<Scalar>* part : entry.matrices) {
      const Index rows = part->rows();
      *part = entry.matrices.size() == 1 ? whole : whole.row_range(row, rows);
      row += rows;
    }
  }
  if (fused) {
    for (auto& [canonical, parts] : detail::fused_biases(model)) {
      Index total = 0;
      for (auto* p : parts) total += p->size();
      const SafetensorsFile* f = lookup(canonical, {std::size_t(total)});
      if (!f) continue;
      const auto values = read_checked(*f, file_name(canonical));
      Index at = 0;
      for (auto* p : parts) {
        *p = ConstVectorMap<Scalar>(values.data() + at, p->size());
        at += p->size();
      }
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& name : files.names()) {
    if (name.rfind(prefix, 0) == 0 && !used.count(name)) unexpected.push_back(name);
  }
  if (!missing.empty() || !misshaped.empty() || !unexpected.empty() || !bad.empty()) {
    std::ostringstream msg;
    msg << files.path() << ": checkpoint does not match the xLSTM-Large config";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg << "\n  " << what << " (" << names.size() << "):";
      for (const auto& n : names) msg << "\n    " << n;
    };
    list("missing tensors", missing);
    list("misshaped tensors", misshaped);
    list("unexpected tensors", unexpected);
    list("unusable tensors", bad);
    throw Error(msg.str());
  }
  return model;
}

/// The same from a path: a .safetensors file or a checkpoint directory.
template <typename Scalar>
LargeModel<Scalar> load_large_model(const std::string& path,
                                    std::optional<LargeModelConfig> config = std::nullopt,
                                    const LargeLoadOptions& options = {}) {
  return load_large_model<Scalar>(CheckpointFiles::open(path), std::move(config), options);
}

/// Saves `model` as an xLSTM-Large checkpoint. `path` is a file when
/// `num_shards` is 1 and `as_directory` is false; otherwise a directory with
/// shards, model.safetensors.index.json and config.json. Weight matrices are
/// written as `matrix_dtype` (F32/F64 of Scalar, or BF16/F16).
template <typename Scalar>
void save_large_model(const LargeModel<Scalar>& model, const std::string& path,
                      LargeNaming naming = LargeNaming::official, bool fused = false,
                      std::optional<DType> matrix_dtype = std::nullopt, int num_shards = 1,
                      bool as_directory = false) {
  namespace fs = std::filesystem;
  check(num_shards >= 1, "save_large_model: 'num_shards' must be >= 1, got ", num_shards);
  auto& m = const_cast<LargeModel<Scalar>&>(model);  // entries only hand out pointers
  std::vector<SafetensorsWriter> shards(static_cast<std::size_t>(num_shards));
  std::vector<std::pair<std::string, std::size_t>> placed;
  std::size_t next = 0;
  auto writer_for = [&](const std::string& name) -> SafetensorsWriter& {
    const std::size_t s = next++ % shards.size();
    placed.push_back({name, s});
    return shards[s];
  };
  for (auto& entry : detail::large_entries(m, fused)) {
    const std::string name = detail::large_file_name(entry.name, naming);
    if (entry.vector) {
      writer_for(name).add(name, entry.shape, entry.vector->data());
      continue;
    }
    Matrix<Scalar> whole(Index(entry.shape[0]), Index(entry.shape[1]));
    Index row = 0;
    for (WeightMatrix<Scalar>* part : entry.matrices) {
      for (Index r = 0; r < part->rows(); ++r) part->copy_row(r, whole.row(row + r));
      row += part->rows();
    }
    SafetensorsWriter& w = writer_for(name);
    if (matrix_dtype) {
      w.add_as(name, *matrix_dtype, entry.shape, whole.data());
    } else {
      w.add(name, entry.shape, whole.data());
    }
  }
  if (fused) {
    for (auto& [canonical, parts] : detail::fused_biases(m)) {
      Vector<Scalar> joined;
      Index total = 0;
      for (auto* p : parts) total += p->size();
      joined.resize(total);
      Index at = 0;
      for (auto* p : parts) {
        joined.segment(at, p->size()) = *p;
        at += p->size();
      }
      const std::string name = detail::large_file_name(canonical, naming);
      writer_for(name).add(name, {std::size_t(total)}, joined.data());
    }
  }
  if (num_shards == 1 && !as_directory) {
    shards[0].save(path);
    return;
  }
  fs::create_directories(path);
  if (num_shards == 1) {
    shards[0].save((fs::path(path) / "model.safetensors").string());
  } else {
    Json index{{"metadata", Json::object()}, {"weight_map", Json::object()}};
    auto shard_name = [&](std::size_t s) {
      std::ostringstream n;
      n << "model-" << (s + 1) << "-of-" << num_shards << ".safetensors";
      return n.str();
    };
    for (std::size_t s = 0; s < shards.size(); ++s) {
      shards[s].save((fs::path(path) / shard_name(s)).string());
    }
    for (const auto& [name, s] : placed) index["weight_map"][name] = shard_name(s);
    std::ofstream((fs::path(path) / "model.safetensors.index.json").string()) << index.dump(2);
  }
  Json config = to_json(model.config());
  config["weight_mode"] = fused ? "fused" : "single";
  std::ofstream((fs::path(path) / "config.json").string()) << config.dump(2);
}

}  // namespace xlstm::io
