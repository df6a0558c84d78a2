// LargeModel: the xLSTM-Large (xLSTM-7B) architecture (math §9): token
// embedding, LargeBlocks (blocks/large_block.hpp), an RMSNorm and the LM head
// with soft-capped logits. Weights may stay BF16/F16 in memory
// (core/weight_matrix.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/blocks/large_block.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/thread_buffers.hpp"
#include "xlstm/core/weight_matrix.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm {

/// Mirrors the official xLSTMLargeConfig (math §9.1): the block fields
/// (LargeBlockConfig) plus the model's, with the official names and
/// defaults. Kernel and dtype choices of the CUDA/Triton code are kept for
/// the JSON round trip; the CPU computation follows the native kernels' math.
struct LargeModelConfig : LargeBlockConfig {
  Index num_blocks = -1;
  Index vocab_size = -1;
  bool add_out_norm = true;
  std::string chunkwise_kernel = "chunkwise--triton_limit_chunk";
  std::string sequence_kernel = "native_sequence__triton";
  std::string step_kernel = "triton";
  std::string mode = "train";
  bool return_last_states = false;
  std::string autocast_kernel_dtype = "bfloat16";
  std::string inference_state_dtype = "float32";
  double output_logit_soft_cap = 30.0;  ///< <= 0 means no cap (None)
  std::string weight_mode = "single";   ///< "single" or "fused": checkpoint naming

  /// The config each block is built with.
  LargeBlockConfig block_config() const {
    LargeBlockConfig c = *this;
    c._num_blocks = std::max<Index>(num_blocks, 1);
    return c;
  }

  void validate() const {
    const char* where = "xLSTMLargeConfig";
    check_positive(num_blocks, where, "num_blocks");
    check_positive(vocab_size, where, "vocab_size");
    block_config().validate(where);
    check(weight_mode == "single" || weight_mode == "fused", where,
          ": 'weight_mode' must be \"single\" or \"fused\", got \"", weight_mode, "\"");
    // The largest weights: embedding and LM head.
    check_size_product({vocab_size, embedding_dim}, where, "'vocab_size' x 'embedding_dim'");
  }
};

/// Step scratch of the model: the residual stream (B x E) and the buffers
/// its blocks share.
template <typename Scalar>
struct LargeModelWorkspace {
  Matrix<Scalar> x, normed;
  LargeBlockWorkspace<Scalar> block;
};

/// The recurrent state of a LargeModel: one LargeBlockState per block (the
/// mLSTM states in the kernel convention, unscaled keys), plus step scratch.
/// The plain sequence forward's activations (B*T x E) and the blocks' shared
/// workspace, kept by the calling thread between calls (design §7.7).
template <typename Scalar>
struct LargeModelForwardScratch {
  Matrix<Scalar> x;
  LargeBlockWorkspace<Scalar> blocks;
};

template <typename Scalar>
struct LargeModelState {
  std::vector<LargeBlockState<Scalar>> blocks;
  Index batch_size = 0;
  Scratch<LargeModelWorkspace<Scalar>> scratch;

  Index batch() const { return batch_size; }
  void reset() {
    for (auto& b : blocks) b.reset();
  }
  void reset_row(Index row) {
    check(row >= 0 && row < batch(), "LargeModelState::reset_row: argument 'row' must be in [0, ",
          batch(), "), got ", row);
    for (auto& b : blocks) b.reset_row(row);
  }
  void copy_row_from(const LargeModelState& other, Index src, Index dst) {
    check(other.blocks.size() == blocks.size(),
          "LargeModelState::copy_row_from: the states belong to different models");
    for (std::size_t i = 0; i < blocks.size(); ++i)
      blocks[i].copy_row_from(other.blocks[i], src, dst);
  }
  /// Converts every block's C to `storage` (math §4.8): e.g.
  /// MLstmStateStorage::bf16 for decoding many rows at once.
  void set_mlstm_storage(MLstmStateStorage storage) {
    for (auto& b : blocks) b.set_mlstm_storage(storage);
  }

  /// "block_<i>.mlstm_state.{0,1,2}" (io/state_io.hpp).
  XLSTM_STATE_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    for (std::size_t i = 0; i < self.blocks.size(); ++i) {
      self.blocks[i].for_each_tensor(visit, prefix + "block_" + std::to_string(i) + ".");
    }
  }
};

/// The xLSTM-Large (xLSTM-7B) model: embedding, LargeBlocks, RMSNorm and a
/// soft-capped LM head.
///
///   auto model = xlstm::io::load_large_model<float>("xLSTM-7b/");  // BF16 stays 16-bit
///   auto state = model.initial_state(/*batch*/ 1);
///   xlstm::Sequence<float> logits;
///   model.forward(tokens, state, logits);        // prefill (chunkwise mLSTM)
///   xlstm::Matrix<float> next;
///   model.step(std::vector<std::int64_t>{42}, state, next);
///
/// `forward` and `step` are const: one model may serve many threads, each
/// with its own state. `step` allocates nothing once the state exists.
template <typename Scalar_>
class LargeModel {
 public:
  using Scalar = Scalar_;
  using Config = LargeModelConfig;
  using State = LargeModelState<Scalar>;
  using Block = LargeBlock<Scalar>;

  /// A model with the initialisation of math §8.5 from kDefaultSeed (Scalar
  /// weights); call initialize(rng) for another draw, or load weights.
  explicit LargeModel(Config config) : LargeModel(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A model with zero weights (ones for the norms), to be filled by the
  /// caller. `storage` bf16/f16 (or int8_rows/q4_g32: zero values and
  /// scales) allocates the weight matrices (not the vectors) in that storage
  /// from the start, so a large model never exists in float (e.g. to fill
  /// with generated weights, or to replace its matrices one by one).
  /// `placeholder` allocates no weights at all: every matrix must be
  /// replaced before use (what load_large_model does).
  LargeModel(Config config, Uninitialized, WeightStorage storage = WeightStorage::native);

  const Config& config() const { return config_; }
  Index vocab_size() const { return config_.vocab_size; }
  Index embedding_dim() const { return config_.embedding_dim; }
  std::vector<Block>& blocks() { return blocks_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  const WeightMatrix<Scalar>& embedding() const { return embedding_.weight_matrix(); }
  RmsNorm<Scalar>& out_norm() { return out_norm_; }
  const Linear<Scalar>& lm_head() const { return lm_head_; }

  /// Bytes of the weights one decode step reads (one embedding row).
  std::size_t weight_bytes() const {
    std::size_t total =
        embedding().bytes() / std::size_t(vocab_size()) + lm_head_.weight_matrix().bytes();
    for (const Block& b : blocks_) {
      for (const Linear<Scalar>* p : b.projections()) total += p->weight_matrix().bytes();
    }
    return total;
  }

  State initial_state(Index batch) const;

  /// tokens: B x T; logits: B x T x V. Prefill uses the chunkwise form (any T;
  /// math §4.6 says any split agrees), starting from and updating `state`.
  void forward(const Tokens& tokens, State& state, Sequence<Scalar>& logits) const {
    forward(tokens, Lengths{}, state, logits);
  }

  /// Ragged batch: row b has lengths[b] valid tokens; the ids after them are
  /// padding (never read) and their logits are zero.
  void forward(const Tokens& tokens, const Lengths& lengths, State& state,
               Sequence<Scalar>& logits) const;

  /// One step for B tokens; logits: B x V (a Matrix is resized, a view must
  /// have the size). Does not allocate once the state exists.
  template <typename TokenVector, typename Out>
  void step(const TokenVector& tokens, State& state, Out&& logits_out) const {
    check_batch(Index(tokens.size()), state, "LargeModel::step", "tokens");
    prepare_output(logits_out, state.batch(), vocab_size(), "LargeModel::step", "logits");
    MatrixRef<Scalar> logits(logits_out);
    for (Index b = 0; b < state.batch(); ++b) {
      check_token(static_cast<std::int64_t>(tokens[std::size_t(b)]), "LargeModel::step");
    }
    auto& w = state.scratch.get();
    ensure_size(w.x, state.batch(), embedding_dim());
    ensure_size(w.normed, state.batch(), embedding_dim());
    for (Index b = 0; b < state.batch(); ++b) {
      const auto id = static_cast<std::int64_t>(tokens[std::size_t(b)]);
      embedding().copy_row(Index(id), w.x.row(b));
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      blocks_[i].forward_in_place(state.batch(), 1, Lengths{}, w.x, state.blocks[i], w.block,
                                  Workload::step);
    }
    head(w.x, w.normed, logits, Workload::step);
  }

  /// Official names (math §7.2): embedding.weight, backbone.blocks.<i>.…,
  /// backbone.out_norm.…, lm_head.weight. io/large_checkpoint.hpp maps them
  /// to the Hugging Face and fused schemes.
  XLSTM_PARAMETER_VISITOR

  /// Every block's initialize (math §8.5), small_init for the embedding and
  /// the head; `noise` as in LargeBlock::initialize. Needs Scalar weights.
  void initialize(Rng& rng, double noise = 0.0);

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    self.embedding_.for_each_parameter(visit, prefix + "embedding.");
    for (std::size_t i = 0; i < self.blocks_.size(); ++i) {
      self.blocks_[i].for_each_parameter(visit,
                                         prefix + "backbone.blocks." + std::to_string(i) + ".");
    }
    if (self.config_.add_out_norm) {
      self.out_norm_.for_each_parameter(visit, prefix + "backbone.out_norm.");
    }
    self.lm_head_.for_each_parameter(visit, prefix + "lm_head.");
  }

  template <typename Logits>
  void head(Matrix<Scalar>& x, Matrix<Scalar>& normed, Logits&& logits, Workload workload) const {
    if (config_.add_out_norm) {
      ensure_size(normed, x.rows(), x.cols());
      out_norm_.forward(x, normed);
      lm_head_.forward(normed, logits, workload);
    } else {
      lm_head_.forward(x, logits, workload);
    }
    if (config_.output_logit_soft_cap > 0) {
      logits.array() = soft_cap(logits.array(), Scalar(config_.output_logit_soft_cap));
    }
  }

  void check_batch(Index batch, const State& state, const char* where, const char* name) const {
    check(state.blocks.size() == blocks_.size(), where, ": argument 'state' has ",
          state.blocks.size(), " block states, the model has ", blocks_.size());
    check(batch == state.batch(), where, ": argument '", name, "' has batch ", batch,
          " but the state was made for batch ", state.batch());
    // Every block state is checked before the first block runs: a block that
    // threw half way through would leave the earlier ones advanced.
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      blocks_[i].check_state(state.blocks[i], batch, where);
    }
  }

  void check_token(std::int64_t id, const char* where) const {
    check(id >= 0 && id < vocab_size(), where, ": token id ", id, " is out of range [0, ",
          vocab_size(), ")");
  }

  Config config_;
  Linear<Scalar> embedding_;
  std::vector<Block> blocks_;
  RmsNorm<Scalar> out_norm_;
  Linear<Scalar> lm_head_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
LargeModel<Scalar_>::LargeModel(Config config, Uninitialized, WeightStorage storage)
    : config_(std::move(config)) {
  config_.validate();
  const Index e = config_.embedding_dim;
  embedding_ = Linear<Scalar>(e, config_.vocab_size, false, storage);
  blocks_.reserve(std::size_t(config_.num_blocks));
  for (Index i = 0; i < config_.num_blocks; ++i) {
    blocks_.emplace_back(config_.block_config(), uninitialized, storage);
  }
  if (config_.add_out_norm) out_norm_ = RmsNorm<Scalar>(e, config_.norm_eps, config_.use_bias);
  lm_head_ = Linear<Scalar>(e, config_.vocab_size, false, storage);
}

template <typename Scalar_>
auto LargeModel<Scalar_>::initial_state(Index batch) const -> State {
  check(batch >= 0, "LargeModel::initial_state: argument 'batch' must be >= 0, got ", batch);
  check_size_product(
      {batch, embedding_dim() + config_.qk_dim() + config_.v_dim() + config_.ffn_dim()},
      "LargeModel::initial_state",
      "'batch' x step workspace width (embedding_dim + qk dim + v dim + ffn dim)");
  State s;
  for (const Block& b : blocks_) s.blocks.push_back(b.initial_state(batch));
  s.batch_size = batch;
  return s;
}

template <typename Scalar_>
void LargeModel<Scalar_>::forward(const Tokens& tokens, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& logits) const {
  check_batch(tokens.rows(), state, "LargeModel::forward", "tokens");
  check_lengths(lengths, tokens.rows(), tokens.cols(), "LargeModel::forward");
  check(tokens.cols() > 0, "LargeModel::forward: argument 'tokens' must have at least one step");
  const Index batch = tokens.rows(), time = tokens.cols(), n = batch * time;
  // The activations and the blocks' shared workspace in the thread's
  // buffers (design §7.7).
  detail::ThreadBuffers<LargeModelForwardScratch<Scalar>> buffers;
  Matrix<Scalar>& x = buffers.get().x;
  LargeBlockWorkspace<Scalar>& ws = buffers.get().blocks;
  ensure_size(x, n, embedding_dim());
  x.setZero();
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < length_of(lengths, b, time); ++t) {
      const std::int64_t id = tokens(b, t);
      check_token(id, "LargeModel::forward");
      embedding().copy_row(Index(id), x.row(b * time + t));
    }
  }
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i].forward_in_place(batch, time, lengths, x, state.blocks[i], ws, Workload::sequence);
  }
  logits.resize(batch, time, vocab_size());
  head(x, ws.normed, logits.matrix(), Workload::sequence);
  zero_padding(logits, lengths);
}

template <typename Scalar_>
void LargeModel<Scalar_>::initialize(Rng& rng, double noise) {
  const Index e = embedding_dim();
  small_init(embedding_.weight(), e, rng);
  for (Block& b : blocks_) b.initialize(rng, noise);
  small_init(lm_head_.weight(), e, rng);
}

}  // namespace xlstm
