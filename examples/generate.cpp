// Text generation with an xLSTM-Large model, streaming token ids as they come.
//
//   generate [CHECKPOINT] [TOKEN...] [--max-length N] [--temperature T]
//            [--top-k K] [--top-p P] [--seed S]
//
// CHECKPOINT is a .safetensors file or a directory (model.safetensors or a
// sharded model.safetensors.index.json, with or without config.json); BF16/F16
// weights stay 16-bit in memory. Without it, a small random model is built so
// the program runs out of the box. TOKEN... is the prompt as token ids (empty:
// one BOS token, id 0). Temperature 0 (the default) is greedy decoding.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "utf8_arguments.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/model/generate.hpp"
#include "xlstm/model/large_model.hpp"

namespace {

using Clock = std::chrono::steady_clock;

bool is_token_id(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

xlstm::LargeModel<float> small_random_model() {
  xlstm::LargeModelConfig config;
  config.embedding_dim = 256;
  config.num_heads = 4;
  config.num_blocks = 4;
  config.vocab_size = 1024;
  xlstm::LargeModel<float> model(config);
  xlstm::Rng rng(42);
  model.initialize(rng, /*noise=*/0.5);
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  examples::Utf8Arguments utf8(argc, argv);
  argv = utf8.argv();
  try {
    std::string checkpoint;
    std::vector<std::int64_t> prompt;
    xlstm::GenerateOptions options;
    options.max_length = 32;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::printf(
            "usage: generate [checkpoint] [token ids...] [--max-length N] [--temperature T]\n"
            "                [--top-k K] [--top-p P] [--seed S]\n"
            "Generates from an xLSTM-Large checkpoint (file or directory), or from a small\n"
            "random model when none is given. Temperature 0 is greedy decoding.\n");
        return 0;
      }
      const bool has_value = i + 1 < argc;
      if (arg.rfind("--", 0) == 0 && !has_value) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        return 2;
      }
      if (arg == "--max-length") {
        options.max_length = std::atoll(argv[++i]);
      } else if (arg == "--temperature") {
        options.temperature = std::atof(argv[++i]);
      } else if (arg == "--top-k") {
        options.top_k = std::atoll(argv[++i]);
      } else if (arg == "--top-p") {
        options.top_p = std::atof(argv[++i]);
      } else if (arg == "--seed") {
        options.seed = std::strtoull(argv[++i], nullptr, 10);
      } else if (arg.rfind("--", 0) == 0) {
        std::fprintf(stderr, "unknown option %s\n", arg.c_str());
        return 2;
      } else if (is_token_id(arg)) {
        prompt.push_back(std::atoll(arg.c_str()));
      } else if (checkpoint.empty() && prompt.empty()) {
        checkpoint = arg;
      } else {
        std::fprintf(stderr, "unexpected argument %s\n", arg.c_str());
        return 2;
      }
    }

    const auto model =
        checkpoint.empty() ? small_random_model() : xlstm::io::load_large_model<float>(checkpoint);
    const auto& c = model.config();
    std::printf("model: E=%lld, %lld heads, %lld blocks, vocab %lld, %.1f MB of weights%s\n",
                static_cast<long long>(c.embedding_dim), static_cast<long long>(c.num_heads),
                static_cast<long long>(c.num_blocks), static_cast<long long>(c.vocab_size),
                double(model.weight_bytes()) / 1e6,
                xlstm::weight_matrices(model).front()->is_half() ? " (16-bit)" : "");
    if (prompt.empty()) prompt.push_back(options.bos_token);

    // The first token comes from the prefill logits; the rest from steps.
    const auto start = Clock::now();
    auto first = start;
    std::size_t generated = 0;
    options.on_token = [&](std::size_t, std::int64_t token) {
      if (generated++ == 0) first = Clock::now();
      std::printf("%lld ", static_cast<long long>(token));
      std::fflush(stdout);
    };
    xlstm::generate(model, {prompt}, options);
    const auto end = Clock::now();
    std::printf("\n");

    if (generated == 0) return 0;
    const double prefill = std::chrono::duration<double>(first - start).count();
    const double decode = std::chrono::duration<double>(end - first).count();
    std::printf("prefill: %zu tokens in %.3f s (%.1f tokens/s)\n", prompt.size(), prefill,
                double(prompt.size()) / prefill);
    if (generated > 1) {
      std::printf("decode: %zu tokens in %.3f s (%.1f tokens/s)\n", generated - 1, decode,
                  double(generated - 1) / decode);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
