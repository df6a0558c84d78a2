// Loading and saving xLSTM-Large checkpoints (math §7.2): the official naming
// (`embedding.weight`, `backbone.blocks.N...`, `lm_head.weight`) and the
// Hugging Face transformers naming (io/large_naming.hpp), in single or fused
// weight mode, from one `model.safetensors` or a sharded directory
// (io/shard_index.hpp). Detected automatically; without a config.json the
// config is inferred from the tensor shapes.
//
// BF16/F16 weight matrices stay 16-bit by default: views into the
// memory-mapped files (or a 16-bit copy when a tensor is not 2-byte aligned).
// Vectors (norm weights, biases) are converted to Scalar.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/large_naming.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/shard_index.hpp"
#include "xlstm/model/large_model.hpp"

namespace xlstm::io {

/// Options of load_large_model: those of every load, with 16-bit weights
/// kept 16-bit by default.
struct LargeLoadOptions : LoadOptions {
  LargeLoadOptions() { keep_half_weights = true; }
};

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
          " columns, got shape ", shape_string(s));
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
        "' must have rows and columns, got shape ", shape_string(es));
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
          "out_proj.weight' must be 2-D with ", columns, " rows, got shape ", shape_string(out));
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
  const LargeNaming naming = detect_large_naming(files, prefix);
  const bool fused = files.contains(prefix + "backbone.blocks.0.mlstm_layer.qkv_opreact.weight");
  config->weight_mode = fused ? "fused" : "single";
  // Built of placeholder matrices (shapes, no memory): the loader puts in
  // the file's matrices, so the model's weights only ever exist once, in
  // the form they are kept in (a 7B model in float zeros first would need
  // 28 GB).
  LargeModel<Scalar> model(*config, uninitialized, WeightStorage::placeholder);
  load_targets(large_targets(parameter_list(model), naming, fused), files, options,
               files.path() + ": checkpoint does not match the xLSTM-Large config");
  // Every matrix of the architecture is required (load_targets threw
  // otherwise); a placeholder left now would be a loader bug.
  for (const WeightMatrix<Scalar>* w : weight_matrices(model)) {
    check(!w->is_placeholder(), files.path(), ": internal error: a ", w->rows(), " x ", w->cols(),
          " weight matrix was not loaded");
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
/// written as `matrix_dtype` (F32/F64 of Scalar, or BF16/F16); without it,
/// 16-bit matrices stay 16-bit, quantised ones quantised (math §16.4) and
/// the rest is Scalar. The tensors are read from the model as each shard
/// is written: saving holds no copy of the model.
template <typename Scalar>
void save_large_model(const LargeModel<Scalar>& model, const std::string& path,
                      LargeNaming naming = LargeNaming::official, bool fused = false,
                      std::optional<DType> matrix_dtype = std::nullopt, int num_shards = 1,
                      bool as_directory = false) {
  namespace fs = std::filesystem;
  check(num_shards >= 1, "save_large_model: 'num_shards' must be >= 1, got ", num_shards);
  const auto targets = large_targets(parameter_list(model), naming, fused);
  std::vector<SafetensorsWriter> shards(static_cast<std::size_t>(num_shards));
  std::vector<std::pair<std::string, std::size_t>> placed;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const std::size_t s = i % shards.size();
    placed.push_back({targets[i].name, s});
    if (detail::quantized_format_of(targets[i]) != WeightStorage::native) {
      placed.push_back({targets[i].name + detail::kQuantizedScalesSuffix, s});  // math §16.4
    }
    // Written straight from the model when each shard is saved: saving a
    // 7B model holds no copy of it.
    add_targets(shards[s], std::vector{targets[i]}, matrix_dtype, WriteMode::by_reference);
  }
  if (num_shards == 1 && !as_directory) {
    shards[0].save(path);
    return;
  }
  const fs::path directory = detail::utf8_path(path);
  fs::create_directories(directory);
  if (num_shards == 1) {
    shards[0].save(detail::utf8_string(directory / "model.safetensors"));
  } else {
    Json index{{"metadata", Json::object()}, {"weight_map", Json::object()}};
    auto shard_name = [&](std::size_t s) {
      std::ostringstream n;
      n << "model-" << (s + 1) << "-of-" << num_shards << ".safetensors";
      return n.str();
    };
    for (std::size_t s = 0; s < shards.size(); ++s) {
      shards[s].save(detail::utf8_string(directory / shard_name(s)));
    }
    for (const auto& [name, s] : placed) index["weight_map"][name] = shard_name(s);
    std::ofstream(directory / "model.safetensors.index.json") << index.dump(2);
  }
  Json config = to_json(model.config());
  config["weight_mode"] = fused ? "fused" : "single";
  std::ofstream(directory / "config.json") << config.dump(2);
}

}  // namespace xlstm::io
