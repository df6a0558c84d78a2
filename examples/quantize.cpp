// Quantising a checkpoint ahead of time (docs/math.md §16.4):
//
//   quantize INPUT OUTPUT_DIR [--format int8|q4] [--large] [--include-embedding]
//
//   INPUT              a NeurIPS language model (a directory with config.json and
//                      model.safetensors, or the .safetensors file beside its
//                      config.json); with --large an xLSTM-Large checkpoint
//                      (a directory, single or sharded, official or Hugging Face names)
//   OUTPUT_DIR         gets config.json and model.safetensors: the large weight
//                      matrices as 8-bit (int8_rows, the default) or 4-bit (q4_g32)
//                      values with their scales, the other weight matrices in
//                      their own dtype (16-bit stays 16-bit), vectors as float
//   --include-embedding  quantise the embedding and the LM head too
//
// The weights are quantised while loading (io::LoadOptions::quantize), one
// row at a time straight from the mapped input file, float or BF16: no float
// copy of the model is made, nor of one matrix; the output is written straight
// from the quantised model (peak memory: the quantised model, e.g. 7.1 GB for
// the 7B architecture in int8). Loading OUTPUT_DIR with
// io::load_language_model / io::load_large_model gives the quantised model
// back bit for bit, its values read in place from the mapped file.
//
// Without arguments it demonstrates the round trip: a small random model is
// saved, quantised by the same code into a temporary directory, loaded back,
// and its logits must equal those of the model quantised in memory, bit for bit.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "utf8_arguments.hpp"
#include "xlstm/xlstm.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = xlstm::io;
using xlstm::Index;

struct Options {
  std::string input, output;
  xlstm::WeightStorage format = xlstm::WeightStorage::int8_rows;
  bool large = false;
  bool include_embedding = false;
};

/// Loads INPUT with its weight matrices quantised while loading, and says
/// what was quantised (quantize_weights on the loaded model has nothing left
/// to do: it only lists the matrices it finds quantised and those kept).
template <typename Model, typename Load>
Model load_quantized(const Options& options, Load load) {
  const auto start = std::chrono::steady_clock::now();
  xlstm::QuantizeOptions rule;
  rule.include_embedding_and_head = options.include_embedding;
  Model model = load(options.format, rule);
  const xlstm::QuantizeReport report = xlstm::quantize_weights(model, options.format, rule);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "loaded with %zu weight matrices quantised to %s (%zu kept), %.1f MB of weight "
      "matrices, in %.2f s\n",
      report.quantized.size(), xlstm::storage_name(options.format), report.kept.size(),
      double(report.bytes_after) / 1e6, seconds);
  return model;
}

/// INPUT -> OUTPUT_DIR (config.json and model.safetensors).
void run(const Options& options) {
  const fs::path out = io::detail::utf8_path(options.output);
  fs::create_directories(out);
  const std::string weights = io::detail::utf8_string(out / "model.safetensors");
  if (options.large) {
    auto model = load_quantized<xlstm::LargeModel<float>>(
        options, [&](xlstm::WeightStorage format, const xlstm::QuantizeOptions& rule) {
          io::LargeLoadOptions load;  // unselected 16-bit weights stay mapped and 16-bit
          load.quantize = format;
          load.quantize_options = rule;
          return io::load_large_model<float>(options.input, std::nullopt, load);
        });
    io::save_large_model(model, options.output, io::LargeNaming::official, /*fused=*/false,
                         std::nullopt, /*num_shards=*/1, /*as_directory=*/true);
  } else {
    auto model = load_quantized<xlstm::LanguageModel<float>>(
        options, [&](xlstm::WeightStorage format, const xlstm::QuantizeOptions& rule) {
          io::LoadOptions load;
          load.keep_half_weights = true;  // unselected 16-bit matrices stay 16-bit, as written
          load.quantize = format;
          load.quantize_options = rule;
          return io::load_language_model<float>(options.input, load);
        });
    io::save_module(model, weights);
    const fs::path in = io::detail::utf8_path(options.input);
    const fs::path config = (fs::is_directory(in) ? in : in.parent_path()) / "config.json";
    fs::copy_file(config, out / "config.json", fs::copy_options::overwrite_existing);
  }
  std::printf("wrote %s (%.1f MB)\n", weights.c_str(), double(fs::file_size(weights)) / 1e6);
}

/// The demonstration: random model -> checkpoint -> run() -> load -> compare.
int demo() {
  xlstm::LanguageModelConfig config;
  config.mlstm_block.emplace();
  config.slstm_block.emplace();
  config.slstm_at = {1};
  config.num_blocks = 2;
  config.embedding_dim = 128;
  config.vocab_size = 256;
  config.context_length = 32;
  xlstm::LanguageModel<float> model(config);
  const fs::path dir = fs::temp_directory_path() / "xlstm_quantize_demo";
  fs::create_directories(dir / "float");
  io::save_module(model, io::detail::utf8_string(dir / "float" / "model.safetensors"));
  std::ofstream config_file(dir / "float" / "config.json");
  config_file << io::to_json(model.config()).dump(2);
  config_file.close();

  xlstm::Tokens tokens(1, 12);
  for (Index t = 0; t < tokens.cols(); ++t) tokens(0, t) = (37 * t + 5) % config.vocab_size;
  auto logits_of = [&](const xlstm::LanguageModel<float>& m) {
    auto state = m.initial_state(1);
    xlstm::Sequence<float> logits;
    m.forward(tokens, state, logits);
    return logits.matrix();
  };
  const xlstm::Matrix<float> reference = logits_of(model);
  int failures = 0;
  for (const auto format : {xlstm::WeightStorage::int8_rows, xlstm::WeightStorage::q4_g32}) {
    Options options;
    options.input = io::detail::utf8_string(dir / "float");
    options.output = io::detail::utf8_string(dir / xlstm::storage_name(format));
    options.format = format;
    run(options);
    const auto loaded = io::load_language_model<float>(options.output);
    xlstm::LanguageModel<float> in_memory = model;
    xlstm::quantize_weights(in_memory, format);
    const xlstm::Matrix<float> got = logits_of(loaded), want = logits_of(in_memory);
    const bool same = got.cwiseEqual(want).all();
    const double error = (got - reference).norm() / reference.norm();
    std::printf("%s: loaded logits %s the in-memory quantised ones; relative error vs float %.3g\n",
                xlstm::storage_name(format), same ? "equal" : "DIFFER FROM", error);
    if (!same) ++failures;
  }
  fs::remove_all(dir);
  return failures == 0 ? 0 : 1;
}

int usage(const char* program) {
  std::fprintf(stderr,
               "usage: %s INPUT OUTPUT_DIR [--format int8|q4] [--large] [--include-embedding]\n"
               "       %s            (no arguments: a round-trip demonstration)\n",
               program, program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  examples::Utf8Arguments utf8(argc, argv);
  const std::vector<std::string> args(utf8.argv(), utf8.argv() + argc);
  if (args.size() == 1) {
    try {
      return demo();
    } catch (const xlstm::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  Options options;
  std::vector<std::string> positional;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--format" && i + 1 < args.size()) {
      const std::string f = args[++i];
      if (f == "int8") {
        options.format = xlstm::WeightStorage::int8_rows;
      } else if (f == "q4") {
        options.format = xlstm::WeightStorage::q4_g32;
      } else {
        std::fprintf(stderr, "--format must be int8 or q4, got '%s'\n", f.c_str());
        return 2;
      }
    } else if (a == "--large") {
      options.large = true;
    } else if (a == "--include-embedding") {
      options.include_embedding = true;
    } else if (a.rfind("--", 0) == 0) {
      return usage(args[0].c_str());
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) return usage(args[0].c_str());
  options.input = positional[0];
  options.output = positional[1];
  try {
    run(options);
  } catch (const xlstm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
