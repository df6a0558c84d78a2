// Text generation for any model with forward/step over token ids
// (LanguageModel, LargeModel): greedy, temperature, top-k and top-p sampling
// from a seeded generator, stop tokens, a maximum length and a streaming
// callback, for a batch of prompts of different lengths.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/random.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm {

struct GenerateOptions {
  Index max_length = 32;     ///< new tokens per prompt (at most)
  double temperature = 0.0;  ///< 0: greedy (argmax)
  Index top_k = 0;           ///< keep the k most likely tokens; 0: all
  double top_p = 1.0;        ///< keep the smallest set with this much probability; 1: all
  std::uint64_t seed = 0;    ///< seed of the sampling generator
  std::vector<std::int64_t> stop_tokens;  ///< a row stops after emitting one of these
  std::int64_t bos_token = 0;             ///< used for an empty prompt (as the official code)
  /// Storage of the mLSTM states' C during generation (math §4.8); bf16
  /// halves the state traffic of a decode step, with a rounding per step.
  MLstmStateStorage mlstm_state_storage = MLstmStateStorage::full;
  /// Called for every generated token, in order, with its prompt index.
  std::function<void(std::size_t prompt, std::int64_t token)> on_token;

  void validate() const {
    check(max_length >= 0, "GenerateOptions: 'max_length' must be >= 0, got ", max_length);
    check(temperature >= 0 && std::isfinite(temperature),
          "GenerateOptions: 'temperature' must be finite and >= 0, got ", temperature);
    check(top_k >= 0, "GenerateOptions: 'top_k' must be >= 0, got ", top_k);
    check(top_p > 0 && top_p <= 1, "GenerateOptions: 'top_p' must be in (0, 1], got ", top_p);
  }
};

/// Picks the next token from one row of logits.
class TokenSampler {
 public:
  explicit TokenSampler(const GenerateOptions& options)
      : options_(options), engine_(options.seed) {}

  template <typename Row>
  std::int64_t operator()(const Row& logits) {
    const Index v = logits.size();
    if (options_.temperature == 0) {
      Index best = 0;
      for (Index i = 1; i < v; ++i) {
        if (logits(i) > logits(best)) best = i;
      }
      return best;
    }
    order_.resize(std::size_t(v));
    std::iota(order_.begin(), order_.end(), Index(0));
    std::sort(order_.begin(), order_.end(),
              [&](Index a, Index b) { return logits(a) > logits(b); });
    std::size_t keep = order_.size();
    if (options_.top_k > 0) keep = std::min(keep, std::size_t(options_.top_k));
    // Softmax over the kept tokens, in double, shifted by the max for stability.
    probs_.resize(keep);
    const double top = double(logits(order_[0])) / options_.temperature;
    double sum = 0;
    for (std::size_t i = 0; i < keep; ++i) {
      probs_[i] = std::exp(double(logits(order_[i])) / options_.temperature - top);
      sum += probs_[i];
    }
    if (options_.top_p < 1) {
      double cumulative = 0;
      std::size_t cut = keep;
      for (std::size_t i = 0; i < keep; ++i) {
        cumulative += probs_[i] / sum;
        if (cumulative >= options_.top_p) {
          cut = i + 1;
          break;
        }
      }
      keep = cut;
      sum = std::accumulate(probs_.begin(), probs_.begin() + std::ptrdiff_t(keep), 0.0);
    }
    double u = uniform_real(engine_, 0.0, sum);  // the same on every platform (math §8.6)
    for (std::size_t i = 0; i < keep; ++i) {
      u -= probs_[i];
      if (u < 0) return order_[i];
    }
    return order_[keep - 1];
  }

 private:
  GenerateOptions options_;
  std::mt19937_64 engine_;
  std::vector<Index> order_;
  std::vector<double> probs_;
};

/// Generates up to options.max_length tokens after each prompt. The prompts
/// are prefilled in one ragged forward and then decoded together with step.
/// Returns the new tokens per prompt (without the prompt; a stop token is
/// included).
template <typename Model>
std::vector<std::vector<std::int64_t>> generate(
    const Model& model, const std::vector<std::vector<std::int64_t>>& prompts,
    const GenerateOptions& options) {
  using Scalar = typename Model::Scalar;
  options.validate();
  const Index batch = Index(prompts.size());
  std::vector<std::vector<std::int64_t>> out(prompts.size());
  if (batch == 0 || options.max_length == 0) return out;

  TokenSampler sample(options);
  // One ragged prefill over all prompts: each row's state ends after its own
  // last prompt token.
  Lengths lengths(prompts.size());
  Index longest = 1;
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    lengths[b] = std::max<Index>(1, Index(prompts[b].size()));
    longest = std::max(longest, lengths[b]);
  }
  Tokens tokens = Tokens::Zero(batch, longest);
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty()) tokens(Index(b), 0) = options.bos_token;
    for (std::size_t t = 0; t < prompts[b].size(); ++t) tokens(Index(b), Index(t)) = prompts[b][t];
  }
  auto state = model.initial_state(batch);
  state.set_mlstm_storage(options.mlstm_state_storage);
  Sequence<Scalar> logits;
  model.forward(tokens, lengths, state, logits);
  Matrix<Scalar> last_logits(batch, model.vocab_size());
  for (Index b = 0; b < batch; ++b) last_logits.row(b) = logits.at(b, lengths[std::size_t(b)] - 1);

  std::vector<bool> done(prompts.size(), false);
  std::vector<std::int64_t> next(prompts.size(), 0);
  for (Index step = 0; step < options.max_length; ++step) {
    bool any_active = false;
    for (Index b = 0; b < batch; ++b) {
      if (done[std::size_t(b)]) continue;
      const std::int64_t token = sample(last_logits.row(b));
      next[std::size_t(b)] = token;
      out[std::size_t(b)].push_back(token);
      if (options.on_token) options.on_token(std::size_t(b), token);
      if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
          options.stop_tokens.end()) {
        done[std::size_t(b)] = true;
      } else {
        any_active = true;
      }
    }
    if (!any_active || step + 1 == options.max_length) break;
    // Finished rows keep stepping on their last token; their logits are unused.
    model.step(next, state, last_logits);
  }
  return out;
}

}  // namespace xlstm
