// Loading a language model exported from the official PyTorch package (see
// examples/README.md for the three lines of Python that export it):
//
//   from_pytorch model.safetensors [config.json] [--prefix P]
//
//   model.safetensors  the model's state_dict (official names)
//   config.json        xLSTMLMModelConfig as JSON (dataclasses.asdict); if
//                      absent, the file's "config" metadata entry is used
//   --prefix P         the parameters' key prefix in the file (e.g. "param.")
//
// Runs tokens through forward() and prints statistics of the logits. The
// tokens are the file's "input.tokens" if it has them (else a fixed
// sequence); if the file holds reference logits "output.logits" (the golden
// test files do), prints the largest difference and fails above 1e-4.
//
// Without arguments it demonstrates the round trip itself: a small random
// model is saved (io::save_module, io::to_json) to a temporary directory,
// loaded back the same way as above, and must give identical logits.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "utf8_arguments.hpp"
#include "xlstm/xlstm.hpp"

namespace {

using xlstm::Index;
namespace io = xlstm::io;

constexpr double kTolerance = 1e-4;

/// The config from `config_path`, or else from the file's "config" metadata.
xlstm::LanguageModelConfig read_config(const std::string& config_path,
                                       const io::SafetensorsFile& file) {
  if (!config_path.empty()) {
    return io::language_model_config_from_json(io::read_json_file(config_path));
  }
  const auto it = file.metadata().find("config");
  xlstm::check(it != file.metadata().end(), file.name(),
               ": no config.json given and the file has no \"config\" metadata entry");
  return io::language_model_config_from_json(
      io::parse_json(it->second, file.name() + ": metadata \"config\""));
}

/// Builds the model the config describes and loads its weights.
std::unique_ptr<xlstm::LanguageModel<float>> load_model(const io::SafetensorsFile& file,
                                                        const std::string& config_path,
                                                        const std::string& prefix) {
  auto model = std::make_unique<xlstm::LanguageModel<float>>(read_config(config_path, file));
  io::LoadOptions options;
  options.prefix = prefix;
  io::load_module(*model, file, options);  // all or nothing; lists every mismatch
  return model;
}

/// The file's "input.tokens" (B x T int64) if present, else 1 x 16 fixed ids.
xlstm::Tokens tokens_for(const io::SafetensorsFile& file, Index vocab) {
  if (file.contains("input.tokens")) {
    const auto& shape = file.info("input.tokens").shape;
    xlstm::check(shape.size() == 2, file.name(), ": 'input.tokens' must be 2-D (B, T)");
    xlstm::Tokens tokens(static_cast<Index>(shape[0]), static_cast<Index>(shape[1]));
    file.read_into<std::int64_t>("input.tokens", tokens.data(), std::size_t(tokens.size()));
    return tokens;
  }
  xlstm::Tokens tokens(1, 16);
  for (Index t = 0; t < tokens.cols(); ++t) tokens(0, t) = (7 * t + 3) % vocab;
  return tokens;
}

void print_stats(const xlstm::Sequence<float>& logits) {
  const auto& m = logits.matrix();
  const double mean = double(m.mean());
  const double std = std::sqrt(double((m.array() - float(mean)).square().mean()));
  Index best = 0;
  logits.at(0, logits.time() - 1).maxCoeff(&best);
  std::printf(
      "logits %ld x %ld x %ld: mean %+.6f, std %.6f, min %+.6f, max %+.6f; "
      "row 0 predicts token %ld next\n",
      long(logits.batch()), long(logits.time()), long(logits.features()), mean, std,
      double(m.minCoeff()), double(m.maxCoeff()), long(best));
}

/// Loads, runs and (if the file has reference logits) compares. Returns the
/// exit code.
int run(const std::string& weights, const std::string& config_path, const std::string& prefix) {
  const auto file = io::SafetensorsFile::open(weights);
  std::unique_ptr<xlstm::LanguageModel<float>> model;
  try {
    model = load_model(file, config_path, prefix);
  } catch (const xlstm::Error&) {
    // A common slip: the tensors carry a prefix. Name it if there is one.
    const std::string key = "token_embedding.weight";
    for (const auto& name : file.names()) {
      if (name.size() > key.size() &&
          name.compare(name.size() - key.size(), key.size(), key) == 0 &&
          name.substr(0, name.size() - key.size()) != prefix) {
        std::fprintf(stderr, "hint: the file has '%s': try --prefix %s\n", name.c_str(),
                     name.substr(0, name.size() - key.size()).c_str());
      }
    }
    throw;
  }
  std::printf("loaded %s: %ld blocks (%s), E = %ld, vocabulary %ld\n", weights.c_str(),
              long(model->stack().num_blocks()), model->config().block_map_string().c_str(),
              long(model->embedding_dim()), long(model->vocab_size()));
  const auto tokens = tokens_for(file, model->vocab_size());
  auto state = model->initial_state(tokens.rows());
  xlstm::Sequence<float> logits;
  model->forward(tokens, state, logits);
  print_stats(logits);
  if (!file.contains("output.logits")) return 0;
  const auto expected = file.read<float>("output.logits");
  xlstm::check(expected.size() == std::size_t(logits.matrix().size()), file.name(),
               ": 'output.logits' has ", expected.size(), " values, the model gave ",
               logits.matrix().size());
  double max_diff = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    max_diff =
        std::max(max_diff, std::abs(double(logits.matrix().data()[i]) - double(expected[i])));
  }
  std::printf("vs the file's output.logits: max |diff| = %.3g (limit %.0e)\n", max_diff,
              kTolerance);
  return max_diff <= kTolerance ? 0 : 1;
}

/// No arguments: save a small random model the way the export does, load it
/// back through the same path as run() and check the logits are identical.
int round_trip() {
  xlstm::LanguageModelConfig config;
  config.vocab_size = 100;
  config.embedding_dim = 32;
  config.num_blocks = 3;
  config.context_length = 12;
  config.slstm_at = {1};
  config.mlstm_block = xlstm::MLstmBlockConfig{};
  config.slstm_block = xlstm::SLstmBlockConfig{};
  xlstm::LanguageModel<float> original(config);
  xlstm::Rng rng(2024);
  original.initialize(rng);

  const auto dir =
      std::filesystem::temp_directory_path() / ("xlstm_from_pytorch_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string weights = (dir / "model.safetensors").string();
  const std::string config_path = (dir / "config.json").string();
  io::save_module(original, weights);
  {
    std::ofstream config_file;
    examples::open_utf8(config_file, config_path);
    config_file << io::to_json(original.config()).dump(2) << "\n";
  }
  std::printf("saved a random model to %s (weights and config.json)\n", dir.string().c_str());

  int status = run(weights, config_path, "");

  // The loaded model must reproduce the original exactly.
  xlstm::Tokens tokens(2, 12);
  for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = (13 * i + 5) % config.vocab_size;
  const auto loaded = load_model(io::SafetensorsFile::open(weights), config_path, "");
  xlstm::Sequence<float> a, b;
  auto sa = original.initial_state(2);
  auto sb = loaded->initial_state(2);
  original.forward(tokens, sa, a);
  loaded->forward(tokens, sb, b);
  const double diff = double((a.matrix() - b.matrix()).cwiseAbs().maxCoeff());
  std::printf("round trip: original vs loaded logits max |diff| = %g\n", diff);
  std::filesystem::remove_all(dir);
  if (diff != 0) status = 1;
  std::printf("%s\n", status == 0 ? "OK" : "FAILED");
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  examples::Utf8Arguments utf8(argc, argv);
  argv = utf8.argv();
  std::vector<std::string> positional;
  std::string prefix;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: from_pytorch [model.safetensors [config.json]] [--prefix P]\n"
          "Loads a language model exported from the official PyTorch package and prints\n"
          "statistics of its logits; without arguments, round-trips a small random model.\n");
      return 0;
    }
    if (a == "--prefix" && i + 1 < argc) {
      prefix = argv[++i];
    } else if (a.rfind("--prefix=", 0) == 0) {
      prefix = a.substr(9);
    } else if (a.rfind("--", 0) == 0 || positional.size() == 2) {
      std::fprintf(stderr, "usage: from_pytorch [model.safetensors [config.json]] [--prefix P]\n");
      return 2;
    } else {
      positional.push_back(a);
    }
  }
  try {
    if (positional.empty()) return round_trip();
    return run(positional[0], positional.size() > 1 ? positional[1] : "", prefix);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "from_pytorch: %s\n", e.what());
    return 1;
  }
}
