// SLstmCell: the sLSTM cell (math §2) — scalar memory, exponential input
// gate, sigmoid forget gate in log space, stabiliser m, normaliser n, and
// memory mixing through a block-diagonal (per-head) recurrent matrix.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "xlstm/cells/gates.hpp"
#include "xlstm/cells/slstm_numerics.hpp"
#include "xlstm/cells/slstm_pointwise.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/column_panels.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The pointwise function of the cell (math §2.4 and §2.7).
enum class SLstmFunction {
  slstm,  ///< exponential gating with stabiliser and normaliser: state {y, c, n, m}
  lstm,   ///< the classic LSTM pointwise function: state {y, c} (n and m stay zero)
};

/// Which test decides the first-step rule m = raw_i (math §2.4).
enum class FirstStepRule {
  /// The vanilla backend: one test over the whole (B, H) tensor n. Default,
  /// because it is what the official golden files encode.
  whole_batch,
  /// The CUDA kernel: tested per element. Only differs for states where n is
  /// zero in some rows/units and not in others (e.g. a batch where one row was
  /// reset). Prefer it when rows are reset independently.
  per_element,
  /// Tested over the units of one head of one row (math §12.5): a row that
  /// starts from zero takes the first step whatever the other rows hold. For
  /// states that are zero in a whole row or nowhere in it (a pass from zero,
  /// a state carried from an earlier pass, where n >= 1), it is the vanilla
  /// rule applied to each row as if alone, and equals whole_batch whenever
  /// all rows start from zero together. TiRex's padding cache and streaming
  /// (math §13.10) start rows from carried states next to rows from zero. The
  /// backward (plain numerics) treats it as per_element, the same for such states.
  per_row,
};

inline SLstmFunction parse_slstm_function(const std::string& name) {
  if (name == "slstm") return SLstmFunction::slstm;
  if (name == "lstm") return SLstmFunction::lstm;
  fail("config field 'function' must be \"slstm\" or \"lstm\", got \"", name, "\"");
}

struct SLstmCellConfig {
  Index hidden_size = 0;  ///< H
  Index num_heads = 4;    ///< NH; the recurrence mixes units inside a head only
  SLstmFunction function = SLstmFunction::slstm;
  FirstStepRule first_step_rule = FirstStepRule::whole_batch;
  /// Plain float math or the official TiRex bf16 rounding points (math §12).
  SLstmNumerics numerics = SLstmNumerics::plain;
  /// R y of each row by the same operations whatever the batch, so that a
  /// row's state does not depend on its batch, which exact state caches need
  /// (TiRex, math §13.10). Every sLSTM product is computed so now (the panel
  /// products of core/kernels/column_panels.hpp, whether or not the cell is
  /// prepared); the field stays for the configurations that set it.
  bool row_invariant = false;

  Index head_dim() const { return hidden_size / num_heads; }

  void validate() const {
    check_positive(hidden_size, "SLstmCellConfig", "hidden_size");
    check_positive(num_heads, "SLstmCellConfig", "num_heads");
    check(hidden_size % num_heads == 0, "SLstmCellConfig: 'hidden_size' (", hidden_size,
          ") must be divisible by 'num_heads' (", num_heads, ")");
    // The recurrent kernel holds 4 x hidden_size x head_dim values.
    check_size_product({4, hidden_size, head_dim()}, "SLstmCellConfig",
                       "recurrent kernel (4 x 'hidden_size' x head dim)");
    if (numerics == SLstmNumerics::tirex_official) {
      // math §12.5: the official TiRex cell is the sLSTM function with the
      // whole-batch first-step rule; nothing else would be "official".
      check(function == SLstmFunction::slstm,
            "SLstmCellConfig: 'numerics' tirex_official needs 'function' \"slstm\", got \"lstm\"");
      check(first_step_rule != FirstStepRule::per_element,
            "SLstmCellConfig: 'numerics' tirex_official needs 'first_step_rule' whole_batch or "
            "per_row, got per_element");
    }
  }
};

/// Recurrent state {y, c, n, m}, each B x H, plus the per-step workspace (so
/// that `step` does not allocate). Zero-initialised.
template <typename Scalar>
struct SLstmState {
  Matrix<Scalar> y, c, n, m;
  /// Not state: R y of the current step, head-major (B x 4H), sized on use.
  Scratch<Matrix<Scalar>> recurrent;
  /// Not state: R packed for one forward over a sequence of a cell that is
  /// not prepared (SLstmCell::prepare_kernels), one ColumnPanels per head.
  Scratch<std::vector<kernels::ColumnPanels<Scalar>>> panels;

  SLstmState() = default;
  SLstmState(Index batch, Index hidden_size) { resize(batch, hidden_size); }

  void resize(Index batch, Index hidden_size) {
    check(batch >= 0, "SLstmState: argument 'batch' must be non-negative, got ", batch);
    check_size_product({batch, 4, hidden_size}, "SLstmState", "'batch' x 4 x hidden_size");
    for (Matrix<Scalar>* s : {&y, &c, &n, &m}) s->setZero(batch, hidden_size);
    recurrent.get().setZero(batch, 4 * hidden_size);
  }

  Index batch() const { return y.rows(); }
  Index hidden_size() const { return y.cols(); }

  /// Back to the zero state.
  void reset() {
    for (Matrix<Scalar>* s : {&y, &c, &n, &m}) s->setZero();
  }

  /// Copies batch row `src` of `other` into row `dst` of this state.
  void copy_row_from(const SLstmState& other, Index src, Index dst) {
    check(other.hidden_size() == hidden_size(), "SLstmState::copy_row_from: hidden sizes differ (",
          other.hidden_size(), " vs ", hidden_size(), ")");
    check(src >= 0 && src < other.batch() && dst >= 0 && dst < batch(),
          "SLstmState::copy_row_from: rows ", src, " -> ", dst, " out of range (", other.batch(),
          " and ", batch(), " rows)");
    y.row(dst) = other.y.row(src);
    c.row(dst) = other.c.row(src);
    n.row(dst) = other.n.row(src);
    m.row(dst) = other.m.row(src);
  }

  /// Resets batch row `row` only; the others continue.
  void reset_row(Index row) {
    check(row >= 0 && row < batch(), "SLstmState::reset_row: argument 'row' must be in [0, ",
          batch(), "), got ", row);
    for (Matrix<Scalar>* s : {&y, &c, &n, &m}) s->row(row).setZero();
  }

  /// `slstm_state` (4, B, H): [y, c, n, m], the official step state (for
  /// function "lstm" n and m stay zero).
  XLSTM_STATE_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    visit_sliced(visit, prefix, "slstm_state",
                 {4, std::size_t(self.batch()), std::size_t(self.hidden_size())}, self.y, self.c,
                 self.n, self.m);
  }
};

/// Optional record of the states after every step of a forward pass (B, T, H).
template <typename Scalar>
struct SLstmTrace {
  Sequence<Scalar> c, n, m;
};

/// What a forward pass records for its backward pass (design §7.3): the caller
/// owns it, like the state. `SLstmCell::forward(x, state, y, tape)` fills it;
/// `backward` (cells/slstm_backward.hpp) reads it and reuses its storage as
/// workspace, so one recording serves one backward. Recording again with the
/// same shapes allocates nothing.
///
/// Per batch row and step it holds 8H scalars: the 4H pre-activations and the
/// state after the step (y, c, n, m; function lstm: 6H, y and c). The gate
/// values are recomputed from them in the backward (math §2.8).
template <typename Scalar>
struct SLstmTape {
  /// raw = x + R y + b of every step (math §2.3), time-major and head-major:
  /// row t*B + b, column h*4DH + g*DH + j, (T*B) x 4H. The backward
  /// overwrites it with the gradient with respect to raw.
  Matrix<Scalar> raw;
  /// The states, time-major, ((T+1)*B) x H each: rows [t*B, (t+1)*B) hold
  /// the state before step t, the last B rows the final state. n and m are
  /// empty for function lstm (they do not change there).
  Matrix<Scalar> y, c, n, m;
  Lengths lengths;  ///< the forward's per-row lengths (empty: all T steps)
  Index batch = 0, time = 0;
  /// Set by a recording forward, cleared by the backward that consumes it.
  bool recorded = false;
};

/// The gradients of an SLstmCell's parameters (cells/slstm_backward.hpp).
template <typename Scalar>
class SLstmCellGradients;

/// The sLSTM cell (math §2): exponential input gate, sigmoid forget gate in
/// log space, stabiliser m, normaliser n, and a block-diagonal recurrent
/// matrix that mixes the units of a head. It takes the gate pre-activations
/// (the input projections are the block's job).
///
///   xlstm::SLstmCell<float> cell(xlstm::SLstmCellConfig{/*hidden*/ 32, /*heads*/ 4});
///   auto state = cell.initial_state(/*batch*/ 2);
///   xlstm::Sequence<float> preact(2, 10, 4 * 32), y;   // [i | f | z | o], gate-major
///   cell.forward(preact, state, y);                     // or cell.step(preact_t, state)
///
/// `forward` and `step` are const (one cell, many threads, a state each);
/// `step` allocates nothing once the state's scratch has its size.
template <typename Scalar_>
class SLstmCell {
 public:
  using Scalar = Scalar_;
  using Config = SLstmCellConfig;
  using State = SLstmState<Scalar>;
  using Tape = SLstmTape<Scalar>;
  using Gradients = SLstmCellGradients<Scalar>;  ///< defined in cells/slstm_backward.hpp

  explicit SLstmCell(const Config& config) : config_(config) {
    config_.validate();
    const Index h = config_.hidden_size, dh = config_.head_dim();
    recurrent_kernel_.setZero(config_.num_heads * 4 * dh, dh);
    bias_.setZero(4 * h);
  }

  const Config& config() const { return config_; }
  Index hidden_size() const { return config_.hidden_size; }
  Index num_heads() const { return config_.num_heads; }
  Index head_dim() const { return config_.head_dim(); }

  /// Recurrent kernel in the vanilla layout (math §2.2), flattened to
  /// (NH*4*DH) x DH: row h*4*DH + g*DH + j, column k is the weight from the
  /// previous y[h*DH + k] to unit j of gate g (order i, f, z, o) of head h.
  /// Head h's block is a Linear-style (4DH x DH) matrix.
  /// Writable access drops the packed copy of prepare_kernels().
  Matrix<Scalar>& recurrent_kernel() {
    packed_kernel_.clear();
    return recurrent_kernel_;
  }
  const Matrix<Scalar>& recurrent_kernel() const { return recurrent_kernel_; }

  /// Stores R once as column panels, per head (design §7.9; rounded to bf16
  /// in the TiRex numerics, math §12.2), which the products R y then read
  /// directly. Without it each step packs R again on the stack (the cell
  /// cannot know whether R changed since the last step), a sequence once per
  /// forward: the same results either way, a step about 1.5x slower at
  /// B = 8 and 3.5x at B = 1 (xlstm_bench's step_unprepared rows, 4 heads of
  /// 128, AVX-512). Any writable access to the parameters
  /// (recurrent_kernel(), for_each_parameter, set_from_cuda_layout) drops
  /// the copy; the blocks' initialize(rng) (so the initialising
  /// constructors) and io::load_module (the modules' prepare_kernels())
  /// prepare. Call it again after changing R. An
  /// optimiser (TrainableParameters) writes R through pointers, which the
  /// copy cannot see: a forward that records a tape (training) therefore
  /// packs R afresh and never reads the copy; binding the optimiser drops
  /// it, and a model being trained should stay unprepared until training
  /// is over.
  void prepare_kernels() {
    pack_heads(packed_kernel_);
    listed_for_writing_ = false;
  }
  /// prepare_kernels() unless a writable for_each_parameter listed R since
  /// the last prepare_kernels() (an optimiser binds that way, and a copy
  /// made after it would miss its writes): what initialize(rng) of the
  /// blocks calls, so that a new draw is prepared except under an optimiser.
  void prepare_kernels_unless_listed() {
    if (!listed_for_writing_) prepare_kernels();
  }
  /// Whether prepare_kernels()'s copy is in use.
  bool is_prepared() const { return !packed_kernel_.empty(); }

  /// prepare_kernels() for a cell in the TiRex numerics (the name of earlier
  /// versions, which stored bf16(R) only); throws in the plain numerics.
  void prepare_bf16_kernel() {
    check(config_.numerics == SLstmNumerics::tirex_official,
          "SLstmCell::prepare_bf16_kernel: needs numerics 'tirex_official', got '",
          numerics_name(config_.numerics), "'");
    prepare_kernels();
  }
  /// Whether a TiRex cell is prepared.
  bool has_bf16_kernel() const {
    return config_.numerics == SLstmNumerics::tirex_official && is_prepared();
  }

  /// Gate biases, gate-major: bias[g*H + h*DH + j] (the vanilla `_bias_`).
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// Sets the parameters from the CUDA backend's layout (math §2.2): kernel
  /// (NH, DH, 4DH) flattened to (NH*DH) x 4DH, bias head-major [h][g][j].
  void set_from_cuda_layout(const ConstMatrixRef<Scalar>& kernel, const Vector<Scalar>& bias);

  /// The parameters in the CUDA backend's layout (inverse of set_from_cuda_layout).
  void get_cuda_layout(Matrix<Scalar>& kernel, Vector<Scalar>& bias) const;

  /// The official parameters: `_recurrent_kernel_` (NH, 4DH, DH) and `_bias_`
  /// (4H), vanilla layout (math §2.2). Checkpoints in the CUDA layout are
  /// converted by the loader (io/checkpoint.hpp).
  XLSTM_PARAMETER_VISITOR

  /// A zero state for `batch` rows.
  State initial_state(Index batch) const { return State(batch, hidden_size()); }

  /// One time step. `preactivations` is B x 4H, gate-major [g][h][j] (the
  /// input projections of math §2.3); the new hidden output is `state.y`.
  /// Does not allocate.
  void step(const ConstMatrixRef<Scalar>& preactivations, State& state) const;

  /// Runs the cell over a sequence. `preactivations` is B x T x 4H; `y`
  /// receives B x T x H hidden outputs; `state` is read as the initial state
  /// and left as the final one. `trace`, if given, receives c, n, m after
  /// every step.
  void forward(const Sequence<Scalar>& preactivations, State& state, Sequence<Scalar>& y,
               SLstmTrace<Scalar>* trace = nullptr) const {
    forward(preactivations, Lengths{}, state, y, trace);
  }

  /// Ragged batch: row b runs `lengths[b]` steps, exactly as if it ran alone;
  /// its state is left after its last valid step and its outputs (and trace)
  /// after that are zero.
  void forward(const Sequence<Scalar>& preactivations, const Lengths& lengths, State& state,
               Sequence<Scalar>& y, SLstmTrace<Scalar>* trace = nullptr) const {
    forward_recorded(preactivations, lengths, state, y, trace, nullptr);
  }

  /// The same, recording into `tape` what `backward` needs (design §7.3).
  void forward(const Sequence<Scalar>& preactivations, State& state, Sequence<Scalar>& y,
               Tape& tape) const {
    forward_recorded(preactivations, Lengths{}, state, y, nullptr, &tape);
  }
  void forward(const Sequence<Scalar>& preactivations, const Lengths& lengths, State& state,
               Sequence<Scalar>& y, Tape& tape) const {
    forward_recorded(preactivations, lengths, state, y, nullptr, &tape);
  }

  /// Lists `kernel` and `bias` under the names and shapes of the parameters
  /// of a cell with `config`: the one place these names live, shared by the
  /// cell and its gradients (cells/slstm_backward.hpp).
  template <typename Visit, typename Kernel, typename Bias>
  static void visit_parameters_as(const Config& config, Visit& visit, const std::string& prefix,
                                  Kernel& kernel, Bias& bias) {
    const auto nh = std::size_t(config.num_heads), dh = std::size_t(config.head_dim());
    visit_parameter(visit, prefix, "_recurrent_kernel_", {nh, 4 * dh, dh}, kernel);
    visit_parameter(visit, prefix, "_bias_", {4 * nh * dh}, bias);
  }

  /// Throws unless `state` has the sizes initial_state() gives it (any batch).
  void check_state(const State& state, const char* where) const {
    auto sized = [&](const Matrix<Scalar>& m, Index cols) {
      return m.rows() == state.batch() && m.cols() == cols;
    };
    check(state.hidden_size() == hidden_size() && sized(state.c, hidden_size()) &&
              sized(state.n, hidden_size()) && sized(state.m, hidden_size()),
          where, ": argument 'state' must hold batch x ", hidden_size(),
          " matrices y, c, n, m (make it with initial_state(batch)); got y ", state.y.rows(), " x ",
          state.y.cols(), ", c ", state.c.rows(), " x ", state.c.cols(), ", n ", state.n.rows(),
          " x ", state.n.cols(), ", m ", state.m.rows(), " x ", state.m.cols());
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    // Writable access may change R: drop the packed copy (prepare_kernels),
    // and remember that pointers to R went out.
    if constexpr (!std::is_const_v<Self>) {
      self.packed_kernel_.clear();
      self.listed_for_writing_ = true;
    }
    visit_parameters_as(self.config_, visit, prefix, self.recurrent_kernel_, self.bias_);
  }

  /// forward with an optional trace and an optional tape.
  void forward_recorded(const Sequence<Scalar>& preactivations, const Lengths& lengths,
                        State& state, Sequence<Scalar>& y, SLstmTrace<Scalar>* trace,
                        Tape* tape) const;

  /// Sizes `tape` for `batch` rows and `time` steps and stores the initial state.
  void start_tape(Tape& tape, const State& state, const Lengths& lengths, Index time) const;

  /// math §12.2: in the TiRex numerics the state enters a step rounded to
  /// bf16 (rows that take part in step `t`). A no-op for a state that mode
  /// produced; it rounds a state the caller set.
  static void round_state_to_bf16(State& state, const Lengths& lengths, Index t) {
    for (Index b = 0; b < state.batch(); ++b) {
      if (!lengths.empty() && t >= lengths[std::size_t(b)]) continue;
      for (Matrix<Scalar>* s : {&state.y, &state.c, &state.n, &state.m}) {
        s->row(b) = rounded_to_bf16(s->row(b));
      }
    }
  }

  /// One step; with `lengths`, rows whose sequence ended before step `t` are
  /// left untouched; with `tape`, the step's pre-activations are recorded as
  /// step `t` (the caller records the states).
  template <typename Input>
  void step_unchecked(const Input& x, State& state, const Lengths& lengths, Index t,
                      Tape* tape = nullptr,
                      const kernels::ColumnPanels<Scalar>* panels = nullptr) const {
    if (config_.numerics == SLstmNumerics::tirex_official) round_state_to_bf16(state, lengths, t);
    // math §2.4: the vanilla backend tests n == 0 over the whole batch.
    const bool first_step_everywhere = (state.n.array() == Scalar(0)).all();
    ensure_size(state.recurrent.get(), state.batch(), 4 * hidden_size());
    if (!panels && is_prepared()) panels = packed_kernel_.data();
    // Heads are independent: spread them over the threads when the recurrent
    // weights are large enough to pay.
    parallel_for(num_heads(), recurrent_kernel_.size() >= (1 << 16), [&](Index head) {
      step_head(x, state, lengths, t, tape, head, first_step_everywhere, panels);
    });
  }

  /// The panels of R for a forward over `time` steps: the prepared copy, else
  /// (a sequence) R packed into the state's scratch once for the whole
  /// forward, else none (a step packs on the stack, step_head). A forward
  /// that records a tape (training) always packs R afresh: an optimiser
  /// writes R through pointers, behind a prepared copy's back.
  const kernels::ColumnPanels<Scalar>* panels_for(State& state, Index time, bool taped) const {
    if (is_prepared() && !taped) return packed_kernel_.data();
    if (time < 2 && !taped) return nullptr;
    return pack_heads(state.panels.get());
  }

  /// R packed per head into `packed` (bf16(R) in the TiRex numerics); returns
  /// the first head's panels.
  const kernels::ColumnPanels<Scalar>* pack_heads(
      std::vector<kernels::ColumnPanels<Scalar>>& packed) const {
    const Index dh = head_dim();
    packed.resize(static_cast<std::size_t>(num_heads()));
    for (Index head = 0; head < num_heads(); ++head) {
      packed[std::size_t(head)].pack(recurrent_kernel_.middleRows(head * 4 * dh, 4 * dh),
                                     config_.numerics == SLstmNumerics::tirex_official);
    }
    return packed.data();
  }

  /// Whether a forward may run each head through the whole sequence on its
  /// own (one parallel region, no barrier per step; forward_recorded): the
  /// heads share only the whole-batch first-step test (math §2.4), whose
  /// outcome after step 0 this decides ahead. An element n >= 1 stays >= 1
  /// (one of f', i' is exp(0) = 1 at every step, and bf16 keeps values >= 1),
  /// and step 0 from an all-zero n leaves n = 1 in every row it runs: so when
  /// every element of the entering n is 0 or >= 1 (any state the cell made),
  /// the test is false at every step after the first. Otherwise (a state set
  /// by hand) the forward goes step by step.
  bool first_step_only_at_start(const State& state) const {
    if (config_.function == SLstmFunction::lstm ||
        config_.first_step_rule != FirstStepRule::whole_batch) {
      return true;  // the whole-batch test is not used
    }
    return (state.n.array() == Scalar(0) || state.n.array() >= Scalar(1)).all();
  }

  /// Step `t` of one head: raw = x + R y + b for the head's units (a product
  /// over all batch rows), then the pointwise update of the rows that take
  /// part. Reads and writes only the head's columns of the state, the
  /// workspace and the tape.
  template <typename Input>
  void step_head(const Input& x, State& state, const Lengths& lengths, Index t, Tape* tape,
                 Index head, bool first_step_everywhere,
                 const kernels::ColumnPanels<Scalar>* panels) const {
    const Index batch = state.batch(), h = hidden_size(), dh = head_dim();
    const bool tirex = config_.numerics == SLstmNumerics::tirex_official;
    Matrix<Scalar>& recurrent = state.recurrent.get();
    // math §2.3: raw = x + R y + b. R y is one product per head over all
    // batch rows, written head-major (column h*4DH + g*DH + j) into the
    // workspace; x and b are gate-major and added per (head, gate) segment.
    // math §12.2: TiRex rounds x, R and R y to bf16, not the bias; y and
    // bf16(R) are bf16 values, so the products are exact in float.
    // design §7.9: the same chain of sums for every element whatever the
    // batch and whether R was packed ahead or here.
    auto raw_all = recurrent.middleCols(head * 4 * dh, 4 * dh);
    const auto y_head = state.y.middleCols(head * dh, dh);
    if (panels) {
      kernels::panel_product(panels[head], y_head, raw_all);
    } else {
      kernels::panel_product_packing<Scalar>(
          y_head, recurrent_kernel_.middleRows(head * 4 * dh, 4 * dh), tirex, raw_all);
    }
    // The exponential gating in plain numerics adds x and b (and tapes raw)
    // in its pass of float packets over the units (slstm_pointwise.hpp,
    // design §7.10); the other functions, numerics and builds add them here,
    // to the whole block.
    const bool fused = detail::kSLstmPointwisePackets<Scalar> && !tirex &&
                       config_.function == SLstmFunction::slstm;
    static_assert(bool(Input::IsRowMajor) && Input::InnerStrideAtCompileTime == 1,
                  "step_head: the pre-activations must be row-major, rows contiguous");
    auto unit_row = [&](Index b) {
      const Index u0 = head * dh;
      return detail::SLstmRowUnits<Scalar>{
          &recurrent(b, head * 4 * dh),
          x.data() + b * x.outerStride() + u0,
          bias_.data() + u0,
          h,
          tape ? &tape->raw(t * batch + b, head * 4 * dh) : nullptr,
          &state.y(b, u0),
          &state.c(b, u0),
          &state.n(b, u0),
          &state.m(b, u0),
          dh};
    };
    if (!fused) {
      if (tirex) raw_all = rounded_to_bf16(raw_all);
      for (Index g = 0; g < 4; ++g) {
        const auto x_segment = x.middleCols(g * h + head * dh, dh);
        if (tirex) {
          raw_all.middleCols(g * dh, dh) += rounded_to_bf16(x_segment);
        } else {
          raw_all.middleCols(g * dh, dh) += x_segment;
        }
        raw_all.middleCols(g * dh, dh).rowwise() +=
            bias_.segment(g * h + head * dh, dh).transpose();
      }
      // design §7.3: the backward recomputes the gates from raw.
      if (tape) tape->raw.block(t * batch, head * 4 * dh, batch, 4 * dh) = raw_all;
    }
    for (Index b = 0; b < batch; ++b) {
      if (!lengths.empty() && t >= lengths[std::size_t(b)]) {
        // An ended row's pre-activations are taped all the same.
        if (fused && tape) detail::slstm_add_input_and_bias(unit_row(b), 0, dh);
        continue;
      }
      auto raw = recurrent.row(b).segment(head * 4 * dh, 4 * dh).array();
      auto raw_i = raw.segment(0, dh), raw_f = raw.segment(dh, dh);
      auto raw_z = raw.segment(2 * dh, dh), raw_o = raw.segment(3 * dh, dh);
      auto y = state.y.row(b).segment(head * dh, dh).array();
      auto c = state.c.row(b).segment(head * dh, dh).array();
      if (config_.function == SLstmFunction::lstm) {
        // math §2.7: c = sigmoid(f) c + sigmoid(i) tanh(z); y = sigmoid(o) tanh(c).
        c = sigmoid(raw_f) * c + sigmoid(raw_i) * raw_z.tanh();
        y = sigmoid(raw_o) * c.tanh();
        continue;
      }
      auto n = state.n.row(b).segment(head * dh, dh).array();
      auto m = state.m.row(b).segment(head * dh, dh).array();
      const bool first_step = config_.first_step_rule == FirstStepRule::per_row
                                  ? (n == Scalar(0)).all()
                                  : first_step_everywhere;
      if (tirex) {
        tirex_official_pointwise(raw_i, raw_f, raw_z, raw_o, y, c, n, m, first_step);
        continue;
      }
      const detail::FirstStep rule{first_step,
                                   config_.first_step_rule == FirstStepRule::per_element};
      if (fused) {
        // math §2.3-2.4: raw = (R y + x) + b, then the update, in one pass.
        detail::slstm_sum_and_update(unit_row(b), rule);
      } else {
        detail::slstm_pointwise_arrays(unit_row(b), 0, dh, rule);
      }
    }
  }

  Config config_;
  Matrix<Scalar> recurrent_kernel_;
  Vector<Scalar> bias_;
  /// R (bf16(R) in the TiRex numerics) as panels per head, or empty (prepare_kernels).
  std::vector<kernels::ColumnPanels<Scalar>> packed_kernel_;
  /// A writable visit listed R since the last prepare_kernels().
  bool listed_for_writing_ = false;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void SLstmCell<Scalar_>::set_from_cuda_layout(const ConstMatrixRef<Scalar>& kernel,
                                              const Vector<Scalar>& bias) {
  const Index nh = num_heads(), dh = head_dim(), h = hidden_size();
  check(kernel.rows() == nh * dh && kernel.cols() == 4 * dh,
        "SLstmCell::set_from_cuda_layout: argument 'kernel' must be ", nh * dh, " x ", 4 * dh,
        ", got ", kernel.rows(), " x ", kernel.cols());
  check_equal(bias.size(), 4 * h, "SLstmCell::set_from_cuda_layout", "bias.size()");
  packed_kernel_.clear();
  for (Index head = 0; head < nh; ++head) {
    recurrent_kernel_.middleRows(head * 4 * dh, 4 * dh) =
        kernel.middleRows(head * dh, dh).transpose();
    for (Index g = 0; g < 4; ++g) {
      bias_.segment(g * h + head * dh, dh) = bias.segment(head * 4 * dh + g * dh, dh);
    }
  }
}

template <typename Scalar_>
void SLstmCell<Scalar_>::get_cuda_layout(Matrix<Scalar>& kernel, Vector<Scalar>& bias) const {
  const Index nh = num_heads(), dh = head_dim(), h = hidden_size();
  kernel.resize(nh * dh, 4 * dh);
  bias.resize(4 * h);
  for (Index head = 0; head < nh; ++head) {
    kernel.middleRows(head * dh, dh) =
        recurrent_kernel_.middleRows(head * 4 * dh, 4 * dh).transpose();
    for (Index g = 0; g < 4; ++g) {
      bias.segment(head * 4 * dh + g * dh, dh) = bias_.segment(g * h + head * dh, dh);
    }
  }
}

template <typename Scalar_>
void SLstmCell<Scalar_>::step(const ConstMatrixRef<Scalar>& preactivations, State& state) const {
  check_state(state, "SLstmCell::step");
  check(preactivations.rows() == state.batch() && preactivations.cols() == 4 * hidden_size(),
        "SLstmCell::step: argument 'preactivations' must be ", state.batch(), " x ",
        4 * hidden_size(), " (batch x 4*hidden_size), got ", preactivations.rows(), " x ",
        preactivations.cols());
  step_unchecked(preactivations, state, Lengths{}, 0);
}

template <typename Scalar_>
void SLstmCell<Scalar_>::start_tape(Tape& tape, const State& state, const Lengths& lengths,
                                    Index time) const {
  const Index batch = state.batch(), h = hidden_size();
  const bool lstm = config_.function == SLstmFunction::lstm;
  ensure_size(tape.raw, time * batch, 4 * h);
  for (Matrix<Scalar>* s : {&tape.y, &tape.c}) ensure_size(*s, (time + 1) * batch, h);
  for (Matrix<Scalar>* s : {&tape.n, &tape.m}) ensure_size(*s, lstm ? 0 : (time + 1) * batch, h);
  tape.y.topRows(batch) = state.y;
  tape.c.topRows(batch) = state.c;
  if (!lstm) {
    tape.n.topRows(batch) = state.n;
    tape.m.topRows(batch) = state.m;
  }
  tape.lengths = lengths;  // no allocation when its capacity suffices
  tape.batch = batch;
  tape.time = time;
  tape.recorded = false;  // until the forward completes
}

template <typename Scalar_>
void SLstmCell<Scalar_>::forward_recorded(const Sequence<Scalar>& preactivations,
                                          const Lengths& lengths, State& state, Sequence<Scalar>& y,
                                          SLstmTrace<Scalar>* trace, Tape* tape) const {
  check_state(state, "SLstmCell::forward");
  check_equal(preactivations.features(), 4 * hidden_size(), "SLstmCell::forward",
              "preactivations.features()");
  check_equal(preactivations.batch(), state.batch(), "SLstmCell::forward",
              "preactivations.batch() (must match state.batch())");
  const Index batch = preactivations.batch(), time = preactivations.time(), h = hidden_size();
  check_lengths(lengths, batch, time, "SLstmCell::forward");
  y.resize(batch, time, h);
  if (trace) {
    for (Sequence<Scalar>* s : {&trace->c, &trace->n, &trace->m}) s->resize(batch, time, h);
  }
  // The backward differentiates the plain float math (math §2.8); the bf16
  // roundings of the TiRex numerics (math §12) have no useful derivative.
  check(!tape || config_.numerics == SLstmNumerics::plain,
        "SLstmCell::forward: a tape (for backward) needs numerics 'plain', got '",
        numerics_name(config_.numerics), "'");
  if (tape) start_tape(*tape, state, lengths, time);
  // Rows t, T + t, 2T + t, ... of the input are the batch at time t.
  auto input_at = [&](Index t) {
    return Eigen::Map<const Matrix<Scalar>, 0, Eigen::OuterStride<>>(
        preactivations.matrix().data() + t * 4 * h, batch, 4 * h,
        Eigen::OuterStride<>(time * 4 * h));
  };
  // After step t: units [u0, u0 + width) of the state into the tape, y and
  // the trace (zeros for rows whose sequence has ended).
  auto record = [&](Index t, Index u0, Index width) {
    Matrix<Scalar>* from[4] = {&state.y, &state.c, &state.n, &state.m};
    if (tape) {
      Matrix<Scalar>* taped[4] = {&tape->y, &tape->c, &tape->n, &tape->m};
      const int kept = config_.function == SLstmFunction::lstm ? 2 : 4;  // n, m do not change
      for (int s = 0; s < kept; ++s) {
        taped[s]->block((t + 1) * batch, u0, batch, width) = from[s]->middleCols(u0, width);
      }
    }
    Sequence<Scalar>* to[4] = {&y, trace ? &trace->c : nullptr, trace ? &trace->n : nullptr,
                               trace ? &trace->m : nullptr};
    for (Index b = 0; b < batch; ++b) {
      const bool ended = t >= length_of(lengths, b, time);
      for (int s = 0; s < 4; ++s) {
        if (!to[s]) continue;
        if (ended) {
          to[s]->at(b, t).segment(u0, width).setZero();
        } else {
          to[s]->at(b, t).segment(u0, width) = from[s]->row(b).segment(u0, width);
        }
      }
    }
  };
  const Index nh = num_heads(), dh = head_dim();
  const kernels::ColumnPanels<Scalar>* panels = panels_for(state, time, tape != nullptr);
  const bool by_heads =
      nh > 1 && num_threads() > 1 &&
      double(recurrent_kernel_.size()) * double(batch) * double(time) >= double(Index(1) << 18);
  if (by_heads && config_.numerics == SLstmNumerics::tirex_official) {
    // Step 0's rounding of the entering state: the states the steps make are
    // bf16 already, so the later steps' roundings are no-ops.
    round_state_to_bf16(state, lengths, 0);
  }
  if (by_heads && first_step_only_at_start(state)) {
    // Each head runs the whole sequence on one thread: the same operations
    // as step by step (the same bits at every thread count), without a
    // barrier per step, which costs as much as a small head's step.
    const bool first_step_at_start = (state.n.array() == Scalar(0)).all();
    ensure_size(state.recurrent.get(), batch, 4 * h);
    parallel_for(nh, true, [&](Index head) {
      for (Index t = 0; t < time; ++t) {
        step_head(input_at(t), state, lengths, t, tape, head, t == 0 && first_step_at_start,
                  panels);
        record(t, head * dh, dh);
      }
    });
  } else {
    for (Index t = 0; t < time; ++t) {
      step_unchecked(input_at(t), state, lengths, t, tape, panels);
      record(t, 0, h);
    }
  }
  if (tape) tape->recorded = true;
}

}  // namespace xlstm
