// Reading and writing the official config JSON (dataclasses.asdict of the
// PyTorch config classes; the `config` metadata of the golden files is exactly
// that) into the C++ config structs and back.
//
// Derived fields (_proj_up_dim, _inner_embedding_dim, hidden_size, ...) are
// recomputed, never trusted: serialised stack configs carry stale per-block
// values (math §6.1). Fields that only matter to the CUDA kernels or training
// (dtypes, batch_size, clip values, ...) are accepted and ignored; they are
// not written back.
#pragma once

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

namespace xlstm::io {

using Json = nlohmann::json;

namespace detail {

/// Reads field `key` of object `j` into `out` if present (null keeps the
/// default); a value of the wrong JSON type is an Error naming the field.
template <typename T>
void read_field(const Json& j, const char* key, T& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  const Json& v = *it;
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    ok = v.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    // A float counts if it holds an integer T can represent (Python writes
    // some ints as 3.0). Test the range before converting: an out-of-range
    // float-to-integer conversion (e.g. 1e300) is undefined behaviour.
    ok = v.is_number_integer();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      const double limit = std::ldexp(1.0, std::numeric_limits<T>::digits);  // exact power of 2
      const double lowest = std::numeric_limits<T>::is_signed ? -limit : 0.0;
      ok = d >= lowest && d < limit && std::trunc(d) == d;
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = v.is_number();
  } else {
    ok = v.is_string();
  }
  check(ok, "config field '", where, key, "' has the wrong type: ", v.dump());
  out = v.get<T>();
}

}  // namespace detail

inline Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    fail(what, ": malformed JSON: ", e.what());
  }
}

inline Json read_json_file(const std::string& path) {
  std::ifstream in(detail::utf8_path(path), std::ios::binary);
  check(bool(in), path, ": cannot open config file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_json(text.str(), path);
}

inline MLstmBlockConfig mlstm_block_config_from_json(const Json& j, const std::string& where = "") {
  check(j.is_object(), "config '", where, "' must be a JSON object");
  MLstmBlockConfig c;
  detail::read_field(j, "_num_blocks", c._num_blocks, where);
  detail::read_field(j, "_block_idx", c._block_idx, where);
  auto it = j.find("mlstm");
  if (it != j.end() && !it->is_null()) {
    const std::string w = where + "mlstm.";
    check(it->is_object(), "config field '", w, "' must be an object");
    auto& m = c.mlstm;
    detail::read_field(*it, "conv1d_kernel_size", m.conv1d_kernel_size, w);
    detail::read_field(*it, "qkv_proj_blocksize", m.qkv_proj_blocksize, w);
    detail::read_field(*it, "num_heads", m.num_heads, w);
    detail::read_field(*it, "proj_factor", m.proj_factor, w);
    detail::read_field(*it, "round_proj_up_dim_up", m.round_proj_up_dim_up, w);
    detail::read_field(*it, "round_proj_up_to_multiple_of", m.round_proj_up_to_multiple_of, w);
    detail::read_field(*it, "bias", m.bias, w);
    detail::read_field(*it, "dropout", m.dropout, w);
    detail::read_field(*it, "context_length", m.context_length, w);
    detail::read_field(*it, "embedding_dim", m.embedding_dim, w);
    detail::read_field(*it, "_num_blocks", m._num_blocks, w);
  }
  return c;
}

inline Json to_json(const MLstmBlockConfig& c) {
  const auto& m = c.mlstm;
  return Json{{"_num_blocks", c._num_blocks},
              {"_block_idx", c._block_idx},
              {"mlstm",
               {{"conv1d_kernel_size", m.conv1d_kernel_size},
                {"qkv_proj_blocksize", m.qkv_proj_blocksize},
                {"num_heads", m.num_heads},
                {"proj_factor", m.proj_factor},
                {"round_proj_up_dim_up", m.round_proj_up_dim_up},
                {"round_proj_up_to_multiple_of", m.round_proj_up_to_multiple_of},
                {"_proj_up_dim", m._proj_up_dim},
                {"bias", m.bias},
                {"dropout", m.dropout},
                {"context_length", m.context_length},
                {"embedding_dim", m.embedding_dim},
                {"_num_blocks", m._num_blocks},
                {"_inner_embedding_dim", m._inner_embedding_dim}}}};
}

inline FeedForwardConfig feedforward_config_from_json(const Json& j, const std::string& w) {
  check(j.is_object(), "config field '", w, "' must be an object");
  FeedForwardConfig f;
  detail::read_field(j, "proj_factor", f.proj_factor, w);
  detail::read_field(j, "act_fn", f.act_fn, w);
  detail::read_field(j, "embedding_dim", f.embedding_dim, w);
  detail::read_field(j, "dropout", f.dropout, w);
  detail::read_field(j, "bias", f.bias, w);
  detail::read_field(j, "ff_type", f.ff_type, w);
  detail::read_field(j, "_num_blocks", f._num_blocks, w);
  detail::read_field(j, "round_proj_up_dim_up", f.round_proj_up_dim_up, w);
  detail::read_field(j, "round_proj_up_to_multiple_of", f.round_proj_up_to_multiple_of, w);
  parse_activation(f.act_fn, (w + "act_fn").c_str());
  return f;
}

inline SLstmBlockConfig slstm_block_config_from_json(const Json& j, const std::string& where = "") {
  check(j.is_object(), "config '", where, "' must be a JSON object");
  SLstmBlockConfig c;
  detail::read_field(j, "_num_blocks", c._num_blocks, where);
  detail::read_field(j, "_block_idx", c._block_idx, where);
  auto it = j.find("slstm");
  if (it != j.end() && !it->is_null()) {
    const std::string w = where + "slstm.";
    check(it->is_object(), "config field '", w, "' must be an object");
    auto& s = c.slstm;
    detail::read_field(*it, "embedding_dim", s.embedding_dim, w);
    detail::read_field(*it, "num_heads", s.num_heads, w);
    detail::read_field(*it, "num_gates", s.num_gates, w);
    detail::read_field(*it, "backend", s.backend, w);
    detail::read_field(*it, "function", s.function, w);
    detail::read_field(*it, "bias_init", s.bias_init, w);
    detail::read_field(*it, "recurrent_weight_init", s.recurrent_weight_init, w);
    detail::read_field(*it, "conv1d_kernel_size", s.conv1d_kernel_size, w);
    detail::read_field(*it, "group_norm_weight", s.group_norm_weight, w);
    detail::read_field(*it, "dropout", s.dropout, w);
    detail::read_field(*it, "_block_idx", s._block_idx, w);
    detail::read_field(*it, "_num_blocks", s._num_blocks, w);
    parse_slstm_function(s.function);
  }
  auto ff = j.find("feedforward");
  if (ff == j.end() || ff->is_null()) {
    c.feedforward.reset();
  } else {
    c.feedforward = feedforward_config_from_json(*ff, where + "feedforward.");
  }
  return c;
}

inline Json to_json(const SLstmBlockConfig& c) {
  const auto& s = c.slstm;
  Json j{{"_num_blocks", c._num_blocks},
         {"_block_idx", c._block_idx},
         {"slstm",
          {{"embedding_dim", s.embedding_dim},
           {"hidden_size", s.hidden_size},
           {"num_heads", s.num_heads},
           {"num_states", s.num_states},
           {"num_gates", s.num_gates},
           {"backend", s.backend},
           {"function", s.function},
           {"bias_init", s.bias_init},
           {"recurrent_weight_init", s.recurrent_weight_init},
           {"conv1d_kernel_size", s.conv1d_kernel_size},
           {"group_norm_weight", s.group_norm_weight},
           {"dropout", s.dropout},
           {"_block_idx", s._block_idx},
           {"_num_blocks", s._num_blocks}}},
         {"feedforward", nullptr}};
  if (c.feedforward) {
    const auto& f = *c.feedforward;
    j["feedforward"] = Json{{"proj_factor", f.proj_factor},
                            {"act_fn", f.act_fn},
                            {"embedding_dim", f.embedding_dim},
                            {"dropout", f.dropout},
                            {"bias", f.bias},
                            {"ff_type", f.ff_type},
                            {"_num_blocks", f._num_blocks},
                            {"round_proj_up_dim_up", f.round_proj_up_dim_up},
                            {"round_proj_up_to_multiple_of", f.round_proj_up_to_multiple_of},
                            {"_proj_up_dim", f._proj_up_dim}};
  }
  return j;
}

inline void read_block_stack_fields(const Json& j, BlockStackConfig& c) {
  check(j.is_object(), "config must be a JSON object");
  auto m = j.find("mlstm_block");
  if (m != j.end() && !m->is_null()) c.mlstm_block = mlstm_block_config_from_json(*m, "mlstm_block.");
  auto s = j.find("slstm_block");
  if (s != j.end() && !s->is_null()) c.slstm_block = slstm_block_config_from_json(*s, "slstm_block.");
  detail::read_field(j, "context_length", c.context_length, "");
  detail::read_field(j, "num_blocks", c.num_blocks, "");
  detail::read_field(j, "embedding_dim", c.embedding_dim, "");
  detail::read_field(j, "add_post_blocks_norm", c.add_post_blocks_norm, "");
  detail::read_field(j, "bias", c.bias, "");
  detail::read_field(j, "dropout", c.dropout, "");
  auto at = j.find("slstm_at");
  if (at != j.end() && !at->is_null()) {
    if (at->is_string()) {
      check(at->get<std::string>() == "all", "config field 'slstm_at' must be a list or \"all\", got ",
            at->dump());
      c.slstm_at_all = true;
    } else {
      check(at->is_array(), "config field 'slstm_at' must be a list or \"all\", got ", at->dump());
      for (const auto& v : *at) {
        check(v.is_number_integer(), "config field 'slstm_at' must hold integers, got ", v.dump());
        c.slstm_at.push_back(v.get<Index>());
      }
    }
  }
}

inline Json block_stack_fields_to_json(const BlockStackConfig& c) {
  Json j{{"mlstm_block", nullptr},
         {"slstm_block", nullptr},
         {"context_length", c.context_length},
         {"num_blocks", c.num_blocks},
         {"embedding_dim", c.embedding_dim},
         {"add_post_blocks_norm", c.add_post_blocks_norm},
         {"bias", c.bias},
         {"dropout", c.dropout},
         {"_block_map", c.block_map_string()}};
  if (c.mlstm_block) j["mlstm_block"] = to_json(*c.mlstm_block);
  if (c.slstm_block) j["slstm_block"] = to_json(*c.slstm_block);
  if (c.slstm_at_all) {
    j["slstm_at"] = "all";
  } else {
    j["slstm_at"] = c.slstm_at;
  }
  return j;
}

/// xLSTMBlockStackConfig from its JSON; derived fields recomputed and validated.
inline BlockStackConfig block_stack_config_from_json(const Json& j) {
  BlockStackConfig c;
  read_block_stack_fields(j, c);
  c.post_init();
  c.validate();
  return c;
}

inline Json to_json(const BlockStackConfig& c) { return block_stack_fields_to_json(c); }

/// xLSTMLMModelConfig from its JSON; derived fields recomputed and validated.
inline LanguageModelConfig language_model_config_from_json(const Json& j) {
  LanguageModelConfig c;
  read_block_stack_fields(j, c);
  detail::read_field(j, "vocab_size", c.vocab_size, "");
  detail::read_field(j, "tie_weights", c.tie_weights, "");
  detail::read_field(j, "weight_decay_on_embedding", c.weight_decay_on_embedding, "");
  detail::read_field(j, "add_embedding_dropout", c.add_embedding_dropout, "");
  c.post_init();
  c.validate();
  return c;
}

inline Json to_json(const LanguageModelConfig& c) {
  Json j = block_stack_fields_to_json(c);
  j["vocab_size"] = c.vocab_size;
  j["tie_weights"] = c.tie_weights;
  j["weight_decay_on_embedding"] = c.weight_decay_on_embedding;
  j["add_embedding_dropout"] = c.add_embedding_dropout;
  return j;
}

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

}  // namespace xlstm::io
