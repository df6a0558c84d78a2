// LargeBlock: the block of xLSTM-Large (xLSTM-7B, math §9): a pre-norm
// residual mLSTM layer with q/k/v/o projections and soft-capped gates, then a
// pre-norm residual SwiGLU feed-forward:
//   x = x + out_proj(sigmoid(o) * MultiHeadNorm(mLSTM(q, k, v, i, f)))   (RMSNorm(x) in)
//   x = x + GatedFeedForward(RMSNorm(x))
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include "xlstm/blocks/block_state.hpp"
#include "xlstm/blocks/sequence_module.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// The per-block fields of the official xLSTMLargeConfig (math §9.1), with
/// its names and defaults. LargeModelConfig adds the model's fields.
struct LargeBlockConfig {
  Index embedding_dim = -1;
  Index num_heads = -1;
  bool use_bias = false;
  double norm_eps = 1e-6;
  bool norm_reduction_force_float32 = true;
  double qk_dim_factor = 0.5;
  double v_dim_factor = 1.0;
  Index chunk_size = 64;
  double eps = 1e-6;
  double ffn_proj_factor = 2.6667;
  Index ffn_round_up_to_multiple_of = 64;
  double gate_soft_cap = 15.0;  ///< <= 0 means no cap (None)
  /// Blocks in the model: scales the Wang init of out_proj and proj_down
  /// (initialisation only; LargeModel sets it from num_blocks).
  Index _num_blocks = 1;

  /// int(E * qk_dim_factor) and int(E * v_dim_factor): truncation (math §10.14).
  Index qk_dim() const { return Index(double(embedding_dim) * qk_dim_factor); }
  Index v_dim() const { return Index(double(embedding_dim) * v_dim_factor); }
  /// The Large rounding helper of math §1.6.
  Index ffn_dim() const {
    return round_up_to_next_multiple_of(double(embedding_dim) * ffn_proj_factor,
                                        ffn_round_up_to_multiple_of);
  }

  void validate(const char* where = "xLSTMLargeConfig") const {
    check_positive(embedding_dim, where, "embedding_dim");
    check_positive(num_heads, where, "num_heads");
    check_positive(chunk_size, where, "chunk_size");
    check_positive(_num_blocks, where, "_num_blocks");
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
          ": qk dim int(embedding_dim * qk_dim_factor) = ", qk_dim(),
          " must be a positive multiple of 'num_heads' (", num_heads, ")");
    check(v_dim() > 0 && v_dim() % num_heads == 0, where,
          ": v dim int(embedding_dim * v_dim_factor) = ", v_dim(),
          " must be a positive multiple of 'num_heads' (", num_heads, ")");
    check(ffn_dim() > 0, where, ": 'ffn_proj_factor' gives no feed-forward width");
    check(norm_eps > 0 && eps >= 0 && std::isfinite(norm_eps) && std::isfinite(eps), where,
          ": 'norm_eps' must be finite and > 0 and 'eps' finite and >= 0, got ", norm_eps, " and ",
          eps);
    check_size_product({2, qk_dim() + v_dim(), embedding_dim}, where,
                       "fused q/k/v/o weight (2 x (qk dim + v dim) x 'embedding_dim')");
    check_size_product({2, ffn_dim(), embedding_dim}, where,
                       "fused feed-forward weight (2 x ffn dim x 'embedding_dim')");
  }
};

/// Intermediate buffers of a LargeBlock for N rows (N = B for a step, B x T
/// for a sequence). Scratch: sized on use, never part of a state.
template <typename Scalar>
struct LargeBlockWorkspace {
  Matrix<Scalar> normed, q, k, v, o, gate_i, gate_f, h, delta, ffn_up;
};

/// The recurrent state of a LargeBlock: its mLSTM cell state, in the kernel
/// convention (unscaled keys, math §4), plus step scratch.
template <typename Scalar>
struct LargeBlockState {
  MLstmState<Scalar> cell;
  Scratch<LargeBlockWorkspace<Scalar>> scratch;

  Index batch() const { return cell.batch; }
  void reset() { cell.reset(); }
  void reset_row(Index row) { cell.reset_row(row); }
  void copy_row_from(const LargeBlockState& other, Index src, Index dst) {
    cell.copy_row_from(other.cell, src, dst);
  }
  /// Converts C to `storage` (math §4.8).
  void set_mlstm_storage(MLstmStateStorage storage) { cell.set_storage(storage); }

  /// `mlstm_state.{0,1,2}`: C, n, m (MLstmState::for_each_tensor).
  template <typename Visit>
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") {
    cell.for_each_tensor(visit, prefix);
  }
  template <typename Visit>
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") const {
    cell.for_each_tensor(visit, prefix);
  }
};

/// One xLSTM-Large block, with the interface of MLstmBlock.
///
///   xlstm::LargeBlockConfig config;
///   config.embedding_dim = 256;
///   config.num_heads = 4;
///   xlstm::LargeBlock<float> block(config);   // initialised (seed 0)
///   auto state = block.initial_state(/*batch*/ 2);
///   block.forward(x, state, y);               // B x T x E, chunkwise mLSTM
///   block.step(x.time_step(0), state, y_t);   // or one step at a time
///
/// `forward` and `step` are const and may run on many threads at once, each
/// with its own state; `step` allocates nothing once the state's scratch has
/// its size. Weights may be kept BF16/F16 (`WeightStorage`).
template <typename Scalar_>
class LargeBlock : public SequenceModule<LargeBlock<Scalar_>, Scalar_, LargeBlockState<Scalar_>> {
 public:
  using Scalar = Scalar_;
  using Config = LargeBlockConfig;
  using State = LargeBlockState<Scalar>;
  static constexpr const char* kStepWhere = "LargeBlock::step";
  using Workspace = LargeBlockWorkspace<Scalar>;

  /// A block with the initialisation of math §8.5 from kDefaultSeed.
  explicit LargeBlock(Config config) : LargeBlock(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A block with zero weights (ones for the norms), to be filled by the
  /// caller; `storage` bf16/f16 holds the projections as 16-bit values.
  LargeBlock(Config config, Uninitialized, WeightStorage storage = WeightStorage::native);

  const Config& config() const { return config_; }
  Index embedding_dim() const { return config_.embedding_dim; }
  const MLstmCell<Scalar>& cell() const { return cell_; }
  Linear<Scalar>& igate() { return igate_; }
  Linear<Scalar>& fgate() { return fgate_; }
  const GatedFeedForward<Scalar>& feedforward() const { return ffn_; }

  State initial_state(Index batch) const {
    check(batch >= 0, "LargeBlock::initial_state: argument 'batch' must be >= 0, got ", batch);
    State s;
    s.cell = cell_.initial_state(batch);
    return s;
  }

  /// forward(x, state, y) and step(x_t, state, y_t): SequenceModule. The
  /// chunkwise mLSTM form from any state (math §4.4; any split of the
  /// sequence agrees, math §4.6).
  using SequenceModule<LargeBlock, Scalar, State>::forward;

  /// Ragged batch: row b has lengths[b] valid steps; each row's outputs and
  /// final state equal running it alone; outputs past its length are zero.
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
               Sequence<Scalar>& y) const;

  /// The block on N = batch x time rows of `x`, updated in place, with the
  /// caller's buffers (LargeModel shares one set between its blocks). With
  /// `Workload::step` (time 1) it allocates nothing once `ws` has its size.
  /// The caller has checked the state and the lengths.
  void forward_in_place(Index batch, Index time, const Lengths& lengths, MatrixRef<Scalar> x,
                        State& state, Workspace& ws, Workload workload) const;

  /// Throws unless `state` has the sizes initial_state(batch) gives it.
  void check_state(const State& state, Index batch, const char* where) const {
    cell_.check_state(state.cell, where);
    check(state.cell.batch == batch, where, ": argument 'state' holds a block state for batch ",
          state.cell.batch, " but the input has batch ", batch);
  }

  /// Official names (math §7.2): norm_mlstm, mlstm_layer.{q, k, v,
  /// ogate_preact, igate_preact, fgate_preact, multihead_norm, out_proj},
  /// norm_ffn, ffn.{proj_up_gate, proj_up, proj_down}.
  XLSTM_PARAMETER_VISITOR

  /// Fresh weights with the Hugging Face port's scheme (math §8.5; the
  /// official model defines none): small_init for q, k, v and proj_up; zero
  /// gate weights (including proj_up_gate); igate bias -10; fgate bias
  /// linspace(3, 6, NH); Wang init for out_proj and proj_down. Zero gate
  /// weights make a fresh block degenerate; `noise` > 0 adds
  /// N(0, noise / sqrt(E)) to every projection so that tests and benchmarks
  /// exercise every path. Needs Scalar weights.
  void initialize(Rng& rng, double noise = 0.0);

  /// The dense projections in checkpoint order.
  std::vector<Linear<Scalar>*> projections() {
    return {&q_, &k_, &v_, &ogate_, &igate_, &fgate_, &out_proj_,
            &ffn_.proj_up_gate(), &ffn_.proj_up(), &ffn_.proj_down()};
  }
  std::vector<const Linear<Scalar>*> projections() const {
    return {&q_, &k_, &v_, &ogate_, &igate_, &fgate_, &out_proj_,
            &ffn_.proj_up_gate(), &ffn_.proj_up(), &ffn_.proj_down()};
  }

 private:
  friend class SequenceModule<LargeBlock, Scalar, State>;
  using SequenceModule<LargeBlock, Scalar, State>::check_input;

  /// step() after its checks: the block in place on a copy of x_t.
  void step_into(const ConstMatrixRef<Scalar>& x_t, State& state, MatrixRef<Scalar> y_t) const {
    y_t = x_t;
    forward_in_place(x_t.rows(), 1, Lengths{}, y_t, state, state.scratch.get(), Workload::step);
  }

  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    self.norm_mlstm_.for_each_parameter(visit, prefix + "norm_mlstm.");
    const std::string m = prefix + "mlstm_layer.";
    self.q_.for_each_parameter(visit, m + "q.");
    self.k_.for_each_parameter(visit, m + "k.");
    self.v_.for_each_parameter(visit, m + "v.");
    self.ogate_.for_each_parameter(visit, m + "ogate_preact.");
    self.igate_.for_each_parameter(visit, m + "igate_preact.");
    self.fgate_.for_each_parameter(visit, m + "fgate_preact.");
    self.multihead_norm_.for_each_parameter(visit, m + "multihead_norm.");
    self.out_proj_.for_each_parameter(visit, m + "out_proj.");
    self.norm_ffn_.for_each_parameter(visit, prefix + "norm_ffn.");
    self.ffn_.for_each_parameter(visit, prefix + "ffn.");
  }

  Config config_;
  RmsNorm<Scalar> norm_mlstm_;
  Linear<Scalar> q_, k_, v_, ogate_, igate_, fgate_;
  GroupedNorm<Scalar> multihead_norm_;
  Linear<Scalar> out_proj_;
  RmsNorm<Scalar> norm_ffn_;
  GatedFeedForward<Scalar> ffn_;
  MLstmCell<Scalar> cell_{MLstmCellConfig{1, 1, 1}};
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
LargeBlock<Scalar_>::LargeBlock(Config config, Uninitialized, WeightStorage storage)
    : config_(std::move(config)) {
  config_.validate();
  const Index e = config_.embedding_dim, nh = config_.num_heads, qk = config_.qk_dim(),
              vd = config_.v_dim();
  const bool b = config_.use_bias;
  norm_mlstm_ = RmsNorm<Scalar>(e, config_.norm_eps, b);
  q_ = Linear<Scalar>(e, qk, b, storage);
  k_ = Linear<Scalar>(e, qk, b, storage);
  v_ = Linear<Scalar>(e, vd, b, storage);
  ogate_ = Linear<Scalar>(e, vd, b, storage);
  igate_ = Linear<Scalar>(e, nh, true, storage);
  fgate_ = Linear<Scalar>(e, nh, true, storage);
  multihead_norm_ = GroupedNorm<Scalar>(vd, nh, NormWeight::direct, b, config_.norm_eps);
  out_proj_ = Linear<Scalar>(vd, e, b, storage);
  norm_ffn_ = RmsNorm<Scalar>(e, config_.norm_eps, b);
  ffn_ = GatedFeedForward<Scalar>(e, config_.ffn_dim(), Activation::swish, b, GateLayout::split,
                                  storage);
  MLstmCellConfig cell;
  cell.num_heads = nh;
  cell.qk_head_dim = qk / nh;
  cell.v_head_dim = vd / nh;
  cell.eps = config_.eps;
  cell.convention = MLstmStateConvention::unscaled_keys;
  cell.chunk_size = config_.chunk_size;
  cell_ = MLstmCell<Scalar>(cell);
}

template <typename Scalar_>
void LargeBlock<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y) const {
  check_input(x.features(), x.batch(), state, "LargeBlock::forward", "x");
  check_state(state, x.batch(), "LargeBlock::forward");
  check_lengths(lengths, x.batch(), x.time(), "LargeBlock::forward");
  check(x.time() > 0, "LargeBlock::forward: argument 'x' must have at least one time step");
  y = x;
  detail::ThreadBuffers<Workspace> ws;  // the thread's (design §7.7)
  forward_in_place(y.batch(), y.time(), lengths, y.matrix(), state, ws.get(), Workload::sequence);
  zero_padding(y, lengths);
}

template <typename Scalar_>
void LargeBlock<Scalar_>::forward_in_place(Index batch, Index time, const Lengths& lengths,
                                           MatrixRef<Scalar> x, State& state, Workspace& ws,
                                           Workload workload) const {
  const Index n = x.rows(), e = embedding_dim(), nh = config_.num_heads, qk = config_.qk_dim(),
              vd = config_.v_dim();
  ensure_size(ws.normed, n, e);
  ensure_size(ws.q, n, qk);
  ensure_size(ws.k, n, qk);
  ensure_size(ws.v, n, vd);
  ensure_size(ws.o, n, vd);
  ensure_size(ws.gate_i, n, nh);
  ensure_size(ws.gate_f, n, nh);
  ensure_size(ws.h, n, vd);
  ensure_size(ws.delta, n, e);
  ensure_size(ws.ffn_up, n, 2 * config_.ffn_dim());
  norm_mlstm_.forward(x, ws.normed);
  q_.forward(ws.normed, ws.q, workload);
  k_.forward(ws.normed, ws.k, workload);
  v_.forward(ws.normed, ws.v, workload);
  ogate_.forward(ws.normed, ws.o, workload);
  igate_.forward(ws.normed, ws.gate_i, workload);
  fgate_.forward(ws.normed, ws.gate_f, workload);
  // math §9.3 / §10.16: the cap comes after the bias, before logsig/exp.
  if (config_.gate_soft_cap > 0) {
    const Scalar cap = Scalar(config_.gate_soft_cap);
    ws.gate_i.array() = soft_cap(ws.gate_i.array(), cap);
    ws.gate_f.array() = soft_cap(ws.gate_f.array(), cap);
  }
  if (workload == Workload::step) {
    cell_.step(ws.q, ws.k, ws.v, ws.gate_i, ws.gate_f, state.cell, ws.h);
  } else {
    cell_.forward(batch, time, ws.q, ws.k, ws.v, ws.gate_i, ws.gate_f, state.cell, ws.h,
                  MLstmForm::chunkwise, lengths);
  }
  // delta = out_proj(sigmoid(o) * MultiHeadNorm(h)).
  multihead_norm_.forward(ws.h, ws.h);
  ws.h.array() *= sigmoid(ws.o.array());
  out_proj_.forward(ws.h, ws.delta, workload);
  x += ws.delta;
  norm_ffn_.forward(x, ws.normed);
  ffn_.forward(ws.normed, ws.delta, ws.ffn_up, workload);
  x += ws.delta;
}

template <typename Scalar_>
void LargeBlock<Scalar_>::initialize(Rng& rng, double noise) {
  const Index e = embedding_dim(), nb = config_._num_blocks, u = config_.ffn_dim();
  small_init(q_.weight(), e, rng);
  small_init(k_.weight(), e, rng);
  small_init(v_.weight(), e, rng);
  small_init(ffn_.proj_up().weight(), e, rng);
  for (Linear<Scalar>* p : {&ogate_, &igate_, &fgate_, &ffn_.proj_up_gate()}) {
    p->weight().setZero();
  }
  igate_.bias().setConstant(Scalar(-10));
  linspace_init(fgate_.bias(), 3.0, 6.0);
  wang_init(out_proj_.weight(), e, nb, rng);
  wang_init(ffn_.proj_down().weight(), u, nb, rng);
  if (noise > 0) {
    for (Linear<Scalar>* p : projections()) {
      Matrix<Scalar> extra(p->out_features(), p->in_features());
      rng.normal(extra, 0.0, noise / std::sqrt(double(e)));
      p->weight() += extra;
    }
  }
}

}  // namespace xlstm
