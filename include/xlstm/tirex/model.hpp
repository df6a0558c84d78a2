// TiRexModel: the TiRex network (math §13.2; NX-AI/tirex `TiRexZero`) from the library's
// parts: patch embedding (ResidualMlp), NB sLSTM blocks with RMSNorm pre-norms and the split
// SwiGLU (SLstmBlock options), output RMSNorm and the quantile head (ResidualMlp).
#pragma once

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/residual_mlp.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/tirex/config.hpp"

namespace xlstm::tirex {

/// The recurrent state of every block, carried across calls of
/// TiRexModel::forward_tokens (a fresh one is the zero state of a new pass).
template <typename Scalar>
struct TiRexState {
  std::vector<SLstmBlockState<Scalar>> blocks;
  Index batch() const { return blocks.empty() ? 0 : blocks.front().batch(); }

  /// Copies batch row `src` of `other` into row `dst` of every block's state.
  void copy_row_from(const TiRexState& other, Index src, Index dst) {
    check(other.blocks.size() == blocks.size(), "TiRexState::copy_row_from: ", other.blocks.size(),
          " block states vs ", blocks.size());
    for (std::size_t i = 0; i < blocks.size(); ++i)
      blocks[i].copy_row_from(other.blocks[i], src, dst);
  }
};

/// The buffers of TiRexModel::step_token, kept by the caller: after the
/// first step with a batch size, steps of that size allocate nothing.
template <typename Scalar>
struct StepWorkspace {
  Matrix<Scalar> x, y;
  /// One per MLP: their outputs differ in width (D and Q*P).
  ResidualMlpScratch<Scalar> input_scratch, output_scratch;
};

/// The buffers of one pass of TiRexModel::forward_rows, kept by a caller that
/// runs passes of the same shapes again (tirex::forecast_into): after the
/// first, a pass allocates nothing.
template <typename Scalar>
struct PassWorkspace {
  Sequence<Scalar> h, next;  ///< the blocks' inputs and outputs, B x S x D
  Sequence<Scalar> kept;     ///< the tokens the head runs on (B x head_tokens x D)
  /// One per MLP: their shapes differ.
  ResidualMlpScratch<Scalar> input_mlp, output_mlp;
  SLstmBlockForwardScratch<Scalar> block;
};

/// The TiRex network on tokens (math §13.2). Parameter names are the
/// official state_dict keys (math §13.7), so io::load_module fills it from
/// the golden files, a safetensors export or an official checkpoint
/// (tirex/checkpoint.hpp). The forecasting API is tirex/forecast.hpp.
///
///   xlstm::tirex::TiRexModel<float> model(config);   // zero weights
///   xlstm::io::load_module(model, file);
///   auto state = model.initial_state(batch);
///   model.forward_tokens(tokens, state, head);        // B x S x 2P -> B x S x Q*P
///
/// `forward_tokens` is const: one model may serve many threads, each with
/// its own state.
template <typename Scalar_>
class TiRexModel {
 public:
  using Scalar = Scalar_;
  using Block = SLstmBlock<Scalar>;
  using State = TiRexState<Scalar>;

  explicit TiRexModel(TiRexConfig config) : config_(std::move(config)) {
    config_.validate();
    const Index p = config_.patch_size(), d = config_.embedding_dim, ff = config_.input_ff_dim;
    input_patch_embedding_ = ResidualMlp<Scalar>(2 * p, ff, d);
    blocks_.reserve(std::size_t(config_.num_blocks));
    for (Index i = 0; i < config_.num_blocks; ++i) {
      blocks_.emplace_back(config_.block_config(i), uninitialized);
    }
    out_norm_ = RmsNorm<Scalar>(d, 1e-6, false);
    output_patch_embedding_ = ResidualMlp<Scalar>(d, ff, config_.num_quantiles() * p);
  }

  const TiRexConfig& config() const { return config_; }
  Index num_blocks() const { return Index(blocks_.size()); }
  Block& block(Index i) { return blocks_[std::size_t(i)]; }
  const Block& block(Index i) const { return blocks_[std::size_t(i)]; }
  ResidualMlp<Scalar>& input_patch_embedding() { return input_patch_embedding_; }
  const ResidualMlp<Scalar>& input_patch_embedding() const { return input_patch_embedding_; }
  ResidualMlp<Scalar>& output_patch_embedding() { return output_patch_embedding_; }
  const ResidualMlp<Scalar>& output_patch_embedding() const { return output_patch_embedding_; }
  RmsNorm<Scalar>& out_norm() { return out_norm_; }
  const RmsNorm<Scalar>& out_norm() const { return out_norm_; }

  /// math §12.2: in the official numerics, stores every cell's bf16(R) once
  /// (SLstmCell::prepare_kernels) instead of rounding it at every step; the
  /// same results, faster. Does nothing in the plain numerics (the name of
  /// earlier versions; prepare_kernels() serves both).
  void prepare_bf16_kernels() {
    if (config_.numerics != SLstmNumerics::tirex_official) return;
    prepare_kernels();
  }
  /// SLstmCell::prepare_kernels() of every block, in either numerics
  /// (io::load_module and prepare() call it).
  void prepare_kernels() {
    for (Block& b : blocks_) b.cell().prepare_kernels();
  }

  /// math §13.10: computes the padding states, the state of every block after
  /// k = 0 .. N - 1 fully padded tokens (one pass of N - 1 tokens at batch 1),
  /// which the forecasts then start from instead of running those tokens.
  /// Explicit, not lazy: the model stays immutable (and free to share between
  /// threads) once prepared. Writable access to the parameters drops them.
  void prepare_padding_states() {
    padding_states_.clear();
    const Index n = config_.tokens_per_window(), p = config_.patch_size();
    State state = initial_state(1);
    padding_states_.reserve(std::size_t(n));
    padding_states_.push_back(state);
    // math §13.5: a fully padded token is [0 ... 0 | 0 ... 0] whatever the scaler.
    Sequence<Scalar> token(1, 1, 2 * p);
    token.matrix().setZero();
    PassWorkspace<Scalar> workspace;
    for (Index k = 1; k < n; ++k) {
      run(token, Lengths{}, state, nullptr, nullptr, 0, workspace);
      padding_states_.push_back(state);
    }
  }

  /// Everything a loaded model should have computed once: the bf16 kernels
  /// and the padding states. The loaders of tirex/checkpoint.hpp call it;
  /// call it again after changing weights through writable access.
  void prepare() {
    prepare_kernels();
    prepare_padding_states();
  }

  /// Whether prepare_padding_states() ran (since the last writable access).
  bool has_padding_states() const { return !padding_states_.empty(); }
  /// Forgets the padding states: forecasts then run every token (what the
  /// official code does; the same numbers, slower).
  void clear_padding_states() { padding_states_.clear(); }
  /// The state after `k` fully padded tokens (k < N; batch 1), math §13.10.
  const State& padding_state(Index k) const {
    check(has_padding_states(), "TiRexModel::padding_state: call prepare_padding_states() first");
    check(k >= 0 && k < Index(padding_states_.size()), "TiRexModel::padding_state: argument 'k' ",
          "must be in [0, ", padding_states_.size(), "), got ", k);
    return padding_states_[std::size_t(k)];
  }

  /// The zero state of every block for `batch` rows.
  State initial_state(Index batch) const {
    State s;
    s.blocks.reserve(blocks_.size());
    for (const Block& b : blocks_) s.blocks.push_back(b.initial_state(batch));
    return s;
  }

  /// Runs the network on `tokens` (B x S x 2P, math §13.5) from `state`
  /// (left as the state after the last token): `head` becomes B x S x Q*P,
  /// the quantile head's output per token, quantile-major (element q*P + j is
  /// quantile q at offset j). With `block_outputs`, element i receives block
  /// i's output (B x S x D, before the output norm; math §13.8). Every
  /// projection runs once over all tokens; the cells step through them.
  /// With `head_tokens` k > 0, only the last k tokens of each row go through
  /// the output norm and head (a forecast reads no others): `head` is then
  /// B x k x Q*P. Every product is row-invariant (Workload::row_invariant):
  /// a row's numbers do not depend on the other rows (math §13.10).
  void forward_tokens(const Sequence<Scalar>& tokens, State& state, Sequence<Scalar>& head,
                      std::vector<Sequence<Scalar>>* block_outputs = nullptr,
                      Index head_tokens = 0) const {
    check_arguments(tokens, state, head_tokens, "TiRexModel::forward_tokens");
    PassWorkspace<Scalar> workspace;
    run(tokens, Lengths{}, state, &head, block_outputs, head_tokens, workspace);
  }

  /// One token for each of B rows (`token` B x 2P) from `state`: `head`
  /// (B x Q*P) receives the head's output, the bits forward_tokens gives for
  /// the same token (every product row-invariant; math §13.11). Allocates
  /// nothing once `workspace` and `state` have served this batch size.
  void step_token(const ConstMatrixRef<Scalar>& token, State& state, MatrixRef<Scalar> head,
                  StepWorkspace<Scalar>& workspace) const {
    const char* where = "TiRexModel::step_token";
    const Index p = config_.patch_size(), batch = token.rows();
    check(token.cols() == 2 * p && batch > 0, where, ": argument 'token' must be B x ", 2 * p,
          ", got ", token.rows(), " x ", token.cols());
    check(head.rows() == batch && head.cols() == output_patch_embedding_.out_features(), where,
          ": argument 'head' must be ", batch, " x ", output_patch_embedding_.out_features(),
          ", got ", head.rows(), " x ", head.cols());
    check(Index(state.blocks.size()) == num_blocks(), where, ": argument 'state' must hold ",
          num_blocks(), " block states (initial_state), got ", state.blocks.size());
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].check_state(state.blocks[std::size_t(i)], batch, where);
    }
    const Workload workload = Workload::row_invariant;
    ensure_size(workspace.x, batch, config_.embedding_dim);
    ensure_size(workspace.y, batch, config_.embedding_dim);
    input_patch_embedding_.forward(token, workspace.x, workspace.input_scratch, workload);
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].step(workspace.x, state.blocks[std::size_t(i)], workspace.y);
      workspace.x.swap(workspace.y);
    }
    out_norm_.forward(workspace.x, workspace.x);
    output_patch_embedding_.forward(workspace.x, head, workspace.output_scratch, workload);
  }

  /// Ragged rows (math §13.10): row b runs only its first lengths[b] tokens
  /// from its own row of `state`, exactly as if alone; `head` becomes
  /// B x head_tokens x Q*P, the head on the last head_tokens (>= 1) of each
  /// row's own tokens (head_tokens <= every length).
  void forward_rows(const Sequence<Scalar>& tokens, const Lengths& lengths, State& state,
                    Sequence<Scalar>& head, Index head_tokens) const {
    PassWorkspace<Scalar> workspace;
    forward_rows(tokens, lengths, state, head, head_tokens, workspace);
  }

  /// The same in the caller's `workspace`: allocates nothing once it, `head`
  /// and `state` have served these shapes.
  void forward_rows(const Sequence<Scalar>& tokens, const Lengths& lengths, State& state,
                    Sequence<Scalar>& head, Index head_tokens,
                    PassWorkspace<Scalar>& workspace) const {
    const char* where = "TiRexModel::forward_rows";
    check_arguments(tokens, state, head_tokens, where);
    check(head_tokens >= 1, where, ": argument 'head_tokens' must be >= 1, got ", head_tokens);
    check_lengths(lengths, tokens.batch(), tokens.time(), where);
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      check(lengths[b] >= std::max<Index>(head_tokens, 1), where, ": row ", b, " has ", lengths[b],
            " tokens, fewer than 'head_tokens' (", head_tokens, ") or none");
    }
    run(tokens, lengths, state, &head, nullptr, head_tokens, workspace);
  }

  /// The official state_dict keys (math §13.7): `input_patch_embedding.*`,
  /// `blocks.<i>.*`, `out_norm.weight`, `output_patch_embedding.*`.
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    // Writable access may change the weights: drop what was computed from them.
    if constexpr (!std::is_const_v<Self>) self.padding_states_.clear();
    self.input_patch_embedding_.for_each_parameter(visit, prefix + "input_patch_embedding.");
    for (std::size_t i = 0; i < self.blocks_.size(); ++i) {
      self.blocks_[i].for_each_parameter(visit, prefix + "blocks." + std::to_string(i) + ".");
    }
    self.out_norm_.for_each_parameter(visit, prefix + "out_norm.");
    self.output_patch_embedding_.for_each_parameter(visit, prefix + "output_patch_embedding.");
  }

  void check_arguments(const Sequence<Scalar>& tokens, const State& state, Index head_tokens,
                       const char* where) const {
    const Index p = config_.patch_size();
    check(tokens.features() == 2 * p, where, ": argument 'tokens' must have ", 2 * p,
          " features (2 x patch size), got ", tokens.features());
    check(tokens.time() > 0 && tokens.batch() > 0, where,
          ": argument 'tokens' must hold at least one token of one series, got batch ",
          tokens.batch(), " x ", tokens.time(), " tokens");
    check(Index(state.blocks.size()) == num_blocks(), where, ": argument 'state' must hold ",
          num_blocks(), " block states (initial_state), got ", state.blocks.size());
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].check_state(state.blocks[std::size_t(i)], tokens.batch(), where);
    }
    check(head_tokens >= 0, where, ": argument 'head_tokens' must be >= 0, got ", head_tokens);
  }

  /// The network (arguments checked); no head when `head` is null. Row b's
  /// tokens are its first lengths[b] (all when `lengths` is empty).
  void run(const Sequence<Scalar>& tokens, const Lengths& lengths, State& state,
           Sequence<Scalar>* head, std::vector<Sequence<Scalar>>* block_outputs, Index head_tokens,
           PassWorkspace<Scalar>& ws) const {
    const Index d = config_.embedding_dim;
    const Index batch = tokens.batch(), time = tokens.time();
    const Workload workload = Workload::row_invariant;
    Sequence<Scalar>& h = ws.h;
    Sequence<Scalar>& next = ws.next;
    h.resize(batch, time, d);
    input_patch_embedding_.forward(tokens.matrix(), h.matrix(), ws.input_mlp, workload);
    if (block_outputs) block_outputs->resize(blocks_.size());
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].forward(h, lengths, state.blocks[std::size_t(i)], next, workload,
                                      ws.block);
      std::swap(h, next);
      if (block_outputs) (*block_outputs)[std::size_t(i)] = h;
    }
    if (!head) return;
    const Index keep = head_tokens > 0 ? std::min(head_tokens, time) : time;
    Sequence<Scalar>* last = &h;
    if (keep < time || !lengths.empty()) {  // the last `keep` tokens of every row
      ws.kept.resize(batch, keep, d);
      for (Index b = 0; b < batch; ++b) {
        const Index end = length_of(lengths, b, time);
        ws.kept.matrix().middleRows(b * keep, keep) =
            h.matrix().middleRows(b * time + end - keep, keep);
      }
      last = &ws.kept;
    }
    out_norm_.forward(last->matrix(), last->matrix());
    head->resize(batch, keep, output_patch_embedding_.out_features());
    output_patch_embedding_.forward(last->matrix(), head->matrix(), ws.output_mlp, workload);
  }

  TiRexConfig config_;
  ResidualMlp<Scalar> input_patch_embedding_;
  std::vector<Block> blocks_;
  RmsNorm<Scalar> out_norm_;
  ResidualMlp<Scalar> output_patch_embedding_;
  std::vector<State> padding_states_;  ///< prepare_padding_states(), math §13.10
};

}  // namespace xlstm::tirex
