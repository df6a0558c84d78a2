// What the training examples (train_parity, train_char_lm) share: checked
// command-line values (a bad one is a UsageError naming the option; main
// prints it and exits with code 2), the live progress line, and the JSON log
// written atomically.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <sstream>

#include "utf8_arguments.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/language_model_backward.hpp"
#include "xlstm/train/adamw.hpp"
#include "xlstm/train/grad_clip.hpp"
#include "xlstm/train/lr_schedule.hpp"

namespace train_example {

using Clock = std::chrono::steady_clock;
using Json = xlstm::io::Json;

/// A bad command line: main prints the message and exits with code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The whole of `text` as a decimal integer.
inline bool parse_integer(const std::string& text, std::int64_t& out) {
  const auto parsed = std::from_chars(text.data(), text.data() + text.size(), out);
  return parsed.ec == std::errc() && parsed.ptr == text.data() + text.size();
}

/// Walks argv: `option` is the current argument, `value()` takes the next.
class Arguments {
 public:
  Arguments(int argc, char** argv) : argc_(argc), argv_(argv) {}
  bool next() { return ++index_ < argc_; }
  std::string option() const { return argv_[index_]; }
  std::string value() {
    if (index_ + 1 >= argc_) throw UsageError(option() + " needs a value");
    return argv_[++index_];
  }
  /// An integer in [min, max].
  std::int64_t integer(std::int64_t min,
                       std::int64_t max = std::numeric_limits<std::int64_t>::max()) {
    const std::string name = option(), text = value();
    std::int64_t v = 0;
    if (!parse_integer(text, v) || v < min || v > max) {
      throw UsageError(name + " must be an integer in [" + std::to_string(min) + ", " +
                       (max == std::numeric_limits<std::int64_t>::max() ? std::string("inf")
                                                                        : std::to_string(max)) +
                       "], got '" + text + "'");
    }
    return v;
  }
  /// A finite number >= min (> min when `exclusive`).
  double number(double min, bool exclusive = false) {
    const std::string name = option(), text = value();
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    const bool ok =
        !text.empty() && *end == '\0' && std::isfinite(v) && (exclusive ? v > min : v >= min);
    if (!ok) {
      char bound[64];
      std::snprintf(bound, sizeof bound, "%s %g", exclusive ? ">" : ">=", min);
      throw UsageError(name + " must be a finite number " + bound + ", got '" + text + "'");
    }
    return v;
  }

 private:
  int argc_;
  char** argv_;
  int index_ = 0;
};

/// "1h02m", "3m05s", "12s".
inline std::string duration_string(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = std::int64_t(seconds + 0.5);
  char out[32];
  if (s >= 3600) {
    std::snprintf(out, sizeof out, "%lldh%02lldm", (long long)(s / 3600),
                  (long long)(s % 3600 / 60));
  } else if (s >= 60) {
    std::snprintf(out, sizeof out, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  } else {
    std::snprintf(out, sizeof out, "%llds", (long long)s);
  }
  return out;
}

/// The live progress line: rewritten in place with '\r' on a terminal (at
/// most ten times a second), else printed as a plain line every
/// `plain_every` steps. Other output goes through `line` so it does not land
/// in the middle of the progress line.
class Progress {
 public:
  explicit Progress(std::int64_t plain_every)
      : terminal_(isatty(fileno(stdout)) != 0), plain_every_(plain_every) {}
  bool terminal() const { return terminal_; }
  /// `force` prints whatever the interval (the last step).
  void update(std::int64_t step, const std::string& text, bool force = false) {
    if (terminal_) {
      const auto now = Clock::now();
      if (!force && std::chrono::duration<double>(now - last_).count() < 0.1) return;
      last_ = now;
      std::printf("\r%s\033[K", text.c_str());
      open_ = true;
    } else if (force || (plain_every_ > 0 && step % plain_every_ == 0)) {
      std::printf("%s\n", text.c_str());
    }
    std::fflush(stdout);
  }
  /// A line of its own (an evaluation, a message).
  void line(const std::string& text) {
    if (open_) std::printf("\n");
    open_ = false;
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }
  /// Ends the progress line (before the program's last output).
  void finish() {
    if (open_) std::printf("\n");
    open_ = false;
    std::fflush(stdout);
  }

 private:
  bool terminal_;
  std::int64_t plain_every_;
  Clock::time_point last_{};
  bool open_ = false;
};

/// Writes `json` to `path` through a temporary file and a rename, so a
/// reader never sees half a log.
inline void write_json_file(const Json& json, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out;
    examples::open_utf8(out, tmp);
    if (!out) throw std::runtime_error("cannot write '" + tmp + "'");
    out << json.dump(1) << "\n";
    if (!out) throw std::runtime_error("writing '" + tmp + "' failed");
  }
  std::filesystem::rename(xlstm::io::detail::utf8_path(tmp), xlstm::io::detail::utf8_path(path));
}

/// Mean of the last `count` values (all when fewer).
inline double mean_of_last(const std::vector<double>& values, std::size_t count) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t n = std::min(count, values.size());
  double sum = 0;
  for (std::size_t i = values.size() - n; i < values.size(); ++i) sum += values[i];
  return sum / double(n);
}

/// "0,1" as block indices (each once, at least one).
inline std::vector<xlstm::Index> parse_index_list(const std::string& option,
                                                  const std::string& text) {
  std::vector<xlstm::Index> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::int64_t v = -1;
    if (!parse_integer(item, v) || v < 0) {
      throw UsageError(option + " must be 'all', 'none' or block indices like 0,1, got '" + text +
                       "'");
    }
    for (xlstm::Index seen : out) {
      if (seen == xlstm::Index(v)) throw UsageError(option + " lists block " + item + " twice");
    }
    out.push_back(xlstm::Index(v));
  }
  if (out.empty()) throw UsageError(option + " must list at least one block index, got ''");
  return out;
}

/// The model's command-line options (the official config fields).
struct ModelOptions {
  std::vector<xlstm::Index> slstm_at;
  bool slstm_at_all = false;
  xlstm::Index embedding_dim = 64, num_blocks = 2, num_heads = 1;
  std::uint64_t seed = 0;

  /// Takes `arg` (and its value) if it is a model option.
  bool parse(Arguments& args, const std::string& arg) {
    if (arg == "--slstm-at") {
      const std::string v = args.value();
      slstm_at_all = v == "all";
      slstm_at = v == "all" || v == "none" ? std::vector<xlstm::Index>{} : parse_index_list(arg, v);
    } else if (arg == "--mlstm-only") {
      slstm_at.clear();
      slstm_at_all = false;
    } else if (arg == "--embedding-dim") {
      embedding_dim = args.integer(1, 1 << 16);
    } else if (arg == "--num-blocks") {
      num_blocks = args.integer(1, 1024);
    } else if (arg == "--num-heads") {
      num_heads = args.integer(1, 1 << 16);
    } else if (arg == "--seed") {
      seed = std::uint64_t(args.integer(0));
    } else {
      return false;
    }
    return true;
  }
  void check() const {
    for (xlstm::Index i : slstm_at) {
      if (i >= num_blocks) {
        throw UsageError("--slstm-at: block index " + std::to_string(i) +
                         " must be < --num-blocks (" + std::to_string(num_blocks) + ")");
      }
    }
    if (embedding_dim % num_heads != 0) {
      throw UsageError("--embedding-dim (" + std::to_string(embedding_dim) +
                       ") must be divisible by --num-heads (" + std::to_string(num_heads) + ")");
    }
  }
  Json to_json() const {
    Json j;
    j["slstm_at"] = slstm_at_all ? Json("all") : Json(slstm_at);
    j["embedding_dim"] = embedding_dim;
    j["num_blocks"] = num_blocks;
    j["num_heads"] = num_heads;
    j["seed"] = seed;
    return j;
  }
  /// As the official yaml files give it: mLSTM and sLSTM block configs with
  /// `num_heads`, sLSTM at the listed blocks.
  xlstm::LanguageModelConfig config(xlstm::Index vocab_size, xlstm::Index context_length) const {
    xlstm::LanguageModelConfig c;
    c.vocab_size = vocab_size;
    c.context_length = context_length;
    c.embedding_dim = embedding_dim;
    c.num_blocks = num_blocks;
    c.mlstm_block.emplace();
    c.mlstm_block->mlstm.num_heads = num_heads;
    if (slstm_at_all || !slstm_at.empty()) {
      c.slstm_block.emplace();
      c.slstm_block->slstm.num_heads = num_heads;
    }
    c.slstm_at = slstm_at;
    c.slstm_at_all = slstm_at_all;
    return c;
  }
};

/// The optimiser's command-line options (math §14).
struct RecipeOptions {
  std::int64_t steps = 20000, batch_size = 256, warmup_steps = 2000;
  double lr = 1e-3, lr_decay_factor = 1e-3, weight_decay = 0.1, max_grad_norm = 0;

  bool parse(Arguments& args, const std::string& arg) {
    if (arg == "--steps") {
      steps = args.integer(1);
    } else if (arg == "--batch-size") {
      batch_size = args.integer(1, 1 << 20);
    } else if (arg == "--lr") {
      lr = args.number(0, /*exclusive=*/true);
    } else if (arg == "--warmup-steps") {
      warmup_steps = args.integer(0);
    } else if (arg == "--lr-decay-factor") {
      lr_decay_factor = args.number(0);
    } else if (arg == "--weight-decay") {
      weight_decay = args.number(0);
    } else if (arg == "--max-grad-norm") {
      max_grad_norm = args.number(0);
    } else {
      return false;
    }
    return true;
  }
  void check() const {
    if (warmup_steps > steps) {
      throw UsageError("--warmup-steps (" + std::to_string(warmup_steps) +
                       ") must be <= --steps (" + std::to_string(steps) + ")");
    }
  }
  Json to_json() const {
    Json j;
    j["steps"] = steps;
    j["batch_size"] = batch_size;
    j["lr"] = lr;
    j["warmup_steps"] = warmup_steps;
    j["lr_decay_factor"] = lr_decay_factor;
    j["weight_decay"] = weight_decay;
    j["max_grad_norm"] = max_grad_norm;
    return j;
  }
};

/// The options both programs take besides their own.
struct CommonOptions {
  ModelOptions model;
  RecipeOptions recipe;
  std::string log;
  std::int64_t eval_every = 1000, print_every = 100, threads = 0;

  Json common_json() const {
    Json j = model.to_json();
    j.update(recipe.to_json());
    j["eval_every"] = eval_every;
    j["threads"] = threads;
    return j;
  }
};

/// Reads argv into `options` (a CommonOptions): --help / -h sets `help` and
/// stops; the model, recipe and common options; then `own(args, arg)` for
/// the program's options (false: unknown option). Checks the model and
/// recipe options at the end.
template <typename Options, typename Own>
void parse_arguments(int argc, char** argv, Options& options, bool& help, Own own) {
  Arguments args(argc, argv);
  while (args.next()) {
    const std::string arg = args.option();
    if (arg == "--help" || arg == "-h") {
      help = true;
      return;
    }
    if (options.model.parse(args, arg) || options.recipe.parse(args, arg)) continue;
    if (arg == "--log") {
      options.log = args.value();
    } else if (arg == "--eval-every") {
      options.eval_every = args.integer(0);
    } else if (arg == "--print-every") {
      options.print_every = args.integer(1);
    } else if (arg == "--threads") {
      options.threads = args.integer(0, 1024);
    } else if (!own(args, arg)) {
      throw UsageError("unknown option '" + arg + "' (see --help)");
    }
  }
  options.model.check();
  options.recipe.check();
}

/// What one optimiser step reports.
struct StepResult {
  float loss = 0;
  double grad_norm = 0;  ///< before clipping
  double lr = 0;         ///< the rate the step ran with
};

/// A language model with its gradients, AdamW (official groups) and the
/// official schedule (math §14.1, §14.2, §14.4): `step` runs one batch.
class Trainer {
 public:
  Trainer(const xlstm::LanguageModelConfig& config, const ModelOptions& model_options,
          const RecipeOptions& recipe)
      : model_(make_model(config, model_options.seed)),
        grads_(model_),
        adamw_(
            {model_, grads_, xlstm::official_weight_decay_rule(config.weight_decay_on_embedding)},
            adamw_options(recipe)),
        // Stepped after every optimiser step, decaying until the last one.
        schedule_{recipe.warmup_steps, recipe.steps, recipe.lr, recipe.lr * recipe.lr_decay_factor},
        max_grad_norm_(recipe.max_grad_norm) {}

  // The optimiser points into the model's and the gradients' storage.
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  xlstm::LanguageModel<float>& model() { return model_; }
  xlstm::AdamW<float>& adamw() { return adamw_; }
  std::int64_t schedule_steps() const { return schedule_steps_; }
  void set_schedule_steps(std::int64_t steps) { schedule_steps_ = steps; }
  /// The logits of the last step's forward (B x T x V).
  const xlstm::Sequence<float>& logits() const { return work_.logits; }
  std::size_t parameter_count() const {
    std::size_t n = 0;
    for (const auto& t : adamw_.parameters().tensors()) n += t.size;
    return n;
  }

  /// Forward, mean cross-entropy, backward, clipping (if on), AdamW step at
  /// the schedule's rate.
  StepResult step(const xlstm::Tokens& inputs, const xlstm::Tokens& targets,
                  const xlstm::Lengths& lengths) {
    StepResult r;
    grads_.zero();
    r.loss = xlstm::loss_and_backward(model_, inputs, targets, lengths, grads_, work_);
    r.grad_norm = max_grad_norm_ > 0 ? xlstm::clip_grad_norm(grads_, max_grad_norm_)
                                     : xlstm::global_grad_norm(grads_);
    r.lr = schedule_(schedule_steps_);
    adamw_.set_learning_rate(r.lr);
    adamw_.step();
    ++schedule_steps_;
    return r;
  }

 private:
  static xlstm::LanguageModel<float> make_model(const xlstm::LanguageModelConfig& config,
                                                std::uint64_t seed) {
    try {
      xlstm::LanguageModel<float> model(config, xlstm::uninitialized);
      xlstm::Rng rng(seed);
      model.initialize(rng);
      return model;
    } catch (const xlstm::Error& e) {
      throw UsageError(std::string("the model options give no valid model: ") + e.what());
    }
  }
  static xlstm::AdamWOptions adamw_options(const RecipeOptions& recipe) {
    xlstm::AdamWOptions o;
    o.learning_rate = recipe.lr;
    o.weight_decay = recipe.weight_decay;
    return o;
  }

  xlstm::LanguageModel<float> model_;
  xlstm::LanguageModelGradients<float> grads_;
  xlstm::AdamW<float> adamw_;
  xlstm::LinearWarmupCosine schedule_;
  double max_grad_norm_;
  std::int64_t schedule_steps_ = 0;
  xlstm::LanguageModelLossWorkspace<float> work_;
};

/// printf into a std::string.
template <typename... Args>
std::string format(const char* fmt, Args... args) {
  char out[256];
  std::snprintf(out, sizeof out, fmt, args...);
  return out;
}

/// The exit code of an --expect-...-below option: 0 when `bound` is unset
/// (NaN) or `value` < `bound`, else 1 with a message naming `what`.
inline int expect_below(const char* what, double value, double bound) {
  if (std::isnan(bound) || value < bound) return 0;
  std::fprintf(stderr, "expectation failed: %s %.4f is not below %g\n", what, value, bound);
  return 1;
}

/// A training program's main: parses the command line with `parse(argc,
/// argv, help)`, prints `usage` for --help, else returns `run(options)`. A
/// UsageError exits with code 2, any other exception with 1, both with the
/// message on stderr after the program's `name`.
template <typename Parse, typename Run>
int main(int argc, char** argv, const char* name, const char* usage, Parse parse, Run run) {
  examples::Utf8Arguments utf8(argc, argv);
  argv = utf8.argv();
  try {
    bool help = false;
    const auto options = parse(argc, argv, help);
    if (help) {
      std::printf("%s", usage);
      return 0;
    }
    return run(options);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace train_example
