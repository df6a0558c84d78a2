// MLstmBlock: the NeurIPS mLSTM block with pre-up-projection (math §5), as a
// pre-norm residual block: y = x + MLstmLayer(LayerNorm(x)).
#pragma once

#include <string>

#include "xlstm/blocks/block_state.hpp"
#include "xlstm/blocks/sequence_module.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/thread_buffers.hpp"
#include "xlstm/core/valid_rows.hpp"

namespace xlstm {

/// Mirrors the official mLSTMLayerConfig (math §5.1): same field names and
/// defaults; `_proj_up_dim` and `_inner_embedding_dim` are derived by post_init.
struct MLstmLayerConfig {
  Index conv1d_kernel_size = 4;
  Index qkv_proj_blocksize = 4;
  Index num_heads = 4;
  double proj_factor = 2.0;
  bool round_proj_up_dim_up = true;
  Index round_proj_up_to_multiple_of = 64;
  bool bias = false;
  double dropout = 0.0;  ///< identity at inference
  Index context_length = -1;
  Index embedding_dim = -1;
  Index _num_blocks = 1;
  Index _proj_up_dim = -1;          ///< derived
  Index _inner_embedding_dim = -1;  ///< derived (= _proj_up_dim)

  /// The official __post_init__: the inner (up-projected) width.
  void post_init() {
    _proj_up_dim = up_projection_dim(proj_factor, embedding_dim, round_proj_up_to_multiple_of,
                                     round_proj_up_dim_up);
    _inner_embedding_dim = _proj_up_dim;
  }

  void validate() const {
    const char* where = "mLSTMLayerConfig";
    check_positive(embedding_dim, where, "embedding_dim");
    check_positive(num_heads, where, "num_heads");
    check_positive(qkv_proj_blocksize, where, "qkv_proj_blocksize");
    check(proj_factor > 0, where, ": 'proj_factor' must be positive, got ", proj_factor);
    // Official constraint (golden README §7): kernel size 0 crashes in the reference.
    check(conv1d_kernel_size >= 1, where, ": 'conv1d_kernel_size' must be >= 1, got ",
          conv1d_kernel_size);
    check_positive(_inner_embedding_dim, where, "_inner_embedding_dim (run post_init)");
    // The heads split the up-projected width, not embedding_dim (docs/config.md).
    check(_inner_embedding_dim % num_heads == 0, where, ": the inner (up-projected) width ",
          _inner_embedding_dim, " ('proj_factor' ", proj_factor, " x 'embedding_dim' ",
          embedding_dim, " rounded to a multiple of 'round_proj_up_to_multiple_of' ",
          round_proj_up_to_multiple_of, ") must be divisible by 'num_heads' (", num_heads,
          "); choose num_heads dividing ", _inner_embedding_dim);
    check(_inner_embedding_dim % qkv_proj_blocksize == 0, where,
          ": the inner (up-projected) width ", _inner_embedding_dim,
          " must be divisible by 'qkv_proj_blocksize' (", qkv_proj_blocksize, ")");
    check(_num_blocks >= 1, where, ": '_num_blocks' must be >= 1, got ", _num_blocks);
    check_size_product({2, _inner_embedding_dim, embedding_dim}, where,
                       "proj_up weight (2 x inner dim x 'embedding_dim')");
    check_size_product({_inner_embedding_dim, _inner_embedding_dim / num_heads}, where,
                       "mLSTM cell state (inner dim x inner dim / 'num_heads')");
    check_size_product({_inner_embedding_dim, conv1d_kernel_size}, where,
                       "conv weight (inner dim x 'conv1d_kernel_size')");
  }
};

/// Mirrors mLSTMBlockConfig.
struct MLstmBlockConfig {
  MLstmLayerConfig mlstm;
  Index _num_blocks = 1;
  Index _block_idx = 0;

  void post_init() {
    mlstm._num_blocks = _num_blocks;
    mlstm.post_init();
  }
};

/// Step scratch of the MLstm block (B rows).
template <typename Scalar>
struct MLstmBlockWorkspace {
  Matrix<Scalar> normed, up, conv_act, qkv, gates_i, gates_f, h, h_norm;
};

/// The plain sequence forward's intermediates (B*T rows each), kept by the
/// calling thread between calls (core/thread_buffers.hpp, design §7.7).
template <typename Scalar>
struct MLstmBlockForwardScratch {
  Matrix<Scalar> normed, up, qkv, gate_i, gate_f, h, conv_taps;
  Sequence<Scalar> x_m, conv_out;
};

namespace detail {
/// The backward's gradients of intermediates that have no place in the tape:
/// dL/d[x_m | z], dL/dqkv, dL/dgates, dL/dx_m (B*T rows each), kept by the
/// calling thread between calls (design §7.7; blocks/mlstm_block_backward.hpp).
template <typename Scalar>
struct MLstmBlockBackwardScratch {
  Sequence<Scalar> d_up, d_qkv, d_gate_i, d_gate_f, d_x_m;
  Vector<Scalar> skip_partial;  ///< per block of rows, its dL/dlearnable_skip
};
}  // namespace detail

template <typename Scalar>
using MLstmBlockState = ConvCellState<Scalar, MLstmState<Scalar>, MLstmBlockWorkspace<Scalar>>;

/// What a recording forward keeps for the backward (design §7.3, math §5.5;
/// blocks/mlstm_block_backward.hpp): the cell's tape and the inputs of every
/// layer, per token (B*T rows each; I = the inner width). Padded positions
/// are recorded as zeros, so nothing past a row's length is read. The
/// backward uses it as its workspace: a recording serves one backward;
/// recording again with the same shapes allocates nothing.
template <typename Scalar>
struct MLstmBlockTape {
  Sequence<Scalar> x;       ///< the block's input, zero past the lengths (pre-norm input, residual)
  Sequence<Scalar> normed;  ///< LayerNorm(x): proj_up input
  Sequence<Scalar> up;      ///< proj_up(normed) = [x_m | z], 2I
  Sequence<Scalar> x_m;     ///< up's first I columns: conv and v_proj input
  Sequence<Scalar> conv_out;        ///< the conv's output before the SiLU
  Sequence<Scalar> conv_act;        ///< SiLU(conv_out): q_proj, k_proj input and the skip
  Sequence<Scalar> qkv;             ///< [q | k | v], 3I: the gates' input
  Sequence<Scalar> gate_i, gate_f;  ///< the gate pre-activations, NH each
  MLstmTape<Scalar> cell;
  Sequence<Scalar> h;       ///< the cell's output: outnorm input
  Sequence<Scalar> h_norm;  ///< outnorm(h)
  Sequence<Scalar> gated;   ///< (h_norm + learnable_skip * conv_act) * silu(z): proj_down input
  CausalConv1dState<Scalar> conv_start;  ///< the conv window before the forward
  Matrix<Scalar> conv_taps;              ///< scratch of the conv's forward
  /// The valid rows of proj_up's and proj_down's inputs and outputs (forward
  /// and backward), packed: the projections skip the padding (core/valid_rows.hpp).
  PackedRows<Scalar> packed_up, packed_down;
  Lengths lengths;
  bool recorded = false;
};

/// The NeurIPS mLSTM block: LayerNorm, up-projection to the inner width,
/// causal conv + SiLU, headwise q/k projections, the mLSTM cell, multi-head
/// norm, learnable skip, output gate and down-projection, as a residual.
///
///   xlstm::MLstmBlockConfig config;
///   config.mlstm.embedding_dim = 128;
///   config.mlstm.num_heads = 4;                 // must divide the inner width
///   xlstm::MLstmBlock<float> block(config);      // official init, seed 0
///   auto state = block.initial_state(2);
///   block.forward(x, state, y);                  // B x T x E
///
/// `forward` and `step` are const: one block may run on many threads, each
/// with its own state. `step` allocates nothing once the state exists.
template <typename Scalar_>
class MLstmBlock : public SequenceModule<MLstmBlock<Scalar_>, Scalar_, MLstmBlockState<Scalar_>> {
 public:
  using Scalar = Scalar_;
  using Config = MLstmBlockConfig;
  using State = MLstmBlockState<Scalar>;
  using Tape = MLstmBlockTape<Scalar>;
  static constexpr const char* kStepWhere = "MLstmBlock::step";

  /// A block with the official initialisation from kDefaultSeed; call
  /// initialize(rng) for another draw, or load weights.
  explicit MLstmBlock(Config config) : MLstmBlock(std::move(config), uninitialized) {
    Rng rng(kDefaultSeed);
    initialize(rng);
  }

  /// A block with zero weights, to be filled by the caller.
  MLstmBlock(Config config, Uninitialized);

  const Config& config() const { return config_; }
  Index embedding_dim() const { return config_.mlstm.embedding_dim; }
  Index inner_dim() const { return config_.mlstm._inner_embedding_dim; }
  MLstmCell<Scalar>& cell() { return cell_; }
  const MLstmCell<Scalar>& cell() const { return cell_; }

  State initial_state(Index batch) const;

  /// x, y: B x T x E. `state` is the initial state and becomes the final one.
  /// From a zero state and T <= the cell's parallel_max_length this uses the
  /// parallel form like the official forward (math §5.2); otherwise chunkwise.
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y,
               MLstmForm form = MLstmForm::automatic) const {
    forward(x, Lengths{}, state, y, form);
  }

  /// Ragged batch: row b has lengths[b] valid steps; each row's outputs and
  /// final state equal running it alone; outputs past its length are zero.
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               MLstmForm form = MLstmForm::automatic) const;

  /// The same, recording into `tape` what `backward` needs (design §7.3,
  /// blocks/mlstm_block_backward.hpp); the same y and final state, bit for
  /// bit, with the cell in the form the plain forward picks (in the parallel
  /// form with ragged rows the recording cell reuses its buffers across rows,
  /// which may change the last bit).
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y, Tape& tape,
               MLstmForm form = MLstmForm::automatic) const {
    forward(x, Lengths{}, state, y, tape, form);
  }
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Tape& tape, MLstmForm form = MLstmForm::automatic) const;

  /// The layers, read-only (for the backward pass, math §5.2).
  const GroupedNorm<Scalar>& xlstm_norm() const { return xlstm_norm_; }
  const Linear<Scalar>& proj_up() const { return proj_up_; }
  const CausalConv1d<Scalar>& conv1d() const { return conv1d_; }
  const HeadwiseLinear<Scalar>& q_proj() const { return q_proj_; }
  const HeadwiseLinear<Scalar>& k_proj() const { return k_proj_; }
  const HeadwiseLinear<Scalar>& v_proj() const { return v_proj_; }
  const Linear<Scalar>& igate() const { return igate_; }
  const Linear<Scalar>& fgate() const { return fgate_; }
  const GroupedNorm<Scalar>& outnorm() const { return outnorm_; }
  const Vector<Scalar>& learnable_skip() const { return learnable_skip_; }
  const Linear<Scalar>& proj_down() const { return proj_down_; }

  // step(x_t, state, y_t): SequenceModule.

  /// Throws unless `state` has the sizes initial_state(batch) gives it. Runs
  /// before anything is written, so a call that throws leaves the state as
  /// it was.
  void check_state(const State& state, Index batch, const char* where) const {
    conv1d_.check_state(state.conv, batch, where);
    cell_.check_state(state.cell, where);
    check(state.cell.batch == batch, where, ": argument 'state' holds a cell state for batch ",
          state.cell.batch, " but the input has batch ", batch);
  }

  /// Official state_dict names (math §7.1).
  XLSTM_PARAMETER_VISITOR

  /// The official reset_parameters (math §8.2).
  void initialize(Rng& rng);

  /// Lists the parameters of the parts (the layers, or their gradients: any
  /// objects with for_each_parameter, and the skip vector) under the block's
  /// names (shared with MLstmBlockGradients, blocks/mlstm_block_backward.hpp).
  template <typename Visit, typename Norm, typename Proj, typename Conv, typename Headwise,
            typename Skip>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Norm& xlstm_norm,
                                  Proj& proj_up, Headwise& q_proj, Headwise& k_proj,
                                  Headwise& v_proj, Conv& conv1d, Proj& igate, Proj& fgate,
                                  Norm& outnorm, Skip& learnable_skip, Proj& proj_down) {
    xlstm_norm.for_each_parameter(visit, prefix + "xlstm_norm.");
    const std::string p = prefix + "xlstm.";
    proj_up.for_each_parameter(visit, p + "proj_up.");
    q_proj.for_each_parameter(visit, p + "q_proj.");
    k_proj.for_each_parameter(visit, p + "k_proj.");
    v_proj.for_each_parameter(visit, p + "v_proj.");
    conv1d.for_each_parameter(visit, p + "conv1d.");
    igate.for_each_parameter(visit, p + "mlstm_cell.igate.");
    fgate.for_each_parameter(visit, p + "mlstm_cell.fgate.");
    outnorm.for_each_parameter(visit, p + "mlstm_cell.outnorm.");
    visit_parameter(visit, p, "learnable_skip", {std::size_t(learnable_skip.size())},
                    learnable_skip);
    proj_down.for_each_parameter(visit, p + "proj_down.");
  }

 private:
  friend class SequenceModule<MLstmBlock, Scalar, State>;
  using SequenceModule<MLstmBlock, Scalar, State>::check_forward;

  /// step() after its checks, into an output of the right size.
  void step_into(const ConstMatrixRef<Scalar>& x_t, State& state, MatrixRef<Scalar> y_t) const;

  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.xlstm_norm_, self.proj_up_, self.q_proj_, self.k_proj_,
                        self.v_proj_, self.conv1d_, self.igate_, self.fgate_, self.outnorm_,
                        self.learnable_skip_, self.proj_down_);
  }

  void size_scratch(MLstmBlockWorkspace<Scalar>& ws, Index batch) const {
    const Index inner = inner_dim(), nh = config_.mlstm.num_heads;
    ensure_size(ws.normed, batch, embedding_dim());
    ensure_size(ws.up, batch, 2 * inner);
    ensure_size(ws.conv_act, batch, inner);
    ensure_size(ws.qkv, batch, 3 * inner);
    ensure_size(ws.gates_i, batch, nh);
    ensure_size(ws.gates_f, batch, nh);
    ensure_size(ws.h, batch, inner);
    ensure_size(ws.h_norm, batch, inner);
  }

  /// math §5.2: h <- (h_norm + learnable_skip * conv_act) * silu(z), in
  /// place, on rows [first, first + count) (count < 0: to the end).
  template <typename Z>
  void apply_skip_and_output_gate(Matrix<Scalar>& h, const Matrix<Scalar>& conv_act, const Z& z,
                                  Index first = 0, Index count = -1) const {
    // Row by row: a rowwise() broadcast of the skip vector is not vectorised.
    const auto skip = learnable_skip_.transpose().array();
    const Index end = count < 0 ? h.rows() : first + count;
    for (Index r = first; r < end; ++r) {
      h.row(r).array() =
          (h.row(r).array() + conv_act.row(r).array() * skip) * silu(z.row(r).array());
    }
  }

  Config config_;
  GroupedNorm<Scalar> xlstm_norm_;
  Linear<Scalar> proj_up_;
  CausalConv1d<Scalar> conv1d_;
  HeadwiseLinear<Scalar> q_proj_, k_proj_, v_proj_;
  Linear<Scalar> igate_, fgate_;
  GroupedNorm<Scalar> outnorm_;
  Vector<Scalar> learnable_skip_;
  Linear<Scalar> proj_down_;
  MLstmCell<Scalar> cell_{MLstmCellConfig{1, 1, 1}};
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
MLstmBlock<Scalar_>::MLstmBlock(Config config, Uninitialized) : config_(std::move(config)) {
  config_.post_init();
  const MLstmLayerConfig& c = config_.mlstm;
  c.validate();
  const Index e = c.embedding_dim, inner = c._inner_embedding_dim, nh = c.num_heads;
  const Index proj_heads = inner / c.qkv_proj_blocksize;
  xlstm_norm_ = make_layer_norm<Scalar>(e);
  proj_up_ = Linear<Scalar>(e, 2 * inner, c.bias);
  conv1d_ = CausalConv1d<Scalar>(inner, c.conv1d_kernel_size);
  q_proj_ = HeadwiseLinear<Scalar>(inner, proj_heads, c.bias);
  k_proj_ = HeadwiseLinear<Scalar>(inner, proj_heads, c.bias);
  v_proj_ = HeadwiseLinear<Scalar>(inner, proj_heads, c.bias);
  igate_ = Linear<Scalar>(3 * inner, nh, true);
  fgate_ = Linear<Scalar>(3 * inner, nh, true);
  outnorm_ = make_multi_head_layer_norm<Scalar>(inner, nh);
  learnable_skip_.setOnes(inner);
  proj_down_ = Linear<Scalar>(inner, e, c.bias);
  MLstmCellConfig cell_config;
  cell_config.num_heads = nh;
  cell_config.qk_head_dim = inner / nh;
  cell_config.v_head_dim = inner / nh;
  cell_config.convention = MLstmStateConvention::scaled_keys;
  cell_ = MLstmCell<Scalar>(cell_config);
}

template <typename Scalar_>
auto MLstmBlock<Scalar_>::initial_state(Index batch) const -> State {
  check(batch >= 0, "MLstmBlock::initial_state: argument 'batch' must be >= 0, got ", batch);
  check_size_product({batch, 3 * inner_dim() + embedding_dim()}, "MLstmBlock::initial_state",
                     "'batch' x step workspace width (3 x inner dim + embedding_dim)");
  State s;
  s.conv = conv1d_.initial_state(batch);
  s.cell = cell_.initial_state(batch);
  size_scratch(s.scratch.get(), batch);  // so that even the first step does not allocate
  return s;
}

template <typename Scalar_>
void MLstmBlock<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y, MLstmForm form) const {
  check_forward(x, lengths, state, "MLstmBlock::forward");
  const Index batch = x.batch(), time = x.time(), inner = inner_dim(), rows = x.matrix().rows();
  // The same steps as the recording forward below, in the thread's buffers
  // instead of a tape: no fresh pages per call (design §7.7).
  detail::ThreadBuffers<MLstmBlockForwardScratch<Scalar>> buffers;
  MLstmBlockForwardScratch<Scalar>& ws = buffers.get();
  ensure_size(ws.normed, rows, embedding_dim());
  xlstm_norm_.forward(x.matrix(), ws.normed);
  ensure_size(ws.up, rows, 2 * inner);
  proj_up_.forward(ws.normed, ws.up);
  ws.x_m.resize(batch, time, inner);
  for_row_blocks(rows, inner, [&](Index, Index first, Index count) {
    ws.x_m.matrix().middleRows(first, count) = ws.up.middleRows(first, count).leftCols(inner);
  });
  conv1d_.forward(ws.x_m, lengths, state.conv, ws.conv_out, ws.conv_taps);
  Matrix<Scalar>& conv_act = ws.conv_out.matrix();
  for_row_blocks(rows, 16 * inner, [&](Index, Index first, Index count) {
    auto block = conv_act.middleRows(first, count).array();
    block = silu(block);
  });
  ensure_size(ws.qkv, rows, 3 * inner);
  q_proj_.forward(conv_act, ws.qkv.leftCols(inner));
  k_proj_.forward(conv_act, ws.qkv.middleCols(inner, inner));
  v_proj_.forward(ws.x_m.matrix(), ws.qkv.rightCols(inner));
  ensure_size(ws.gate_i, rows, config_.mlstm.num_heads);
  ensure_size(ws.gate_f, rows, config_.mlstm.num_heads);
  igate_.forward(ws.qkv, ws.gate_i);
  fgate_.forward(ws.qkv, ws.gate_f);
  ensure_size(ws.h, rows, inner);
  cell_.forward(batch, time, ws.qkv.leftCols(inner), ws.qkv.middleCols(inner, inner),
                ws.qkv.rightCols(inner), ws.gate_i, ws.gate_f, state.cell, ws.h, form, lengths);
  outnorm_.forward(ws.h, ws.h);
  for_row_blocks(rows, 24 * inner, [&](Index, Index first, Index count) {
    apply_skip_and_output_gate(ws.h, conv_act, ws.up.rightCols(inner), first, count);
  });
  y.resize(batch, time, embedding_dim());
  proj_down_.forward(ws.h, y.matrix());
  add_rows(x.matrix(), y.matrix());
  zero_padding(y, lengths);
}

template <typename Scalar_>
void MLstmBlock<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                  Sequence<Scalar>& y, Tape& tape, MLstmForm form) const {
  check_forward(x, lengths, state, "MLstmBlock::forward");
  const Index batch = x.batch(), time = x.time(), e = embedding_dim(), inner = inner_dim();
  const Index nh = config_.mlstm.num_heads;
  tape.recorded = false;  // until the forward completes
  // The steps of forward() above, each layer's input kept in the tape. The
  // input's padding is recorded as zeros: every row's valid steps are
  // computed as before, and the backward's products never meet the padding.
  tape.x = x;
  zero_padding(tape.x, lengths);
  tape.lengths = lengths;
  tape.conv_start = state.conv;
  tape.normed.resize(batch, time, e);
  xlstm_norm_.forward(tape.x.matrix(), tape.normed.matrix());
  tape.up.resize(batch, time, 2 * inner);
  forward_valid_rows(proj_up_, tape.normed.matrix(), tape.up.matrix(), time, lengths,
                     tape.packed_up);
  tape.x_m.resize(batch, time, inner);
  tape.x_m.matrix() = tape.up.matrix().leftCols(inner);
  conv1d_.forward(tape.x_m, lengths, state.conv, tape.conv_out, tape.conv_taps);
  tape.conv_act.resize(batch, time, inner);
  for_row_blocks(batch * time, 16 * inner, [&](Index, Index first, Index count) {
    tape.conv_act.matrix().middleRows(first, count).array() =
        silu(tape.conv_out.matrix().middleRows(first, count).array());
  });
  tape.qkv.resize(batch, time, 3 * inner);
  auto& qkv = tape.qkv.matrix();
  q_proj_.forward(tape.conv_act.matrix(), qkv.leftCols(inner));
  k_proj_.forward(tape.conv_act.matrix(), qkv.middleCols(inner, inner));
  v_proj_.forward(tape.x_m.matrix(), qkv.rightCols(inner));
  tape.gate_i.resize(batch, time, nh);
  tape.gate_f.resize(batch, time, nh);
  igate_.forward(qkv, tape.gate_i.matrix());
  fgate_.forward(qkv, tape.gate_f.matrix());
  tape.h.resize(batch, time, inner);
  cell_.forward(batch, time, qkv.leftCols(inner), qkv.middleCols(inner, inner),
                qkv.rightCols(inner), tape.gate_i.matrix(), tape.gate_f.matrix(), state.cell,
                tape.h.matrix(), tape.cell, form, lengths);
  tape.h_norm.resize(batch, time, inner);
  outnorm_.forward(tape.h.matrix(), tape.h_norm.matrix());
  tape.gated = tape.h_norm;
  // The valid rows only: proj_down and its backward read no padding of `gated`.
  for_valid_row_blocks(batch, time, lengths, 24 * inner, [&](Index, Index first, Index count) {
    apply_skip_and_output_gate(tape.gated.matrix(), tape.conv_act.matrix(),
                               tape.up.matrix().rightCols(inner), first, count);
  });
  y.resize(batch, time, e);
  forward_valid_rows(proj_down_, tape.gated.matrix(), y.matrix(), time, lengths, tape.packed_down);
  add_rows(tape.x.matrix(), y.matrix());
  zero_padding(y, lengths);
  tape.recorded = true;
}

template <typename Scalar_>
void MLstmBlock<Scalar_>::step_into(const ConstMatrixRef<Scalar>& x_t, State& state,
                                    MatrixRef<Scalar> y_t) const {
  const Index inner = inner_dim();
  auto& ws = state.scratch.get();
  size_scratch(ws, x_t.rows());
  xlstm_norm_.forward(x_t, ws.normed);
  proj_up_.forward(ws.normed, ws.up, Workload::step);
  conv1d_.step(ws.up.leftCols(inner), state.conv, ws.conv_act);
  ws.conv_act.array() = silu(ws.conv_act.array());
  q_proj_.forward(ws.conv_act, ws.qkv.leftCols(inner), Workload::step);
  k_proj_.forward(ws.conv_act, ws.qkv.middleCols(inner, inner), Workload::step);
  v_proj_.forward(ws.up.leftCols(inner), ws.qkv.rightCols(inner), Workload::step);
  igate_.forward(ws.qkv, ws.gates_i, Workload::step);
  fgate_.forward(ws.qkv, ws.gates_f, Workload::step);
  cell_.step(ws.qkv.leftCols(inner), ws.qkv.middleCols(inner, inner), ws.qkv.rightCols(inner),
             ws.gates_i, ws.gates_f, state.cell, ws.h);
  outnorm_.forward(ws.h, ws.h_norm);
  apply_skip_and_output_gate(ws.h_norm, ws.conv_act, ws.up.rightCols(inner));
  proj_down_.forward(ws.h_norm, y_t, Workload::step);
  y_t += x_t;
}

template <typename Scalar_>
void MLstmBlock<Scalar_>::initialize(Rng& rng) {
  const Index e = embedding_dim(), nh = config_.mlstm.num_heads;
  xlstm_norm_.weight().setZero();
  small_init(proj_up_.weight(), e, rng);
  for (HeadwiseLinear<Scalar>* p : {&q_proj_, &k_proj_, &v_proj_}) {
    small_init(p->weight(), e, rng);  // dim = E, not the inner dim (math §8.2)
    p->bias().setZero();
  }
  // The conv keeps PyTorch's default init (fan_in = K for a depthwise conv).
  default_linear_init(conv1d_.weight(), config_.mlstm.conv1d_kernel_size, rng);
  default_linear_init(conv1d_.bias(), config_.mlstm.conv1d_kernel_size, rng);
  wang_init(proj_down_.weight(), e, config_.mlstm._num_blocks, rng);
  proj_up_.bias().setZero();
  proj_down_.bias().setZero();
  learnable_skip_.setOnes();
  fgate_.weight().setZero();
  linspace_init(fgate_.bias(), 3.0, 6.0);
  igate_.weight().setZero();
  rng.normal(igate_.bias(), 0.0, 0.1);
  outnorm_.weight().setZero();
  (void)nh;
}

}  // namespace xlstm
