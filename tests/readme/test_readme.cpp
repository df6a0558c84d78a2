// Compiles and runs every C++ snippet of README.md (extracted at build time
// by extract_snippets.cmake), so the README's code cannot rot. The files the
// snippets load ("my-model/", "xLSTM-7b/", ...) are made here first, in the
// working directory, from small random models.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "xlstm/xlstm.hpp"

// The snippets use the names the README shows; disable the warnings a
// fragment of example code gives when it is a function body of its own.
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif

#include "readme_snippets.inc"

namespace {

/// "my-model/": config.json and model.safetensors of a small language model.
void make_language_model_dir() {
  xlstm::LanguageModelConfig config;
  config.embedding_dim = 32;
  config.num_blocks = 2;
  config.vocab_size = 100;
  config.slstm_at = {1};
  config.mlstm_block = xlstm::MLstmBlockConfig{};
  config.mlstm_block->mlstm.num_heads = 2;
  config.slstm_block = xlstm::SLstmBlockConfig{};
  config.slstm_block->slstm.num_heads = 2;
  xlstm::LanguageModel<float> model(config);
  std::filesystem::create_directories("my-model");
  xlstm::io::SafetensorsWriter writer;
  xlstm::io::add_module(writer, model, "", xlstm::io::DType::BF16);
  writer.save("my-model/model.safetensors");
  std::ofstream("my-model/config.json") << xlstm::io::to_json(model.config()).dump(2);
}

/// "xLSTM-7b/": a small xLSTM-Large checkpoint directory with BF16 weights
/// (vocabulary 2000, so the README's token ids are valid).
void make_large_model_dir() {
  xlstm::LargeModelConfig config;
  config.embedding_dim = 32;
  config.num_heads = 2;
  config.num_blocks = 2;
  config.vocab_size = 2000;
  xlstm::LargeModel<float> model(config);
  xlstm::io::save_large_model(model, "xLSTM-7b", xlstm::io::LargeNaming::official, false,
                              xlstm::io::DType::BF16, 1, /*as_directory=*/true);
}

}  // namespace

int main() {
  make_language_model_dir();
  make_large_model_dir();
  int failed = 0;
  for (const auto& [number, snippet] : kSnippets) {
    try {
      snippet();
      std::printf("README snippet %d: ok\n", number);
    } catch (const std::exception& e) {
      std::printf("README snippet %d: FAILED: %s\n", number, e.what());
      ++failed;
    }
  }
  std::printf("%zu passed, %d failed\n", kSnippets.size() - std::size_t(failed), failed);
  return failed == 0 ? 0 : 1;
}
