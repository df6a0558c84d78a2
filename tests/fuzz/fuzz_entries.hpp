// The fuzzed entry points, shared by the libFuzzer targets (fuzz_*.cpp, clang
// only) and the regression test that replays the corpus and every input a
// fuzzer ever found (test_fuzz_regressions.cpp, any compiler).
//
// Contract under test: for any bytes, the library either succeeds or throws
// xlstm::Error — never crashes, never reads out of bounds, never throws
// anything else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/torch_checkpoint.hpp"

#include "stored_zip.hpp"

namespace fuzz {

/// Parse a safetensors file from bytes and read every tensor in every way.
inline void safetensors(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file = xlstm::io::SafetensorsFile::from_bytes(
        std::vector<std::uint8_t>(data, data + size), "fuzz.safetensors");
    for (const auto& name : file.names()) {
      const auto& info = file.info(name);
      if (info.element_count() > (std::size_t(1) << 22)) continue;  // keep runs fast
      (void)file.read<double>(name);
      (void)file.read<float>(name);
      if (file.can_view<float>(name)) (void)file.view<float>(name);
    }
    for (const auto& [key, value] : file.metadata()) (void)key.size(), (void)value.size();
  } catch (const xlstm::Error&) {
  }
}

/// Read a PyTorch checkpoint from bytes twice: the bytes as the whole file
/// (the zip layer), and as the data.pkl of an archive whose storages "0" to
/// "15" (256 bytes each) are valid, so that mutations reach the unpickler and
/// the tensor checks past the zip's checksums. Whatever loads is read in
/// every way.
inline void torch_checkpoint(const std::uint8_t* data, std::size_t size) {
  auto read_all = [](std::vector<std::uint8_t> bytes) {
    try {
      const auto checkpoint = xlstm::io::TorchCheckpoint::from_bytes(std::move(bytes), "fuzz.ckpt");
      for (const auto& name : checkpoint.names()) {
        if (checkpoint.info(name).element_count() > (std::size_t(1) << 22)) continue;
        (void)checkpoint.read<double>(name);
        (void)checkpoint.bytes(name);
      }
      (void)checkpoint.to_safetensors(xlstm::io::tirex_state_dict_key);
      if (const auto* hyper = checkpoint.hyper_parameters()) (void)hyper->describe();
    } catch (const xlstm::Error&) {
    }
  };
  std::vector<std::uint8_t> bytes(data, data + size);
  read_all(bytes);
  std::vector<ZipFile> files = {{"archive/data.pkl", std::move(bytes)}};
  for (int key = 0; key < 16; ++key) {
    files.push_back({"archive/data/" + std::to_string(key),
                     std::vector<std::uint8_t>(256, static_cast<std::uint8_t>(17 * key))});
  }
  read_all(stored_zip(files));
}

/// Parse a config JSON as every config kind the library reads.
inline void config_json(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  xlstm::io::Json json;
  try {
    json = xlstm::io::parse_json(text, "fuzz config");
  } catch (const xlstm::Error&) {
    return;
  }
  // Configs whose sizes would need more than this many parameters are not
  // built (a fuzzer may ask for E = 10^9); parsing and validation still run.
  // Nor are configs of more blocks than this written back: the block map is a
  // string with one entry per block, and escaping one of 25 million entries
  // took the fuzzer's whole time budget (a slow input, not a defect).
  constexpr double kMaxParameters = 2e6;
  constexpr xlstm::Index kMaxBlocksToWrite = 4096;
  try {
    const auto c = xlstm::io::language_model_config_from_json(json);
    if (c.num_blocks <= kMaxBlocksToWrite) (void)xlstm::io::to_json(c).dump();
    const double e = double(c.embedding_dim);
    if (double(c.vocab_size) * e + double(c.num_blocks) * 16 * e * e < kMaxParameters) {
      xlstm::LanguageModel<float> model(c);
      (void)model;
    }
  } catch (const xlstm::Error&) {
  }
  try {
    const auto c = xlstm::io::large_model_config_from_json(json);
    (void)xlstm::io::to_json(c).dump();
  } catch (const xlstm::Error&) {
  }
  try {
    (void)xlstm::io::mlstm_block_config_from_json(json);
    (void)xlstm::io::slstm_block_config_from_json(json);
  } catch (const xlstm::Error&) {
  }
}

/// The small language model every model-loading input is loaded into.
inline const xlstm::LanguageModelConfig& model_config() {
  static const xlstm::LanguageModelConfig config = [] {
    xlstm::LanguageModelConfig c;
    c.mlstm_block = xlstm::MLstmBlockConfig{};
    c.mlstm_block->mlstm.num_heads = 2;
    c.slstm_block = xlstm::SLstmBlockConfig{};
    c.slstm_block->slstm.num_heads = 2;
    c.embedding_dim = 16;
    c.num_blocks = 2;
    c.slstm_at = {1};
    c.context_length = 8;
    c.vocab_size = 11;
    c.post_init();
    return c;
  }();
  return config;
}

/// The small xLSTM-Large model of the second model_load seed.
inline const xlstm::LargeModelConfig& large_model_config() {
  static const xlstm::LargeModelConfig config = [] {
    xlstm::LargeModelConfig c;
    c.embedding_dim = 16;
    c.num_heads = 2;
    c.num_blocks = 2;
    c.vocab_size = 11;
    return c;
  }();
  return config;
}

/// Load a model checkpoint from bytes, as the NeurIPS language model of
/// model_config() and as an xLSTM-Large model whose config is inferred from
/// the tensors; whatever loads is run.
inline void model_load(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> bytes(data, data + size);
  try {
    const auto file = xlstm::io::SafetensorsFile::from_bytes(bytes, "fuzz_model.safetensors");
    xlstm::LanguageModel<float> model(model_config());
    xlstm::io::LoadOptions options;
    options.check_finite = true;
    xlstm::io::load_module(model, file, options);
    xlstm::Tokens tokens(1, 3);
    tokens << 1, 2, 3;
    auto state = model.initial_state(1);
    xlstm::Sequence<float> logits;
    model.forward(tokens, state, logits);
  } catch (const xlstm::Error&) {
  }
  try {
    const auto files = xlstm::io::CheckpointFiles::from_file(
        xlstm::io::SafetensorsFile::from_bytes(std::move(bytes), "fuzz_large.safetensors"));
    // Inferred sizes are not built beyond this many parameters (as above).
    const auto c = xlstm::io::infer_large_model_config(files);
    const double e = double(c.embedding_dim);
    if (double(c.vocab_size) * e + double(c.num_blocks) * 16 * e * e > 2e6) return;
    xlstm::io::LargeLoadOptions options;
    options.check_finite = true;
    auto model = xlstm::io::load_large_model<float>(files, std::nullopt, options);
    xlstm::Tokens tokens(1, 3);
    tokens << 0, 1, 2;
    auto state = model.initial_state(1);
    xlstm::Sequence<float> logits;
    model.forward(tokens, state, logits);
  } catch (const xlstm::Error&) {
  }
}

}  // namespace fuzz
