// TiRexConfig: the official TiRexZeroConfig (NX-AI/tirex, src/tirex/models/tirex.py) with the
// window length, read from a checkpoint's `hyper_parameters` or the golden `config` JSON
// (math §13.1), and the sLSTM block config it implies (math §13.3).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/cells/slstm_numerics.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/io/config_json.hpp"

namespace xlstm::tirex {

/// The shape of a TiRex model. The defaults are the released TiRex (35.3M
/// parameters): P 32, W 2048, D 512, 4 heads, 12 blocks, FF 2048, 9 quantiles.
struct TiRexConfig {
  Index input_patch_size = 32;   ///< P: values per token
  Index output_patch_size = 32;  ///< must equal input_patch_size (asserted officially)
  std::vector<double> quantiles = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  Index embedding_dim = 512;        ///< D (block_kwargs)
  Index num_heads = 4;              ///< NH (block_kwargs)
  Index num_blocks = 12;            ///< NB (block_kwargs)
  double ffn_proj_factor = 2.6667;  ///< block_kwargs
  Index input_ff_dim = 2048;        ///< FF: hidden width of both residual MLPs
  Index train_ctx_len = 2048;       ///< W: the window every pass sees (math §13.6)
  double nan_mask_value = 0;        ///< what NaN values become in a token (always 0 officially)
  /// Not official: the cell numerics, the official bf16 path by default (math §12).
  SLstmNumerics numerics = SLstmNumerics::tirex_official;

  Index patch_size() const { return input_patch_size; }
  Index head_dim() const { return embedding_dim / num_heads; }
  Index num_quantiles() const { return Index(quantiles.size()); }
  Index tokens_per_window() const { return train_ctx_len / input_patch_size; }  ///< N = W / P
  /// The SwiGLU width F (math §13.3): the official float formula, which is
  /// not a ceiling when D * factor exceeds a multiple of 64 by less than 1.
  Index ffn_dim() const {
    return round_up_to_next_multiple_of(ffn_proj_factor * double(embedding_dim), 64);
  }
  /// Index of the 0.5 quantile: the forecast's median (math §13.6).
  Index median_index() const {
    for (std::size_t q = 0; q < quantiles.size(); ++q) {
      if (quantiles[q] == 0.5) return Index(q);
    }
    fail("TiRexConfig: 'quantiles' must contain 0.5 (the median)");
  }

  void validate() const {
    const char* where = "TiRexConfig";
    check_positive(input_patch_size, where, "input_patch_size");
    check(output_patch_size == input_patch_size, where, ": 'output_patch_size' (",
          output_patch_size, ") must equal 'input_patch_size' (", input_patch_size, ")");
    check(!quantiles.empty(), where, ": 'quantiles' must not be empty");
    median_index();
    check_positive(embedding_dim, where, "embedding_dim");
    check_positive(num_heads, where, "num_heads");
    check(embedding_dim % num_heads == 0, where, ": 'embedding_dim' (", embedding_dim,
          ") must be divisible by 'num_heads' (", num_heads, ")");
    check_positive(num_blocks, where, "num_blocks");
    check(std::isfinite(ffn_proj_factor) && ffn_proj_factor > 0, where,
          ": 'ffn_proj_factor' must be positive, got ", ffn_proj_factor);
    check_positive(input_ff_dim, where, "input_ff_dim");
    check_positive(train_ctx_len, where, "train_ctx_len");
    check(train_ctx_len % input_patch_size == 0, where, ": 'train_ctx_len' (", train_ctx_len,
          ") must be a multiple of 'input_patch_size' (", input_patch_size, ")");
    check(nan_mask_value == 0, where, ": 'nan_mask_value' must be 0 (the official model sets it), ",
          "got ", nan_mask_value);
    check_size_product({num_quantiles(), input_patch_size, input_ff_dim}, where,
                       "output layer (quantiles x patch x 'input_ff_dim')");
    check_size_product({4, embedding_dim, embedding_dim}, where, "sLSTM gate projections");
  }

  /// The config of block `index` (math §13.3): RMSNorm pre-norms, no conv,
  /// the split SwiGLU, TiRex's names and the chosen cell numerics.
  SLstmBlockConfig block_config(Index index) const {
    SLstmBlockConfig c;
    c.slstm.embedding_dim = embedding_dim;
    c.slstm.num_heads = num_heads;
    c.slstm.conv1d_kernel_size = 0;
    c.slstm.numerics = numerics;
    // math §13.10: each row tests its own first step. The same as the official
    // whole-batch test for a pass whose rows all start from zero; needed when
    // rows start from padding states (tirex/padding_cache.hpp) or carried ones.
    c.slstm.first_step_rule = FirstStepRule::per_row;
    c.slstm.row_invariant = true;
    FeedForwardConfig f;
    f.proj_factor = ffn_proj_factor;
    f.act_fn = "swish";
    f.bias = false;
    f.gate_layout = GateLayout::split;
    f.rounding = ProjUpRounding::floor_divide;
    c.feedforward = f;
    c.pre_norm = PreNormKind::rms_norm;
    c.names = SLstmBlockNames{"norm_slstm", "slstm_layer", "norm_ffn", "ffn"};
    c._num_blocks = num_blocks;
    c._block_idx = index;
    return c;
  }
};

/// Reads a TiRexConfig from the official JSON (math §13.1): either the
/// `TiRexZeroConfig` fields themselves (the golden `config`, which also holds
/// `train_ctx_len` and `nan_mask_value`) or a checkpoint's `hyper_parameters`
/// ({"model_config": {...}, "train_ctx_len": W}). Like the official strict
/// loader it rejects unknown fields of the config; `block_kwargs` may hold
/// other fields (the official block config ignores them).
inline TiRexConfig tirex_config_from_json(const io::Json& json) {
  check(json.is_object(), "TiRex config: expected a JSON object, got ", json.dump());
  const bool hyper = json.contains("model_config");
  const io::Json& j = hyper ? json.at("model_config") : json;
  check(j.is_object(), "TiRex config: 'model_config' must be an object, got ", j.dump());
  for (auto it = j.begin(); it != j.end(); ++it) {
    static const char* known[] = {"input_patch_size", "output_patch_size", "quantiles",
                                  "block_kwargs",     "input_ff_dim",      "train_ctx_len",
                                  "nan_mask_value"};
    bool found = false;
    for (const char* k : known) found = found || it.key() == k;
    check(found, "TiRex config: unknown field '", it.key(), "'");
  }
  for (const char* required :
       {"input_patch_size", "output_patch_size", "quantiles", "block_kwargs", "input_ff_dim"}) {
    check(j.contains(required), "TiRex config: field '", required, "' is missing");
  }
  TiRexConfig c;
  io::detail::read_field(j, "input_patch_size", c.input_patch_size, "");
  io::detail::read_field(j, "output_patch_size", c.output_patch_size, "");
  io::detail::read_field(j, "input_ff_dim", c.input_ff_dim, "");
  io::detail::read_field(j, "train_ctx_len", c.train_ctx_len, "");
  io::detail::read_field(j, "nan_mask_value", c.nan_mask_value, "");
  if (hyper) io::detail::read_field(json, "train_ctx_len", c.train_ctx_len, "");
  const io::Json& q = j.at("quantiles");
  check(q.is_array(), "TiRex config: 'quantiles' must be a list, got ", q.dump());
  c.quantiles.clear();
  for (const auto& v : q) {
    check(v.is_number(), "TiRex config: 'quantiles' must hold numbers, got ", v.dump());
    c.quantiles.push_back(v.get<double>());
  }
  const io::Json& b = j.at("block_kwargs");
  check(b.is_object(), "TiRex config: 'block_kwargs' must be an object, got ", b.dump());
  for (const char* required : {"embedding_dim", "num_heads", "num_blocks"}) {
    check(b.contains(required), "TiRex config: field 'block_kwargs.", required, "' is missing");
  }
  io::detail::read_field(b, "embedding_dim", c.embedding_dim, "block_kwargs.");
  io::detail::read_field(b, "num_heads", c.num_heads, "block_kwargs.");
  io::detail::read_field(b, "num_blocks", c.num_blocks, "block_kwargs.");
  io::detail::read_field(b, "ffn_proj_factor", c.ffn_proj_factor, "block_kwargs.");
  c.validate();
  return c;
}

}  // namespace xlstm::tirex
