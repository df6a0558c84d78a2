// BlockStack: mLSTM and sLSTM blocks placed by `slstm_at`, with an optional
// post-blocks LayerNorm (math §6).
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// Mirrors the official xLSTMBlockStackConfig (math §6.1).
struct BlockStackConfig {
  std::optional<MLstmBlockConfig> mlstm_block;
  std::optional<SLstmBlockConfig> slstm_block;
  Index context_length = -1;
  Index num_blocks = 1;
  Index embedding_dim = 128;
  bool add_post_blocks_norm = true;
  bool bias = false;
  double dropout = 0.0;
  /// Indices of the sLSTM blocks; `slstm_at_all` means every index.
  std::vector<Index> slstm_at;
  bool slstm_at_all = false;

  /// 0 = mLSTM, 1 = sLSTM per block (the official `_block_map`).
  std::vector<int> block_map() const {
    std::vector<int> map(std::size_t(std::max<Index>(num_blocks, 0)), 0);
    const bool all = slstm_at_all || !mlstm_block;
    for (std::size_t i = 0; i < map.size(); ++i) {
      if (all || std::find(slstm_at.begin(), slstm_at.end(), Index(i)) != slstm_at.end()) {
        map[i] = 1;
      }
    }
    return map;
  }

  /// "0,1,0" as the official config stores it.
  std::string block_map_string() const {
    std::string s;
    for (int b : block_map()) s += (s.empty() ? "" : ",") + std::to_string(b);
    return s;
  }

  /// The official __post_init__ propagation (math §6.1).
  void post_init() {
    if (mlstm_block) {
      auto& m = mlstm_block->mlstm;
      m.embedding_dim = embedding_dim;
      m.bias = bias;
      m.dropout = dropout;
      m.context_length = context_length;
      m._num_blocks = num_blocks;
      mlstm_block->_num_blocks = num_blocks;
      mlstm_block->post_init();
    }
    if (slstm_block) {
      auto& s = slstm_block->slstm;
      s.dropout = dropout;
      s.embedding_dim = embedding_dim;
      s._num_blocks = num_blocks;
      slstm_block->_num_blocks = num_blocks;
      slstm_block->post_init();
    }
  }

  void validate() const {
    const char* where = "xLSTMBlockStackConfig";
    check_positive(num_blocks, where, "num_blocks");
    check_positive(embedding_dim, where, "embedding_dim");
    check(mlstm_block || slstm_block, where, ": needs 'mlstm_block' or 'slstm_block'");
    // Every block holds at least an embedding_dim-wide norm; checked before
    // block_map() allocates num_blocks entries.
    check_size_product({num_blocks, embedding_dim}, where, "'num_blocks' x 'embedding_dim'");
    for (Index i : slstm_at) {
      check(i >= 0 && i < num_blocks, where, ": 'slstm_at' entry ", i, " is out of range [0, ",
            num_blocks, ")");
    }
    const auto map = block_map();
    const bool any_slstm = std::find(map.begin(), map.end(), 1) != map.end();
    const bool any_mlstm = std::find(map.begin(), map.end(), 0) != map.end();
    check(!any_slstm || slstm_block, where,
          ": 'slstm_at' places sLSTM blocks but 'slstm_block' is null");
    check(!any_mlstm || mlstm_block, where, ": mLSTM blocks are placed but 'mlstm_block' is null");
    // The configs of the placed block kinds too, so that a config reader
    // rejects a bad block field (e.g. num_heads not dividing the width) before
    // a model is built. The stack gives every block its own _block_idx, so the
    // sLSTM config is checked as block 0.
    if (any_mlstm) mlstm_block->mlstm.validate();
    if (any_slstm) {
      SLstmLayerConfig layer = slstm_block->slstm;
      layer._block_idx = 0;
      layer.validate();
      if (slstm_block->feedforward) slstm_block->feedforward->validate();
    }
  }
};

template <typename Scalar>
using BlockState = std::variant<MLstmBlockState<Scalar>, SLstmBlockState<Scalar>>;

/// Step scratch of the stack: the activations between blocks (B x E).
template <typename Scalar>
struct BlockStackWorkspace {
  Matrix<Scalar> ping, pong;
};

/// The plain sequence forward's activations between blocks (B x T x E),
/// kept by the calling thread between calls (design §7.7).
template <typename Scalar>
struct BlockStackForwardScratch {
  Sequence<Scalar> ping, pong;
};

/// The states of all blocks, in block order. Make it with
/// BlockStack::initial_state(batch); copy it, reset or copy rows, save it
/// (io/state_io.hpp). It carries step scratch that is not part of it.
template <typename Scalar>
struct BlockStackState {
  std::vector<BlockState<Scalar>> blocks;
  Index batch_size = 0;
  Scratch<BlockStackWorkspace<Scalar>> scratch;

  Index batch() const { return batch_size; }

  void reset() {
    for (auto& b : blocks) std::visit([](auto& s) { s.reset(); }, b);
  }
  void reset_row(Index row) {
    check(row >= 0 && row < batch(), "BlockStackState::reset_row: argument 'row' must be in [0, ",
          batch(), "), got ", row);
    for (auto& b : blocks) std::visit([row](auto& s) { s.reset_row(row); }, b);
  }
  /// Copies batch row `src` of `other` (a state of the same stack) into row `dst`.
  void copy_row_from(const BlockStackState& other, Index src, Index dst) {
    check(other.blocks.size() == blocks.size(),
          "BlockStackState::copy_row_from: the states belong to different stacks");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      check(other.blocks[i].index() == blocks[i].index(), "BlockStackState::copy_row_from: block ",
            i, " is of a different kind");
      std::visit(
          [&](auto& s) {
            using S = std::decay_t<decltype(s)>;
            s.copy_row_from(std::get<S>(other.blocks[i]), src, dst);
          },
          blocks[i]);
    }
  }

  /// Converts every mLSTM block's C to `storage` (math §4.8): e.g.
  /// MLstmStateStorage::bf16 for decoding many rows at once.
  void set_mlstm_storage(MLstmStateStorage storage) {
    for (auto& b : blocks) std::visit([&](auto& s) { s.set_mlstm_storage(storage); }, b);
  }

  /// "block_<i>." + each block state's tensors (io/state_io.hpp).
  XLSTM_STATE_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    for (std::size_t i = 0; i < self.blocks.size(); ++i) {
      const std::string block_prefix = prefix + "block_" + std::to_string(i) + ".";
      std::visit([&](auto& s) { s.for_each_tensor(visit, block_prefix); }, self.blocks[i]);
    }
  }
};

/// What a recording forward of the stack keeps for the backward (math §6.6;
/// model/block_stack_backward.hpp): each block's tape (which holds the
/// block's input) and the post-blocks norm's input. The backward uses it as
/// its workspace: a recording serves one backward; recording again with the
/// same shapes allocates nothing.
template <typename Scalar>
struct BlockStackTape {
  using BlockTape = std::variant<MLstmBlockTape<Scalar>, SLstmBlockTape<Scalar>>;
  std::vector<BlockTape> blocks;
  Sequence<Scalar> ping, pong;  ///< the activations between blocks; the backward's dL/d them
  Sequence<Scalar> last;        ///< the last block's output: the post-blocks norm's input
  Lengths lengths;
  bool recorded = false;
};

/// The official xLSTMBlockStack: mLSTM and sLSTM blocks placed by
/// `slstm_at`, each with its index for the initialisation, and an optional
/// post-blocks LayerNorm.
///
///   auto config = ...;                            // BlockStackConfig (docs/config.md)
///   xlstm::BlockStack<float> stack(config);      // official init, seed 0
///   auto state = stack.initial_state(/*batch*/ 4);
///   stack.forward(x, state, y);                  // then stack.step(x_t, state, y_t)
///
/// `forward` and `step` are const (one stack, many threads, a state each);
/// `step` allocates nothing once the state exists.
template <typename Scalar_>
class BlockStack : public SequenceModule<BlockStack<Scalar_>, Scalar_, BlockStackState<Scalar_>> {
 public:
  using Scalar = Scalar_;
  using Config = BlockStackConfig;
  using State = BlockStackState<Scalar>;
  static constexpr const char* kStepWhere = "BlockStack::step";
  using Block = std::variant<MLstmBlock<Scalar>, SLstmBlock<Scalar>>;
  using Tape = BlockStackTape<Scalar>;

  /// A stack with the official initialisation from kDefaultSeed; call
  /// initialize(rng) for another draw, or load weights.
  explicit BlockStack(Config config) : BlockStack(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A stack with zero weights, to be filled by the caller.
  BlockStack(Config config, Uninitialized);

  const Config& config() const { return config_; }
  Index embedding_dim() const { return config_.embedding_dim; }
  Index num_blocks() const { return Index(blocks_.size()); }
  const std::vector<Block>& blocks() const { return blocks_; }
  std::vector<Block>& blocks() { return blocks_; }
  /// SLstmCell::prepare_kernels() of every sLSTM block (io::load_module calls
  /// it; initialize(rng) prepares unless the parameters were listed for
  /// writing, SLstmCell::prepare_kernels_unless_listed).
  void prepare_kernels() {
    for (Block& b : blocks_) {
      if (auto* s = std::get_if<SLstmBlock<Scalar>>(&b)) s->prepare_kernels();
    }
  }
  /// The post-blocks LayerNorm (empty without add_post_blocks_norm).
  const GroupedNorm<Scalar>& post_blocks_norm() const { return post_blocks_norm_; }

  State initial_state(Index batch) const;

  /// forward(x, state, y) and step(x_t, state, y_t): SequenceModule.
  using SequenceModule<BlockStack, Scalar, State>::forward;

  /// Ragged batch (see MLstmBlock::forward); outputs past a row's length are zero.
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
               Sequence<Scalar>& y) const;

  /// The same, recording in `tape` what the backward needs (math §6.6;
  /// model/block_stack_backward.hpp).
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y, Tape& tape) const {
    forward(x, Lengths{}, state, y, tape);
  }
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Tape& tape) const;

  /// Official names (math §7.1): "blocks.<i>." and "post_blocks_norm.".
  XLSTM_PARAMETER_VISITOR

  void initialize(Rng& rng);

 private:
  friend class SequenceModule<BlockStack, Scalar, State>;
  using SequenceModule<BlockStack, Scalar, State>::check_input;

  /// step() after its checks, into an output of the right size.
  void step_into(const ConstMatrixRef<Scalar>& x_t, State& state, MatrixRef<Scalar> y_t) const;

  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    for (std::size_t i = 0; i < self.blocks_.size(); ++i) {
      const std::string block_prefix = prefix + "blocks." + std::to_string(i) + ".";
      std::visit([&](auto& block) { block.for_each_parameter(visit, block_prefix); },
                 self.blocks_[i]);
    }
    if (self.config_.add_post_blocks_norm) {
      self.post_blocks_norm_.for_each_parameter(visit, prefix + "post_blocks_norm.");
    }
  }

  void size_scratch(BlockStackWorkspace<Scalar>& ws, Index batch) const {
    ensure_size(ws.ping, batch, embedding_dim());
    ensure_size(ws.pong, batch, embedding_dim());
  }

  void check_state(const State& state, Index batch, const char* where) const {
    check(state.blocks.size() == blocks_.size(), where, ": argument 'state' has ",
          state.blocks.size(), " block states, the stack has ", blocks_.size(),
          " blocks (make it with initial_state)");
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      check(state.blocks[i].index() == blocks_[i].index(), where, ": block state ", i,
            " is of the wrong kind");
    }
    check(state.batch() == batch, where, ": the input has batch ", batch,
          " but the state was made for batch ", state.batch());
    // Every block state is checked before the first block runs: a block that
    // threw half way through the stack would leave the earlier ones advanced.
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      std::visit(
          [&](const auto& block) {
            using B = std::decay_t<decltype(block)>;
            block.check_state(std::get<typename B::State>(state.blocks[i]), batch, where);
          },
          blocks_[i]);
    }
  }

  Config config_;
  std::vector<Block> blocks_;
  GroupedNorm<Scalar> post_blocks_norm_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
BlockStack<Scalar_>::BlockStack(Config config, Uninitialized) : config_(std::move(config)) {
  config_.post_init();
  config_.validate();
  const auto map = config_.block_map();
  for (std::size_t i = 0; i < map.size(); ++i) {
    // Each block gets its index in the whole stack (used by the sLSTM bias init).
    if (map[i] == 0) {
      MLstmBlockConfig c = *config_.mlstm_block;
      c._block_idx = Index(i);
      blocks_.emplace_back(std::in_place_type<MLstmBlock<Scalar>>, c, uninitialized);
    } else {
      SLstmBlockConfig c = *config_.slstm_block;
      c._block_idx = Index(i);
      blocks_.emplace_back(std::in_place_type<SLstmBlock<Scalar>>, c, uninitialized);
    }
  }
  if (config_.add_post_blocks_norm) post_blocks_norm_ = make_layer_norm<Scalar>(embedding_dim());
}

template <typename Scalar_>
auto BlockStack<Scalar_>::initial_state(Index batch) const -> State {
  State s;
  for (const auto& b : blocks_) {
    std::visit([&](const auto& block) { s.blocks.emplace_back(block.initial_state(batch)); }, b);
  }
  s.batch_size = batch;
  size_scratch(s.scratch.get(), batch);
  return s;
}

template <typename Scalar_>
void BlockStack<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y) const {
  check_input(x.features(), x.batch(), state, "BlockStack::forward", "x");
  check_state(state, x.batch(), "BlockStack::forward");
  check_lengths(lengths, x.batch(), x.time(), "BlockStack::forward");
  // Block i writes where block i+1 does not read: the last one into y, the
  // others alternately into the thread's ping and pong (design §7.7). With y
  // the same sequence as x, the last block writes into a buffer too.
  detail::ThreadBuffers<BlockStackForwardScratch<Scalar>> buffers;
  BlockStackForwardScratch<Scalar>& ws = buffers.get();
  const Sequence<Scalar>* in = &x;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    const bool last = i + 1 == blocks_.size();
    Sequence<Scalar>& out = last && &x != &y ? y : (i % 2 == 0 ? ws.ping : ws.pong);
    std::visit(
        [&](const auto& block) {
          using B = std::decay_t<decltype(block)>;
          block.forward(*in, lengths, std::get<typename B::State>(state.blocks[i]), out);
        },
        blocks_[i]);
    in = &out;
  }
  if (in != &y) y = *in;
  if (config_.add_post_blocks_norm) post_blocks_norm_.forward(y.matrix(), y.matrix());
  zero_padding(y, lengths);
}

template <typename Scalar_>
void BlockStack<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y, Tape& tape) const {
  check_input(x.features(), x.batch(), state, "BlockStack::forward", "x");
  check_state(state, x.batch(), "BlockStack::forward");
  check_lengths(lengths, x.batch(), x.time(), "BlockStack::forward");
  check(&x != &y, "BlockStack::forward: arguments 'x' and 'y' must be different sequences");
  tape.recorded = false;  // until the forward completes
  tape.blocks.resize(blocks_.size());
  const Sequence<Scalar>* in = &x;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    // Block i writes where block i+1 does not read: the last one into
    // `last`, the others alternately into ping and pong.
    Sequence<Scalar>& out =
        i + 1 == blocks_.size() ? tape.last : (i % 2 == 0 ? tape.ping : tape.pong);
    std::visit(
        [&](const auto& block) {
          using B = std::decay_t<decltype(block)>;
          using BlockTape = typename B::Tape;
          // Keeps the alternative (and its storage) when the kind is unchanged.
          if (!std::holds_alternative<BlockTape>(tape.blocks[i])) tape.blocks[i] = BlockTape{};
          block.forward(*in, lengths, std::get<typename B::State>(state.blocks[i]), out,
                        std::get<BlockTape>(tape.blocks[i]));
        },
        blocks_[i]);
    in = &out;
  }
  y.resize(x.batch(), x.time(), embedding_dim());
  if (config_.add_post_blocks_norm) {
    post_blocks_norm_.forward(tape.last.matrix(), y.matrix());
  } else {
    y = tape.last;
  }
  zero_padding(y, lengths);
  tape.lengths = lengths;
  tape.recorded = true;
}

template <typename Scalar_>
void BlockStack<Scalar_>::step_into(const ConstMatrixRef<Scalar>& x_t, State& state,
                                    MatrixRef<Scalar> y_t) const {
  auto& ws = state.scratch.get();
  size_scratch(ws, x_t.rows());
  ws.ping = x_t;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    std::visit(
        [&](const auto& block) {
          using B = std::decay_t<decltype(block)>;
          block.step(ws.ping, std::get<typename B::State>(state.blocks[i]), ws.pong);
        },
        blocks_[i]);
    ws.ping.swap(ws.pong);  // swaps buffers, no allocation
  }
  if (config_.add_post_blocks_norm) {
    post_blocks_norm_.forward(ws.ping, y_t);
  } else {
    y_t = ws.ping;
  }
}

template <typename Scalar_>
void BlockStack<Scalar_>::initialize(Rng& rng) {
  for (auto& b : blocks_) std::visit([&](auto& block) { block.initialize(rng); }, b);
  if (config_.add_post_blocks_norm) post_blocks_norm_.weight().setZero();
}

}  // namespace xlstm
