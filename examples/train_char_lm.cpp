// A character-level xLSTM language model on any text file: the vocabulary is
// the file's distinct bytes, the last --validation-fraction of the file is
// held out, training draws random windows of --context bytes, and the
// validation loss is reported in bits per character. At the end it saves a
// model directory (model.safetensors + config.json, loadable with
// io::load_language_model, plus vocab.json) and prints a sampled text.
//
//   train_char_lm --text README.md --steps 300 --save-dir char-model
//   train_char_lm --help
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "train_common.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/model/cross_entropy.hpp"
#include "xlstm/model/generate.hpp"
#include "xlstm/train/numpy_generator.hpp"

namespace {

using namespace train_example;  // NOLINT: the examples' shared helpers (train_common.hpp)
using xlstm::Index;

const char* kUsage =
    "usage: train_char_lm --text FILE [options]\n"
    "Trains a character-level xLSTM language model on FILE (vocabulary: its bytes) and\n"
    "reports the validation loss in bits per character (bpc).\n"
    "\n"
    "data:\n"
    "  --text FILE              the training text (required)\n"
    "  --validation-fraction X  the file's last X held out (0.1)\n"
    "  --context N              bytes per training window (64)\n"
    "  --data-seed N            seed of the window positions (0)\n"
    "model (sLSTM everywhere by default):\n"
    "  --slstm-at LIST | --mlstm-only, --embedding-dim N (64), --num-blocks N (2),\n"
    "  --num-heads N (4), --seed N (0)\n"
    "recipe (AdamW with the official groups, warm-up + cosine):\n"
    "  --steps N (300), --batch-size N (16), --lr X (3e-3), --warmup-steps N (30),\n"
    "  --lr-decay-factor X (0.1), --weight-decay X (0.1), --max-grad-norm X (1; 0 = off)\n"
    "evaluation and output:\n"
    "  --eval-every N           steps between validations; 0 = only at the end (100)\n"
    "  --eval-windows N         validation windows of --context bytes, at most (64)\n"
    "  --print-every N          plain progress lines every N steps when not a terminal (50)\n"
    "  --log FILE.json          every step and validation\n"
    "  --save-dir DIR           model.safetensors, config.json, vocab.json\n"
    "  --sample-length N        bytes to generate at the end; 0 = none (200)\n"
    "  --temperature X          sampling temperature; 0 = greedy (0.8)\n"
    "  --prompt TEXT            the sample's prompt (default: the validation text's start)\n"
    "  --threads N              0 = all hardware threads (0)\n"
    "  --expect-bpc-below X     exit 1 unless the final validation bpc is below X (tests)\n"
    "\n"
    "Exit codes: 0 done, 1 error or failed expectation, 2 bad command line.\n";

struct Options : train_example::CommonOptions {
  std::string text, save_dir, prompt;
  bool has_prompt = false;
  double validation_fraction = 0.1, temperature = 0.8;
  std::int64_t context = 64, data_seed = 0, eval_windows = 64, sample_length = 200;
  double expect_bpc_below = std::nan("");

  Options() {
    model.slstm_at_all = true;
    model.num_heads = 4;
    recipe.steps = 300;
    recipe.batch_size = 16;
    recipe.lr = 3e-3;
    recipe.warmup_steps = 30;
    recipe.lr_decay_factor = 0.1;
    recipe.max_grad_norm = 1.0;
    eval_every = 100;
    print_every = 50;
  }
};

Options parse(int argc, char** argv, bool& help) {
  Options o;
  train_example::parse_arguments(argc, argv, o, help, [&](auto& args, const std::string& arg) {
    if (arg == "--text") {
      o.text = args.value();
    } else if (arg == "--validation-fraction") {
      o.validation_fraction = args.number(0, /*exclusive=*/true);
      if (o.validation_fraction >= 1) {
        throw UsageError(
            format("--validation-fraction must be in (0, 1), got %g", o.validation_fraction));
      }
    } else if (arg == "--context") {
      o.context = args.integer(1, 1 << 20);
    } else if (arg == "--data-seed") {
      o.data_seed = args.integer(0);
    } else if (arg == "--eval-windows") {
      o.eval_windows = args.integer(1);
    } else if (arg == "--save-dir") {
      o.save_dir = args.value();
    } else if (arg == "--sample-length") {
      o.sample_length = args.integer(0, 1 << 20);
    } else if (arg == "--temperature") {
      o.temperature = args.number(0);
    } else if (arg == "--prompt") {
      o.prompt = args.value();
      o.has_prompt = true;
    } else if (arg == "--expect-bpc-below") {
      o.expect_bpc_below = args.number(0, /*exclusive=*/true);
    } else {
      return false;
    }
    return true;
  });
  if (!help && o.text.empty()) throw UsageError("--text FILE is required (see --help)");
  return o;
}

// The file's distinct bytes, in byte order, as token ids 0..V-1.
struct Vocabulary {
  std::vector<unsigned char> bytes;     // id -> byte
  std::array<std::int64_t, 256> ids{};  // byte -> id (-1: not in the file)

  explicit Vocabulary(const std::string& text) {
    ids.fill(-1);
    std::array<bool, 256> seen{};
    for (char c : text) seen[static_cast<unsigned char>(c)] = true;
    for (int b = 0; b < 256; ++b) {
      if (seen[std::size_t(b)]) {
        ids[std::size_t(b)] = std::int64_t(bytes.size());
        bytes.push_back(static_cast<unsigned char>(b));
      }
    }
  }
  Index size() const { return Index(bytes.size()); }
  std::vector<std::int64_t> encode(const std::string& text) const {
    std::vector<std::int64_t> out;
    for (char c : text) {
      const std::int64_t id = ids[static_cast<unsigned char>(c)];
      if (id < 0) {
        throw UsageError(format("--prompt: byte 0x%02x does not occur in the text",
                                unsigned(static_cast<unsigned char>(c))));
      }
      out.push_back(id);
    }
    return out;
  }
};

// Windows of `context` + 1 tokens from `ids` at the given starts: inputs
// are the first `context`, targets the next-token shift.
void make_batch(const std::vector<std::int64_t>& ids, const std::vector<std::int64_t>& starts,
                Index context, xlstm::Tokens& inputs, xlstm::Tokens& targets) {
  inputs.resize(Index(starts.size()), context);
  targets.resize(Index(starts.size()), context);
  for (std::size_t b = 0; b < starts.size(); ++b) {
    for (Index t = 0; t < context; ++t) {
      inputs(Index(b), t) = ids[std::size_t(starts[b] + t)];
      targets(Index(b), t) = ids[std::size_t(starts[b] + t + 1)];
    }
  }
}

// Mean cross-entropy over the validation windows, in bits per character.
double validation_bpc(const xlstm::LanguageModel<float>& model, const xlstm::Tokens& inputs,
                      const xlstm::Tokens& targets) {
  auto state = model.initial_state(inputs.rows());
  xlstm::Sequence<float> logits;
  model.forward(inputs, state, logits);
  return double(xlstm::cross_entropy(logits, targets)) / std::log(2.0);
}

std::string printable(const std::vector<unsigned char>& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    out += (c == '\n' || c == '\t' || (c >= 32 && c < 127) || c >= 128) ? char(c) : '?';
  }
  return out;
}

int run(const Options& o) {
  xlstm::set_num_threads(int(o.threads));
  std::ifstream file;
  examples::open_utf8(file, o.text, std::ios::binary);
  if (!file) throw UsageError("--text: cannot read '" + o.text + "'");
  const std::string text{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  const Vocabulary vocab(text);
  std::vector<std::int64_t> ids;
  for (char c : text) ids.push_back(vocab.ids[static_cast<unsigned char>(c)]);
  const auto total = std::int64_t(ids.size());
  const auto validation_size = std::int64_t(double(total) * o.validation_fraction);
  const std::int64_t train_size = total - validation_size;
  if (train_size < o.context + 1 || validation_size < o.context + 1) {
    throw UsageError(
        format("--text: '%s' has %lld bytes: too few for a training and a validation window of "
               "--context %lld (+1) with --validation-fraction %g",
               o.text.c_str(), (long long)total, (long long)o.context, o.validation_fraction));
  }
  const std::vector<std::int64_t> train(ids.begin(), ids.begin() + train_size);
  const std::vector<std::int64_t> validation(ids.begin() + train_size, ids.end());

  const auto config = o.model.config(vocab.size(), Index(o.context));
  train_example::Trainer trainer(config, o.model, o.recipe);
  const auto& recipe = o.recipe;
  std::printf("text: %s, %lld bytes (%lld train, %lld validation), %lld distinct\n", o.text.c_str(),
              (long long)total, (long long)train_size, (long long)validation_size,
              (long long)vocab.size());
  std::printf(
      "model: %lld blocks [%s] (1 = sLSTM), E=%lld, %lld head(s), %zu parameters; "
      "context %lld, batch %lld, %lld steps, %d thread(s)\n",
      (long long)o.model.num_blocks, config.block_map_string().c_str(),
      (long long)o.model.embedding_dim, (long long)o.model.num_heads, trainer.parameter_count(),
      (long long)o.context, (long long)recipe.batch_size, (long long)recipe.steps,
      xlstm::num_threads());

  // Validation: consecutive non-overlapping windows from the split's start.
  xlstm::Tokens eval_inputs, eval_targets;
  {
    std::vector<std::int64_t> starts;
    for (std::int64_t s = 0;
         s + o.context + 1 <= validation_size && std::int64_t(starts.size()) < o.eval_windows;
         s += o.context) {
      starts.push_back(s);
    }
    make_batch(validation, starts, Index(o.context), eval_inputs, eval_targets);
  }

  Json log;
  log["options"] = o.common_json();
  log["options"].update(Json{{"text", o.text},
                             {"validation_fraction", o.validation_fraction},
                             {"context", o.context},
                             {"data_seed", o.data_seed},
                             {"eval_windows", o.eval_windows}});
  log["model_config"] = xlstm::io::to_json(config);
  log["steps"] = Json::array();
  log["evaluations"] = Json::array();
  auto write_log = [&] {
    if (!o.log.empty()) train_example::write_json_file(log, o.log);
  };
  train_example::Progress progress(o.print_every);
  auto evaluate = [&](std::int64_t step) {
    const double bpc = validation_bpc(trainer.model(), eval_inputs, eval_targets);
    log["evaluations"].push_back({{"step", step}, {"validation_bpc", bpc}});
    progress.line(format("validation @ step %lld: %.4f bpc (%lld windows of %lld)", (long long)step,
                         bpc, (long long)eval_inputs.rows(), (long long)o.context));
    return bpc;
  };
  const double initial_bpc = evaluate(0);
  double final_bpc = initial_bpc;

  // Random window starts from numpy's generator (math §15.2), one batch per step.
  xlstm::NumpyGenerator positions(std::uint64_t(o.data_seed));
  std::vector<std::int64_t> starts(std::size_t(recipe.batch_size));
  xlstm::Tokens inputs, targets;
  const xlstm::Lengths all_steps;
  std::vector<double> losses;
  double window_seconds = 0, train_seconds = 0;
  std::int64_t window_steps = 0;
  for (std::int64_t step = 1; step <= recipe.steps; ++step) {
    const auto start = Clock::now();
    for (auto& s : starts) s = positions.integer(0, train_size - o.context);
    make_batch(train, starts, Index(o.context), inputs, targets);
    const auto result = trainer.step(inputs, targets, all_steps);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    losses.push_back(double(result.loss));
    window_seconds += seconds;
    train_seconds += seconds;
    ++window_steps;
    const double tokens = double(inputs.size());
    log["steps"].push_back({{"step", step},
                            {"loss", result.loss},
                            {"bpc", double(result.loss) / std::log(2.0)},
                            {"lr", result.lr},
                            {"grad_norm", result.grad_norm},
                            {"tokens_per_s", tokens / seconds}});
    if (!std::isfinite(result.loss)) {
      progress.line(
          format("step %lld: the loss is %g; stopping", (long long)step, double(result.loss)));
      write_log();
      return 1;
    }
    const bool last = step == recipe.steps;
    const double eta = double(recipe.steps - step) * train_seconds / double(step);
    progress.update(
        step,
        format("step %lld/%lld | train %.3f bpc (avg %.3f) | lr %.2e | gnorm %.3f | "
               "%.0f tok/s | ETA %s",
               (long long)step, (long long)recipe.steps, double(result.loss) / std::log(2.0),
               train_example::mean_of_last(losses, std::size_t(window_steps)) / std::log(2.0),
               result.lr, result.grad_norm, tokens * double(window_steps) / window_seconds,
               train_example::duration_string(eta).c_str()),
        last);
    if (step % o.print_every == 0 || last) {
      window_seconds = 0;
      window_steps = 0;
    }
    if ((o.eval_every > 0 && step % o.eval_every == 0) || last) {
      final_bpc = evaluate(step);
      write_log();
    }
  }
  progress.finish();
  log["final"] = {{"initial_validation_bpc", initial_bpc},
                  {"final_validation_bpc", final_bpc},
                  {"train_seconds", train_seconds}};
  write_log();
  std::printf("done: %lld steps in %s; validation %.4f -> %.4f bpc\n", (long long)recipe.steps,
              train_example::duration_string(train_seconds).c_str(), initial_bpc, final_bpc);

  const auto& model = trainer.model();
  if (!o.save_dir.empty()) {
    namespace fs = std::filesystem;
    fs::create_directories(o.save_dir);
    xlstm::io::save_module(model, (fs::path(o.save_dir) / "model.safetensors").string());
    train_example::write_json_file(xlstm::io::to_json(config),
                                   (fs::path(o.save_dir) / "config.json").string());
    train_example::write_json_file(Json(vocab.bytes),
                                   (fs::path(o.save_dir) / "vocab.json").string());
    std::printf("saved: %s/{model.safetensors,config.json,vocab.json}\n", o.save_dir.c_str());
  }
  if (o.sample_length > 0) {
    std::vector<std::int64_t> prompt =
        o.has_prompt ? vocab.encode(o.prompt)
                     : std::vector<std::int64_t>(
                           validation.begin(),
                           validation.begin() + std::min<std::int64_t>(16, validation_size));
    if (prompt.empty()) throw UsageError("--prompt must not be empty");
    xlstm::GenerateOptions options;
    options.max_length = Index(o.sample_length);
    options.temperature = o.temperature;
    options.seed = std::uint64_t(o.data_seed);
    // Training is over, so R no longer changes behind the cells' back: pack
    // the sLSTM kernels once for the steps (SLstmCell::prepare_kernels).
    trainer.model().prepare_kernels();
    const auto generated = xlstm::generate(model, {prompt}, options).front();
    std::vector<unsigned char> prompt_bytes, sample_bytes;
    for (auto id : prompt) prompt_bytes.push_back(vocab.bytes[std::size_t(id)]);
    for (auto id : generated) sample_bytes.push_back(vocab.bytes[std::size_t(id)]);
    std::printf("sample (temperature %g):\n[%s]%s\n", o.temperature,
                printable(prompt_bytes).c_str(), printable(sample_bytes).c_str());
  }
  return train_example::expect_below("validation bpc", final_bpc, o.expect_bpc_below);
}

}  // namespace

int main(int argc, char** argv) {
  return train_example::main(argc, argv, "train_char_lm", kUsage, parse, run);
}
