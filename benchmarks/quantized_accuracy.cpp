// What int8_rows and q4_g32 weights (docs/math.md §16) and the mLSTM states'
// C stored in bfloat16 (math §4.8) change, against the same model with its
// float (or, for the 7B architecture, BF16) weights and full-precision state:
//
//   xlstm_quantized_accuracy [--tokens=N] [--no-random] [--large7b] [--tirex-golden=DIR]
//                            [--golden=DIR] [--char-model=DIR --text=FILE [--windows=N]]
//
// (--no-random: without the two random-weight models below.)
//
//  - lm125m: the 125M language model of xlstm_bench (bench_models.hpp, its
//    random initialisation, seed 125). The float model generates N tokens greedily (default 256)
//    from a fixed prompt; the quantised models read the same tokens. Per
//    position: the KL divergence KL(float || quantised) of the next-token
//    distributions and whether the top-1 token agrees; each format with the
//    default rule and with the embedding and head quantised too ("+head",
//    QuantizeOptions::include_embedding_and_head). Also the float model
//    reading them with a bf16 state ("bf16-state": every step rounds C).
//  - tirex: the full-size TiRex architecture (D = 512, 12 blocks) with random
//    weights, forecasting 64 steps of 8 synthetic series of 2048 values
//    (sines, trends, random walks, noise). The quantile error in scaled
//    units: |quantile - float quantile| / (standard deviation of the series'
//    context), max and mean over series, steps and quantiles.
//  - --tirex-golden=DIR: the tirex_model golden files of DIR (the official
//    code's small models and calls), every weight matrix but the patch
//    embeddings quantised: the quantile error in the model's scaled units
//    (the first pass's scaler).
//  - --golden=DIR: the lm_model and xlstm_large golden files of DIR (the
//    official code's small NeurIPS language model and xLSTM-Large), every
//    weight matrix but the embedding and head quantised: the logits' error
//    relative to the float logits' largest magnitude, max and mean. And
//    the official decodes of DIR (lm_step, xlstm_large with token-by-token
//    logits, mlstm_cell: the recurrent outputs) stepped with a full and a
//    bf16 state: the error against the official values relative to their
//    largest magnitude.
//  - --large7b: the whole 7B architecture (32 blocks, E = 4096, vocabulary
//    50304) with random BF16 weights (~14 GB), as lm125m with the BF16 model
//    as the reference: it generates N tokens, then is quantised in place and
//    reads them again (one format per pass: int8, q4, q4 with the head
//    quantised too; 13.6 GB at the peak, 16 minutes).
//  - --char-model=DIR --text=FILE [--windows=N]: a trained language model
//    (examples/train_char_lm's output) and its text: the example's validation
//    bits per character (last 10 % of the text, at most N windows of the
//    context length, 256 by default), float against each format, with the
//    default rule and with every matrix quantised (min_elements 0); and the
//    same windows read step by step with a full and a bf16 state.
//
// Every format uses quantize_weights' default rule (math §16.3): matrices of
// at least 2^16 elements, the embedding and head kept.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_models.hpp"
#include "xlstm/xlstm.hpp"

namespace {

using xlstm::Index;
using xlstm::Matrix;
using xlstm::WeightStorage;

constexpr double kPi = 3.14159265358979323846;
constexpr WeightStorage kFormats[] = {WeightStorage::int8_rows, WeightStorage::q4_g32};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// log-softmax of one row of logits, in double.
std::vector<double> log_softmax(const float* logits, Index n) {
  double max = logits[0];
  for (Index i = 1; i < n; ++i) max = std::max(max, double(logits[i]));
  double sum = 0;
  for (Index i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - max);
  const double log_sum = max + std::log(sum);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) out[std::size_t(i)] = double(logits[i]) - log_sum;
  return out;
}

Index argmax(const float* logits, Index n) {
  return Index(std::max_element(logits, logits + n) - logits);
}

/// Logits of a generation: row t holds the logits after token t.
struct Generation {
  std::vector<std::int64_t> tokens;  // prompt, then the generated tokens
  Matrix<float> logits;              // one row per position read
};

/// Greedy generation of `count` tokens after `prompt`, keeping every logit row.
template <typename Model>
Generation generate(const Model& model, const std::vector<std::int64_t>& prompt, Index count) {
  Generation g;
  g.tokens = prompt;
  const Index vocab = model.vocab_size();
  const Index positions = Index(prompt.size()) + count;
  g.logits.resize(positions, vocab);
  auto state = model.initial_state(1);
  Matrix<float> row(1, vocab);
  for (Index t = 0; t < positions; ++t) {
    model.step(std::vector<std::int64_t>{g.tokens[std::size_t(t)]}, state, row);
    g.logits.row(t) = row;
    if (t + 1 >= Index(prompt.size()) && Index(g.tokens.size()) < positions) {
      g.tokens.push_back(argmax(row.data(), vocab));
    }
  }
  return g;
}

/// The logits of `model` reading the B rows of `ids` side by side, one step
/// per column, its mLSTM states keeping C in `storage`: B*T rows, row
/// b*T + t after token t of row b (a Sequence's layout).
template <typename Model>
Matrix<float> step_through(const Model& model, const xlstm::Tokens& ids,
                           xlstm::MLstmStateStorage storage) {
  const Index batch = ids.rows(), time = ids.cols(), vocab = model.vocab_size();
  Matrix<float> logits(batch * time, vocab), row(batch, vocab);
  auto state = model.initial_state(batch);
  state.set_mlstm_storage(storage);
  std::vector<std::int64_t> step_ids(std::size_t(batch), 0);
  for (Index t = 0; t < time; ++t) {
    for (Index b = 0; b < batch; ++b) step_ids[std::size_t(b)] = ids(b, t);
    model.step(step_ids, state, row);
    for (Index b = 0; b < batch; ++b) logits.row(b * time + t) = row.row(b);
  }
  return logits;
}

/// The logits of `model` reading `tokens` (all but the last, whose logits are
/// not needed), its mLSTM states keeping C in `storage`.
template <typename Model>
Matrix<float> read_tokens(const Model& model, const std::vector<std::int64_t>& tokens,
                          Index positions,
                          xlstm::MLstmStateStorage storage = xlstm::MLstmStateStorage::full) {
  xlstm::Tokens ids(1, positions);
  for (Index t = 0; t < positions; ++t) ids(0, t) = tokens[std::size_t(t)];
  return step_through(model, ids, storage);
}

/// KL and top-1 agreement of `got` against `reference`, over the positions
/// from `first` (the generated part).
void print_agreement(const char* model, const char* format, const Matrix<float>& reference,
                     const Matrix<float>& got, Index first) {
  double kl_sum = 0, kl_max = 0, diff2 = 0, ref2 = 0;
  double widest_flipped = 0;  // the largest float top-1 margin among disagreements
  Index agree = 0, n = 0;
  const Index vocab = reference.cols();
  for (Index t = first; t < reference.rows(); ++t, ++n) {
    const auto p = log_softmax(&reference(t, 0), vocab);
    const auto q = log_softmax(&got(t, 0), vocab);
    double kl = 0;
    for (Index i = 0; i < vocab; ++i) {
      kl += std::exp(p[std::size_t(i)]) * (p[std::size_t(i)] - q[std::size_t(i)]);
    }
    kl_sum += kl;
    kl_max = std::max(kl_max, kl);
    const Index top = argmax(&reference(t, 0), vocab);
    if (top == argmax(&got(t, 0), vocab)) {
      ++agree;
    } else {
      float second = -std::numeric_limits<float>::infinity();
      for (Index i = 0; i < vocab; ++i) {
        if (i != top) second = std::max(second, reference(t, i));
      }
      widest_flipped = std::max(widest_flipped, double(reference(t, top) - second));
    }
    diff2 += (got.row(t) - reference.row(t)).cast<double>().squaredNorm();
    ref2 += reference.row(t).cast<double>().squaredNorm();
  }
  std::printf(
      "%-8s %-14s positions %4ld  KL mean %.3e max %.3e nats  top-1 agreement %6.2f %%  "
      "logits rel. RMS error %.3g  (flips where the float top-1 led by <= %.3g)\n",
      model, format, long(n), kl_sum / double(n), kl_max, 100.0 * double(agree) / double(n),
      std::sqrt(diff2 / ref2), widest_flipped);
}

/// The module with every weight matrix quantize_weights would quantise
/// rounded to BF16 (kept in float): the error of the BF16 checkpoints the
/// official models ship in, as a yardstick for the quantised formats.
template <typename Module>
void round_selected_to_bf16(Module& module, const xlstm::QuantizeOptions& rule = {}) {
  module.for_each_parameter([&](const auto& p) {
    if (!p.matrix || !p.matrix->is_native() || xlstm::kept_by_name(p.name, rule) ||
        !xlstm::quantizable_shape(p.matrix->rows(), p.matrix->cols(), WeightStorage::int8_rows,
                                  rule)) {
      return;
    }
    auto& w = p.matrix->native();
    for (Index i = 0; i < w.size(); ++i) w.data()[i] = xlstm::round_to_bf16(w.data()[i]);
  });
}

std::vector<std::int64_t> prompt_tokens(Index vocab) {
  std::vector<std::int64_t> prompt;
  for (Index t = 0; t < 16; ++t) prompt.push_back((t * 7919 + 11) % vocab);
  return prompt;
}

void lm125m(Index count) {
  const auto start = std::chrono::steady_clock::now();
  xlstm::LanguageModel<float> model(xbench::config_125m());
  xlstm::Rng rng(125);
  model.initialize(rng);
  const auto prompt = prompt_tokens(model.vocab_size());
  const Generation g = generate(model, prompt, count);
  for (const auto format : kFormats) {
    for (const bool head : {false, true}) {
      xlstm::LanguageModel<float> quantized = model;
      xlstm::QuantizeOptions rule;
      rule.include_embedding_and_head = head;
      xlstm::quantize_weights(quantized, format, rule);
      const Matrix<float> logits = read_tokens(quantized, g.tokens, g.logits.rows());
      print_agreement("lm125m", xbench::format_label(format, head).c_str(), g.logits, logits,
                      Index(prompt.size()) - 1);
    }
  }
  print_agreement("lm125m", "bf16-state", g.logits,
                  read_tokens(model, g.tokens, g.logits.rows(), xlstm::MLstmStateStorage::bf16),
                  Index(prompt.size()) - 1);
  xlstm::LanguageModel<float> bf16 = model;
  round_selected_to_bf16(bf16);
  print_agreement("lm125m", "bf16 (ref)", g.logits, read_tokens(bf16, g.tokens, g.logits.rows()),
                  Index(prompt.size()) - 1);
  std::printf("         (%.0f s)\n", seconds_since(start));
}

/// Synthetic series of `length` values: sines of several periods, trends,
/// random walks and noise, at different levels and scales.
Matrix<float> synthetic_series(Index count, Index length) {
  std::mt19937_64 rng(2026);
  std::normal_distribution<double> normal(0.0, 1.0);
  Matrix<float> x(count, length);
  for (Index b = 0; b < count; ++b) {
    double walk = 0;
    const double period = 12.0 + 17.0 * double(b), level = 10.0 * double(b) - 30.0,
                 scale = 0.5 + double(b);
    for (Index t = 0; t < length; ++t) {
      walk += normal(rng);
      double v = 0;
      switch (b % 4) {
        case 0:
          v = std::sin(2 * kPi * double(t) / period);
          break;
        case 1:
          v = 0.01 * double(t) + std::sin(2 * kPi * double(t) / period);
          break;
        case 2:
          v = 0.1 * walk;
          break;
        default:
          v = std::sin(2 * kPi * double(t) / period) + 0.3 * normal(rng);
          break;
      }
      x(b, t) = float(level + scale * v);
    }
  }
  return x;
}

/// The largest and the mean of absolute errors, accumulated one by one.
struct ErrorStats {
  double max = 0, sum = 0;
  Index n = 0;
  void add(double e) {
    max = std::max(max, e);
    sum += e;
    ++n;
  }
  double mean() const { return sum / double(n); }
};

/// Adds |f - reference| / scale(b) for every quantile of every series b.
template <typename ScaleOfSeries>
void add_quantile_errors(ErrorStats& stats, const xlstm::tirex::Forecast<float>& reference,
                         const xlstm::tirex::Forecast<float>& f, ScaleOfSeries scale) {
  for (Index b = 0; b < f.quantiles.batch(); ++b) {
    const double s = scale(b);
    for (Index t = 0; t < f.quantiles.time(); ++t) {
      for (Index q = 0; q < f.quantiles.features(); ++q) {
        stats.add(std::abs(double(f.quantiles(b, t, q)) - double(reference.quantiles(b, t, q))) /
                  s);
      }
    }
  }
}

/// Quantile error of `f` against `reference` in scaled units (divided by
/// the standard deviation of the series' context): max and mean.
void print_quantile_error(const char* what, const Matrix<float>& context,
                          const xlstm::tirex::Forecast<float>& reference,
                          const xlstm::tirex::Forecast<float>& f) {
  ErrorStats stats;
  add_quantile_errors(stats, reference, f, [&](Index b) {
    const double mean = context.row(b).cast<double>().mean();
    return std::sqrt((context.row(b).cast<double>().array() - mean).square().sum() /
                     double(context.cols()));
  });
  std::printf("tirex    %-22s quantile error in scaled units: max %.3e mean %.3e (%ld values)\n",
              what, stats.max, stats.mean(), long(stats.n));
}

void tirex() {
  const auto start = std::chrono::steady_clock::now();
  xlstm::tirex::TiRexModel<float> model{xlstm::tirex::TiRexConfig{}};
  xlstm::tirex::randomize_weights(model, 35);
  const Index horizon = 64;
  const Matrix<float> context = synthetic_series(8, 2048);
  const xlstm::ConstMatrixRef<float> x(context);
  const auto reference = xlstm::tirex::forecast(model, x, horizon);
  for (const auto format : kFormats) {
    xlstm::tirex::TiRexModel<float> quantized = model;
    xlstm::quantize_weights(quantized, format);
    quantized.prepare();
    print_quantile_error(xlstm::storage_name(format), context, reference,
                         xlstm::tirex::forecast(quantized, x, horizon));
  }
  // Yardsticks: BF16-rounded weights, and the float cell numerics instead
  // of the official bf16 ones (math §12).
  xlstm::tirex::TiRexModel<float> bf16 = model;
  round_selected_to_bf16(bf16);
  bf16.prepare();
  print_quantile_error("bf16 weights (ref)", context, reference,
                       xlstm::tirex::forecast(bf16, x, horizon));
  xlstm::tirex::TiRexConfig plain_config;
  plain_config.numerics = xlstm::SLstmNumerics::plain;
  xlstm::tirex::TiRexModel<float> plain{plain_config};
  xlstm::tirex::randomize_weights(plain, 35);
  print_quantile_error("plain numerics (ref)", context, reference,
                       xlstm::tirex::forecast(plain, x, horizon));
  std::printf("         (%.0f s)\n", seconds_since(start));
}

/// The tirex_model golden files of `dir` (docs: tests/data/golden/
/// tirex-format.md): each file's model and call, forecast with float weights
/// and with every weight matrix but the patch embeddings quantised
/// (min_elements 0; q4_g32 where the input dimension is a multiple of 32),
/// and, as a yardstick, with the same matrices rounded to BF16;
/// the quantile error in the model's
/// scaled units (divided by the first pass's scale of the series, the
/// official scaler's).
void tirex_golden(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("tirex_model_", 0) == 0) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw xlstm::Error("no tirex_model_*.safetensors in '" + dir + "'");
  // The two formats, then BF16-rounded weights (the same matrices) as the
  // yardstick of how sensitive these models are.
  for (int variant = 0; variant < 3; ++variant) {
    const bool bf16 = variant == 2;
    const WeightStorage format = bf16 ? WeightStorage::bf16 : kFormats[variant];
    ErrorStats stats;
    std::size_t quantized = 0, kept = 0;
    for (const auto& path : files) {
      const auto file = xlstm::io::SafetensorsFile::open(path);
      const auto config = xlstm::tirex::tirex_config_from_json(
          xlstm::io::Json::parse(file.metadata().at("config")));
      const auto call = xlstm::io::Json::parse(file.metadata().at("call"));
      const Index horizon = call.at("prediction_length").get<Index>();
      const Index accelerated = call.at("max_accelerated_rollout_steps").get<Index>();
      xlstm::tirex::TiRexModel<float> model(config);
      xlstm::io::LoadOptions prefix;
      prefix.prefix = "param.";
      xlstm::tirex::load_tirex_weights(model, file, prefix);
      const auto shape = file.info("input.context").shape;
      Matrix<float> context(Index(shape.at(0)), Index(shape.at(1)));
      file.read_into<float>("input.context", context.data(), std::size_t(context.size()));
      auto run = [&](const xlstm::tirex::TiRexModel<float>& m,
                     xlstm::tirex::FirstPass<float>* first) {
        if (!file.contains("input.lengths")) {
          return xlstm::tirex::forecast(m, xlstm::ConstMatrixRef<float>(context), horizon,
                                        accelerated, first);
        }
        const auto lengths = file.read<double>("input.lengths");
        std::vector<std::vector<float>> series(lengths.size());
        for (std::size_t b = 0; b < series.size(); ++b) {
          const auto row = context.row(Index(b)).tail(Index(lengths[b]));
          series[b].assign(row.data(), row.data() + row.size());
        }
        return xlstm::tirex::forecast(m, series, horizon, accelerated, first);
      };
      xlstm::tirex::FirstPass<float> first;
      const auto reference = run(model, &first);
      xlstm::tirex::TiRexModel<float> q = model;
      const xlstm::QuantizeOptions every_matrix{/*min_elements=*/0, false};
      if (bf16) {
        round_selected_to_bf16(q, every_matrix);
      } else {
        const auto report = xlstm::quantize_weights(q, format, every_matrix);
        quantized += report.quantized.size();
        kept += report.kept.size();
      }
      q.prepare();
      const auto f = run(q, nullptr);
      add_quantile_errors(stats, reference, f,
                          [&](Index b) { return double(first.stats.at(std::size_t(b)).scale); });
    }
    std::printf(
        "tirex-golden %-10s %zu files, quantile error in scaled units: max %.3e mean %.3e "
        "(%ld values; %zu matrices quantised, %zu kept)\n",
        bf16 ? "bf16 (ref)" : xlstm::storage_name(format), files.size(), stats.max, stats.mean(),
        long(stats.n), quantized, kept);
  }
}

/// --golden=DIR: the lm_model and xlstm_large golden files of DIR (f32; the
/// official code's small NeurIPS language model and xLSTM-Large), loaded
/// float and quantised while loading (every matrix, min_elements 0, embedding
/// and head kept), the same tokens through both: the logits' error relative
/// to the float logits' largest magnitude, max and mean, and the float
/// path's own distance to the official logits for scale.
void model_golden(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".f32.safetensors") == std::string::npos) continue;
    const auto metadata = xlstm::io::SafetensorsFile::open(entry.path().string()).metadata();
    const auto kind = metadata.find("kind");
    if (kind != metadata.end() && (kind->second == "lm_model" || kind->second == "xlstm_large")) {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty())
    throw xlstm::Error("no lm_model_* or xlstm_large_* f32 files in '" + dir + "'");
  for (const auto& path : files) {
    const auto file = xlstm::io::SafetensorsFile::open(path);
    const auto config = xlstm::io::Json::parse(file.metadata().at("config"));
    const auto shape = file.info("input.tokens").shape;
    xlstm::Tokens tokens(Index(shape.at(0)), Index(shape.at(1)));
    const auto ids = file.read<std::int64_t>("input.tokens");
    std::copy(ids.begin(), ids.end(), tokens.data());
    const bool large = file.metadata().at("kind") == "xlstm_large";
    auto logits_of = [&](WeightStorage format) {
      xlstm::io::LargeLoadOptions options;
      options.prefix = "param.";
      options.quantize = format;
      options.quantize_options = {/*min_elements=*/0, /*include_embedding_and_head=*/false};
      xlstm::Sequence<float> logits;
      if (large) {
        const auto model = xlstm::io::load_large_model<float>(
            xlstm::io::CheckpointFiles::from_file(file),
            xlstm::io::large_model_config_from_json(config), options);
        auto state = model.initial_state(tokens.rows());
        model.forward(tokens, state, logits);
      } else {
        xlstm::LanguageModel<float> model(xlstm::io::language_model_config_from_json(config));
        xlstm::io::load_module(model, file, options);
        auto state = model.initial_state(tokens.rows());
        model.forward(tokens, state, logits);
      }
      return Matrix<float>(logits.matrix());
    };
    const Matrix<float> reference = logits_of(WeightStorage::native);
    Matrix<float> official(reference.rows(), reference.cols());
    file.read_into<float>("output.logits", official.data(), std::size_t(official.size()));
    const double scale = double(reference.cwiseAbs().maxCoeff());
    std::printf("golden %s: float vs official logits max %.3e (relative to %.3g)\n",
                std::filesystem::path(path).filename().string().c_str(),
                double((official - reference).cwiseAbs().maxCoeff()) / scale, scale);
    for (const auto format : kFormats) {
      const Matrix<float> error = (logits_of(format) - reference).cwiseAbs();
      std::printf("golden   %-10s logits error relative to the float logits: max %.3e mean %.3e\n",
                  xlstm::storage_name(format), double(error.maxCoeff()) / scale,
                  double(error.mean()) / scale);
    }
  }
}

/// The float32 atol a golden file gives tensor `name` (golden README §3).
double golden_atol(const xlstm::io::SafetensorsFile& file, const std::string& name) {
  const auto& meta = file.metadata();
  const auto per_tensor = meta.find("tolerances");
  if (per_tensor != meta.end()) {
    const auto tolerances = xlstm::io::Json::parse(per_tensor->second);
    if (tolerances.contains(name)) return tolerances.at(name).at(0).get<double>();
  }
  return std::stod(meta.at("atol"));
}

/// |computed - official| / max |official|: the largest and the mean; and the
/// largest |computed - official| next to the atol the file allows a float32
/// computation of it.
void print_decode_error(const std::string& file, const char* storage, const Matrix<float>& official,
                        const Matrix<float>& computed, double atol) {
  const double scale = double(official.cwiseAbs().maxCoeff());
  const Matrix<float> error = (computed - official).cwiseAbs();
  std::printf(
      "state    %-44s %-10s error relative to the official decode: max %.3e mean %.3e "
      "(max |diff| %.3g, the file's float32 atol %.3g)\n",
      file.c_str(), storage, double(error.maxCoeff()) / scale, double(error.mean()) / scale,
      double(error.maxCoeff()), atol);
}

/// (B, NH, T, DH) as B*T rows of NH*DH (head-major channels).
Matrix<float> heads_to_rows(const xlstm::io::SafetensorsFile& file, const std::string& name) {
  const auto shape = file.info(name).shape;
  if (shape.size() != 4) throw xlstm::Error("tensor '" + name + "' is not (B, NH, T, DH)");
  const Index b = Index(shape[0]), nh = Index(shape[1]), t = Index(shape[2]), dh = Index(shape[3]);
  const auto v = file.read<float>(name);
  Matrix<float> out(b * t, nh * dh);
  for (Index bi = 0; bi < b; ++bi)
    for (Index h = 0; h < nh; ++h)
      for (Index ti = 0; ti < t; ++ti)
        for (Index j = 0; j < dh; ++j)
          out(bi * t + ti, h * dh + j) = v[std::size_t(((bi * nh + h) * t + ti) * dh + j)];
  return out;
}

/// The mLSTM cell of an mlstm_cell golden file stepped over its inputs: the
/// outputs as B*T rows (head-major channels), the file's h_recurrent layout
/// through heads_to_rows.
Matrix<float> step_mlstm_cell_file(const xlstm::io::SafetensorsFile& file,
                                   xlstm::MLstmStateStorage storage) {
  const Matrix<float> q = heads_to_rows(file, "input.q"), k = heads_to_rows(file, "input.k"),
                      v = heads_to_rows(file, "input.v"),
                      igate = heads_to_rows(file, "input.igate_preact"),
                      fgate = heads_to_rows(file, "input.fgate_preact");
  const auto shape = file.info("input.q").shape;
  const Index batch = Index(shape[0]), nh = Index(shape[1]), time = Index(shape[2]);
  xlstm::MLstmCellConfig config;
  config.num_heads = nh;
  config.qk_head_dim = q.cols() / nh;
  config.v_head_dim = v.cols() / nh;
  config.convention = xlstm::MLstmStateConvention::scaled_keys;  // the file's recurrent step
  config.state_storage = storage;
  const xlstm::MLstmCell<float> cell(config);
  auto state = cell.initial_state(batch);
  Matrix<float> h(batch * time, v.cols()), h_t(batch, v.cols());
  auto rows_at = [&](const Matrix<float>& x, Index t) {
    Matrix<float> out(batch, x.cols());
    for (Index b = 0; b < batch; ++b) out.row(b) = x.row(b * time + t);
    return out;
  };
  for (Index t = 0; t < time; ++t) {
    cell.step(rows_at(q, t), rows_at(k, t), rows_at(v, t), rows_at(igate, t), rows_at(fgate, t),
              state, h_t);
    for (Index b = 0; b < batch; ++b) h.row(b * time + t) = h_t.row(b);
  }
  return h;
}

/// The official decodes of the golden files of `dir` (f32), stepped with C
/// in full precision and in bfloat16 (math §4.8).
void state_golden(const std::string& dir) {
  using xlstm::MLstmStateStorage;
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().find(".f32.safetensors") != std::string::npos) {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    const auto file = xlstm::io::SafetensorsFile::open(path);
    const auto kind_entry = file.metadata().find("kind");
    if (kind_entry == file.metadata().end()) continue;
    const std::string kind = kind_entry->second,
                      name = std::filesystem::path(path).filename().string();
    const MLstmStateStorage storages[] = {MLstmStateStorage::full, MLstmStateStorage::bf16};
    if (kind == "mlstm_cell") {
      const Matrix<float> official = heads_to_rows(file, "output.h_recurrent");
      for (const auto storage : storages) {
        print_decode_error(name, storage == MLstmStateStorage::full ? "full" : "bf16-state",
                           official, step_mlstm_cell_file(file, storage),
                           golden_atol(file, "output.h_recurrent"));
      }
      continue;
    }
    const bool large = kind == "xlstm_large" && file.contains("output.logits_step");
    if (kind != "lm_step" && !large) continue;
    const auto config = xlstm::io::Json::parse(file.metadata().at("config"));
    const auto shape = file.info("input.tokens").shape;
    const Index batch = Index(shape.at(0)), time = Index(shape.at(1));
    const auto ids = file.read<std::int64_t>("input.tokens");
    const std::string official_name = large ? "output.logits_step" : "output.logits";
    xlstm::Tokens id_rows(batch, time);
    for (Index b = 0; b < batch; ++b) {
      for (Index t = 0; t < time; ++t) id_rows(b, t) = ids[std::size_t(b * time + t)];
    }
    Matrix<float> official(batch * time, 0);
    official.resize(batch * time, Index(file.info(official_name).element_count()) / (batch * time));
    file.read_into<float>(official_name, official.data(), std::size_t(official.size()));
    for (const auto storage : storages) {
      const char* label = storage == MLstmStateStorage::full ? "full" : "bf16-state";
      if (large) {
        xlstm::io::LargeLoadOptions options;
        options.prefix = "param.";
        const auto model = xlstm::io::load_large_model<float>(
            xlstm::io::CheckpointFiles::from_file(file),
            xlstm::io::large_model_config_from_json(config), options);
        print_decode_error(name, label, official, step_through(model, id_rows, storage),
                           golden_atol(file, official_name));
      } else {
        xlstm::LanguageModel<float> model(xlstm::io::language_model_config_from_json(config));
        xlstm::io::LoadOptions options;
        options.prefix = "param.";
        xlstm::io::load_module(model, file, options);
        print_decode_error(name, label, official, step_through(model, id_rows, storage),
                           golden_atol(file, official_name));
      }
    }
  }
}

void large7b(Index count) {
  const auto start = std::chrono::steady_clock::now();
  Generation g;
  Index first = 0;
  for (const auto& [format, head] :
       {std::pair{WeightStorage::int8_rows, false}, std::pair{WeightStorage::q4_g32, false},
        std::pair{WeightStorage::q4_g32, true}}) {
    auto model = std::make_unique<xlstm::LargeModel<float>>(
        xbench::config_7b(), xlstm::uninitialized, WeightStorage::placeholder);
    xbench::fill_bf16(*model, 11);  // as xlstm_bench's large7b rows
    if (g.tokens.empty()) {
      const auto prompt = prompt_tokens(model->vocab_size());
      first = Index(prompt.size()) - 1;
      g = generate(*model, prompt, count);
      print_agreement(
          "large7b", "bf16-state", g.logits,
          read_tokens(*model, g.tokens, g.logits.rows(), xlstm::MLstmStateStorage::bf16), first);
    }
    xlstm::QuantizeOptions rule;
    rule.include_embedding_and_head = head;
    xlstm::quantize_weights(*model, format, rule);  // in place: the BF16 matrices go one by one
    const Matrix<float> logits = read_tokens(*model, g.tokens, g.logits.rows());
    print_agreement("large7b", xbench::format_label(format, head).c_str(), g.logits, logits, first);
  }
  std::printf("         (%.0f s)\n", seconds_since(start));
}

/// The validation of examples/train_char_lm: the text's distinct bytes as the
/// vocabulary (vocab.json of the model directory), the last 10 % held out,
/// consecutive windows of the model's context length from its start (at most
/// `windows`), each read from a zero state; the mean cross-entropy in bits per
/// character.
struct CharValidation {
  xlstm::Tokens inputs, targets;

  CharValidation(const std::string& text, Index context, Index windows) {
    std::vector<int> seen(256, 0);
    for (char c : text) seen[std::size_t(static_cast<unsigned char>(c))] = 1;
    std::vector<std::int64_t> id(256, -1);
    std::int64_t next = 0;
    for (int b = 0; b < 256; ++b) {
      if (seen[std::size_t(b)]) id[std::size_t(b)] = next++;
    }
    const auto total = std::int64_t(text.size());
    const auto validation = std::int64_t(double(total) * 0.1);
    const std::int64_t first = total - validation;
    std::vector<std::int64_t> starts;
    for (std::int64_t s = 0; s + context + 1 <= validation && Index(starts.size()) < windows;
         s += context) {
      starts.push_back(s);
    }
    inputs.resize(Index(starts.size()), context);
    targets.resize(Index(starts.size()), context);
    auto at = [&](std::int64_t i) {
      return id[std::size_t(static_cast<unsigned char>(text[std::size_t(first + i)]))];
    };
    for (std::size_t b = 0; b < starts.size(); ++b) {
      for (Index t = 0; t < context; ++t) {
        inputs(Index(b), t) = at(starts[b] + t);
        targets(Index(b), t) = at(starts[b] + t + 1);
      }
    }
  }

  /// The logits of every window's positions (one sequence forward).
  xlstm::Sequence<float> logits(const xlstm::LanguageModel<float>& model) const {
    auto state = model.initial_state(inputs.rows());
    xlstm::Sequence<float> out;
    model.forward(inputs, state, out);
    return out;
  }

  double bits_per_char(const xlstm::Sequence<float>& logits) const {
    return double(xlstm::cross_entropy(logits, targets)) / std::log(2.0);
  }

  /// The same, reading the windows one step at a time with the mLSTM states'
  /// C in `storage` (a forward rounds a bf16 state only once, at its end).
  double bits_per_char_by_steps(const xlstm::LanguageModel<float>& model,
                                xlstm::MLstmStateStorage storage) const {
    xlstm::Sequence<float> logits(inputs.rows(), inputs.cols(), model.vocab_size());
    logits.matrix() = step_through(model, inputs, storage);
    return double(xlstm::cross_entropy(logits, targets)) / std::log(2.0);
  }
};

void char_model(const std::string& dir, const std::string& text_path, Index windows) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw xlstm::Error("cannot read '" + text_path + "'");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto model = xlstm::io::load_language_model<float>(dir);
  const CharValidation validation(text, model.config().context_length, windows);
  const auto reference_logits = validation.logits(model);
  const double reference = validation.bits_per_char(reference_logits);
  std::printf("charlm   float      %.4f bits per character (%ld windows of %ld)\n", reference,
              long(validation.inputs.rows()), long(validation.inputs.cols()));
  const double by_steps = validation.bits_per_char_by_steps(model, xlstm::MLstmStateStorage::full);
  const double bf16_state =
      validation.bits_per_char_by_steps(model, xlstm::MLstmStateStorage::bf16);
  std::printf(
      "charlm   step by step: full state %.4f, bf16-state %.4f bits per character (%+.4f)\n",
      by_steps, bf16_state, bf16_state - by_steps);
  for (const bool every : {false, true}) {
    for (const auto format : kFormats) {
      xlstm::io::LoadOptions options;
      options.quantize = format;
      if (every) options.quantize_options.min_elements = 0;
      auto quantized = xlstm::io::load_language_model<float>(dir, options);
      const auto report = xlstm::quantize_weights(quantized, format, options.quantize_options);
      const auto logits = validation.logits(quantized);
      const double bpc = validation.bits_per_char(logits);
      std::printf(
          "charlm   %-10s %.4f bits per character (%+.4f); %s: %zu matrices quantised, "
          "%zu kept\n",
          xlstm::storage_name(format), bpc, bpc - reference,
          every ? "every matrix" : "default rule", report.quantized.size(), report.kept.size());
      // Every validation position (the windows read as sequences): a trained
      // model's distributions, where the random models' near-ties are rare.
      print_agreement("charlm", xlstm::storage_name(format), reference_logits.matrix(),
                      logits.matrix(), 0);
    }
    // The yardstick: the same matrices rounded to BF16.
    auto rounded = xlstm::io::load_language_model<float>(dir);
    xlstm::QuantizeOptions rule;
    if (every) rule.min_elements = 0;
    round_selected_to_bf16(rounded, rule);
    print_agreement("charlm", "bf16 (ref)", reference_logits.matrix(),
                    validation.logits(rounded).matrix(), 0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Index tokens = 256;
  bool with_7b = false, random_models = true;
  Index windows = 256;
  std::string char_dir, text, tirex_dir, golden_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--tokens=", 0) == 0) {
      tokens = std::atol(a.c_str() + 9);
    } else if (a == "--no-random") {
      random_models = false;
    } else if (a == "--large7b") {
      with_7b = true;
    } else if (a.rfind("--char-model=", 0) == 0) {
      char_dir = a.substr(13);
    } else if (a.rfind("--text=", 0) == 0) {
      text = a.substr(7);
    } else if (a.rfind("--tirex-golden=", 0) == 0) {
      tirex_dir = a.substr(15);
    } else if (a.rfind("--golden=", 0) == 0) {
      golden_dir = a.substr(9);
    } else if (a.rfind("--windows=", 0) == 0) {
      windows = std::atol(a.c_str() + 10);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--tokens=N] [--no-random] [--large7b] [--tirex-golden=DIR] "
                   "[--golden=DIR] [--char-model=DIR --text=FILE "
                   "[--windows=N]]\n",
                   argv[0]);
      return 2;
    }
  }
  if (tokens < 1 || windows < 1 || char_dir.empty() != text.empty()) {
    std::fprintf(stderr,
                 "%s: --tokens and --windows must be >= 1; --char-model and --text go together\n",
                 argv[0]);
    return 2;
  }
  try {
    if (random_models) {
      lm125m(tokens);
      tirex();
    }
    if (with_7b) large7b(tokens);
    if (!tirex_dir.empty()) tirex_golden(tirex_dir);
    if (!golden_dir.empty()) {
      model_golden(golden_dir);
      state_golden(golden_dir);
    }
    if (!char_dir.empty()) char_model(char_dir, text, windows);
  } catch (const xlstm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
