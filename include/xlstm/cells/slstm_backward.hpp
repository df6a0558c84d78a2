// The exact backward pass of the sLSTM cell (math §2.8) and the gradients of
// its parameters (design §7): the vector-Jacobian product of the outputs and
// the final state with respect to the parameters, the pre-activations and the
// initial state, through the stabiliser m, the whole-batch first-step rule and
// the min(., 1) clamps, as the official vanilla backend's autograd computes
// it, but finite where that gives NaN (math §2.8).
//
//   xlstm::SLstmTape<float> tape;
//   cell.forward(preact, state, y, tape);              // records
//   xlstm::SLstmCellGradients<float> grads(cell);      // zeros, named like the parameters
//   auto grad_state = cell.initial_state(batch);       // cotangent of the final state
//   xlstm::Sequence<float> grad_preact;
//   xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_preact);
//   // grads += dL/dparameters; grad_state = dL/d(initial state); grad_preact = dL/dpreact
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>

#include "xlstm/cells/gates.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/kernels/panelled.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The gradients of an SLstmCell's parameters: the same names, shapes and
/// layouts as the cell's (design §7.2), so every tool built on the parameter
/// visitor (savers, optimisers, norms) works on them. `backward` adds into
/// them; `zero()` clears them.
template <typename Scalar_>
class SLstmCellGradients {
 public:
  using Scalar = Scalar_;

  /// Zero gradients for the parameters of `cell`.
  explicit SLstmCellGradients(const SLstmCell<Scalar>& cell) : config_(cell.config()) {
    recurrent_kernel_.setZero(cell.recurrent_kernel().rows(), cell.recurrent_kernel().cols());
    bias_.setZero(cell.bias().size());
  }

  const SLstmCellConfig& config() const { return config_; }

  /// dL/d recurrent kernel, laid out as SLstmCell::recurrent_kernel().
  Matrix<Scalar>& recurrent_kernel() { return recurrent_kernel_; }
  const Matrix<Scalar>& recurrent_kernel() const { return recurrent_kernel_; }

  /// dL/d bias, gate-major as SLstmCell::bias().
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  void zero() {
    recurrent_kernel_.setZero();
    bias_.setZero();
  }

  /// `_recurrent_kernel_` and `_bias_`, as the cell lists its parameters.
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    SLstmCell<Scalar>::visit_parameters_as(self.config_, visit, prefix, self.recurrent_kernel_,
                                           self.bias_);
  }

  SLstmCellConfig config_;
  Matrix<Scalar> recurrent_kernel_;
  Vector<Scalar> bias_;
};

namespace detail {

/// Units per call of slstm_units_backward: fixed-capacity arrays of this
/// length hold its intermediates (no heap), in SIMD registers and L1.
constexpr Index kUnitLanes = 16;

/// The per-unit inputs and outputs of slstm_units_backward: pointers to
/// `count` consecutive units of one row (count <= kUnitLanes).
template <typename Scalar>
struct SLstmUnits {
  Index count = 0;
  // In: the raw pre-activations; out: their gradients.
  Scalar *raw_i, *raw_f, *raw_z, *raw_o;
  // The state before (c0, n0, m0) and after (y1, n1, m1) the step.
  const Scalar *c0, *n0, *m0, *y1, *n1, *m1;
  // In: the cotangents of the state after the step (gy with the output's);
  // out: those of the state before it (gc, gn, gm; gy is the caller's, as y0
  // acts only through R y0).
  const Scalar* gy;
  Scalar *gc, *gn, *gm;
};

/// The pointwise backward of sLSTM units at one step (math §2.8), in arrays
/// so that exp, tanh and log1p run in SIMD. `first_everywhere`: the
/// whole-batch first-step rule applied to the step; otherwise a unit with
/// n0 = 0 is at its first step.
template <typename Scalar>
void slstm_units_backward(const SLstmUnits<Scalar>& u, bool whole_batch, bool first_everywhere) {
  using Lanes = Eigen::Array<Scalar, Eigen::Dynamic, 1, Eigen::ColMajor, kUnitLanes, 1>;
  using Mask = Eigen::Array<bool, Eigen::Dynamic, 1, Eigen::ColMajor, kUnitLanes, 1>;
  using In = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
  using Out = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
  const Index n = u.count;
  Out raw_i(u.raw_i, n), raw_f(u.raw_f, n), raw_z(u.raw_z, n), raw_o(u.raw_o, n);
  const In c0(u.c0, n), n0(u.n0, n), m0(u.m0, n), y1(u.y1, n), n1(u.n1, n), m1(u.m1, n);
  const In gy(u.gy, n);
  Out gc(u.gc, n), gn(u.gn, n), gm(u.gm, n);
  const Scalar one(1), half(0.5), zero(0), limit = gate_limit<Scalar>();

  const Lanes i = clamp_gates(raw_i), f = clamp_gates(raw_f);
  const Lanes tz = raw_z.tanh();
  // y1 = o c1 / n1.
  const Lanes dc = gc + gy * sigmoid(raw_o) / n1;
  const Lanes dn = gn - gy * y1 / n1;
  const Lanes d_raw_o = gy * y1 * sigmoid(-raw_o);
  Mask first(n);
  if (whole_batch) {
    first.setConstant(first_everywhere);
  } else {
    first = n0 == zero;
  }
  // m1 is a copy of i or of a = m0 + log sigmoid(f), whichever the forward
  // took; comparing with the copy decides as the forward did, where a
  // recomputed a could differ from the forward's in the last bit.
  const Mask a_taken = !first && m1 != i;
  const Lanes a = a_taken.select(m1, m0 + log_sigmoid(f));
  const Lanes e_i = (i - m1).exp(), e_f = (a - m1).exp();
  // dL/de for min(e, 1) times de/dx = e for e = exp(x): all of it below 1,
  // half on the tie (torch's convention, math §2.8), none above, also where
  // e overflowed (the official backward's 0 * inf = NaN, math §2.8).
  auto through_clamped_exp = [&](const Lanes& grad, const Lanes& e) -> Lanes {
    return (e < one).select(grad * e, (e == one).select(half * grad, zero));
  };
  // c1 = f' c0 + i' tanh z, n1 = f' n0 + i'.
  const Lanes f_gate = e_f.min(one);
  raw_z = dc * e_i.min(one) * (one - tz * tz);
  const Lanes to_i = through_clamped_exp(dc * tz + dn, e_i);
  const Lanes to_a = through_clamped_exp(dc * c0 + dn * n0, e_f);
  // m1 enters i' and f' (above) and the next step; it came from i or a, or
  // from both on a tie of the max (half each, math §2.8).
  const Lanes dm = gm - to_i - to_a;
  const Mask tie = !first && !a_taken && a == i;
  const Lanes dm_to_a = a_taken.select(dm, tie.select(half * dm, zero));
  const Lanes dm_to_i = a_taken.select(zero, tie.select(half * dm, dm));
  const Lanes d_a = to_a + dm_to_a;
  // The clamps pass the gradient inside the bounds only (and NaN nowhere).
  raw_i = (raw_i.abs() <= limit).select(to_i + dm_to_i, zero);
  raw_f = (raw_f.abs() <= limit).select(d_a * sigmoid(-f), zero);
  raw_o = d_raw_o;
  gc = dc * f_gate;
  gn = dn * f_gate;
  gm = d_a;
}

/// The same for function lstm (math §2.7): c1 = s(f) c0 + s(i) tanh z,
/// y1 = s(o) tanh c1, s the sigmoid; n and m do not change.
template <typename Scalar>
void lstm_unit_backward(Scalar& raw_i, Scalar& raw_f, Scalar& raw_z, Scalar& raw_o, Scalar c0,
                        Scalar c1, Scalar gy, Scalar& gc) {
  const Scalar si = sigmoid_of(raw_i), sf = sigmoid_of(raw_f), so = sigmoid_of(raw_o);
  const Scalar tz = std::tanh(raw_z), tc = std::tanh(c1);
  const Scalar dc = gc + gy * so * (Scalar(1) - tc * tc);
  raw_o = gy * tc * so * (Scalar(1) - so);
  raw_i = dc * tz * si * (Scalar(1) - si);
  raw_f = dc * c0 * sf * (Scalar(1) - sf);
  raw_z = dc * si * (Scalar(1) - tz * tz);
  gc = dc * sf;
}

template <typename Scalar>
void check_slstm_backward_arguments(const SLstmCell<Scalar>& cell, const SLstmTape<Scalar>& tape,
                                    const Sequence<Scalar>& grad_y,
                                    const SLstmState<Scalar>& grad_state,
                                    const SLstmCellGradients<Scalar>& grads) {
  const char* where = "backward (SLstmCell)";
  const Index h = cell.hidden_size();
  check_tape_recorded(tape.recorded, where);
  const Index states = (tape.time + 1) * tape.batch;
  const Index slstm_states = cell.config().function == SLstmFunction::lstm ? 0 : states;
  check(tape.raw.cols() == 4 * h && tape.raw.rows() == tape.batch * tape.time &&
            tape.y.rows() == states && tape.c.rows() == states && tape.y.cols() == h &&
            tape.n.rows() == slstm_states && tape.m.rows() == slstm_states,
        where, ": argument 'tape' was recorded by another cell: expected ", 4 * h,
        " pre-activation columns and the states of function ",
        cell.config().function == SLstmFunction::lstm ? "lstm" : "slstm", " (", slstm_states,
        " rows of n), got ", tape.raw.cols(), " columns and ", tape.n.rows(), " rows of n");
  check(grad_y.batch() == tape.batch && grad_y.time() == tape.time && grad_y.features() == h, where,
        ": argument 'grad_y' must be ", tape.batch, " x ", tape.time, " x ", h,
        " (the forward's batch x time x hidden_size), got ", grad_y.batch(), " x ", grad_y.time(),
        " x ", grad_y.features());
  auto sized = [&](const Matrix<Scalar>& m) { return m.rows() == tape.batch && m.cols() == h; };
  check(sized(grad_state.y) && sized(grad_state.c) && sized(grad_state.n) && sized(grad_state.m),
        where, ": argument 'grad_state' must hold ", tape.batch, " x ", h,
        " matrices y, c, n, m (make it with initial_state(batch)); got y ", grad_state.y.rows(),
        " x ", grad_state.y.cols(), ", c ", grad_state.c.rows(), " x ", grad_state.c.cols(), ", n ",
        grad_state.n.rows(), " x ", grad_state.n.cols(), ", m ", grad_state.m.rows(), " x ",
        grad_state.m.cols());
  check(grads.recurrent_kernel().rows() == cell.recurrent_kernel().rows() &&
            grads.recurrent_kernel().cols() == cell.recurrent_kernel().cols() &&
            grads.bias().size() == cell.bias().size(),
        where, ": argument 'grads' must have the cell's parameter shapes (recurrent kernel ",
        cell.recurrent_kernel().rows(), " x ", cell.recurrent_kernel().cols(), ", bias ",
        cell.bias().size(), "), got ", grads.recurrent_kernel().rows(), " x ",
        grads.recurrent_kernel().cols(), " and ", grads.bias().size());
}

}  // namespace detail

/// The backward pass of `cell` over the forward pass recorded in `tape`
/// (design §7.4, math §2.8).
///  - `grad_y`: dL/dy of the outputs, B x T x H (ignored past a row's length);
///  - `grad_state`: in, dL/d(final state) {y, c, n, m} (zeros when the loss
///    does not see it); out, dL/d(initial state);
///  - `grads`: dL/d(parameters) is added to it (accumulation across calls);
///  - `grad_preactivations`: out, dL/d(preactivations), B x T x 4H, gate-major
///    like the forward's input; zero past a row's length.
/// Consumes the tape (its storage becomes the workspace). Allocates nothing
/// once `grad_preactivations` has its size.
template <typename Scalar>
void backward(const SLstmCell<Scalar>& cell, SLstmTape<Scalar>& tape,
              const Sequence<Scalar>& grad_y, SLstmState<Scalar>& grad_state,
              SLstmCellGradients<Scalar>& grads, Sequence<Scalar>& grad_preactivations) {
  detail::check_slstm_backward_arguments(cell, tape, grad_y, grad_state, grads);
  const Index batch = tape.batch, time = tape.time, h = cell.hidden_size();
  const Index dh = cell.head_dim(), nh = cell.num_heads();
  const bool lstm = cell.config().function == SLstmFunction::lstm;
  const bool whole_batch = cell.config().first_step_rule == FirstStepRule::whole_batch;
  const Matrix<Scalar>& kernel = cell.recurrent_kernel();
  grad_preactivations.resize(batch, time, 4 * h);
  tape.recorded = false;  // from here on its storage is the workspace
  const bool parallel_heads = kernel.size() >= (1 << 16);

  for (Index t = time - 1; t >= 0; --t) {
    const Index before = t * batch, after = (t + 1) * batch;
    // math §2.4: the vanilla rule tests n == 0 over the whole batch.
    const bool first_everywhere =
        !lstm && whole_batch && (tape.n.middleRows(before, batch).array() == Scalar(0)).all();
    parallel_for(nh, parallel_heads, [&](Index head) {
      auto d_raw = tape.raw.block(before, head * 4 * dh, batch, 4 * dh);
      for (Index b = 0; b < batch; ++b) {
        auto dx = grad_preactivations.at(b, t);
        if (t >= length_of(tape.lengths, b, time)) {
          // Padding: the state passes through unchanged, nothing is computed.
          d_raw.row(b).setZero();
          for (Index g = 0; g < 4; ++g) dx.segment(g * h + head * dh, dh).setZero();
          continue;
        }
        auto gy = grad_state.y.row(b).segment(head * dh, dh);
        gy += grad_y.at(b, t).segment(head * dh, dh);
        if (lstm) {
          for (Index j = 0; j < dh; ++j) {
            const Index u = head * dh + j;
            detail::lstm_unit_backward(d_raw(b, j), d_raw(b, dh + j), d_raw(b, 2 * dh + j),
                                       d_raw(b, 3 * dh + j), tape.c(before + b, u),
                                       tape.c(after + b, u), gy(j), grad_state.c(b, u));
          }
        } else {
          for (Index j = 0; j < dh; j += detail::kUnitLanes) {
            const Index u = head * dh + j;
            detail::SLstmUnits<Scalar> units;
            units.count = std::min(detail::kUnitLanes, dh - j);
            units.raw_i = &d_raw(b, j);
            units.raw_f = &d_raw(b, dh + j);
            units.raw_z = &d_raw(b, 2 * dh + j);
            units.raw_o = &d_raw(b, 3 * dh + j);
            units.c0 = &tape.c(before + b, u);
            units.n0 = &tape.n(before + b, u);
            units.m0 = &tape.m(before + b, u);
            units.y1 = &tape.y(after + b, u);
            units.n1 = &tape.n(after + b, u);
            units.m1 = &tape.m(after + b, u);
            units.gy = &gy(j);
            units.gc = &grad_state.c(b, u);
            units.gn = &grad_state.n(b, u);
            units.gm = &grad_state.m(b, u);
            detail::slstm_units_backward(units, whole_batch, first_everywhere);
          }
        }
        gy.setZero();  // replaced by the recurrent path below
        for (Index g = 0; g < 4; ++g) {
          dx.segment(g * h + head * dh, dh) = d_raw.row(b).segment(g * dh, dh);
        }
      }
      // y0 enters the step only through R y0 (math §2.3): dy0 = dg R per head.
      // Padded rows have dg = 0 and keep their dy.
      auto grad_y0 = grad_state.y.middleCols(head * dh, dh);
      kernels::panelled_product(d_raw, kernel.middleRows(head * 4 * dh, 4 * dh).transpose(),
                                grad_y0, /*accumulate=*/true);
    });
  }

  // Parameters, over all steps at once: dR_h += sum_t dg_h(t)^T y_h(t - 1)
  // and db = sum_t dg (gate-major); padded rows add zeros.
  parallel_for(nh, parallel_heads, [&](Index head) {
    const auto d_raw = tape.raw.middleCols(head * 4 * dh, 4 * dh);
    const auto y_before = tape.y.topRows(time * batch).middleCols(head * dh, dh);
    auto d_kernel = grads.recurrent_kernel().middleRows(head * 4 * dh, 4 * dh);
    // Depth T*B: the blocked product packs each operand once per cache
    // block (panels would re-pack one for every 32 x 32 tile; inside the
    // heads' parallel loop it runs on the calling thread, with its buffers).
    kernels::parallel_product(d_raw.transpose(), y_before.transpose(), d_kernel,
                              /*accumulate=*/true);
    for (Index g = 0; g < 4; ++g) {
      grads.bias().segment(g * h + head * dh, dh) +=
          d_raw.middleCols(g * dh, dh).colwise().sum().transpose();
    }
  });
}

}  // namespace xlstm
