// TiRexModel: the TiRex network (math §13.2; NX-AI/tirex `TiRexZero`) from the library's
// parts: patch embedding (ResidualMlp), NB sLSTM blocks with RMSNorm pre-norms and the split
// SwiGLU (SLstmBlock options), output RMSNorm and the quantile head (ResidualMlp).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/residual_mlp.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/tirex/config.hpp"

namespace xlstm::tirex {

/// The recurrent state of every block, carried across calls of
/// TiRexModel::forward_tokens (a fresh one is the zero state of a new pass).
template <typename Scalar>
struct TiRexState {
  std::vector<SLstmBlockState<Scalar>> blocks;
  Index batch() const { return blocks.empty() ? 0 : blocks.front().batch(); }
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
  /// (SLstmCell::prepare_bf16_kernel) instead of rounding it at every step;
  /// the same results, about twice as fast in the cells. The loaders of
  /// tirex/checkpoint.hpp call it; call it again after changing weights
  /// through writable access. Does nothing in the plain numerics.
  void prepare_bf16_kernels() {
    if (config_.numerics != SLstmNumerics::tirex_official) return;
    for (Block& b : blocks_) b.cell().prepare_bf16_kernel();
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
  /// B x k x Q*P.
  void forward_tokens(const Sequence<Scalar>& tokens, State& state, Sequence<Scalar>& head,
                      std::vector<Sequence<Scalar>>* block_outputs = nullptr,
                      Index head_tokens = 0) const {
    const Index p = config_.patch_size(), d = config_.embedding_dim;
    check(tokens.features() == 2 * p, "TiRexModel::forward_tokens: argument 'tokens' must have ",
          2 * p, " features (2 x patch size), got ", tokens.features());
    check(tokens.time() > 0 && tokens.batch() > 0,
          "TiRexModel::forward_tokens: argument 'tokens' must hold at least one token of one "
          "series, got batch ",
          tokens.batch(), " x ", tokens.time(), " tokens");
    check(Index(state.blocks.size()) == num_blocks(), "TiRexModel::forward_tokens: argument ",
          "'state' must hold ", num_blocks(), " block states (initial_state), got ",
          state.blocks.size());
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].check_state(state.blocks[std::size_t(i)], tokens.batch(),
                                          "TiRexModel::forward_tokens");
    }
    check(head_tokens >= 0, "TiRexModel::forward_tokens: argument 'head_tokens' must be >= 0, got ",
          head_tokens);
    const Index batch = tokens.batch(), time = tokens.time();
    Sequence<Scalar> h(batch, time, d), next;
    ResidualMlpScratch<Scalar> scratch;
    input_patch_embedding_.forward(tokens.matrix(), h.matrix(), scratch);
    if (block_outputs) block_outputs->resize(blocks_.size());
    for (Index i = 0; i < num_blocks(); ++i) {
      blocks_[std::size_t(i)].forward(h, state.blocks[std::size_t(i)], next);
      std::swap(h, next);
      if (block_outputs) (*block_outputs)[std::size_t(i)] = h;
    }
    const Index keep = head_tokens > 0 ? std::min(head_tokens, time) : time;
    if (keep < time) {  // the last `keep` tokens of every row, into `next`
      next.resize(batch, keep, d);
      for (Index b = 0; b < batch; ++b) {
        next.matrix().middleRows(b * keep, keep) =
            h.matrix().middleRows(b * time + time - keep, keep);
      }
      std::swap(h, next);
    }
    out_norm_.forward(h.matrix(), h.matrix());
    head.resize(batch, keep, output_patch_embedding_.out_features());
    output_patch_embedding_.forward(h.matrix(), head.matrix(), scratch);
  }

  /// The official state_dict keys (math §13.7): `input_patch_embedding.*`,
  /// `blocks.<i>.*`, `out_norm.weight`, `output_patch_embedding.*`.
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    self.input_patch_embedding_.for_each_parameter(visit, prefix + "input_patch_embedding.");
    for (std::size_t i = 0; i < self.blocks_.size(); ++i) {
      self.blocks_[i].for_each_parameter(visit, prefix + "blocks." + std::to_string(i) + ".");
    }
    self.out_norm_.for_each_parameter(visit, prefix + "out_norm.");
    self.output_patch_embedding_.for_each_parameter(visit, prefix + "output_patch_embedding.");
  }

  TiRexConfig config_;
  ResidualMlp<Scalar> input_patch_embedding_;
  std::vector<Block> blocks_;
  RmsNorm<Scalar> out_norm_;
  ResidualMlp<Scalar> output_patch_embedding_;
};

}  // namespace xlstm::tirex
