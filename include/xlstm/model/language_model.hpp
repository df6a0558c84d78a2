// LanguageModel: token embedding, block stack and LM head (math §6.2, §6.3),
// the NeurIPS xLSTMLMModel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xlstm/core/linear.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/thread_buffers.hpp"
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

/// Step scratch of the language model (B x E each).
template <typename Scalar>
struct LanguageModelWorkspace {
  Matrix<Scalar> embedded, hidden;
};

/// The recurrent state of a LanguageModel: the block stack's state (plus
/// step scratch that is not part of it).
/// The plain sequence forward's embedded tokens and hidden states (B x T x E),
/// kept by the calling thread between calls (design §7.7).
template <typename Scalar>
struct LanguageModelForwardScratch {
  Sequence<Scalar> embedded, hidden;
};

template <typename Scalar>
struct LanguageModelState {
  BlockStackState<Scalar> stack;
  Scratch<LanguageModelWorkspace<Scalar>> scratch;

  Index batch() const { return stack.batch(); }
  void reset() { stack.reset(); }
  void reset_row(Index row) { stack.reset_row(row); }
  void copy_row_from(const LanguageModelState& other, Index src, Index dst) {
    stack.copy_row_from(other.stack, src, dst);
  }
  /// Converts every mLSTM block's C to `storage` (math §4.8).
  void set_mlstm_storage(MLstmStateStorage storage) { stack.set_mlstm_storage(storage); }

  /// The stack state's tensors ("block_<i>.…").
  template <typename Visit>
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") {
    stack.for_each_tensor(visit, prefix);
  }
  template <typename Visit>
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") const {
    stack.for_each_tensor(visit, prefix);
  }
};

/// The NeurIPS xLSTM language model: token embedding, a BlockStack of mLSTM
/// and sLSTM blocks, and the LM head (tied to the embedding or not).
///
///   auto model = xlstm::io::load_language_model<float>("my-model/");  // or:
///   xlstm::LanguageModel<float> model(config);   // official init, seed 0
///   auto state = model.initial_state(/*batch*/ 1);
///   xlstm::Sequence<float> logits;
///   model.forward(tokens, state, logits);        // prefill: B x T ids
///   xlstm::Matrix<float> next;
///   model.step(std::vector<std::int64_t>{42}, state, next);  // then token by token
///
/// `forward` and `step` are const: one model may serve many threads, each
/// with its own state. `step` allocates nothing once the state exists. The
/// embedding, the head and the dense projections may be kept BF16/F16 when
/// loaded (io::LoadOptions::keep_half_weights).
/// What a recording forward of the language model keeps for the backward
/// (math §6.6; model/language_model_backward.hpp): the token ids, the
/// embedded input, the stack's tape and the stack's output (the head's
/// input). The backward uses it as its workspace; recording again with the
/// same shapes allocates nothing.
template <typename Scalar>
struct LanguageModelTape {
  Tokens tokens;
  Lengths lengths;
  Sequence<Scalar> embedded;  ///< B x T x E: the stack's input; the backward's dL/d it
  BlockStackTape<Scalar> stack;
  Sequence<Scalar> hidden;  ///< B x T x E: the head's input; the backward's dL/d it
  bool recorded = false;
};

template <typename Scalar_>
class LanguageModel {
 public:
  using Scalar = Scalar_;
  using Config = LanguageModelConfig;
  using State = LanguageModelState<Scalar>;
  using Tape = LanguageModelTape<Scalar>;

  /// A model with the official initialisation from kDefaultSeed; call
  /// initialize(rng) for another draw, or load weights.
  explicit LanguageModel(Config config) : LanguageModel(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A model with zero weights, to be filled by the caller (loaders).
  /// `storage` bf16/f16 holds the embedding, the head and the dense
  /// projections as 16-bit values from the start.
  LanguageModel(Config config, Uninitialized, WeightStorage storage = WeightStorage::native);

  const Config& config() const { return config_; }
  Index vocab_size() const { return config_.vocab_size; }
  Index embedding_dim() const { return config_.embedding_dim; }
  BlockStack<Scalar>& stack() { return stack_; }
  const BlockStack<Scalar>& stack() const { return stack_; }
  /// The stack's prepare_kernels() (io::load_module calls it; initialize(rng)
  /// prepares unless the parameters were listed for writing).
  void prepare_kernels() { stack_.prepare_kernels(); }
  /// The embedding (V x E) as a Scalar matrix (throws if kept 16-bit).
  Matrix<Scalar>& embedding() { return embedding_.weight(); }
  const Matrix<Scalar>& embedding() const { return embedding_.weight(); }
  /// The head's weight (V x E); the embedding when weights are tied.
  const Matrix<Scalar>& lm_head() const { return head().weight(); }
  Matrix<Scalar>& lm_head() { return head().weight(); }
  /// The same in whatever storage they have.
  const WeightMatrix<Scalar>& embedding_matrix() const { return embedding_.weight_matrix(); }
  const WeightMatrix<Scalar>& lm_head_matrix() const { return head().weight_matrix(); }
  /// The embedding and the head as layers (with tie_weights, the same one).
  const Linear<Scalar>& embedding_layer() const { return embedding_; }
  const Linear<Scalar>& lm_head_layer() const { return head(); }

  State initial_state(Index batch) const;

  /// tokens: B x T ids in [0, vocab_size). logits: B x T x V.
  void forward(const Tokens& tokens, State& state, Sequence<Scalar>& logits) const {
    forward(tokens, Lengths{}, state, logits);
  }

  /// Ragged batch: row b has lengths[b] valid tokens; the ids after them are
  /// padding (never read, need not be valid) and their logits are zero.
  void forward(const Tokens& tokens, const Lengths& lengths, State& state,
               Sequence<Scalar>& logits) const;

  /// One step: `tokens` holds B ids; logits is B x V (a Matrix is resized, a
  /// view must have the size). Does not allocate once the state exists.
  /// The same, recording in `tape` what the backward needs (math §6.6;
  /// model/language_model_backward.hpp).
  void forward(const Tokens& tokens, const Lengths& lengths, State& state, Sequence<Scalar>& logits,
               Tape& tape) const;

  template <typename TokenVector, typename Out>
  void step(const TokenVector& tokens, State& state, Out&& logits_out) const {
    check(Index(tokens.size()) == state.batch(), "LanguageModel::step: argument 'tokens' has ",
          tokens.size(), " ids but the state was made for batch ", state.batch());
    prepare_output(logits_out, state.batch(), vocab_size(), "LanguageModel::step", "logits");
    MatrixRef<Scalar> logits(logits_out);
    for (Index b = 0; b < state.batch(); ++b) {
      check_token(static_cast<std::int64_t>(tokens[std::size_t(b)]), "LanguageModel::step");
    }
    auto& ws = state.scratch.get();
    size_scratch(ws, state.batch());
    for (Index b = 0; b < state.batch(); ++b) {
      const auto id = static_cast<std::int64_t>(tokens[std::size_t(b)]);
      embedding_.weight_matrix().copy_row(Index(id), ws.embedded.row(b));
    }
    stack_.step(ws.embedded, state.stack, ws.hidden);
    head().weight_matrix().multiply_transposed(ws.hidden, logits, /*accumulate=*/false,
                                               Workload::step);
  }

  /// Official names: token_embedding.weight, xlstm_block_stack.*,
  /// lm_head.weight. With tie_weights the official state_dict holds the same
  /// tensor under both names; the head is then listed as optional and points
  /// at the embedding.
  XLSTM_PARAMETER_VISITOR

  /// The full official reset_parameters (math §8.1, §8.4).
  void initialize(Rng& rng);

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameter(visit, prefix, "token_embedding.weight", self.embedding_.weight_matrix());
    self.stack_.for_each_parameter(visit, prefix + "xlstm_block_stack.");
    visit_parameter(visit, prefix, "lm_head.weight", self.head().weight_matrix(),
                    /*optional=*/self.config_.tie_weights);
  }

  const Linear<Scalar>& head() const { return config_.tie_weights ? embedding_ : lm_head_; }
  Linear<Scalar>& head() { return config_.tie_weights ? embedding_ : lm_head_; }

  void size_scratch(LanguageModelWorkspace<Scalar>& ws, Index batch) const {
    ensure_size(ws.embedded, batch, embedding_dim());
    ensure_size(ws.hidden, batch, embedding_dim());
  }

  /// The checks of forward, then x = the embedded tokens (B x T x E; zero
  /// past a row's length).
  void embed(const Tokens& tokens, const Lengths& lengths, const State& state,
             Sequence<Scalar>& x) const;

  void check_token(std::int64_t id, const char* where) const {
    check(id >= 0 && id < vocab_size(), where, ": token id ", id, " is out of range [0, ",
          vocab_size(), ")");
  }

  Config config_;
  BlockStack<Scalar> stack_;
  Linear<Scalar> embedding_, lm_head_;  ///< (V x E) weights; lm_head_ unused when tied
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
LanguageModel<Scalar_>::LanguageModel(Config config, Uninitialized, WeightStorage storage)
    : config_(std::move(config)),
      stack_(static_cast<const BlockStackConfig&>(config_), uninitialized) {
  config_.post_init();
  config_.validate();
  embedding_ = Linear<Scalar>(config_.embedding_dim, config_.vocab_size, false, storage);
  if (!config_.tie_weights) {
    lm_head_ = Linear<Scalar>(config_.embedding_dim, config_.vocab_size, false, storage);
  }
}

template <typename Scalar_>
auto LanguageModel<Scalar_>::initial_state(Index batch) const -> State {
  State s;
  s.stack = stack_.initial_state(batch);
  size_scratch(s.scratch.get(), batch);
  return s;
}

template <typename Scalar_>
void LanguageModel<Scalar_>::embed(const Tokens& tokens, const Lengths& lengths, const State& state,
                                   Sequence<Scalar>& x) const {
  check(tokens.rows() == state.batch(), "LanguageModel::forward: argument 'tokens' has batch ",
        tokens.rows(), " but the state was made for batch ", state.batch());
  check(tokens.cols() > 0,
        "LanguageModel::forward: argument 'tokens' must have at least one "
        "time step");
  check_lengths(lengths, tokens.rows(), tokens.cols(), "LanguageModel::forward");
  for (Index b = 0; b < tokens.rows(); ++b) {
    for (Index t = 0; t < length_of(lengths, b, tokens.cols()); ++t) {
      check_token(tokens(b, t), "LanguageModel::forward");
    }
  }
  x.resize(tokens.rows(), tokens.cols(), embedding_dim());
  x.matrix().setZero();
  for (Index b = 0; b < tokens.rows(); ++b) {
    for (Index t = 0; t < length_of(lengths, b, tokens.cols()); ++t) {
      embedding_.weight_matrix().copy_row(Index(tokens(b, t)), x.at(b, t));
    }
  }
}

template <typename Scalar_>
void LanguageModel<Scalar_>::forward(const Tokens& tokens, const Lengths& lengths, State& state,
                                     Sequence<Scalar>& logits) const {
  // The embedded tokens and the stack's output in the thread's buffers
  // (design §7.7).
  detail::ThreadBuffers<LanguageModelForwardScratch<Scalar>> buffers;
  Sequence<Scalar>& x = buffers.get().embedded;
  Sequence<Scalar>& y = buffers.get().hidden;
  embed(tokens, lengths, state, x);
  stack_.forward(x, lengths, state.stack, y);
  logits.resize(tokens.rows(), tokens.cols(), vocab_size());
  head().weight_matrix().multiply_transposed(y.matrix(), logits.matrix());
}

template <typename Scalar_>
void LanguageModel<Scalar_>::forward(const Tokens& tokens, const Lengths& lengths, State& state,
                                     Sequence<Scalar>& logits, Tape& tape) const {
  tape.recorded = false;  // until the forward completes
  embed(tokens, lengths, state, tape.embedded);
  tape.tokens = tokens;
  tape.lengths = lengths;
  stack_.forward(tape.embedded, lengths, state.stack, tape.hidden, tape.stack);
  logits.resize(tokens.rows(), tokens.cols(), vocab_size());
  head().weight_matrix().multiply_transposed(tape.hidden.matrix(), logits.matrix());
  tape.recorded = true;
}

template <typename Scalar_>
void LanguageModel<Scalar_>::initialize(Rng& rng) {
  small_init(embedding_.weight(), embedding_dim(), rng);
  stack_.initialize(rng);
  if (!config_.tie_weights) small_init(lm_head_.weight(), embedding_dim(), rng);
}

}  // namespace xlstm
