// MLstmCell: the mLSTM cell (math §4) — matrix memory C with the covariance
// (outer-product) update, normaliser n and stabiliser m, in its parallel,
// chunkwise and recurrent forms.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "xlstm/cells/gates.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// Which side carries the 1/sqrt(DHQK) scale (math §4 preamble). The outputs
/// are the same; the stored states differ by that factor.
enum class MLstmStateConvention {
  /// NeurIPS model code [X]: C and n accumulate k/sqrt(DHQK). The NeurIPS
  /// language model's step() states are in this convention.
  scaled_keys,
  /// mlstm_kernels [K] (xLSTM-Large): C and n accumulate unscaled k; the
  /// query is scaled instead.
  unscaled_keys,
};

/// How the state's matrix memory C is stored between calls (math §4.8).
enum class MLstmStateStorage {
  /// In the cell's Scalar: the reference numerics (the default).
  full,
  /// In bfloat16, rounded to nearest even at the end of every call (each
  /// step() of a decode); every computation is in Scalar. Halves the bytes
  /// that a decode step reads and writes per batch row, which is what bounds
  /// decoding many rows at once, at the cost of a rounding error per call in
  /// C (README "Reduced-precision mLSTM state" has its measured effect).
  /// n and m stay in Scalar: they are small, and m is a log-space scale.
  bf16,
};

/// The computational forms of math §4.2-§4.4.
enum class MLstmForm {
  automatic,  ///< per batch row: parallel for a short row from a zero state, else chunkwise
  parallel,   ///< §4.2 (zero initial state only; T x T memory)
  chunkwise,  ///< §4.4 (any T, any initial state, memory linear in T)
  recurrent,  ///< §4.3 step by step
};

/// The form's name, as in messages and reports ("parallel", ...).
inline const char* form_name(MLstmForm form) {
  switch (form) {
    case MLstmForm::parallel:
      return "parallel";
    case MLstmForm::chunkwise:
      return "chunkwise";
    case MLstmForm::recurrent:
      return "recurrent";
    default:
      return "automatic";
  }
}

struct MLstmCellConfig {
  Index num_heads = 4;    ///< NH
  Index qk_head_dim = 0;  ///< DHQK: query and key size per head
  Index v_head_dim = 0;   ///< DHV: value (and output) size per head
  double eps = 1e-6;      ///< the "+ eps" of the normaliser (math §4.1)
  MLstmStateConvention convention = MLstmStateConvention::scaled_keys;
  Index chunk_size = 64;  ///< chunk length of the chunkwise form
  /// `automatic` uses the parallel form up to this length (from a zero state),
  /// the chunkwise form beyond. Up to one chunk both cost the same; beyond, the
  /// parallel form computes the masked half of its T x T matrix for nothing
  /// (README, Design notes, has the measurement). Sequences of at most one chunk thus match the
  /// official forward (which is parallel) to rounding; longer ones differ from
  /// it only by the eps term of math §4.5.
  Index parallel_max_length = 64;
  /// Storage of the states that initial_state() makes (math §4.8).
  MLstmStateStorage state_storage = MLstmStateStorage::full;

  void validate() const {
    check_positive(num_heads, "MLstmCellConfig", "num_heads");
    check_positive(qk_head_dim, "MLstmCellConfig", "qk_head_dim");
    check_positive(v_head_dim, "MLstmCellConfig", "v_head_dim");
    check_positive(chunk_size, "MLstmCellConfig", "chunk_size");
    check(eps >= 0 && std::isfinite(eps), "MLstmCellConfig: 'eps' must be finite and >= 0, got ",
          eps);
    check_size_product({num_heads, qk_head_dim, v_head_dim}, "MLstmCellConfig",
                       "'num_heads' x 'qk_head_dim' x 'v_head_dim'");
  }
};

/// State per batch row and head: C (DHQK x DHV), n (DHQK), m (scalar), all
/// zero initially. Row `r = b*NH + h` indexes (batch row, head):
/// C rows [r*DHQK, (r+1)*DHQK), n row r, m entry r.
/// What the cell carries between calls; copy it, reset or copy rows, save it
/// (io/state_io.hpp). Make it with MLstmCell::initial_state(batch).
///
/// With `MLstmStateStorage::bf16` (math §4.8) C lives in `C_bf16` (bfloat16
/// bits, the same layout) and `C` is empty; set_storage() converts.
template <typename Scalar>
struct MLstmState {
  Index batch = 0, num_heads = 0, qk_head_dim = 0, v_head_dim = 0;
  Matrix<Scalar> C;  ///< (B*NH*DHQK) x DHV; empty with bf16 storage
  Matrix<Scalar> n;  ///< (B*NH) x DHQK
  Vector<Scalar> m;  ///< (B*NH)
  MLstmStateConvention convention = MLstmStateConvention::scaled_keys;
  MLstmStateStorage storage = MLstmStateStorage::full;
  Matrix<std::uint16_t> C_bf16;  ///< C's bfloat16 bits with bf16 storage, else empty

  MLstmState() = default;
  MLstmState(Index batch_, Index num_heads_, Index qk_head_dim_, Index v_head_dim_,
             MLstmStateConvention convention_, MLstmStateStorage storage_ = MLstmStateStorage::full)
      : batch(batch_),
        num_heads(num_heads_),
        qk_head_dim(qk_head_dim_),
        v_head_dim(v_head_dim_),
        convention(convention_),
        storage(storage_) {
    check(batch >= 0, "MLstmState: argument 'batch' must be non-negative, got ", batch);
    check_size_product({batch, num_heads, qk_head_dim, v_head_dim}, "MLstmState",
                       "'batch' x num_heads x qk_head_dim x v_head_dim");
    if (storage == MLstmStateStorage::bf16) {
      C_bf16.setZero(batch * num_heads * qk_head_dim, v_head_dim);
    } else {
      C.setZero(batch * num_heads * qk_head_dim, v_head_dim);
    }
    n.setZero(batch * num_heads, qk_head_dim);
    m.setZero(batch * num_heads);
  }

  bool is_bf16() const { return storage == MLstmStateStorage::bf16; }

  /// Rows of C as stored (B*NH*DHQK), whatever the storage.
  Index C_rows() const { return is_bf16() ? C_bf16.rows() : C.rows(); }
  /// Columns of C as stored (DHV), whatever the storage.
  Index C_cols() const { return is_bf16() ? C_bf16.cols() : C.cols(); }

  auto C_of(Index b, Index h) {
    check_full("MLstmState::C_of");
    return C.middleRows((b * num_heads + h) * qk_head_dim, qk_head_dim);
  }
  auto C_of(Index b, Index h) const {
    check_full("MLstmState::C_of");
    return C.middleRows((b * num_heads + h) * qk_head_dim, qk_head_dim);
  }

  /// Converts C to `target` storage: to bf16 rounds to nearest even, back to
  /// full is exact. Allocates the new storage.
  void set_storage(MLstmStateStorage target) {
    if (target == storage) return;
    if (target == MLstmStateStorage::bf16) {
      C_bf16.resize(C.rows(), C.cols());
      for (Index i = 0; i < C.size(); ++i) C_bf16.data()[i] = to_bf16(C.data()[i]);
      C.resize(0, C_bf16.cols());
    } else {
      C.resize(C_bf16.rows(), C_bf16.cols());
      for (Index i = 0; i < C.size(); ++i) C.data()[i] = Scalar(bf16_to_float(C_bf16.data()[i]));
      C_bf16.resize(0, C.cols());
    }
    storage = target;
  }

  /// Sets `out` to this state with C in Scalar (full storage). Allocates
  /// nothing when `out` has the sizes already.
  void widen_into(MLstmState& out) const {
    out.batch = batch;
    out.num_heads = num_heads;
    out.qk_head_dim = qk_head_dim;
    out.v_head_dim = v_head_dim;
    out.convention = convention;
    out.storage = MLstmStateStorage::full;
    out.C_bf16.resize(0, C_cols());
    if (is_bf16()) {
      out.C.resize(C_bf16.rows(), C_bf16.cols());
      for (Index i = 0; i < out.C.size(); ++i) {
        out.C.data()[i] = Scalar(bf16_to_float(C_bf16.data()[i]));
      }
    } else {
      out.C = C;
    }
    out.n = n;
    out.m = m;
  }

  /// Takes C, n and m from `full` (same sizes, full storage), rounding C when
  /// this state stores bf16. Allocates nothing.
  void assign_from(const MLstmState& full) {
    if (is_bf16()) {
      for (Index i = 0; i < C_bf16.size(); ++i) C_bf16.data()[i] = to_bf16(full.C.data()[i]);
    } else {
      C = full.C;
    }
    n = full.n;
    m = full.m;
  }

  void reset() {
    C.setZero();
    C_bf16.setZero();
    n.setZero();
    m.setZero();
  }

  void reset_row(Index row) {
    check(row >= 0 && row < batch, "MLstmState::reset_row: argument 'row' must be in [0, ", batch,
          "), got ", row);
    const Index c_rows = num_heads * qk_head_dim;
    if (is_bf16()) {
      C_bf16.middleRows(row * c_rows, c_rows).setZero();
    } else {
      C.middleRows(row * c_rows, c_rows).setZero();
    }
    n.middleRows(row * num_heads, num_heads).setZero();
    m.segment(row * num_heads, num_heads).setZero();
  }

  /// Copies batch row `src` of `other` into row `dst` of this state (to move
  /// sequences between batches). The states must have the same head sizes,
  /// convention and storage.
  void copy_row_from(const MLstmState& other, Index src, Index dst) {
    check(other.num_heads == num_heads && other.qk_head_dim == qk_head_dim &&
              other.v_head_dim == v_head_dim && other.convention == convention &&
              other.storage == storage,
          "MLstmState::copy_row_from: the states have different head sizes, conventions or "
          "storage");
    check(src >= 0 && src < other.batch && dst >= 0 && dst < batch,
          "MLstmState::copy_row_from: rows ", src, " -> ", dst, " out of range (", other.batch,
          " and ", batch, " rows)");
    const Index c_rows = num_heads * qk_head_dim;
    if (is_bf16()) {
      C_bf16.middleRows(dst * c_rows, c_rows) = other.C_bf16.middleRows(src * c_rows, c_rows);
    } else {
      C.middleRows(dst * c_rows, c_rows) = other.C.middleRows(src * c_rows, c_rows);
    }
    n.middleRows(dst * num_heads, num_heads) = other.n.middleRows(src * num_heads, num_heads);
    m.segment(dst * num_heads, num_heads) = other.m.segment(src * num_heads, num_heads);
  }

  bool is_zero() const { return batch == 0 || all_rows_zero(0, batch); }

  /// Whether batch row `row` is in the zero state.
  bool row_is_zero(Index row) const { return all_rows_zero(row, 1); }

  /// Rescales C and n to the other convention (math §4: C_X = C_K / sqrt(DHQK)).
  /// With bf16 storage C is rounded again after the rescaling.
  void convert_to(MLstmStateConvention target) {
    if (target == convention) return;
    const Scalar root = std::sqrt(Scalar(qk_head_dim));
    const Scalar factor = target == MLstmStateConvention::scaled_keys ? Scalar(1) / root : root;
    C *= factor;
    for (Index i = 0; i < C_bf16.size(); ++i) {
      C_bf16.data()[i] = to_bf16(factor * Scalar(bf16_to_float(C_bf16.data()[i])));
    }
    n *= factor;
    convention = target;
  }

  /// The official step-state names: `mlstm_state.0` C (B, NH, DHQK, DHV),
  /// `.1` n (B, NH, DHQK, 1), `.2` m (B, NH, 1, 1), in this state's convention.
  /// A state with bf16 storage is listed (saved, loaded) after
  /// set_storage(MLstmStateStorage::full), which is exact; listing it as it
  /// is throws.
  XLSTM_STATE_VISITOR

  /// The nearest bfloat16 (ties to even) of a Scalar, through float.
  static std::uint16_t to_bf16(Scalar value) { return float_to_bf16(static_cast<float>(value)); }

 private:
  void check_full(const char* where) const {
    check(!is_bf16(), where, ": the state stores C in bfloat16 (MLstmStateStorage::bf16); use ",
          "C_bf16, or set_storage(MLstmStateStorage::full) first");
  }

  bool all_rows_zero(Index row, Index rows) const {
    const Index c_rows = num_heads * qk_head_dim;
    bool c_zero = true;
    if (is_bf16()) {
      // +0 and -0 are both zero (a bfloat16 -0 has only the sign bit set).
      // Stops at the first other value, like Eigen's all(): a state in use
      // is told at its first element.
      const std::uint16_t* bits = C_bf16.data() + row * c_rows * v_head_dim;
      c_zero = std::all_of(bits, bits + rows * c_rows * v_head_dim,
                           [](std::uint16_t b) { return (b & 0x7fffu) == 0; });
    } else {
      c_zero = (C.middleRows(row * c_rows, rows * c_rows).array() == Scalar(0)).all();
    }
    return c_zero && (n.middleRows(row * num_heads, rows * num_heads).array() == Scalar(0)).all() &&
           (m.segment(row * num_heads, rows * num_heads).array() == Scalar(0)).all();
  }

  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    self.check_full("MLstmState::for_each_tensor (saving, loading, copying by tensors)");
    const auto b = std::size_t(self.batch), nh = std::size_t(self.num_heads),
               dk = std::size_t(self.qk_head_dim), dv = std::size_t(self.v_head_dim);
    visit_parameter(visit, prefix, "mlstm_state.0", {b, nh, dk, dv}, self.C);
    visit_parameter(visit, prefix, "mlstm_state.1", {b, nh, dk, 1}, self.n);
    visit_parameter(visit, prefix, "mlstm_state.2", {b, nh, 1, 1}, self.m);
  }
};

namespace detail {

/// Grows `m` to at least rows x cols (never shrinks): buffers used through
/// their top-left corner, so that smaller chunks allocate nothing.
template <typename MatrixType>
void grow_to(MatrixType& m, Index rows, Index cols) {
  if (m.rows() < rows || m.cols() < cols) {
    m.resize(std::max<Index>(rows, m.rows()), std::max<Index>(cols, m.cols()));
  }
}

/// Per batch row, the form a plain forward runs (the recording forward keeps
/// them in its tape).
struct MLstmRowForms {
  std::vector<MLstmForm> forms;
};

/// The leading rows x cols of `m`'s storage as a contiguous rows x cols
/// matrix. Buffers that grow (grow_to) are used through this view rather than
/// through topLeftCorner: the view's layout depends on rows and cols only, not
/// on the capacity an earlier call left, so a result does not depend on what
/// ran before (Eigen's vectorised sums start at the first aligned element of
/// a row, and the rows of a corner start wherever the capacity puts them).
template <typename Scalar>
Eigen::Map<Matrix<Scalar>> leading(Matrix<Scalar>& m, Index rows, Index cols) {
  eigen_assert(rows * cols <= m.size());
  return Eigen::Map<Matrix<Scalar>>(m.data(), rows, cols);
}

/// Working memory of the mLSTM cell for one (batch row, head) at a time,
/// reused across heads and chunks (one per thread). A chunk of `len` steps
/// uses the leading `len` entries, so buffers sized once serve every chunk.
template <typename Scalar>
struct MLstmBuffers {
  // Forward (math §4.2, §4.4).
  Vector<Scalar> log_f, cum_log_f, log_weight, max_log;
  Matrix<Scalar> log_decay, scores, qbar;
  // Backward (math §4.7; cells/mlstm_backward.hpp): the recomputed chunk
  // (scores S, weights W, their cotangents), the chunk's inputs with V
  // extended by a column of ones, the running state cotangent, and the states
  // of one segment of the recurrent form.
  Matrix<Scalar> weights, d_scores, d_log, qs, ks, d_qs, d_ks, v_ext, num, d_num, d_v_ext,
      ks_d_state, state_ext, d_state, d_state_out, segment_C, segment_n;
  Vector<Scalar> m, w_inter, g_inter, d_b, d_i, d_m, segment_m;
  Eigen::Matrix<Index, Eigen::Dynamic, 1> arg_max;

  /// Capacity for chunks of `len` steps of the forward.
  void reserve_forward(Index len, Index dqk) {
    for (Vector<Scalar>* x : {&log_f, &cum_log_f, &log_weight, &max_log}) grow_to(*x, len, 1);
    grow_to(log_decay, len, len);
    grow_to(scores, len, len);
    grow_to(qbar, len, dqk);
  }
};

/// A state with C in Scalar, kept per thread: a forward over a state with
/// bf16 storage runs on it (math §4.8).
template <typename Scalar>
struct MLstmWidenedState {
  MLstmState<Scalar> state;
};

}  // namespace detail

/// What a recording forward of the mLSTM cell keeps for its backward
/// (design §7.3, math §4.7). The caller owns it, like the state;
/// `MLstmCell::forward(..., tape)` fills it, `backward`
/// (cells/mlstm_backward.hpp) consumes it. Recording again with the same
/// shapes allocates nothing.
///
/// Per token and head: the inputs q, k, v, i, f (2 DHQK + DHV + 2 scalars),
/// and for the chunkwise form the outputs' numerator and denominator
/// (DHV + 1); per `chunk_size` tokens and head: the state at the chunk's
/// start (DHQK x DHV + DHQK + 1 scalars). Memory is linear in T: inside a
/// chunk the backward recomputes what it needs, never a T x T matrix (except
/// the parallel form, which is T x T by nature).
template <typename Scalar>
struct MLstmTape {
  /// The forward's inputs, (B*T) rows as given (row b*T + t), head-major columns.
  Matrix<Scalar> q, k, v, igate, fgate;
  /// Chunk-boundary states of item r = b*NH + head: slot r*boundaries + j
  /// holds the state before step j*segment (C rows slot*DHQK.., n row slot,
  /// m entry slot), in the cell's convention.
  Matrix<Scalar> C, n;
  Vector<Scalar> m;
  /// Rows of the chunkwise form: the outputs before the normaliser and the
  /// normaliser's argument, [num, den] (math §4.4(b)), (B*T) x (NH*(DHV+1)),
  /// head h in columns [h*(DHV+1), (h+1)*(DHV+1)). The backward would
  /// otherwise recompute them with a product against the chunk's start state
  /// (math §4.7(b)). Empty when no row ran chunkwise.
  Matrix<Scalar> num;
  std::vector<MLstmForm> forms;  ///< per batch row, the form that ran
  Lengths lengths;               ///< the forward's per-row lengths (empty: all T)
  Index batch = 0, time = 0;
  Index segment = 0;     ///< steps between stored states (the chunk size)
  Index boundaries = 0;  ///< stored states per item: ceil(time / segment)
  /// Set by a recording forward, cleared by the backward that consumes it.
  bool recorded = false;
  /// Working memory, one per thread (forward and backward).
  std::vector<detail::MLstmBuffers<Scalar>> buffers;
};

/// The mLSTM cell (math §4): matrix memory C with the covariance update,
/// normaliser n and stabiliser m, in its parallel, chunkwise and recurrent
/// forms, which agree (math §4.5). It has no parameters: q, k, v and the
/// gate pre-activations come from the block.
///
///   xlstm::MLstmCell<float> cell(xlstm::MLstmCellConfig{/*heads*/ 2, /*dqk*/ 8, /*dv*/ 8});
///   auto state = cell.initial_state(/*batch*/ 1);
///   cell.forward(1, T, q, k, v, igate, fgate, state, h);   // (B*T) x (NH*D) rows
///   cell.step(q_t, k_t, v_t, igate_t, fgate_t, state, h_t);
///
/// `forward` and `step` are const; `step` allocates nothing; `forward`
/// allocates its per-head workspaces (memory linear in T for the chunkwise form).
template <typename Scalar_>
class MLstmCell {
 public:
  using Scalar = Scalar_;
  using Config = MLstmCellConfig;
  using State = MLstmState<Scalar>;
  using Tape = MLstmTape<Scalar>;

  explicit MLstmCell(const Config& config) : config_(config) { config_.validate(); }

  const Config& config() const { return config_; }

  Index num_heads() const { return config_.num_heads; }
  Index qk_head_dim() const { return config_.qk_head_dim; }
  Index v_head_dim() const { return config_.v_head_dim; }

  State initial_state(Index batch) const {
    return State(batch, num_heads(), qk_head_dim(), v_head_dim(), config_.convention,
                 config_.state_storage);
  }

  /// Runs the cell over a sequence. Inputs are head-major (channel h*DH + j):
  /// q, k are B x T x (NH*DHQK), v is B x T x (NH*DHV), igate and fgate are
  /// B x T x NH pre-activations. `h` receives B x T x (NH*DHV). `state` is the
  /// initial state and is left as the final state, whatever the form.
  void forward(const Sequence<Scalar>& q, const Sequence<Scalar>& k, const Sequence<Scalar>& v,
               const Sequence<Scalar>& igate, const Sequence<Scalar>& fgate, State& state,
               Sequence<Scalar>& h, MLstmForm form = MLstmForm::automatic) const {
    check_sequence_inputs(q, k, v, igate, fgate, state);
    h.resize(q.batch(), q.time(), num_heads() * v_head_dim());
    forward(q.batch(), q.time(), q.matrix(), k.matrix(), v.matrix(), igate.matrix(), fgate.matrix(),
            state, h.matrix(), form);
  }

  /// Ragged batch: row b runs `lengths[b]` steps exactly as if it ran alone;
  /// its outputs after that are zero and its state is left after its last
  /// valid step. Padded positions are never read.
  void forward(const Sequence<Scalar>& q, const Sequence<Scalar>& k, const Sequence<Scalar>& v,
               const Sequence<Scalar>& igate, const Sequence<Scalar>& fgate, const Lengths& lengths,
               State& state, Sequence<Scalar>& h, MLstmForm form = MLstmForm::automatic) const {
    check_sequence_inputs(q, k, v, igate, fgate, state);
    h.resize(q.batch(), q.time(), num_heads() * v_head_dim());
    forward(q.batch(), q.time(), q.matrix(), k.matrix(), v.matrix(), igate.matrix(), fgate.matrix(),
            state, h.matrix(), form, lengths);
  }

  /// The same on (B*T)-row matrices (row b*T + t), e.g. column blocks of one
  /// wider matrix; h must be (B*T) x (NH*DHV).
  void forward(Index batch, Index time, const ConstMatrixRef<Scalar>& q,
               const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
               const ConstMatrixRef<Scalar>& igate, const ConstMatrixRef<Scalar>& fgate,
               State& state, MatrixRef<Scalar> h, MLstmForm form = MLstmForm::automatic,
               const Lengths& lengths = {}) const;

  /// The forwards above, recording into `tape` what `backward` needs
  /// (design §7.3, math §4.7). Same outputs, bit for bit.
  void forward(const Sequence<Scalar>& q, const Sequence<Scalar>& k, const Sequence<Scalar>& v,
               const Sequence<Scalar>& igate, const Sequence<Scalar>& fgate, State& state,
               Sequence<Scalar>& h, Tape& tape, MLstmForm form = MLstmForm::automatic) const {
    forward(q, k, v, igate, fgate, Lengths{}, state, h, tape, form);
  }
  void forward(const Sequence<Scalar>& q, const Sequence<Scalar>& k, const Sequence<Scalar>& v,
               const Sequence<Scalar>& igate, const Sequence<Scalar>& fgate, const Lengths& lengths,
               State& state, Sequence<Scalar>& h, Tape& tape,
               MLstmForm form = MLstmForm::automatic) const {
    check_sequence_inputs(q, k, v, igate, fgate, state);
    h.resize(q.batch(), q.time(), num_heads() * v_head_dim());
    forward_recorded(q.batch(), q.time(), q.matrix(), k.matrix(), v.matrix(), igate.matrix(),
                     fgate.matrix(), state, h.matrix(), form, lengths, &tape);
  }
  void forward(Index batch, Index time, const ConstMatrixRef<Scalar>& q,
               const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
               const ConstMatrixRef<Scalar>& igate, const ConstMatrixRef<Scalar>& fgate,
               State& state, MatrixRef<Scalar> h, Tape& tape, MLstmForm form = MLstmForm::automatic,
               const Lengths& lengths = {}) const {
    forward_recorded(batch, time, q, k, v, igate, fgate, state, h, form, lengths, &tape);
  }

  /// The scale applied to q (1/sqrt(DHQK) in the unscaled-keys convention, else 1).
  Scalar query_scale() const {
    return config_.convention == MLstmStateConvention::unscaled_keys
               ? Scalar(1) / std::sqrt(Scalar(qk_head_dim()))
               : Scalar(1);
  }
  /// The scale applied to k (1/sqrt(DHQK) in the scaled-keys convention, else 1).
  Scalar key_scale() const {
    return config_.convention == MLstmStateConvention::scaled_keys
               ? Scalar(1) / std::sqrt(Scalar(qk_head_dim()))
               : Scalar(1);
  }
  /// The normaliser's eps (math §4.1) in Scalar.
  Scalar eps() const { return static_cast<Scalar>(config_.eps); }

  /// One time step for all rows and heads (math §4.3). q, k: B x (NH*DHQK);
  /// v: B x (NH*DHV); igate, fgate: B x NH; h receives B x (NH*DHV).
  /// Does not allocate.
  void step(const ConstMatrixRef<Scalar>& q, const ConstMatrixRef<Scalar>& k,
            const ConstMatrixRef<Scalar>& v, const ConstMatrixRef<Scalar>& igate,
            const ConstMatrixRef<Scalar>& fgate, State& state, MatrixRef<Scalar> h) const;

  /// Throws unless `state` has the sizes initial_state() gives it (any batch).
  void check_state(const State& state, const char* where) const {
    // The state's own sizes are compared by division, never multiplied: a
    // tampered `batch` must not overflow.
    check(state.num_heads == num_heads() && state.qk_head_dim == qk_head_dim() &&
              state.v_head_dim == v_head_dim() && state.convention == config_.convention &&
              state.n.cols() == qk_head_dim() && state.n.rows() % num_heads() == 0 &&
              state.n.rows() / num_heads() == state.batch &&
              state.C_rows() == state.n.rows() * qk_head_dim() && state.C_cols() == v_head_dim() &&
              (state.is_bf16() ? state.C.size() == 0 : state.C_bf16.size() == 0) &&
              state.m.size() == state.n.rows(),
          where, ": argument 'state' must be made by initial_state() of a cell with ", num_heads(),
          " heads, DHQK ", qk_head_dim(), ", DHV ", v_head_dim(), " and the same convention; got ",
          state.num_heads, " heads, DHQK ", state.qk_head_dim, ", DHV ", state.v_head_dim);
  }

 private:
  using InputRef = ConstMatrixRef<Scalar>;
  using StridedBlock = Eigen::Block<const InputRef, Eigen::Dynamic, Eigen::Dynamic, false>;
  using ColumnBlock = Eigen::Block<const InputRef, Eigen::Dynamic, 1, false>;

  /// One (batch row, head) slice of the inputs, T rows each.
  struct HeadInputs {
    StridedBlock q, k, v;
    ColumnBlock igate, fgate;
  };

  using Workspace = detail::MLstmBuffers<Scalar>;

  /// forward with an optional tape.
  void forward_recorded(Index batch, Index time, const ConstMatrixRef<Scalar>& q,
                        const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                        const ConstMatrixRef<Scalar>& igate, const ConstMatrixRef<Scalar>& fgate,
                        State& state, MatrixRef<Scalar> h, MLstmForm form, const Lengths& lengths,
                        Tape* tape) const;

  /// Sizes `tape` and copies the inputs into it.
  void start_tape(Tape& tape, Index batch, Index time, const ConstMatrixRef<Scalar>& q,
                  const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                  const ConstMatrixRef<Scalar>& igate, const ConstMatrixRef<Scalar>& fgate,
                  const Lengths& lengths) const {
    const Index items = batch * num_heads(), segment = config_.chunk_size;
    tape.q = q;  // no allocation when the sizes are unchanged
    tape.k = k;
    tape.v = v;
    tape.igate = igate;
    tape.fgate = fgate;
    tape.boundaries = (time + segment - 1) / segment;
    ensure_size(tape.C, items * tape.boundaries * qk_head_dim(), v_head_dim());
    ensure_size(tape.n, items * tape.boundaries, qk_head_dim());
    ensure_size(tape.m, items * tape.boundaries, Index(1));
    tape.lengths = lengths;
    tape.batch = batch;
    tape.time = time;
    tape.segment = segment;
    tape.recorded = false;  // until the forward completes
    if (tape.buffers.size() < std::size_t(num_threads())) tape.buffers.resize(num_threads());
  }

  /// Stores the state of (b, head) as boundary `j` of the tape.
  void record_boundary(Tape& tape, Index j, const State& state, Index b, Index head) const {
    const Index r = b * num_heads() + head, slot = r * tape.boundaries + j;
    tape.C.middleRows(slot * qk_head_dim(), qk_head_dim()) = state.C_of(b, head);
    tape.n.row(slot) = state.n.row(r);
    tape.m(slot) = state.m(r);
  }

  /// The first `len` steps of batch row b, head `head` (rows b*time ...).
  HeadInputs head_inputs(const InputRef& q, const InputRef& k, const InputRef& v,
                         const InputRef& igate, const InputRef& fgate, Index time, Index len,
                         Index b, Index head) const {
    const Index dqk = qk_head_dim(), dv = v_head_dim();
    return HeadInputs{q.block(b * time, head * dqk, len, dqk),
                      k.block(b * time, head * dqk, len, dqk),
                      v.block(b * time, head * dv, len, dv),
                      igate.template block<Eigen::Dynamic, 1>(b * time, head, len, 1),
                      fgate.template block<Eigen::Dynamic, 1>(b * time, head, len, 1)};
  }

  /// log f over steps [t0, t0+len) and their inclusive cumulative sum.
  void cumulative_log_forget(const HeadInputs& in, Index t0, Index len, Workspace& ws) const {
    ws.log_f.head(len) = log_sigmoid(clamp_gates(in.fgate.segment(t0, len).array())).matrix();
    Scalar sum = 0;
    for (Index t = 0; t < len; ++t) {
      sum += ws.log_f(t);
      ws.cum_log_f(t) = sum;
    }
  }

  /// logD[t, s] = cum[t] - cum[s] + i[s] for s <= t, -inf above the diagonal,
  /// and its row max (never -inf: the diagonal is unmasked, math §10.6).
  void causal_log_decay(const HeadInputs& in, Index t0, Index len, Workspace& ws) const {
    const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
    auto log_decay = detail::leading(ws.log_decay, len, len);
    for (Index t = 0; t < len; ++t) {
      Scalar row_max = neg_inf;
      for (Index s = 0; s <= t; ++s) {
        const Scalar value = ws.cum_log_f(t) - ws.cum_log_f(s) + clamp_gate(in.igate(t0 + s));
        log_decay(t, s) = value;
        row_max = std::max(row_max, value);
      }
      for (Index s = t + 1; s < len; ++s) log_decay(t, s) = neg_inf;
      ws.max_log(t) = row_max;
    }
  }

  /// math §4.2, parallel_stabilized_simple, for one (batch row, head).
  template <typename Out>
  void parallel_head(const HeadInputs& in, Out&& h_out, Workspace& ws) const {
    const Index time = in.q.rows();
    cumulative_log_forget(in, 0, time, ws);
    causal_log_decay(in, 0, time, ws);
    auto scores = detail::leading(ws.scores, time, time);
    const auto max_log = ws.max_log.head(time);
    // C[t, s] = (q_t . k_s) * scale * exp(logD[t, s] - m_t)
    kernels::serial_product(in.q, in.k, scores, false);
    scores.array() *= query_scale() * key_scale() *
                      (detail::leading(ws.log_decay, time, time).colwise() - max_log).array().exp();
    for (Index t = 0; t < time; ++t) {
      const Scalar norm = std::max(std::abs(scores.row(t).sum()), std::exp(-max_log(t)));
      scores.row(t) /= norm + eps();
    }
    kernels::serial_product(scores, in.v.transpose(), h_out, false);
  }

  /// math §4.4(b): outputs of steps [t0, t0+len) from the state at the chunk
  /// start plus the intra-chunk parallel part.
  /// With a tape, [num, den] go to its `num` before the division.
  template <typename Out>
  void chunk_outputs(const HeadInputs& in, Index t0, Index len, const State& state, Index b,
                     Index head, Out&& h_out, Workspace& ws, Tape* tape) const {
    const Index r = b * num_heads() + head;
    const Scalar m_prev = state.m(r);
    cumulative_log_forget(in, t0, len, ws);
    causal_log_decay(in, t0, len, ws);
    const auto q = in.q.middleRows(t0, len);
    const auto k = in.k.middleRows(t0, len);
    const auto v = in.v.middleRows(t0, len);
    // m_combined[t] = max(cum[t] + m_prev, m_intra[t]); reuse max_log for it and
    // keep exp(m_inter - m_combined) in log_f.
    for (Index t = 0; t < len; ++t) {
      const Scalar m_inter = ws.cum_log_f(t) + m_prev;
      const Scalar m_combined = std::max(m_inter, ws.max_log(t));
      ws.log_f(t) = std::exp(m_inter - m_combined) * query_scale();
      ws.max_log(t) = m_combined;
    }
    auto scores = detail::leading(ws.scores, len, len);
    auto qbar = detail::leading(ws.qbar, len, qk_head_dim());
    kernels::serial_product(q, k, scores, false);
    scores.array() *=
        query_scale() * key_scale() *
        (detail::leading(ws.log_decay, len, len).colwise() - ws.max_log.head(len)).array().exp();
    // qbar = q * exp(m_inter - m_combined) * qk_scale
    qbar = ws.log_f.head(len).asDiagonal() * q;
    kernels::serial_product(qbar, state.C_of(b, head).transpose(), h_out, false);
    kernels::serial_product(scores, v.transpose(), h_out, true);
    const Index dv = v_head_dim();
    for (Index t = 0; t < len; ++t) {
      const Scalar den = qbar.row(t).dot(state.n.row(r)) + scores.row(t).sum();
      if (tape) {
        auto saved = tape->num.row(b * tape->time + t0 + t).segment(head * (dv + 1), dv + 1);
        saved.head(dv) = h_out.row(t);
        saved(dv) = den;
      }
      h_out.row(t) /= std::max(std::abs(den), std::exp(-ws.max_log(t))) + eps();
    }
  }

  /// math §4.4(a): carries (C, n, m) of (b, head) over steps [t0, t0+len).
  void advance_state(const HeadInputs& in, Index t0, Index len, State& state, Index b, Index head,
                     Workspace& ws) const {
    const Index r = b * num_heads() + head;
    cumulative_log_forget(in, t0, len, ws);
    const Scalar total = ws.cum_log_f(len - 1);
    // a[s] = cum[L] - cum[s] + i[s]: log weight of step s at the chunk end.
    auto log_weight = ws.log_weight.head(len);
    for (Index s = 0; s < len; ++s) {
      log_weight(s) = total - ws.cum_log_f(s) + clamp_gate(in.igate(t0 + s));
    }
    const Scalar m_prev = state.m(r);
    const Scalar m_new = std::max(total + m_prev, log_weight.maxCoeff());
    const Scalar decay = std::exp(total + m_prev - m_new);
    log_weight = ((log_weight.array() - m_new).exp() * key_scale()).matrix();
    auto C = state.C_of(b, head);
    C *= decay;
    // K^T diag(w) V with diag(w) K in a buffer: no temporary on the heap.
    auto weighted_k = detail::leading(ws.qbar, len, qk_head_dim());
    weighted_k = log_weight.asDiagonal() * in.k.middleRows(t0, len);
    kernels::serial_product(weighted_k.transpose(), in.v.middleRows(t0, len).transpose(), C, true);
    state.n.row(r) *= decay;
    state.n.row(r).noalias() += log_weight.transpose() * in.k.middleRows(t0, len);
    state.m(r) = m_new;
  }

  /// The step's scalars (math §4.3): f' and i' (keys scaled per convention)
  /// and the new stabiliser m.
  struct StepGates {
    Scalar forget, input, m_new;
  };

  StepGates step_gates(Scalar igate, Scalar fgate, Scalar m_prev) const {
    const Scalar i_pre = clamp_gate(igate);
    const Scalar f_pre = clamp_gate(fgate);
    const Scalar log_f = std::min(f_pre, Scalar(0)) - std::log1p(std::exp(-std::abs(f_pre)));
    const Scalar m_new = std::max(log_f + m_prev, i_pre);
    return {std::exp(log_f + m_prev - m_new), std::exp(i_pre - m_new) * key_scale(), m_new};
  }

  /// h = q^T C / max(|q^T n|, exp(-m)) from the updated n, m (math §4.3).
  template <typename Q, typename N, typename H>
  void normalise_output(const Q& q, const N& n, Scalar m_new, H& h) const {
    const Scalar q_scale = query_scale();
    const Scalar den = q_scale * q.dot(n);
    h *= q_scale / (std::max(std::abs(den), std::exp(-m_new)) + eps());
  }

  /// math §4.3 for one (batch row, head), on a state of either storage. With
  /// bf16 storage (math §4.8) each element of C is widened, updated and used
  /// in Scalar, then stored rounded, in the same pass; h sees the unrounded
  /// update, as when a forward of one step ends. No allocation.
  template <typename Q, typename K, typename V, typename H>
  void recurrent_step(const Q& q, const K& k, const V& v, Scalar igate, Scalar fgate, State& state,
                      Index b, Index head, H&& h) const {
    const Index r = b * num_heads() + head, block = qk_head_dim() * v_head_dim();
    const StepGates g = step_gates(igate, fgate, state.m(r));
    if (state.is_bf16()) {
      update_memory(state.C_bf16.data() + r * block, q, k, v, g, h);
    } else {
      update_memory(state.C.data() + r * block, q, k, v, g, h);
    }
    auto n = state.n.row(r);
    n = g.forget * n + g.input * k;
    state.m(r) = g.m_new;
    normalise_output(q, n, g.m_new, h);
  }

  /// How far ahead of the row it updates the recurrent step prefetches C.
  /// From a few rows per step on, the step streams the whole state through
  /// memory (B = 8 decode of the 125M model: 25-50 MB per row) and the
  /// hardware prefetcher alone left it stalled on loads: a cache line of the
  /// row 8 KiB further on, requested per line updated, took a scratch update
  /// of 8 x 96 heads of 384 x 384 from 39 to 23 ms (bf16 storage) and 46 to
  /// 36 ms (float) natively, 51 to 27 and 54 to 42 ms on x86-64-v3 (Intel
  /// Xeon, one thread); 1.5 to 12 KiB ahead all measured alike.
  static constexpr Index kStatePrefetchBytes = 8192;

  /// C = f' C + i' k v^T, h = q^T C (h unnormalised) over one head's
  /// dqk x dv block `C` (row-major), one pass, row by row. `Stored` is
  /// Scalar, or std::uint16_t for bf16 storage (widened on load, rounded to
  /// nearest even on store: widen, narrow and their packet forms). Each
  /// element is fma(f', c, (i' k_a) v_j) in a packet and f' c + (i' k_a) v_j
  /// in the scalar tail; h_j += q_a c. `v` and `h` are contiguous (rows of
  /// row-major matrices).
  template <typename Stored, typename Q, typename K, typename V, typename H>
  void update_memory(Stored* C, const Q& q, const K& k, const V& v, const StepGates& g,
                     H& h) const {
    static_assert(std::decay_t<V>::InnerStrideAtCompileTime == 1 &&
                      std::decay_t<H>::InnerStrideAtCompileTime == 1,
                  "v and h must be contiguous");
    constexpr bool kPackets =
        std::is_same_v<Stored, Scalar> || (std::is_same_v<Scalar, float> && simd::kWidenBf16);
    using Packet = simd::Packet<Scalar>;
    constexpr Index kLanes = simd::kLanes<Scalar>;
    constexpr Index kLine = kernels::kCacheLineBytes / Index(sizeof(Stored));
    const Index dqk = qk_head_dim(), dv = v_head_dim();
    const Index ahead = std::max<Index>(1, kStatePrefetchBytes / (dv * Index(sizeof(Stored))));
    const Scalar* v_data = v.data();
    Scalar* h_data = h.data();
    h.setZero();
    for (Index a = 0; a < dqk; ++a) {
      Stored* row = C + a * dv;
      // Within the head's block only: the next block may be another
      // thread's, whose writes would then take the lines back (the step of 4
      // heads of 256 x 256 on two threads went 16 -> 22 us prefetching into it).
      const bool prefetch = a + ahead < dqk;
      const Scalar ka = g.input * k(a), qa = q(a);
      Index j = 0;
      if constexpr (kPackets) {
        const Packet forget = simd::broadcast(g.forget), kv = simd::broadcast(ka),
                     qv = simd::broadcast(qa);
        for (; j + kLanes <= dv; j += kLanes) {
          if (prefetch && j % kLine == 0) simd::prefetch(row + ahead * dv + j);
          const Packet c = simd::fma(forget, load_widened(row + j),
                                     Eigen::internal::pmul(kv, simd::load(v_data + j)));
          simd::store(h_data + j, simd::fma(qv, c, simd::load(h_data + j)));
          store_narrowed(row + j, c);
        }
      }
      for (; j < dv; ++j) {
        const Scalar c = g.forget * widen(row[j]) + ka * v_data[j];
        h_data[j] += qa * c;
        row[j] = narrow<Stored>(c);
      }
    }
  }

  /// A stored element of C (update_memory) as Scalar, and back: the identity
  /// for Scalar storage, bf16 <-> Scalar for bf16 storage (math §4.8); the
  /// packet forms load and store a packet of them. Member templates, so that
  /// an explicit instantiation of the class (xlstm/precompiled.hpp) does not
  /// instantiate the bf16 packet forms for double, which has none.
  template <typename Stored>
  static Scalar widen(Stored c) {
    if constexpr (std::is_same_v<Stored, Scalar>) {
      return c;
    } else {
      return Scalar(bf16_to_float(c));
    }
  }
  template <typename Stored>
  static Stored narrow(Scalar c) {
    if constexpr (std::is_same_v<Stored, Scalar>) {
      return c;
    } else {
      return State::to_bf16(c);
    }
  }
  template <typename Stored>
  static simd::Packet<Scalar> load_widened(const Stored* p) {
    if constexpr (std::is_same_v<Stored, Scalar>) {
      return simd::load(p);
    } else {
      return simd::load_bf16(p);
    }
  }
  template <typename Stored>
  static void store_narrowed(Stored* p, const simd::Packet<Scalar>& c) {
    if constexpr (std::is_same_v<Stored, Scalar>) {
      simd::store(p, c);
    } else {
      simd::store_bf16(p, c);
    }
  }

  template <typename M>
  static void check_shape(const M& x, Index rows, Index cols, const char* where, const char* name) {
    check(x.rows() == rows && x.cols() == cols, where, ": argument '", name, "' must be ", rows,
          " x ", cols, ", got ", x.rows(), " x ", x.cols());
  }

  void check_sequence_inputs(const Sequence<Scalar>& q, const Sequence<Scalar>& k,
                             const Sequence<Scalar>& v, const Sequence<Scalar>& igate,
                             const Sequence<Scalar>& fgate, const State& state) const {
    const char* where = "MLstmCell::forward";
    check_state(state, where);
    auto expect = [&](const Sequence<Scalar>& x, Index features, const char* name) {
      check(x.batch() == state.batch && x.time() == q.time() && x.features() == features, where,
            ": argument '", name, "' must be ", state.batch, " x ", q.time(), " x ", features,
            " (batch x time x features), got ", x.batch(), " x ", x.time(), " x ", x.features());
    };
    expect(q, num_heads() * qk_head_dim(), "q");
    expect(k, num_heads() * qk_head_dim(), "k");
    expect(v, num_heads() * v_head_dim(), "v");
    expect(igate, num_heads(), "igate");
    expect(fgate, num_heads(), "fgate");
  }

  Config config_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void MLstmCell<Scalar_>::forward(Index batch, Index time, const ConstMatrixRef<Scalar>& q,
                                 const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                                 const ConstMatrixRef<Scalar>& igate,
                                 const ConstMatrixRef<Scalar>& fgate, State& state,
                                 MatrixRef<Scalar> h, MLstmForm form,
                                 const Lengths& lengths) const {
  forward_recorded(batch, time, q, k, v, igate, fgate, state, h, form, lengths, nullptr);
}

template <typename Scalar_>
void MLstmCell<Scalar_>::forward_recorded(Index batch, Index time, const ConstMatrixRef<Scalar>& q,
                                          const ConstMatrixRef<Scalar>& k,
                                          const ConstMatrixRef<Scalar>& v,
                                          const ConstMatrixRef<Scalar>& igate,
                                          const ConstMatrixRef<Scalar>& fgate, State& state,
                                          MatrixRef<Scalar> h, MLstmForm form,
                                          const Lengths& lengths, Tape* tape) const {
  check_state(state, "MLstmCell::forward");
  if (state.is_bf16()) {
    // math §4.8: the call runs in Scalar; C is rounded once, when stored.
    check(tape == nullptr,
          "MLstmCell::forward: a recording forward (training) needs a state with full storage, "
          "got MLstmStateStorage::bf16");
    detail::ThreadBuffers<detail::MLstmWidenedState<Scalar>> widened;
    State& full = widened.get().state;
    state.widen_into(full);
    forward_recorded(batch, time, q, k, v, igate, fgate, full, h, form, lengths, nullptr);
    state.assign_from(full);
    return;
  }
  check_lengths(lengths, batch, time, "MLstmCell::forward");
  check(batch == state.batch && time > 0, "MLstmCell::forward: 'batch' must equal the state's (",
        state.batch, ") and 'time' be positive, got ", batch, " and ", time);
  check_size_product({batch, time}, "MLstmCell::forward", "'batch' x 'time'");
  const Index rows = batch * time;
  check_shape(q, rows, num_heads() * qk_head_dim(), "MLstmCell::forward", "q");
  check_shape(k, rows, num_heads() * qk_head_dim(), "MLstmCell::forward", "k");
  check_shape(v, rows, num_heads() * v_head_dim(), "MLstmCell::forward", "v");
  check_shape(igate, rows, num_heads(), "MLstmCell::forward", "igate");
  check_shape(fgate, rows, num_heads(), "MLstmCell::forward", "fgate");
  check_shape(h, rows, num_heads() * v_head_dim(), "MLstmCell::forward", "h");
  if (form == MLstmForm::parallel) {
    check(state.is_zero(),
          "MLstmCell::forward: the parallel form starts from the zero state "
          "(math §4.2); use the chunkwise form to continue from a state");
  }
  // `automatic` decides per row, from the row's own length and state, so
  // that every row of a (ragged) batch runs exactly as it would alone.
  // Without a tape, the forms live in the calling thread's buffers (design §7.7).
  detail::ThreadBuffers<detail::MLstmRowForms> own_forms;
  std::vector<MLstmForm>& row_forms = tape ? tape->forms : own_forms.get().forms;
  row_forms.assign(std::size_t(batch), form);  // no allocation when the capacity suffices
  if (tape) start_tape(*tape, batch, time, q, k, v, igate, fgate, lengths);
  for (Index b = 0; b < batch; ++b) {
    const Index len = length_of(lengths, b, time);
    h.middleRows(b * time + len, time - len).setZero();  // padding
    if (form == MLstmForm::automatic) {
      row_forms[std::size_t(b)] = len <= config_.parallel_max_length && state.row_is_zero(b)
                                      ? MLstmForm::parallel
                                      : MLstmForm::chunkwise;
    }
  }
  if (tape &&
      std::find(row_forms.begin(), row_forms.end(), MLstmForm::chunkwise) != row_forms.end()) {
    ensure_size(tape->num, rows, num_heads() * (v_head_dim() + 1));
  }
  // (batch row, head) pairs are independent: spread them over the threads.
  const bool parallel = batch * num_heads() > 1 && time * qk_head_dim() * v_head_dim() >= (1 << 14);
  const Index segment = config_.chunk_size;
  parallel_for_indexed(batch * num_heads(), parallel, [&](Index item, int thread) {
    const Index b = item / num_heads(), head = item % num_heads();
    const Index len = length_of(lengths, b, time);
    if (tape) record_boundary(*tape, 0, state, b, head);
    if (len == 0) return;
    // Without a tape, the buffers this thread keeps for it (design §7.7).
    detail::ThreadBuffers<Workspace> own;
    Workspace& ws = tape ? tape->buffers[std::size_t(thread)] : own.get();
    HeadInputs in = head_inputs(q, k, v, igate, fgate, time, len, b, head);
    auto h_out = h.block(b * time, head * v_head_dim(), len, v_head_dim());
    switch (row_forms[std::size_t(b)]) {
      case MLstmForm::parallel:
        ws.reserve_forward(len, qk_head_dim());
        parallel_head(in, h_out, ws);
        // The final state: the inter-chunk recurrence over one chunk (§4.4a).
        advance_state(in, 0, len, state, b, head, ws);
        break;
      case MLstmForm::chunkwise:
        ws.reserve_forward(std::min(segment, len), qk_head_dim());
        for (Index t0 = 0; t0 < len; t0 += segment) {
          const Index chunk = std::min(segment, len - t0);
          if (tape && t0 > 0) record_boundary(*tape, t0 / segment, state, b, head);
          chunk_outputs(in, t0, chunk, state, b, head, h_out.middleRows(t0, chunk), ws, tape);
          advance_state(in, t0, chunk, state, b, head, ws);
        }
        break;
      default:
        for (Index t = 0; t < len; ++t) {
          if (tape && t > 0 && t % segment == 0)
            record_boundary(*tape, t / segment, state, b, head);
          recurrent_step(in.q.row(t), in.k.row(t), in.v.row(t), in.igate(t), in.fgate(t), state, b,
                         head, h_out.row(t));
        }
        break;
    }
  });
  if (tape) tape->recorded = true;
}

template <typename Scalar_>
void MLstmCell<Scalar_>::step(const ConstMatrixRef<Scalar>& q, const ConstMatrixRef<Scalar>& k,
                              const ConstMatrixRef<Scalar>& v, const ConstMatrixRef<Scalar>& igate,
                              const ConstMatrixRef<Scalar>& fgate, State& state,
                              MatrixRef<Scalar> h) const {
  check_state(state, "MLstmCell::step");
  const Index batch = state.batch;
  check_shape(q, batch, num_heads() * qk_head_dim(), "MLstmCell::step", "q");
  check_shape(k, batch, num_heads() * qk_head_dim(), "MLstmCell::step", "k");
  check_shape(v, batch, num_heads() * v_head_dim(), "MLstmCell::step", "v");
  check_shape(igate, batch, num_heads(), "MLstmCell::step", "igate");
  check_shape(fgate, batch, num_heads(), "MLstmCell::step", "fgate");
  check_shape(h, batch, num_heads() * v_head_dim(), "MLstmCell::step", "h");
  const Index dqk = qk_head_dim(), dv = v_head_dim();
  const bool parallel = batch * num_heads() * dqk * dv >= (1 << 15);
  parallel_for(batch * num_heads(), parallel, [&](Index item) {
    const Index b = item / num_heads(), head = item % num_heads();
    recurrent_step(q.row(b).segment(head * dqk, dqk), k.row(b).segment(head * dqk, dqk),
                   v.row(b).segment(head * dv, dv), igate(b, head), fgate(b, head), state, b, head,
                   h.row(b).segment(head * dv, dv));
  });
}

}  // namespace xlstm
