// LargeModel: the xLSTM-Large (xLSTM-7B) architecture (SPEC §9): RMSNorm
// pre-norm blocks of an mLSTM layer with q/k/v/o projections and soft-capped
// gates plus a SwiGLU feed-forward, and soft-capped logits. Weights may stay
// BF16/F16 in memory (core/weight_matrix.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/cells/mlstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/weight_matrix.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm {

/// Mirrors the official xLSTMLargeConfig (SPEC §9.1): same field names and
/// defaults. Kernel and dtype choices of the CUDA/Triton code are kept for the
/// JSON round trip; the CPU computation follows the native kernels' math.
struct LargeModelConfig {
  Index embedding_dim = -1;
  Index num_heads = -1;
  Index num_blocks = -1;
  Index vocab_size = -1;
  bool use_bias = false;
  double norm_eps = 1e-6;
  bool norm_reduction_force_float32 = true;
  bool add_out_norm = true;
  double qk_dim_factor = 0.5;
  double v_dim_factor = 1.0;
  std::string chunkwise_kernel = "chunkwise--triton_limit_chunk";
  std::string sequence_kernel = "native_sequence__triton";
  std::string step_kernel = "triton";
  std::string mode = "train";
  Index chunk_size = 64;
  bool return_last_states = false;
  std::string autocast_kernel_dtype = "bfloat16";
  double eps = 1e-6;
  std::string inference_state_dtype = "float32";
  double ffn_proj_factor = 2.6667;
  Index ffn_round_up_to_multiple_of = 64;
  double gate_soft_cap = 15.0;          ///< <= 0 means no cap (None)
  double output_logit_soft_cap = 30.0;  ///< <= 0 means no cap (None)
  std::string weight_mode = "single";   ///< "single" or "fused": checkpoint naming

  /// int(E * qk_dim_factor) and int(E * v_dim_factor): truncation (SPEC §10.14).
  Index qk_dim() const { return Index(double(embedding_dim) * qk_dim_factor); }
  Index v_dim() const { return Index(double(embedding_dim) * v_dim_factor); }
  /// The Large rounding helper of SPEC §1.6.
  Index ffn_dim() const {
    return round_up_to_next_multiple_of(double(embedding_dim) * ffn_proj_factor,
                                        ffn_round_up_to_multiple_of);
  }

  void validate() const {
    const char* where = "xLSTMLargeConfig";
    check_positive(embedding_dim, where, "embedding_dim");
    check_positive(num_heads, where, "num_heads");
    check_positive(num_blocks, where, "num_blocks");
    check_positive(vocab_size, where, "vocab_size");
    check_positive(chunk_size, where, "chunk_size");
    // Checked before qk_dim(), v_dim() and ffn_dim() convert embedding_dim x
    // factor to Index, which is undefined behaviour for NaN or out of range.
    const std::pair<double, const char*> factors[] = {{qk_dim_factor, "qk_dim_factor"},
                                                      {v_dim_factor, "v_dim_factor"},
                                                      {ffn_proj_factor, "ffn_proj_factor"}};
    for (const auto& [factor, name] : factors) {
      check(std::isfinite(factor) && factor > 0 &&
                double(embedding_dim) * factor <= double(kMaxElements),
            where, ": '", name, "' must be positive and finite, with 'embedding_dim' x '", name,
            "' at most ", kMaxElements, ", got ", factor);
    }
    check_positive(ffn_round_up_to_multiple_of, where, "ffn_round_up_to_multiple_of");
    check(qk_dim() > 0 && qk_dim() % num_heads == 0, where,
          ": qk dim int(embedding_dim * "
          "qk_dim_factor) = ",
          qk_dim(), " must be a positive multiple of 'num_heads' (", num_heads, ")");
    check(v_dim() > 0 && v_dim() % num_heads == 0, where,
          ": v dim int(embedding_dim * "
          "v_dim_factor) = ",
          v_dim(), " must be a positive multiple of 'num_heads' (", num_heads, ")");
    check(ffn_dim() > 0, where, ": 'ffn_proj_factor' gives no feed-forward width");
    check(weight_mode == "single" || weight_mode == "fused", where,
          ": 'weight_mode' must be \"single\" or \"fused\", got \"", weight_mode, "\"");
    check(norm_eps > 0 && eps >= 0 && std::isfinite(norm_eps) && std::isfinite(eps), where,
          ": 'norm_eps' must be finite and > 0 and 'eps' finite and >= 0, got ", norm_eps, " and ",
          eps);
    // The largest weights: embedding and LM head, and the fused projections.
    check_size_product({vocab_size, embedding_dim}, where, "'vocab_size' x 'embedding_dim'");
    check_size_product({2, qk_dim() + v_dim(), embedding_dim}, where,
                       "fused q/k/v/o weight (2 x (qk dim + v dim) x 'embedding_dim')");
    check_size_product({2, ffn_dim(), embedding_dim}, where,
                       "fused feed-forward weight (2 x ffn dim x 'embedding_dim')");
  }
};

/// A weight with an optional bias: y = x W^T (+ b).
template <typename Scalar>
struct Projection {
  WeightMatrix<Scalar> weight;
  Vector<Scalar> bias;  ///< empty when absent

  Projection() = default;
  Projection(Index in, Index out, bool with_bias, WeightStorage storage = WeightStorage::native)
      : weight(storage == WeightStorage::native
                   ? WeightMatrix<Scalar>(out, in)
                   : WeightMatrix<Scalar>::half_zeros(storage, out, in)) {
    if (with_bias) bias.setZero(out);
  }

  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
               Workload workload = Workload::sequence) const {
    weight.multiply_transposed(x, y, /*accumulate=*/false, workload);
    if (bias.size() > 0) y.rowwise() += bias.transpose();
  }
};

/// Per block: the mLSTM state in the kernel convention (unscaled keys).
template <typename Scalar>
struct LargeModelState {
  std::vector<MLstmState<Scalar>> blocks;

  /// Step workspace (B rows), so that step does not allocate.
  struct Workspace {
    Matrix<Scalar> x, normed, q, k, v, o, gate_i, gate_f, h, h_norm, ffn_gate, ffn_up, delta;
  } ws;

  Index batch() const { return blocks.empty() ? 0 : blocks.front().batch; }
  void reset() {
    for (auto& b : blocks) b.reset();
  }
  void reset_row(Index row) {
    for (auto& b : blocks) b.reset_row(row);
  }
  void copy_row_from(const LargeModelState& other, Index src, Index dst) {
    check(other.blocks.size() == blocks.size(),
          "LargeModelState::copy_row_from: the states belong to different models");
    for (std::size_t i = 0; i < blocks.size(); ++i)
      blocks[i].copy_row_from(other.blocks[i], src, dst);
  }
};

template <typename Scalar_>
class LargeModel {
 public:
  using Scalar = Scalar_;
  using Config = LargeModelConfig;
  using State = LargeModelState<Scalar>;

  /// Parameters of one block (names of SPEC §7.2 in the comments).
  struct Block {
    RmsNorm<Scalar> norm_mlstm;           // norm_mlstm
    Projection<Scalar> q, k, v, ogate;    // mlstm_layer.{q,k,v,ogate_preact}
    Projection<Scalar> igate, fgate;      // mlstm_layer.{igate,fgate}_preact (bias always)
    GroupedNorm<Scalar> multihead_norm;   // mlstm_layer.multihead_norm
    Projection<Scalar> out_proj;          // mlstm_layer.out_proj
    RmsNorm<Scalar> norm_ffn;             // norm_ffn
    Projection<Scalar> ffn_gate, ffn_up;  // ffn.proj_up_gate, ffn.proj_up
    Projection<Scalar> ffn_down;          // ffn.proj_down
  };

  /// A model with zero weights. `storage` bf16/f16 allocates the weight
  /// matrices (not the vectors) as 16-bit values from the start, so a large
  /// model never exists in float (e.g. to fill with generated weights).
  explicit LargeModel(Config config, WeightStorage storage = WeightStorage::native)
      : config_(std::move(config)) {
    config_.validate();
    const Index e = config_.embedding_dim, nh = config_.num_heads, qk = config_.qk_dim(),
                vd = config_.v_dim(), u = config_.ffn_dim();
    const bool b = config_.use_bias;
    embedding_ = Projection<Scalar>(e, config_.vocab_size, false, storage).weight;
    blocks_.resize(std::size_t(config_.num_blocks));
    for (Block& blk : blocks_) {
      blk.norm_mlstm = RmsNorm<Scalar>(e, config_.norm_eps, b);
      blk.q = Projection<Scalar>(e, qk, b, storage);
      blk.k = Projection<Scalar>(e, qk, b, storage);
      blk.v = Projection<Scalar>(e, vd, b, storage);
      blk.ogate = Projection<Scalar>(e, vd, b, storage);
      blk.igate = Projection<Scalar>(e, nh, true, storage);
      blk.fgate = Projection<Scalar>(e, nh, true, storage);
      blk.multihead_norm = GroupedNorm<Scalar>(vd, nh, NormWeight::direct, b, config_.norm_eps);
      blk.out_proj = Projection<Scalar>(vd, e, b, storage);
      blk.norm_ffn = RmsNorm<Scalar>(e, config_.norm_eps, b);
      blk.ffn_gate = Projection<Scalar>(e, u, b, storage);
      blk.ffn_up = Projection<Scalar>(e, u, b, storage);
      blk.ffn_down = Projection<Scalar>(u, e, b, storage);
    }
    if (config_.add_out_norm) out_norm_ = RmsNorm<Scalar>(e, config_.norm_eps, b);
    lm_head_ = Projection<Scalar>(e, config_.vocab_size, false, storage);
    MLstmCellConfig cell;
    cell.num_heads = nh;
    cell.qk_head_dim = qk / nh;
    cell.v_head_dim = vd / nh;
    cell.eps = config_.eps;
    cell.convention = MLstmStateConvention::unscaled_keys;
    cell.chunk_size = config_.chunk_size;
    cell_ = MLstmCell<Scalar>(cell);
  }

  const Config& config() const { return config_; }
  Index vocab_size() const { return config_.vocab_size; }
  Index embedding_dim() const { return config_.embedding_dim; }
  std::vector<Block>& blocks() { return blocks_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  WeightMatrix<Scalar>& embedding() { return embedding_; }
  const WeightMatrix<Scalar>& embedding() const { return embedding_; }
  RmsNorm<Scalar>& out_norm() { return out_norm_; }
  Projection<Scalar>& lm_head() { return lm_head_; }
  const MLstmCell<Scalar>& cell() const { return cell_; }

  /// Every weight matrix (embedding, projections, LM head).
  std::vector<WeightMatrix<Scalar>*> weight_matrices() {
    std::vector<WeightMatrix<Scalar>*> out{&embedding_};
    for (Block& b : blocks_) {
      for (Projection<Scalar>* p : {&b.q, &b.k, &b.v, &b.ogate, &b.igate, &b.fgate, &b.out_proj,
                                    &b.ffn_gate, &b.ffn_up, &b.ffn_down}) {
        out.push_back(&p->weight);
      }
    }
    out.push_back(&lm_head_.weight);
    return out;
  }

  /// Bytes of the weights one decode step reads (one embedding row).
  std::size_t weight_bytes() const {
    std::size_t total = embedding_.bytes() / std::size_t(vocab_size()) + lm_head_.weight.bytes();
    for (const Block& b : blocks_) {
      for (const Projection<Scalar>* p : {&b.q, &b.k, &b.v, &b.ogate, &b.igate, &b.fgate,
                                          &b.out_proj, &b.ffn_gate, &b.ffn_up, &b.ffn_down}) {
        total += p->weight.bytes();
      }
    }
    return total;
  }

  State initial_state(Index batch) const {
    check(batch >= 0, "LargeModel::initial_state: argument 'batch' must be >= 0, got ", batch);
    check_size_product(
        {batch, embedding_dim() + config_.qk_dim() + config_.v_dim() + config_.ffn_dim()},
        "LargeModel::initial_state",
        "'batch' x step workspace width (embedding_dim + qk dim + v dim + ffn dim)");
    State s;
    for (std::size_t i = 0; i < blocks_.size(); ++i) s.blocks.push_back(cell_.initial_state(batch));
    const Index e = embedding_dim(), nh = config_.num_heads, qk = config_.qk_dim(),
                vd = config_.v_dim(), u = config_.ffn_dim();
    auto& w = s.ws;
    for (Matrix<Scalar>* m : {&w.x, &w.normed, &w.delta}) m->resize(batch, e);
    w.q.resize(batch, qk);
    w.k.resize(batch, qk);
    for (Matrix<Scalar>* m : {&w.v, &w.o, &w.h, &w.h_norm}) m->resize(batch, vd);
    w.gate_i.resize(batch, nh);
    w.gate_f.resize(batch, nh);
    w.ffn_gate.resize(batch, u);
    w.ffn_up.resize(batch, u);
    return s;
  }

  /// tokens: B x T; logits: B x T x V. Prefill uses the chunkwise form (any T;
  /// SPEC §4.6 says any split agrees), starting from and updating `state`.
  void forward(const Tokens& tokens, State& state, Sequence<Scalar>& logits) const {
    forward(tokens, Lengths{}, state, logits);
  }

  /// Ragged batch: row b has lengths[b] valid tokens; the ids after them are
  /// padding (never read) and their logits are zero.
  void forward(const Tokens& tokens, const Lengths& lengths, State& state,
               Sequence<Scalar>& logits) const {
    check_batch(tokens.rows(), state, "LargeModel::forward", "tokens");
    check_lengths(lengths, tokens.rows(), tokens.cols(), "LargeModel::forward");
    check(tokens.cols() > 0, "LargeModel::forward: argument 'tokens' must have at least one step");
    const Index batch = tokens.rows(), time = tokens.cols(), n = batch * time;
    const Index e = embedding_dim(), nh = config_.num_heads, qk = config_.qk_dim(),
                vd = config_.v_dim(), u = config_.ffn_dim();
    Matrix<Scalar> x = Matrix<Scalar>::Zero(n, e);
    for (Index b = 0; b < batch; ++b) {
      for (Index t = 0; t < length_of(lengths, b, time); ++t) {
        const std::int64_t id = tokens(b, t);
        check_token(id, "LargeModel::forward");
        embedding_.copy_row(Index(id), x.row(b * time + t));
      }
    }
    Matrix<Scalar> normed(n, e), q(n, qk), k(n, qk), v(n, vd), o(n, vd), gi(n, nh), gf(n, nh),
        h(n, vd), delta(n, e), ffn_gate(n, u), ffn_up(n, u);
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const Block& blk = blocks_[i];
      blk.norm_mlstm.forward(x, normed);
      project_mlstm_inputs(blk, normed, q, k, v, o, gi, gf, Workload::sequence);
      cell_.forward(batch, time, q, k, v, gi, gf, state.blocks[i], h, MLstmForm::chunkwise,
                    lengths);
      mlstm_output(blk, h, o, delta, Workload::sequence);
      x += delta;
      feed_forward(blk, x, normed, ffn_gate, ffn_up, delta, Workload::sequence);
      x += delta;
    }
    logits.resize(batch, time, vocab_size());
    head(x, normed, logits.matrix(), Workload::sequence);
    zero_padding(logits, lengths);
  }

  /// One step for B tokens; logits: B x V. Does not allocate.
  template <typename TokenVector>
  void step(const TokenVector& tokens, State& state, MatrixRef<Scalar> logits) const {
    check_batch(Index(tokens.size()), state, "LargeModel::step", "tokens", /*workspace=*/true);
    check(logits.rows() == state.batch() && logits.cols() == vocab_size(),
          "LargeModel::step: argument 'logits' must be ", state.batch(), " x ", vocab_size(),
          ", got ", logits.rows(), " x ", logits.cols());
    auto& w = state.ws;
    for (Index b = 0; b < state.batch(); ++b) {
      const auto id = static_cast<std::int64_t>(tokens[std::size_t(b)]);
      check_token(id, "LargeModel::step");
      embedding_.copy_row(Index(id), w.x.row(b));
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const Block& blk = blocks_[i];
      blk.norm_mlstm.forward(w.x, w.normed);
      project_mlstm_inputs(blk, w.normed, w.q, w.k, w.v, w.o, w.gate_i, w.gate_f, Workload::step);
      cell_.step(w.q, w.k, w.v, w.gate_i, w.gate_f, state.blocks[i], w.h);
      mlstm_output(blk, w.h, w.o, w.delta, Workload::step);
      w.x += w.delta;
      feed_forward(blk, w.x, w.normed, w.ffn_gate, w.ffn_up, w.delta, Workload::step);
      w.x += w.delta;
    }
    head(w.x, w.normed, logits, Workload::step);
  }

  /// Fresh weights with the Hugging Face port's scheme (SPEC §8.5; the
  /// official model defines none): small_init for embedding, q, k, v,
  /// proj_up and lm_head; zero gate weights (including proj_up_gate); igate
  /// bias -10; fgate bias linspace(3, 6, NH); Wang init for out_proj and
  /// proj_down. Gate weights are zero there, which makes a fresh model
  /// degenerate; `noise` > 0 adds N(0, noise / sqrt(E)) to every matrix so that
  /// tests and benchmarks exercise every path.
  void initialize(Rng& rng, double noise = 0.0) {
    const Index e = embedding_dim(), nb = config_.num_blocks, u = config_.ffn_dim();
    small_init(embedding_.native(), e, rng);
    for (Block& b : blocks_) {
      small_init(b.q.weight.native(), e, rng);
      small_init(b.k.weight.native(), e, rng);
      small_init(b.v.weight.native(), e, rng);
      small_init(b.ffn_up.weight.native(), e, rng);
      for (Projection<Scalar>* p : {&b.ogate, &b.igate, &b.fgate, &b.ffn_gate}) {
        p->weight.native().setZero();
      }
      b.igate.bias.setConstant(Scalar(-10));
      linspace_init(b.fgate.bias, 3.0, 6.0);
      wang_init(b.out_proj.weight.native(), e, nb, rng);
      wang_init(b.ffn_down.weight.native(), u, nb, rng);
      if (noise > 0) {
        for (Projection<Scalar>* p : {&b.q, &b.k, &b.v, &b.ogate, &b.igate, &b.fgate, &b.out_proj,
                                      &b.ffn_gate, &b.ffn_up, &b.ffn_down}) {
          Matrix<Scalar> extra(p->weight.rows(), p->weight.cols());
          rng.normal(extra, 0.0, noise / std::sqrt(double(e)));
          p->weight.native() += extra;
        }
      }
    }
    small_init(lm_head_.weight.native(), e, rng);
  }

 private:
  void project_mlstm_inputs(const Block& blk, const Matrix<Scalar>& normed, Matrix<Scalar>& q,
                            Matrix<Scalar>& k, Matrix<Scalar>& v, Matrix<Scalar>& o,
                            Matrix<Scalar>& gi, Matrix<Scalar>& gf, Workload workload) const {
    blk.q.forward(normed, q, workload);
    blk.k.forward(normed, k, workload);
    blk.v.forward(normed, v, workload);
    blk.ogate.forward(normed, o, workload);
    blk.igate.forward(normed, gi, workload);
    blk.fgate.forward(normed, gf, workload);
    // SPEC §9.3 / §10.16: the cap comes after the bias, before logsig/exp.
    if (config_.gate_soft_cap > 0) {
      const Scalar cap = Scalar(config_.gate_soft_cap);
      gi.array() = soft_cap(gi.array(), cap);
      gf.array() = soft_cap(gf.array(), cap);
    }
  }

  /// delta = out_proj(sigmoid(o) * MultiHeadNorm(h)); h is overwritten.
  void mlstm_output(const Block& blk, Matrix<Scalar>& h, const Matrix<Scalar>& o,
                    Matrix<Scalar>& delta, Workload workload) const {
    blk.multihead_norm.forward(h, h);
    h.array() *= sigmoid(o.array());
    blk.out_proj.forward(h, delta, workload);
  }

  /// delta = proj_down(silu(gate(RMS(x))) * up(RMS(x))).
  void feed_forward(const Block& blk, const Matrix<Scalar>& x, Matrix<Scalar>& normed,
                    Matrix<Scalar>& gate, Matrix<Scalar>& up, Matrix<Scalar>& delta,
                    Workload workload) const {
    blk.norm_ffn.forward(x, normed);
    blk.ffn_gate.forward(normed, gate, workload);
    blk.ffn_up.forward(normed, up, workload);
    gate.array() = silu(gate.array()) * up.array();
    blk.ffn_down.forward(gate, delta, workload);
  }

  template <typename Logits>
  void head(Matrix<Scalar>& x, Matrix<Scalar>& normed, Logits&& logits, Workload workload) const {
    if (config_.add_out_norm) {
      out_norm_.forward(x, normed);
      lm_head_.forward(normed, logits, workload);
    } else {
      lm_head_.forward(x, logits, workload);
    }
    if (config_.output_logit_soft_cap > 0) {
      logits.array() = soft_cap(logits.array(), Scalar(config_.output_logit_soft_cap));
    }
  }

  void check_batch(Index batch, const State& state, const char* where, const char* name,
                   bool workspace = false) const {
    check(state.blocks.size() == blocks_.size(), where, ": argument 'state' has ",
          state.blocks.size(), " block states, the model has ", blocks_.size());
    check(batch == state.batch(), where, ": argument '", name, "' has batch ", batch,
          " but the state was made for batch ", state.batch());
    // Every block state is checked before the first block runs: a block that
    // threw half way through would leave the earlier ones advanced.
    for (const auto& block_state : state.blocks) {
      cell_.check_state(block_state, where);
      check(block_state.batch == batch, where, ": argument 'state' holds a block state for batch ",
            block_state.batch, " but the input has batch ", batch);
    }
    if (!workspace) return;
    const Index e = embedding_dim(), nh = config_.num_heads, qk = config_.qk_dim(),
                vd = config_.v_dim(), u = config_.ffn_dim();
    const auto& w = state.ws;
    auto sized = [batch](const Matrix<Scalar>& m, Index cols) {
      return m.rows() == batch && m.cols() == cols;
    };
    check(sized(w.x, e) && sized(w.normed, e) && sized(w.delta, e) && sized(w.q, qk) &&
              sized(w.k, qk) && sized(w.v, vd) && sized(w.o, vd) && sized(w.h, vd) &&
              sized(w.h_norm, vd) && sized(w.gate_i, nh) && sized(w.gate_f, nh) &&
              sized(w.ffn_gate, u) && sized(w.ffn_up, u),
          where,
          ": argument 'state' has a step workspace of the wrong size (make it with "
          "initial_state(batch))");
  }

  void check_token(std::int64_t id, const char* where) const {
    check(id >= 0 && id < vocab_size(), where, ": token id ", id, " is out of range [0, ",
          vocab_size(), ")");
  }

  Config config_;
  WeightMatrix<Scalar> embedding_;
  std::vector<Block> blocks_;
  RmsNorm<Scalar> out_norm_;
  Projection<Scalar> lm_head_;
  MLstmCell<Scalar> cell_{MLstmCellConfig{1, 1, 1}};
};

}  // namespace xlstm
