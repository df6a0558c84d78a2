// SLstmBlock: the NeurIPS sLSTM block with post-up-projection (math §3):
//   x = x + SLstmLayer(LayerNorm(x));   x = x + GatedFeedForward(LayerNorm(x)).
// Options of its config also make the TiRex block (math §13.3): RMSNorm
// pre-norms, no conv, the split SwiGLU, the TiRex cell numerics and names.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "xlstm/blocks/block_state.hpp"
#include "xlstm/blocks/sequence_module.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// How a feed-forward width is rounded to a multiple (math §13.3).
enum class ProjUpRounding {
  ceil_ratio,    ///< m * ceil(f * E / m): the NeurIPS FeedForwardConfig (math §1.7)
  floor_divide,  ///< int(((f * E + m - 1) // m) * m) in float: xLSTM-Large and TiRex
};

/// Mirrors the official FeedForwardConfig (math §1.7).
struct FeedForwardConfig {
  double proj_factor = 1.3;
  std::string act_fn = "gelu";
  Index embedding_dim = -1;
  double dropout = 0.0;
  bool bias = false;
  std::string ff_type = "ffn_gated";
  Index _num_blocks = 1;
  bool round_proj_up_dim_up = true;
  Index round_proj_up_to_multiple_of = 64;
  /// Not official fields: the TiRex block's SwiGLU (math §13.3) keeps its gate
  /// and up projections apart and rounds its width like xLSTM-Large.
  GateLayout gate_layout = GateLayout::fused;
  ProjUpRounding rounding = ProjUpRounding::ceil_ratio;
  Index _proj_up_dim = -1;  ///< derived

  void post_init() {
    if (embedding_dim <= 0) return;
    if (rounding == ProjUpRounding::floor_divide) {
      _proj_up_dim = round_up_to_next_multiple_of(proj_factor * double(embedding_dim),
                                                  round_proj_up_to_multiple_of);
    } else {
      _proj_up_dim = up_projection_dim(proj_factor, embedding_dim, round_proj_up_to_multiple_of,
                                       round_proj_up_dim_up);
    }
  }

  void validate() const {
    check_positive(embedding_dim, "FeedForwardConfig", "embedding_dim");
    check(proj_factor > 0, "FeedForwardConfig: 'proj_factor' must be positive, got ", proj_factor);
    check_positive(_proj_up_dim, "FeedForwardConfig", "_proj_up_dim");
    check_size_product({2, _proj_up_dim, embedding_dim}, "FeedForwardConfig",
                       "proj_up weight (2 x up-projection dim x 'embedding_dim')");
    check(ff_type == "ffn_gated", "FeedForwardConfig: 'ff_type' must be \"ffn_gated\", got \"",
          ff_type, "\"");
    parse_activation(act_fn, "feedforward.act_fn");
  }
};

/// Mirrors the official sLSTMLayerConfig (with the sLSTMCellConfig fields that
/// matter off the GPU; math §2.1, §3.1).
struct SLstmLayerConfig {
  Index embedding_dim = -1;
  Index hidden_size = -1;  ///< derived: = embedding_dim
  Index num_heads = 4;
  Index num_states = 4;  ///< derived from function: 4 (slstm) or 2 (lstm)
  Index num_gates = 4;
  std::string backend = "cuda";  ///< the backend that trained it; we run its math on the CPU
  std::string function = "slstm";
  std::string bias_init = "powerlaw_blockdependent";
  std::string recurrent_weight_init = "zeros";
  Index conv1d_kernel_size = 4;
  bool group_norm_weight = true;
  double dropout = 0.0;
  /// Not an official field: plain float or the TiRex bf16 numerics (math §12).
  SLstmNumerics numerics = SLstmNumerics::plain;
  /// Not an official field: the cell's first-step rule (cells/slstm.hpp).
  FirstStepRule first_step_rule = FirstStepRule::whole_batch;
  /// Not an official field: the cell's R y and the products of `step` by the
  /// row-invariant kernel (cells/slstm.hpp, core/kernels/dense.hpp).
  bool row_invariant = false;
  Index _block_idx = 0;
  Index _num_blocks = 1;

  void post_init() {
    hidden_size = embedding_dim;
    num_states = function == "lstm" ? 2 : 4;
  }

  void validate() const {
    const char* where = "sLSTMLayerConfig";
    check_positive(embedding_dim, where, "embedding_dim");
    check_positive(num_heads, where, "num_heads");
    check(embedding_dim % num_heads == 0, where, ": 'embedding_dim' (", embedding_dim,
          ") must be divisible by 'num_heads' (", num_heads, ")");
    check(conv1d_kernel_size >= 0, where, ": 'conv1d_kernel_size' must be >= 0, got ",
          conv1d_kernel_size);
    check_size_product({4, embedding_dim, embedding_dim / num_heads}, where,
                       "gate and recurrent weights (4 x 'embedding_dim' x head dim)");
    check_size_product({embedding_dim, conv1d_kernel_size}, where,
                       "conv weight ('embedding_dim' x 'conv1d_kernel_size')");
    parse_slstm_function(function);
    check(bias_init == "powerlaw_blockdependent" || bias_init == "small_init" ||
              bias_init == "zeros" || bias_init == "standard",
          where, ": unknown 'bias_init' \"", bias_init, "\"");
    check(recurrent_weight_init == "zeros" || recurrent_weight_init == "standard", where,
          ": unknown 'recurrent_weight_init' \"", recurrent_weight_init, "\"");
    check(_num_blocks >= 1 && _block_idx >= 0 && _block_idx < _num_blocks, where,
          ": '_block_idx' (", _block_idx, ") must be in [0, _num_blocks = ", _num_blocks, ")");
  }
};

/// The norm before the sLSTM layer and before the feed-forward.
enum class PreNormKind {
  layer_norm,  ///< NeurIPS: LayerNorm, offset weight (1 + w), eps 1e-5 (math §1.2)
  rms_norm,    ///< TiRex: RMSNorm, plain weight, eps 1e-6 (math §13.3)
};

/// The state_dict names of the block's parts: the NeurIPS names by default;
/// TiRex's are {"norm_slstm", "slstm_layer", "norm_ffn", "ffn"} (math §13.3).
struct SLstmBlockNames {
  std::string norm = "xlstm_norm", layer = "xlstm", ffn_norm = "ffn_norm", ffn = "ffn";
};

/// Mirrors sLSTMBlockConfig: the layer and an optional feed-forward; the
/// pre-norm kind and the names are options for other models built from it.
struct SLstmBlockConfig {
  SLstmLayerConfig slstm;
  std::optional<FeedForwardConfig> feedforward = FeedForwardConfig{};
  PreNormKind pre_norm = PreNormKind::layer_norm;
  SLstmBlockNames names;
  Index _num_blocks = 1;
  Index _block_idx = 0;

  void post_init() {
    slstm._block_idx = _block_idx;
    slstm._num_blocks = _num_blocks;
    slstm.post_init();
    if (feedforward) {
      feedforward->_num_blocks = _num_blocks;
      feedforward->embedding_dim = slstm.embedding_dim;
      feedforward->post_init();
    }
  }
};

/// Step scratch of the SLstm block (B rows).
template <typename Scalar>
struct SLstmBlockWorkspace {
  Matrix<Scalar> normed, conv_act, preact, y_norm, ffn_in, ffn_up;
};

template <typename Scalar>
using SLstmBlockState = ConvCellState<Scalar, SLstmState<Scalar>, SLstmBlockWorkspace<Scalar>>;

/// The buffers of SLstmBlock's inference forward over a sequence, kept by a
/// caller that runs sequences of the same shapes again (tirex::forecast_into):
/// after the first such call, the forward allocates nothing.
template <typename Scalar>
struct SLstmBlockForwardScratch {
  Sequence<Scalar> normed, conv_act, preact, cell_out;
  Matrix<Scalar> conv_taps, ffn_in, ffn_out, ffn_up;
};

/// What a recording forward keeps for the backward (design §7.3;
/// blocks/slstm_block_backward.hpp): the children's tapes and the inputs of
/// every layer, per token (B*T rows each). The backward uses it as its
/// workspace: a recording serves one backward; recording again with the same
/// shapes allocates nothing.
template <typename Scalar>
struct SLstmBlockTape {
  Sequence<Scalar> x;         ///< the block's input (pre-norm input, residual)
  Sequence<Scalar> normed;    ///< LayerNorm(x): conv input, z and o gate input
  Sequence<Scalar> conv_out;  ///< conv output before the SiLU (without conv: normed)
  Sequence<Scalar> conv_act;  ///< SiLU(conv_out), or normed without conv: i and f gate input
  Sequence<Scalar> preact;    ///< the cell's input, 4E
  SLstmTape<Scalar> cell;
  Sequence<Scalar> cell_out;  ///< the cell's output: group norm input
  Sequence<Scalar> x1;        ///< after the first residual: ffn_norm input (with a feed-forward)
  Sequence<Scalar> ffn_in;    ///< ffn_norm(x1): feed-forward input
  GatedFeedForwardTape<Scalar> ffn;
  Sequence<Scalar> work;                 ///< E per token of workspace
  CausalConv1dState<Scalar> conv_start;  ///< the conv window before the forward
  Matrix<Scalar> conv_taps;              ///< scratch of the conv's forward
  Lengths lengths;
  bool recorded = false;
};

/// The NeurIPS sLSTM block: LayerNorm, optional causal conv + SiLU,
/// headwise gate projections, the sLSTM cell, group norm, residual; then an
/// optional pre-norm gated feed-forward (post-up-projection), residual.
///
///   xlstm::SLstmBlockConfig config;
///   config.slstm.embedding_dim = 64;
///   config.slstm.num_heads = 4;
///   xlstm::SLstmBlock<float> block(config);      // official init, seed 0
///   auto state = block.initial_state(2);
///   block.forward(x, state, y);                  // B x T x E
///
/// `forward` and `step` are const: one block may run on many threads, each
/// with its own state. `step` allocates nothing once the state exists.
template <typename Scalar_>
class SLstmBlock : public SequenceModule<SLstmBlock<Scalar_>, Scalar_, SLstmBlockState<Scalar_>> {
 public:
  using Scalar = Scalar_;
  using Config = SLstmBlockConfig;
  using State = SLstmBlockState<Scalar>;
  using Tape = SLstmBlockTape<Scalar>;
  static constexpr const char* kStepWhere = "SLstmBlock::step";

  /// A block with the official initialisation from kDefaultSeed; call
  /// initialize(rng) for another draw, or load weights.
  explicit SLstmBlock(Config config) : SLstmBlock(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A block with zero weights, to be filled by the caller.
  SLstmBlock(Config config, Uninitialized);

  const Config& config() const { return config_; }
  Index embedding_dim() const { return config_.slstm.embedding_dim; }
  bool has_feedforward() const { return config_.feedforward.has_value(); }
  SLstmCell<Scalar>& cell() { return cell_; }
  const SLstmCell<Scalar>& cell() const { return cell_; }
  /// The cell's SLstmCell::prepare_kernels(); io::load_module calls it, and
  /// initialize(rng) prepares too unless an optimiser may be bound to the
  /// parameters (SLstmCell::prepare_kernels_unless_listed).
  void prepare_kernels() { cell_.prepare_kernels(); }

  State initial_state(Index batch) const;

  /// forward(x, state, y) and step(x_t, state, y_t): SequenceModule.
  using SequenceModule<SLstmBlock, Scalar, State>::forward;

  /// Ragged batch: row b has lengths[b] valid steps; each row's outputs and
  /// final state equal running it alone; outputs past its length are zero.
  /// `workload` picks the projections' product (Workload::row_invariant: a
  /// row's bits do not depend on the other rows, core/kernels/dense.hpp).
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Workload workload = Workload::sequence) const {
    // The intermediates in the calling thread's buffers: no fresh pages per
    // call (design §7.7).
    detail::ThreadBuffers<SLstmBlockForwardScratch<Scalar>> scratch;
    forward(x, lengths, state, y, workload, scratch.get());
  }

  /// The same in the caller's `scratch`: allocates nothing once the scratch
  /// and y have served these shapes.
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Workload workload, SLstmBlockForwardScratch<Scalar>& scratch) const;

  /// The same, recording into `tape` what `backward` needs (design §7.3,
  /// blocks/slstm_block_backward.hpp); the same y.
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y, Tape& tape) const {
    forward(x, Lengths{}, state, y, tape);
  }
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Tape& tape) const;

  /// The layers, read-only (for the backward pass). gate_projection(g) for
  /// g = 0..3 is the projection of the i, f, z, o pre-activation (math §3.2).
  const GroupedNorm<Scalar>& xlstm_norm() const { return xlstm_norm_; }
  const CausalConv1d<Scalar>& conv1d() const { return conv1d_; }
  const HeadwiseLinear<Scalar>& gate_projection(Index g) const {
    check(g >= 0 && g < 4, "SLstmBlock::gate_projection: argument 'g' must be in [0, 4), got ", g);
    return g == 0 ? input_gate_ : g == 1 ? forget_gate_ : g == 2 ? z_gate_ : o_gate_;
  }
  const GroupedNorm<Scalar>& group_norm() const { return group_norm_; }
  const GroupedNorm<Scalar>& ffn_norm() const { return ffn_norm_; }
  /// The RMSNorm pre-norms (PreNormKind::rms_norm; else empty).
  const RmsNorm<Scalar>& rms_norm() const { return rms_norm_; }
  const RmsNorm<Scalar>& ffn_rms_norm() const { return ffn_rms_norm_; }
  const GatedFeedForward<Scalar>& ffn() const { return ffn_; }

  /// Throws unless `state` has the sizes initial_state(batch) gives it. Runs
  /// before anything is written, so a call that throws leaves the state as
  /// it was.
  void check_state(const State& state, Index batch, const char* where) const {
    conv1d_.check_state(state.conv, batch, where);
    cell_.check_state(state.cell, where);
    check(state.cell.batch() == batch, where, ": argument 'state' holds a cell state for batch ",
          state.cell.batch(), " but the input has batch ", batch);
  }

  /// Official state_dict names (math §7.1).
  XLSTM_PARAMETER_VISITOR

  /// The official reset_parameters (math §8.3).
  void initialize(Rng& rng);

  /// Lists the parameters of the parts (the layers, or their gradients: any
  /// objects with for_each_parameter) under the block's names (shared with
  /// SLstmBlockGradients, blocks/slstm_block_backward.hpp).
  template <typename Visit, typename PreNorm, typename Conv, typename Gate, typename Cell,
            typename GroupNorm, typename Ffn>
  static void visit_parameters_as(Visit& visit, const std::string& prefix,
                                  const SLstmBlockNames& names, bool has_feedforward,
                                  PreNorm& xlstm_norm, Conv& conv1d, Gate& input_gate,
                                  Gate& forget_gate, Gate& z_gate, Gate& o_gate, Cell& cell,
                                  GroupNorm& group_norm, PreNorm& ffn_norm, Ffn& ffn) {
    xlstm_norm.for_each_parameter(visit, prefix + names.norm + ".");
    const std::string p = prefix + names.layer + ".";
    conv1d.for_each_parameter(visit, p + "conv1d.");
    // Official checkpoint quirk (math §3.2): the module named "fgate" produces
    // the INPUT-gate pre-activation and "igate" the FORGET gate.
    input_gate.for_each_parameter(visit, p + "fgate.");
    forget_gate.for_each_parameter(visit, p + "igate.");
    z_gate.for_each_parameter(visit, p + "zgate.");
    o_gate.for_each_parameter(visit, p + "ogate.");
    cell.for_each_parameter(visit, p + "slstm_cell.");
    group_norm.for_each_parameter(visit, p + "group_norm.");
    if (has_feedforward) {
      ffn_norm.for_each_parameter(visit, prefix + names.ffn_norm + ".");
      ffn.for_each_parameter(visit, prefix + names.ffn + ".");
    }
  }

 private:
  friend class SequenceModule<SLstmBlock, Scalar, State>;
  using SequenceModule<SLstmBlock, Scalar, State>::check_input;

  /// step() after its checks, into an output of the right size.
  void step_into(const ConstMatrixRef<Scalar>& x_t, State& state, MatrixRef<Scalar> y_t) const;

  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    const SLstmBlockNames& names = self.config_.names;
    if (self.config_.pre_norm == PreNormKind::rms_norm) {
      visit_parameters_as(visit, prefix, names, self.has_feedforward(), self.rms_norm_,
                          self.conv1d_, self.input_gate_, self.forget_gate_, self.z_gate_,
                          self.o_gate_, self.cell_, self.group_norm_, self.ffn_rms_norm_,
                          self.ffn_);
    } else {
      visit_parameters_as(visit, prefix, names, self.has_feedforward(), self.xlstm_norm_,
                          self.conv1d_, self.input_gate_, self.forget_gate_, self.z_gate_,
                          self.o_gate_, self.cell_, self.group_norm_, self.ffn_norm_, self.ffn_);
    }
  }

  void size_scratch(SLstmBlockWorkspace<Scalar>& ws, Index batch) const {
    const Index e = embedding_dim();
    ensure_size(ws.normed, batch, e);
    ensure_size(ws.conv_act, batch, e);
    ensure_size(ws.preact, batch, 4 * e);
    ensure_size(ws.y_norm, batch, e);
    ensure_size(ws.ffn_in, batch, e);
    if (has_feedforward()) ensure_size(ws.ffn_up, batch, 2 * ffn_.proj_up_dim());
  }

  /// Bias init of math §8.3, written gate-major: bias[g*H + h*DH + j].
  void initialize_bias(Rng& rng) {
    const SLstmLayerConfig& c = config_.slstm;
    const Index e = embedding_dim(), nh = c.num_heads, dh = e / nh;
    auto& bias = cell_.bias();
    bias.setZero();
    auto forget = [&](Index h, Index j) -> Scalar& { return bias(1 * e + h * dh + j); };
    if (c.bias_init == "standard") {
      default_linear_init(bias, e, rng);
    } else if (c.bias_init == "small_init") {
      for (Index h = 0; h < nh; ++h)
        for (Index j = 0; j < dh; ++j)
          forget(h, j) = Scalar(dh == 1 ? 3.0 : 3.0 + 3.0 * double(j) / double(dh - 1));
    } else if (c.bias_init == "powerlaw_blockdependent") {
      const double ratio =
          c._num_blocks > 1 ? double(c._block_idx) / double(c._num_blocks - 1) : 0.0;
      for (Index h = 0; h < nh; ++h) {
        for (Index j = 0; j < dh; ++j) {
          // DH = 1 is 0/0 in the reference (a silent NaN); we take the j = 0 value.
          const double position = dh == 1 ? 0.0 : double(j) / double(dh - 1);
          forget(h, j) = Scalar(5.0 - 12.0 * std::pow(position, 0.3 + 1.3 * ratio));
        }
      }
    }
  }

  /// math §3.2: [i | f | z | o], i and f from the conv path, z and o from the
  /// pre-conv input, each block head-major.
  template <typename Out>
  void gate_preactivations(const ConstMatrixRef<Scalar>& normed,
                           const ConstMatrixRef<Scalar>& conv_act, Out& preact,
                           Workload workload = Workload::sequence) const {
    const Index e = embedding_dim();
    input_gate_.forward(conv_act, preact.middleCols(0, e), workload);
    forget_gate_.forward(conv_act, preact.middleCols(e, e), workload);
    z_gate_.forward(normed, preact.middleCols(2 * e, e), workload);
    o_gate_.forward(normed, preact.middleCols(3 * e, e), workload);
  }

  /// The pre-norm `config_.pre_norm` picks: `layer_norm` or `rms_norm`.
  void pre_norm(const GroupedNorm<Scalar>& layer_norm, const RmsNorm<Scalar>& rms_norm,
                const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y) const {
    if (config_.pre_norm == PreNormKind::rms_norm) {
      rms_norm.forward(x, y);
    } else {
      layer_norm.forward(x, y);
    }
  }

  Config config_;
  GroupedNorm<Scalar> xlstm_norm_;
  RmsNorm<Scalar> rms_norm_, ffn_rms_norm_;  ///< used instead with PreNormKind::rms_norm
  CausalConv1d<Scalar> conv1d_;
  HeadwiseLinear<Scalar> input_gate_, forget_gate_, z_gate_, o_gate_;
  SLstmCell<Scalar> cell_{SLstmCellConfig{1, 1}};
  GroupedNorm<Scalar> group_norm_;
  GroupedNorm<Scalar> ffn_norm_;
  GatedFeedForward<Scalar> ffn_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
SLstmBlock<Scalar_>::SLstmBlock(Config config, Uninitialized) : config_(std::move(config)) {
  config_.post_init();
  const SLstmLayerConfig& c = config_.slstm;
  c.validate();
  const Index e = c.embedding_dim, nh = c.num_heads;
  xlstm_norm_ = make_layer_norm<Scalar>(e);
  if (config_.pre_norm == PreNormKind::rms_norm) rms_norm_ = RmsNorm<Scalar>(e, 1e-6, false);
  conv1d_ = CausalConv1d<Scalar>(e, c.conv1d_kernel_size);
  for (HeadwiseLinear<Scalar>* g : {&input_gate_, &forget_gate_, &z_gate_, &o_gate_}) {
    *g = HeadwiseLinear<Scalar>(e, nh, false);
  }
  SLstmCellConfig cell_config;
  cell_config.hidden_size = e;
  cell_config.num_heads = nh;
  cell_config.function = parse_slstm_function(c.function);
  cell_config.numerics = c.numerics;
  cell_config.first_step_rule = c.first_step_rule;
  cell_config.row_invariant = c.row_invariant;
  cell_ = SLstmCell<Scalar>(cell_config);
  group_norm_ = make_multi_head_layer_norm<Scalar>(e, nh, c.group_norm_weight);
  if (config_.feedforward) {
    const FeedForwardConfig& f = *config_.feedforward;
    f.validate();
    ffn_norm_ = make_layer_norm<Scalar>(e);
    if (config_.pre_norm == PreNormKind::rms_norm) ffn_rms_norm_ = RmsNorm<Scalar>(e, 1e-6, false);
    ffn_ = GatedFeedForward<Scalar>(e, f._proj_up_dim, parse_activation(f.act_fn), f.bias,
                                    f.gate_layout);
  }
}

template <typename Scalar_>
auto SLstmBlock<Scalar_>::initial_state(Index batch) const -> State {
  check(batch >= 0, "SLstmBlock::initial_state: argument 'batch' must be >= 0, got ", batch);
  check_size_product({batch, 4, embedding_dim()}, "SLstmBlock::initial_state",
                     "'batch' x 4 x embedding_dim");
  if (has_feedforward()) {
    check_size_product({batch, 2, ffn_.proj_up_dim()}, "SLstmBlock::initial_state",
                       "'batch' x 2 x feed-forward width");
  }
  State s;
  s.conv = conv1d_.initial_state(batch);
  s.cell = cell_.initial_state(batch);
  size_scratch(s.scratch.get(), batch);  // so that even the first step does not allocate
  return s;
}

template <typename Scalar_>
void SLstmBlock<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y, Workload workload,
                                  SLstmBlockForwardScratch<Scalar>& scratch) const {
  check_input(x.features(), x.batch(), state, "SLstmBlock::forward", "x");
  check_state(state, x.batch(), "SLstmBlock::forward");
  check_lengths(lengths, x.batch(), x.time(), "SLstmBlock::forward");
  check(x.time() > 0, "SLstmBlock::forward: argument 'x' must have at least one time step");
  const Index batch = x.batch(), time = x.time(), e = embedding_dim();
  Sequence<Scalar>& normed = scratch.normed;
  Sequence<Scalar>& conv_act = scratch.conv_act;
  normed.resize(batch, time, e);
  pre_norm(xlstm_norm_, rms_norm_, x.matrix(), normed.matrix());
  conv1d_.forward(normed, lengths, state.conv, conv_act, scratch.conv_taps);
  const Index rows = x.matrix().rows();
  if (!conv1d_.is_identity()) {
    for_row_blocks(rows, 16 * e, [&](Index, Index first, Index count) {
      auto block = conv_act.matrix().middleRows(first, count).array();
      block = silu(block);
    });
  }
  Sequence<Scalar>& preact = scratch.preact;
  preact.resize(batch, time, 4 * e);
  gate_preactivations(normed.matrix(), conv_act.matrix(), preact.matrix(), workload);
  cell_.forward(preact, lengths, state.cell, scratch.cell_out);
  y.resize(batch, time, e);
  group_norm_.forward(scratch.cell_out.matrix(), y.matrix());
  add_rows(x.matrix(), y.matrix());
  if (has_feedforward()) {
    ensure_size(scratch.ffn_in, rows, e);
    ensure_size(scratch.ffn_out, rows, e);
    pre_norm(ffn_norm_, ffn_rms_norm_, y.matrix(), scratch.ffn_in);
    ffn_.forward(scratch.ffn_in, scratch.ffn_out, scratch.ffn_up, workload);
    add_rows(scratch.ffn_out, y.matrix());
  }
  zero_padding(y, lengths);
}

template <typename Scalar_>
void SLstmBlock<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y, Tape& tape) const {
  check_input(x.features(), x.batch(), state, "SLstmBlock::forward", "x");
  check_state(state, x.batch(), "SLstmBlock::forward");
  check_lengths(lengths, x.batch(), x.time(), "SLstmBlock::forward");
  check(x.time() > 0, "SLstmBlock::forward: argument 'x' must have at least one time step");
  const Index batch = x.batch(), time = x.time(), e = embedding_dim();
  tape.recorded = false;  // until the forward completes
  tape.x = x;
  tape.lengths = lengths;
  tape.conv_start = state.conv;
  // The steps of forward() above, each layer's input kept in the tape.
  tape.normed.resize(batch, time, e);
  pre_norm(xlstm_norm_, rms_norm_, x.matrix(), tape.normed.matrix());
  conv1d_.forward(tape.normed, lengths, state.conv, tape.conv_out, tape.conv_taps);
  tape.conv_act = tape.conv_out;
  if (!conv1d_.is_identity()) tape.conv_act.matrix().array() = silu(tape.conv_out.matrix().array());
  tape.preact.resize(batch, time, 4 * e);
  gate_preactivations(tape.normed.matrix(), tape.conv_act.matrix(), tape.preact.matrix());
  cell_.forward(tape.preact, lengths, state.cell, tape.cell_out, tape.cell);
  y.resize(batch, time, e);
  group_norm_.forward(tape.cell_out.matrix(), y.matrix());
  add_rows(x.matrix(), y.matrix());
  tape.work.resize(batch, time, e);
  if (has_feedforward()) {
    tape.x1 = y;
    tape.ffn_in.resize(batch, time, e);
    pre_norm(ffn_norm_, ffn_rms_norm_, y.matrix(), tape.ffn_in.matrix());
    ffn_.forward(tape.ffn_in.matrix(), tape.work.matrix(), tape.ffn);
    add_rows(tape.work.matrix(), y.matrix());
  }
  zero_padding(y, lengths);
  tape.recorded = true;
}

template <typename Scalar_>
void SLstmBlock<Scalar_>::step_into(const ConstMatrixRef<Scalar>& x_t, State& state,
                                    MatrixRef<Scalar> y_t) const {
  auto& ws = state.scratch.get();
  size_scratch(ws, x_t.rows());
  pre_norm(xlstm_norm_, rms_norm_, x_t, ws.normed);
  conv1d_.step(ws.normed, state.conv, ws.conv_act);
  if (!conv1d_.is_identity()) ws.conv_act.array() = silu(ws.conv_act.array());
  // Row-invariant blocks (TiRex, math §13.10) step with the products of their
  // forward, so that a step gives the bits of the same token in a sequence.
  const Workload workload = config_.slstm.row_invariant ? Workload::row_invariant : Workload::step;
  gate_preactivations(ws.normed, ws.conv_act, ws.preact, workload);
  cell_.step(ws.preact, state.cell);
  group_norm_.forward(state.cell.y, y_t);
  y_t += x_t;
  if (has_feedforward()) {
    pre_norm(ffn_norm_, ffn_rms_norm_, y_t, ws.ffn_in);
    ffn_.forward(ws.ffn_in, ws.y_norm, ws.ffn_up, workload);
    y_t += ws.y_norm;
  }
}

template <typename Scalar_>
void SLstmBlock<Scalar_>::initialize(Rng& rng) {
  const SLstmLayerConfig& c = config_.slstm;
  const Index e = embedding_dim(), nh = c.num_heads, dh = e / nh;
  xlstm_norm_.weight().setZero();
  rms_norm_.weight().setOnes();  // an empty vector unless the pre-norm is RMSNorm
  for (HeadwiseLinear<Scalar>* g : {&input_gate_, &forget_gate_, &z_gate_, &o_gate_}) {
    small_init(g->weight(), e, rng);
  }
  if (!conv1d_.is_identity()) {
    default_linear_init(conv1d_.weight(), c.conv1d_kernel_size, rng);
    default_linear_init(conv1d_.bias(), c.conv1d_kernel_size, rng);
  }
  if (c.recurrent_weight_init == "zeros") {
    cell_.recurrent_kernel().setZero();
  } else {
    default_linear_init(cell_.recurrent_kernel(), e, rng);  // U(-1/sqrt(H), 1/sqrt(H))
  }
  initialize_bias(rng);
  if (group_norm_.weight().size() > 0) group_norm_.weight().setZero();
  if (has_feedforward()) {
    ffn_norm_.weight().setZero();
    ffn_rms_norm_.weight().setOnes();
    if (ffn_.layout() == GateLayout::split) small_init(ffn_.proj_up_gate().weight(), e, rng);
    small_init(ffn_.proj_up().weight(), e, rng);
    wang_init(ffn_.proj_down().weight(), e, config_.feedforward->_num_blocks, rng);
    ffn_.proj_up().bias().setZero();
    ffn_.proj_down().bias().setZero();
  }
  (void)dh;
  cell_.prepare_kernels_unless_listed();  // design §7.9
}

}  // namespace xlstm
