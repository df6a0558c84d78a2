// LanguageModel: token embedding, block stack and LM head (SPEC §6.2, §6.3),
// the NeurIPS xLSTMLMModel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xlstm/core/matmul.hpp"
#include "xlstm/model/block_stack.hpp"

namespace xlstm {

/// Mirrors xLSTMLMModelConfig: the stack config plus the LM fields.
struct LanguageModelConfig : BlockStackConfig {
  Index vocab_size = -1;
  bool tie_weights = false;
  bool weight_decay_on_embedding = false;  ///< training only
  bool add_embedding_dropout = false;      ///< identity at inference

  void validate() const {
    BlockStackConfig::validate();
    check_positive(vocab_size, "xLSTMLMModelConfig", "vocab_size");
    check_size_product({vocab_size, embedding_dim}, "xLSTMLMModelConfig",
                       "'vocab_size' x 'embedding_dim'");
  }
};

/// Token ids of a batch: B x T, row-major.
using Tokens = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename Scalar>
struct LanguageModelState {
  BlockStackState<Scalar> stack;
  Matrix<Scalar> embedded, hidden;  ///< step workspace (B x E)

  Index batch() const { return stack.batch(); }
  void reset() { stack.reset(); }
  void reset_row(Index row) { stack.reset_row(row); }
  void copy_row_from(const LanguageModelState& other, Index src, Index dst) {
    stack.copy_row_from(other.stack, src, dst);
  }
};

template <typename Scalar_>
class LanguageModel {
 public:
  using Scalar = Scalar_;
  using Config = LanguageModelConfig;
  using State = LanguageModelState<Scalar>;

  explicit LanguageModel(Config config)
      : config_(std::move(config)), stack_(static_cast<const BlockStackConfig&>(config_)) {
    config_.post_init();
    config_.validate();
    embedding_.setZero(config_.vocab_size, config_.embedding_dim);
    if (!config_.tie_weights) lm_head_.setZero(config_.vocab_size, config_.embedding_dim);
  }

  const Config& config() const { return config_; }
  Index vocab_size() const { return config_.vocab_size; }
  Index embedding_dim() const { return config_.embedding_dim; }
  BlockStack<Scalar>& stack() { return stack_; }
  const BlockStack<Scalar>& stack() const { return stack_; }
  Matrix<Scalar>& embedding() { return embedding_; }
  const Matrix<Scalar>& embedding() const { return embedding_; }
  /// The head's weight (V x E); the embedding when weights are tied.
  const Matrix<Scalar>& lm_head() const { return config_.tie_weights ? embedding_ : lm_head_; }
  Matrix<Scalar>& lm_head() { return config_.tie_weights ? embedding_ : lm_head_; }

  State initial_state(Index batch) const {
    State s;
    s.stack = stack_.initial_state(batch);
    s.embedded.resize(batch, embedding_dim());
    s.hidden.resize(batch, embedding_dim());
    return s;
  }

  /// tokens: B x T ids in [0, vocab_size). logits: B x T x V.
  void forward(const Tokens& tokens, State& state, Sequence<Scalar>& logits) const {
    forward(tokens, Lengths{}, state, logits);
  }

  /// Ragged batch: row b has lengths[b] valid tokens; the ids after them are
  /// padding (never read, need not be valid) and their logits are zero.
  void forward(const Tokens& tokens, const Lengths& lengths, State& state,
               Sequence<Scalar>& logits) const {
    check(tokens.rows() == state.batch(), "LanguageModel::forward: argument 'tokens' has batch ",
          tokens.rows(), " but the state was made for batch ", state.batch());
    check(tokens.cols() > 0,
          "LanguageModel::forward: argument 'tokens' must have at least one "
          "time step");
    check_lengths(lengths, tokens.rows(), tokens.cols(), "LanguageModel::forward");
    Sequence<Scalar> x = Sequence<Scalar>::zeros(tokens.rows(), tokens.cols(), embedding_dim()), y;
    for (Index b = 0; b < tokens.rows(); ++b) {
      for (Index t = 0; t < length_of(lengths, b, tokens.cols()); ++t) {
        check_token(tokens(b, t), "LanguageModel::forward");
        x.at(b, t) = embedding_.row(tokens(b, t));
      }
    }
    stack_.forward(x, lengths, state.stack, y);
    logits.resize(tokens.rows(), tokens.cols(), vocab_size());
    matmul_transposed<Scalar>(y.matrix(), lm_head(), logits.matrix());
  }

  /// One step: `tokens` holds B ids; logits is B x V. Does not allocate.
  template <typename TokenVector>
  void step(const TokenVector& tokens, State& state, MatrixRef<Scalar> logits) const {
    check(Index(tokens.size()) == state.batch(), "LanguageModel::step: argument 'tokens' has ",
          tokens.size(), " ids but the state was made for batch ", state.batch());
    check(logits.rows() == state.batch() && logits.cols() == vocab_size(),
          "LanguageModel::step: argument 'logits' must be ", state.batch(), " x ", vocab_size(),
          ", got ", logits.rows(), " x ", logits.cols());
    check(state.embedded.rows() == state.batch() && state.embedded.cols() == embedding_dim() &&
              state.hidden.rows() == state.batch() && state.hidden.cols() == embedding_dim(),
          "LanguageModel::step: argument 'state' has a step workspace of the wrong size (make "
          "it with initial_state(batch))");
    for (Index b = 0; b < state.batch(); ++b) {
      const auto id = static_cast<std::int64_t>(tokens[std::size_t(b)]);
      check_token(id, "LanguageModel::step");
      state.embedded.row(b) = embedding_.row(Index(id));
    }
    stack_.step(state.embedded, state.stack, state.hidden);
    matmul_transposed<Scalar>(state.hidden, lm_head(), logits, /*accumulate=*/false,
                              Workload::step);
  }

  /// Official names: token_embedding.weight, xlstm_block_stack.*, lm_head.weight.
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    const std::size_t v = std::size_t(vocab_size()), e = std::size_t(embedding_dim());
    add_parameter(list, prefix, "token_embedding.weight", {v, e}, embedding_);
    stack_.collect_parameters(prefix + "xlstm_block_stack.", list);
    // With tie_weights the official state_dict holds the same tensor under
    // both names; both then point at the embedding.
    add_parameter(list, prefix, "lm_head.weight", {v, e}, lm_head());
  }

  /// The full official reset_parameters (SPEC §8.1, §8.4).
  void initialize(Rng& rng) {
    small_init(embedding_, embedding_dim(), rng);
    stack_.initialize(rng);
    if (!config_.tie_weights) small_init(lm_head_, embedding_dim(), rng);
  }

 private:
  void check_token(std::int64_t id, const char* where) const {
    check(id >= 0 && id < vocab_size(), where, ": token id ", id, " is out of range [0, ",
          vocab_size(), ")");
  }

  Config config_;
  BlockStack<Scalar> stack_;
  Matrix<Scalar> embedding_, lm_head_;
};

}  // namespace xlstm
