// The exact backward pass of the mLSTM cell (math §4.7) in its three forms:
// the vector-Jacobian product of the outputs h and the final state {C, n, m}
// with respect to q, k, v, the gate pre-activations and the initial state,
// through the normaliser max(|den|, exp(-m)), the eps term and the
// stabiliser m, as the official autograd computes it, but finite where that
// gives NaN (exp(-m) overflow, math §4.7). The cell has no parameters, hence
// no gradient object (design §7.2).
//
//   xlstm::MLstmTape<float> tape;
//   cell.forward(q, k, v, igate, fgate, state, h, tape, xlstm::MLstmForm::chunkwise);
//   auto grad_state = cell.initial_state(batch);   // cotangent of the final state
//   xlstm::MLstmInputGradients<float> grads;
//   xlstm::backward(cell, tape, grad_h, grad_state, grads);
//   // grads.q = dL/dq, ...; grad_state = dL/d(initial state)
//
// The chunkwise and parallel forms go back chunk by chunk in matrix form
// (math §4.7(b)); the recurrent form step by step (§4.7(a)), recomputing
// the states of one segment at a time from the tape's boundary states.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "xlstm/cells/gates.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// dL/d(inputs) of the mLSTM cell, shaped like the forward's inputs:
/// q, k: B x T x (NH*DHQK); v: B x T x (NH*DHV); igate, fgate: B x T x NH.
template <typename Scalar>
struct MLstmInputGradients {
  Sequence<Scalar> q, k, v, igate, fgate;
};

namespace detail {

/// Scalar, in a context that template argument deduction skips (the cell
/// fixes it; matrices then convert to the Ref parameters).
template <typename T>
struct SameAs {
  using type = T;
};
template <typename T>
using Same = typename SameAs<T>::type;

/// Splits the cotangent of max(x, y) between its arguments: all to the
/// larger, half each on a tie (torch's convention, golden README §11.2).
template <typename Scalar>
void split_max(Scalar x, Scalar y, Scalar grad, Scalar& to_x, Scalar& to_y) {
  if (x > y) {
    to_x = grad;
    to_y = 0;
  } else if (y > x) {
    to_x = 0;
    to_y = grad;
  } else {
    to_x = to_y = Scalar(0.5) * grad;
  }
}

/// The normaliser N = max(|den|, exp(-m)) + eps (math §4.7): from dL/dN,
/// dL/d den and dL/dm. Where exp(-m) overflowed, h = 0 and dL/dN = 0; the
/// product with exp(-m) is not formed (the official 0 * inf = NaN).
template <typename Scalar>
void normaliser_backward(Scalar den, Scalar m, Scalar d_norm, Scalar& d_den, Scalar& d_m) {
  const Scalar floor = std::exp(-m);
  Scalar to_abs, to_floor;
  split_max(std::abs(den), floor, d_norm, to_abs, to_floor);
  d_den = den > 0 ? to_abs : (den < 0 ? -to_abs : Scalar(0));
  d_m = to_floor == Scalar(0) ? Scalar(0) : -floor * to_floor;
}

/// Sizes the backward buffers for chunks (segments) of up to `len` steps.
template <typename Scalar>
void reserve_backward(MLstmBuffers<Scalar>& ws, Index len, Index dqk, Index dv) {
  ws.reserve_forward(len, dqk);
  for (Matrix<Scalar>* x : {&ws.weights, &ws.d_scores, &ws.d_log}) grow_to(*x, len, len);
  for (Matrix<Scalar>* x : {&ws.qs, &ws.ks, &ws.d_qs, &ws.d_ks}) grow_to(*x, len, dqk);
  for (Matrix<Scalar>* x : {&ws.v_ext, &ws.num, &ws.d_num, &ws.d_v_ext, &ws.ks_d_state}) {
    grow_to(*x, len, dv + 1);
  }
  ensure_size(ws.state_ext, dqk, dv + 1);
  ensure_size(ws.d_state, dqk, dv + 1);
  ensure_size(ws.d_state_out, dqk, dv + 1);
  for (Vector<Scalar>* x : {&ws.m, &ws.w_inter, &ws.g_inter, &ws.d_b, &ws.d_i, &ws.d_m}) {
    grow_to(*x, len, 1);
  }
  grow_to(ws.arg_max, len, 1);
  grow_to(ws.segment_C, (len + 1) * dqk, dv);
  grow_to(ws.segment_n, len + 1, dqk);
  grow_to(ws.segment_m, len + 1, 1);
}

/// One (batch row, head) of the tape: its inputs, gradients and boundary states.
template <typename Scalar>
struct MLstmItem {
  const MLstmCell<Scalar>& cell;
  const MLstmTape<Scalar>& tape;
  Index b, head, r;  ///< batch row, head, item r = b*NH + head
  Index row0;        ///< first row of the item in the (B*T)-row matrices
  const ConstMatrixRef<Scalar>& grad_h;
  MatrixRef<Scalar>&grad_q, &grad_k, &grad_v, &grad_igate, &grad_fgate;

  /// Rows [t0, t0+len) of the item's columns of a (B*T)-row matrix.
  template <typename M>
  auto rows_of(M& x, Index t0, Index len, Index width) const {
    return x.block(row0 + t0, head * width, len, width);
  }
  Index slot(Index j) const { return r * tape.boundaries + j; }
  auto boundary_C(Index j) const {
    return tape.C.middleRows(slot(j) * cell.qk_head_dim(), cell.qk_head_dim());
  }
};

/// Gate gradients from the cotangents of log f's cumulative sum (d_b) and of
/// the clamped input gates (d_i) of steps [t0, t0+len) (math §4.7(b)).
template <typename Scalar>
void gate_gradients_from_cumsum(const MLstmItem<Scalar>& it, Index t0, Index len,
                                MLstmBuffers<Scalar>& ws) {
  auto grad_i = it.rows_of(it.grad_igate, t0, len, 1);
  auto grad_f = it.rows_of(it.grad_fgate, t0, len, 1);
  const auto igate = it.rows_of(it.tape.igate, t0, len, 1);
  const auto fgate = it.rows_of(it.tape.fgate, t0, len, 1);
  Scalar d_lf = 0;  // b_t = sum_{r<=t} lf_r: dL/dlf_r = sum_{t>=r} dL/db_t
  for (Index t = len - 1; t >= 0; --t) {
    d_lf += ws.d_b(t);
    const Scalar f = fgate(t, 0);
    grad_f(t, 0) = d_lf * sigmoid_of(-clamp_gate(f)) * clamp_gate_derivative(f);
    grad_i(t, 0) = ws.d_i(t) * clamp_gate_derivative(igate(t, 0));
  }
}

/// math §4.7(b): the backward of one chunk, steps [t0, t0+len), from the
/// state at its start (boundary j; the parallel form: `inter` false, the
/// state does not enter the outputs). In: ws.d_state = dL/d[C1, n1] and
/// `d_m` = dL/dm1 of the state at the chunk's end. Out: the same for the
/// state at its start, and the chunk's input gradients.
template <typename Scalar>
void chunk_backward(const MLstmItem<Scalar>& it, Index t0, Index len, Index j, bool inter,
                    MLstmBuffers<Scalar>& ws, Scalar& d_m) {
  const MLstmCell<Scalar>& cell = it.cell;
  const Index dqk = cell.qk_head_dim(), dv = cell.v_head_dim();
  const Scalar m0 = it.tape.m(it.slot(j)), eps = cell.eps();
  const auto igate = it.rows_of(it.tape.igate, t0, len, 1);
  const auto fgate = it.rows_of(it.tape.fgate, t0, len, 1);
  auto b = ws.cum_log_f.head(len);
  {
    Scalar sum = 0;
    for (Index t = 0; t < len; ++t) b(t) = sum += log_sigmoid_of(clamp_gate(fgate(t, 0)));
  }
  auto i_of = [&](Index s) { return clamp_gate(igate(s, 0)); };

  // Recompute (math §4.4(b)): stabiliser m_t with its argument, weights W.
  auto W = detail::leading(ws.weights, len, len);
  auto log_decay = detail::leading(ws.log_decay, len, len);
  auto m = ws.m.head(len);
  auto w_inter = ws.w_inter.head(len);
  const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  for (Index t = 0; t < len; ++t) {
    Scalar m_intra = neg_inf;
    Index arg = 0;
    for (Index s = 0; s <= t; ++s) {
      const Scalar value = b(t) - b(s) + i_of(s);
      log_decay(t, s) = value;
      if (value > m_intra) {  // the first maximal entry
        m_intra = value;
        arg = s;
      }
    }
    for (Index s = t + 1; s < len; ++s) log_decay(t, s) = neg_inf;
    ws.arg_max(t) = arg;
    m(t) = inter ? std::max(b(t) + m0, m_intra) : m_intra;
    w_inter(t) = inter ? std::exp(b(t) + m0 - m(t)) : Scalar(0);
  }
  W = (log_decay.colwise() - m).array().exp().matrix();  // 0 above the diagonal
  auto qs = detail::leading(ws.qs, len, dqk);
  auto ks = detail::leading(ws.ks, len, dqk);
  qs = it.rows_of(it.tape.q, t0, len, dqk) * cell.query_scale();
  ks = it.rows_of(it.tape.k, t0, len, dqk) * cell.key_scale();
  auto S = detail::leading(ws.scores, len, len);
  kernels::serial_product(qs, ks, S, false);
  // V and the start state extended by the normaliser's column: den is the
  // numerator of v = 1 (math §4.7(b)).
  auto v_ext = detail::leading(ws.v_ext, len, dv + 1);
  v_ext.leftCols(dv) = it.rows_of(it.tape.v, t0, len, dv);
  v_ext.col(dv).setOnes();
  ws.state_ext.leftCols(dv) = it.boundary_C(j);
  ws.state_ext.col(dv) = it.tape.n.row(it.slot(j)).transpose();
  auto P = detail::leading(ws.d_log, len, len);  // S .* W, until G replaces it
  P = S.cwiseProduct(W);
  // num' = P V' + diag(w) Qs C0': the chunkwise forward kept it in the tape;
  // the parallel form (no start state, w = 0) recomputes P V'.
  auto recomputed = detail::leading(ws.num, len, dv + 1);
  if (!inter) kernels::serial_product(P, v_ext.transpose(), recomputed, false);
  const ConstMatrixRef<Scalar> num =
      inter ? ConstMatrixRef<Scalar>(it.rows_of(it.tape.num, t0, len, dv + 1))
            : ConstMatrixRef<Scalar>(recomputed);

  // Outputs: h = num / N, N = max(|den|, exp(-m)) + eps.
  auto d_num = detail::leading(ws.d_num, len, dv + 1);
  auto d_m_t = ws.d_m.head(len);
  const auto grad_h = it.rows_of(it.grad_h, t0, len, dv);
  for (Index t = 0; t < len; ++t) {
    const Scalar den = num(t, dv);
    const Scalar norm = std::max(std::abs(den), std::exp(-m(t))) + eps;
    d_num.row(t).head(dv) = grad_h.row(t) / norm;
    const Scalar d_norm = -grad_h.row(t).dot(num.row(t).head(dv)) / (norm * norm);
    normaliser_backward(den, m(t), d_norm, d_num(t, dv), d_m_t(t));
  }
  auto d_v_ext = detail::leading(ws.d_v_ext, len, dv + 1);
  kernels::serial_product(P.transpose(), d_num.transpose(), d_v_ext, false);
  auto dP = detail::leading(ws.d_scores, len, len);
  kernels::serial_product(d_num, v_ext, dP, false);
  // G = dL/dlogD = dP .* S .* W (lower triangle; W is 0 above it); then dP .* W.
  auto G = detail::leading(ws.d_log, len, len);
  G = dP.cwiseProduct(S).cwiseProduct(W);
  dP = dP.cwiseProduct(W);
  auto d_qs = detail::leading(ws.d_qs, len, dqk);
  auto d_ks = detail::leading(ws.d_ks, len, dqk);
  // Through the start state: num'_t += w_t qs_t^T [C0, n0], so dQs gets
  // X = diag(w) dnum' C0'^T, dC0' = Qs^T diag(w) dnum', and w_t (through
  // m_t) g_t = qs_t . X_t, the same as w_t (Qs C0' dnum'^T)_tt without the
  // product Qs C0' (math §4.7(b)). (ws.num is free in the chunkwise form:
  // it holds diag(w) dnum'.)
  auto weighted_d_num = detail::leading(ws.num, len, dv + 1);
  auto g_inter = ws.g_inter.head(len);
  if (inter) {
    weighted_d_num = w_inter.asDiagonal() * d_num;
    kernels::serial_product(weighted_d_num, ws.state_ext, d_qs, false);
    g_inter = qs.cwiseProduct(d_qs).rowwise().sum();
    kernels::serial_product(dP, ks.transpose(), d_qs, true);
    kernels::serial_product(qs.transpose(), weighted_d_num.transpose(), ws.d_state_out, false);
  } else {
    kernels::serial_product(dP, ks.transpose(), d_qs, false);
    g_inter.setZero();
    ws.d_state_out.setZero();
  }
  kernels::serial_product(dP.transpose(), qs.transpose(), d_ks, false);

  // Log space (math §4.7(b)): m_t enters every W(t, .) and w_inter(t) with a
  // minus sign and is the max of b_t + m0 and the row of logD.
  auto d_b = ws.d_b.head(len);
  auto d_i = ws.d_i.head(len);
  Scalar d_m0 = 0;
  for (Index t = 0; t < len; ++t) {
    const Scalar d_mt = d_m_t(t) - G.row(t).sum() - g_inter(t);
    Scalar to_inter = 0, to_intra = d_mt;
    if (inter) {
      const Index s = ws.arg_max(t);
      split_max(b(t) + m0, b(t) - b(s) + i_of(s), d_mt, to_inter, to_intra);
    }
    G(t, ws.arg_max(t)) += to_intra;
    d_b(t) = g_inter(t) + to_inter;  // minter_t = b_t + m0
    d_m0 += g_inter(t) + to_inter;
  }
  // logD(t, s) = b_t - b_s + i_s.
  d_b += G.rowwise().sum();
  d_i = G.colwise().sum().transpose();
  d_b -= d_i;

  // The state at the chunk's end (math §4.4(a)): [C1, n1] = g [C0, n0] +
  // sum_s A_s ks_s [v_s, 1]^T, m1 = max(b_L + m0, max_s a_s).
  const Scalar total = b(len - 1);
  auto a = ws.log_weight.head(len);
  for (Index s = 0; s < len; ++s) a(s) = total - b(s) + i_of(s);
  Index arg_a = 0;
  a.maxCoeff(&arg_a);
  const Scalar m1 = std::max(total + m0, a(arg_a));
  const Scalar g = std::exp(total + m0 - m1);
  auto A = ws.max_log.head(len);
  A = (a.array() - m1).exp().matrix();
  const auto& d_state = ws.d_state;  // dL/d[C1, n1]
  // A final state the loss does not see (the last chunk of a training
  // forward) has a zero cotangent: its products only add zeros, skipped.
  const bool end_state_seen = !(d_state.array() == Scalar(0)).all();
  Scalar g_g = 0, g_a_sum = 0;
  if (end_state_seen) {
    auto Y = detail::leading(ws.ks_d_state, len, dv + 1);  // ks dC1'
    kernels::serial_product(ks, d_state.transpose(), Y, false);
    g_g = g * d_state.cwiseProduct(ws.state_ext).sum();
    for (Index s = 0; s < len; ++s) {
      const Scalar g_a = A(s) * Y.row(s).dot(v_ext.row(s));
      d_i(s) += g_a;
      d_b(s) -= g_a;
      g_a_sum += g_a;
    }
    d_v_ext.noalias() += A.asDiagonal() * Y;
    v_ext = A.asDiagonal() * v_ext;  // not needed unscaled any more
    kernels::serial_product(v_ext, d_state, d_ks, true);
  }
  Scalar to_g, to_a;
  split_max(total + m0, a(arg_a), d_m - g_g - g_a_sum, to_g, to_a);
  d_i(arg_a) += to_a;
  d_b(arg_a) -= to_a;
  d_b(len - 1) += g_g + to_g + g_a_sum + to_a;
  d_m0 += g_g + to_g;

  // Inputs; the start state's cotangent replaces the end's.
  it.rows_of(it.grad_q, t0, len, dqk) = d_qs * cell.query_scale();
  it.rows_of(it.grad_k, t0, len, dqk) = d_ks * cell.key_scale();
  it.rows_of(it.grad_v, t0, len, dv) = d_v_ext.leftCols(dv);
  gate_gradients_from_cumsum(it, t0, len, ws);
  ws.d_state = g * ws.d_state + ws.d_state_out;
  d_m = d_m0;
}

/// math §4.7(a): the backward of steps [t0, t0+len) of the recurrent form,
/// one step at a time, from the states of the segment recomputed from its
/// boundary state j. In/out as chunk_backward.
template <typename Scalar>
void segment_backward(const MLstmItem<Scalar>& it, Index t0, Index len, Index j,
                      MLstmBuffers<Scalar>& ws, Scalar& d_m) {
  const MLstmCell<Scalar>& cell = it.cell;
  const Index dqk = cell.qk_head_dim(), dv = cell.v_head_dim();
  const Scalar q_scale = cell.query_scale(), k_scale = cell.key_scale(), eps = cell.eps();
  const auto q = it.rows_of(it.tape.q, t0, len, dqk);
  const auto k = it.rows_of(it.tape.k, t0, len, dqk);
  const auto v = it.rows_of(it.tape.v, t0, len, dv);
  const auto igate = it.rows_of(it.tape.igate, t0, len, 1);
  const auto fgate = it.rows_of(it.tape.fgate, t0, len, 1);
  auto C_at = [&](Index t) { return ws.segment_C.middleRows(t * dqk, dqk); };
  // The states before each step and after the last (math §4.3).
  C_at(0) = it.boundary_C(j);
  ws.segment_n.row(0) = it.tape.n.row(it.slot(j));
  ws.segment_m(0) = it.tape.m(it.slot(j));
  for (Index t = 0; t < len; ++t) {
    const Scalar lf = log_sigmoid_of(clamp_gate(fgate(t, 0)));
    const Scalar m_prev = ws.segment_m(t);
    const Scalar m_new = std::max(lf + m_prev, clamp_gate(igate(t, 0)));
    const Scalar f_gate = std::exp(lf + m_prev - m_new);
    const Scalar i_gate = std::exp(clamp_gate(igate(t, 0)) - m_new) * k_scale;
    C_at(t + 1) = f_gate * C_at(t);
    C_at(t + 1).noalias() += (i_gate * k.row(t)).transpose() * v.row(t);
    ws.segment_n.row(t + 1) = f_gate * ws.segment_n.row(t) + i_gate * k.row(t);
    ws.segment_m(t + 1) = m_new;
  }
  auto dC = ws.d_state.leftCols(dv);
  auto dn = ws.d_state.col(dv);
  const auto grad_h = it.rows_of(it.grad_h, t0, len, dv);
  auto grad_q = it.rows_of(it.grad_q, t0, len, dqk);
  auto grad_k = it.rows_of(it.grad_k, t0, len, dqk);
  auto grad_v = it.rows_of(it.grad_v, t0, len, dv);
  auto grad_i = it.rows_of(it.grad_igate, t0, len, 1);
  auto grad_f = it.rows_of(it.grad_fgate, t0, len, 1);
  // Row vectors of one step, in the buffers' first rows.
  auto num = ws.num.row(0).head(dv);
  auto d_num = ws.d_num.row(0).head(dv);
  auto qs = ws.qs.row(0).head(dqk);
  auto ks = ws.ks.row(0).head(dqk);
  auto u = ws.d_qs.row(0).head(dqk);
  for (Index t = len - 1; t >= 0; --t) {
    const auto C0 = C_at(t), C1 = C_at(t + 1);
    const auto n0 = ws.segment_n.row(t), n1 = ws.segment_n.row(t + 1);
    const Scalar m_prev = ws.segment_m(t), m1 = ws.segment_m(t + 1);
    qs = q.row(t) * q_scale;
    ks = k.row(t) * k_scale;
    // h = qs^T C1 / N, N = max(|qs . n1|, exp(-m1)) + eps.
    num.noalias() = qs * C1;
    const Scalar den = qs.dot(n1);
    const Scalar norm = std::max(std::abs(den), std::exp(-m1)) + eps;
    d_num = grad_h.row(t) / norm;
    Scalar d_den, d_m_norm;
    normaliser_backward(den, m1, Scalar(-grad_h.row(t).dot(num) / (norm * norm)), d_den, d_m_norm);
    grad_q.row(t).noalias() = d_num * C1.transpose();
    grad_q.row(t) = (grad_q.row(t) + d_den * n1) * q_scale;
    dC.noalias() += qs.transpose() * d_num;
    dn += d_den * qs.transpose();
    // C1 = f' C0 + i' ks v^T, n1 = f' n0 + i' ks.
    const Scalar lf = log_sigmoid_of(clamp_gate(fgate(t, 0)));
    const Scalar i_pre = clamp_gate(igate(t, 0));
    const Scalar f_gate = std::exp(lf + m_prev - m1), i_gate = std::exp(i_pre - m1);
    u.noalias() = v.row(t) * dC.transpose();
    u += dn.transpose();
    const Scalar g_f = f_gate * (dC.cwiseProduct(C0).sum() + dn.dot(n0.transpose()));
    const Scalar g_i = i_gate * ks.dot(u);
    grad_k.row(t) = (i_gate * k_scale) * u;
    grad_v.row(t).noalias() = (i_gate * ks) * dC;
    // m1 = max(lf + m_prev, i) enters f' and i' with a minus sign.
    Scalar to_a, to_i;
    split_max(lf + m_prev, i_pre, d_m + d_m_norm - g_f - g_i, to_a, to_i);
    const Scalar d_a = g_f + to_a;
    grad_f(t, 0) = d_a * sigmoid_of(-clamp_gate(fgate(t, 0))) * clamp_gate_derivative(fgate(t, 0));
    grad_i(t, 0) = (g_i + to_i) * clamp_gate_derivative(igate(t, 0));
    ws.d_state *= f_gate;
    d_m = d_a;
  }
}

/// Throws unless `tape` holds a recording of a cell of `cell`'s sizes.
template <typename Scalar>
void check_mlstm_tape(const MLstmCell<Scalar>& cell, const MLstmTape<Scalar>& tape) {
  const char* where = "backward (MLstmCell)";
  check(tape.recorded, where,
        ": argument 'tape' holds no recorded forward pass (record one with forward(..., tape); "
        "a recording serves one backward)");
  const Index rows = tape.batch * tape.time, nh = cell.num_heads();
  const Index dqk = cell.qk_head_dim(), dv = cell.v_head_dim();
  check(tape.q.rows() == rows && tape.q.cols() == nh * dqk && tape.v.cols() == nh * dv &&
            tape.igate.cols() == nh && tape.segment > 0 &&
            tape.C.rows() == tape.batch * nh * tape.boundaries * dqk && tape.C.cols() == dv,
        where, ": argument 'tape' was recorded by another cell: expected ", nh, " heads, DHQK ",
        dqk, ", DHV ", dv, ", got q with ", tape.q.cols(), " and v with ", tape.v.cols(),
        " columns");
}

template <typename Scalar>
void check_mlstm_backward_arguments(const MLstmCell<Scalar>& cell, const MLstmTape<Scalar>& tape,
                                    const ConstMatrixRef<Scalar>& grad_h,
                                    const MLstmState<Scalar>& grad_state) {
  const char* where = "backward (MLstmCell)";
  check_mlstm_tape(cell, tape);
  const Index rows = tape.batch * tape.time, nh = cell.num_heads();
  const Index dqk = cell.qk_head_dim(), dv = cell.v_head_dim();
  check(grad_h.rows() == rows && grad_h.cols() == nh * dv, where, ": argument 'grad_h' must be ",
        rows, " x ", nh * dv, " (the forward's (B*T) x (NH*DHV)), got ", grad_h.rows(), " x ",
        grad_h.cols());
  const Index items = tape.batch * nh;
  check(grad_state.C.rows() == items * dqk && grad_state.C.cols() == dv &&
            grad_state.n.rows() == items && grad_state.n.cols() == dqk &&
            grad_state.m.size() == items,
        where, ": argument 'grad_state' must be a state of batch ", tape.batch,
        " (the forward's; make it with initial_state(batch)): C ", items * dqk, " x ", dv, ", n ",
        items, " x ", dqk, ", m ", items, "; got C ", grad_state.C.rows(), " x ",
        grad_state.C.cols(), ", n ", grad_state.n.rows(), " x ", grad_state.n.cols(), ", m ",
        grad_state.m.size());
}

}  // namespace detail

/// The backward pass of `cell` over the forward pass recorded in `tape`
/// (design §7.4, math §4.7), on (B*T)-row matrices like the forward's:
///  - `grad_h`: dL/dh, (B*T) x (NH*DHV) (ignored past a row's length);
///  - `grad_state`: in, dL/d(final state) {C, n, m} (zeros when the loss does
///    not see it); out, dL/d(initial state) (rows of length 0 pass through);
///  - `grad_q` ... `grad_fgate`: out, dL/d(inputs), shaped like the inputs;
///    zero past a row's length.
/// Consumes the tape. Allocates nothing once the tape's buffers and the
/// threads' product buffers have grown (the chunk products are the library's
/// blocked product on each item's thread, core/kernels/blocked_product.hpp).
template <typename Scalar>
void backward(const MLstmCell<Scalar>& cell, MLstmTape<Scalar>& tape,
              const ConstMatrixRef<detail::Same<Scalar>>& grad_h, MLstmState<Scalar>& grad_state,
              MatrixRef<detail::Same<Scalar>> grad_q, MatrixRef<detail::Same<Scalar>> grad_k,
              MatrixRef<detail::Same<Scalar>> grad_v, MatrixRef<detail::Same<Scalar>> grad_igate,
              MatrixRef<detail::Same<Scalar>> grad_fgate) {
  detail::check_mlstm_backward_arguments(cell, tape, grad_h, grad_state);
  const Index batch = tape.batch, time = tape.time, nh = cell.num_heads();
  const Index dqk = cell.qk_head_dim(), dv = cell.v_head_dim(), segment = tape.segment;
  const char* where = "backward (MLstmCell)";
  auto expect = [&](const MatrixRef<Scalar>& x, Index cols, const char* name) {
    check(x.rows() == batch * time && x.cols() == cols, where, ": argument '", name, "' must be ",
          batch * time, " x ", cols, ", got ", x.rows(), " x ", x.cols());
  };
  expect(grad_q, nh * dqk, "grad_q");
  expect(grad_k, nh * dqk, "grad_k");
  expect(grad_v, nh * dv, "grad_v");
  expect(grad_igate, nh, "grad_igate");
  expect(grad_fgate, nh, "grad_fgate");
  tape.recorded = false;
  // One set of buffers per thread, also if the thread count grew since the forward.
  if (tape.buffers.size() < std::size_t(num_threads())) tape.buffers.resize(num_threads());
  const bool parallel = batch * nh > 1 && time * dqk * dv >= (1 << 14);
  parallel_for_indexed(batch * nh, parallel, [&](Index item, int thread) {
    const Index b = item / nh, head = item % nh;
    const Index len = length_of(tape.lengths, b, time);
    const detail::MLstmItem<Scalar> it{cell,   tape,   b,      head,   item,       b * time,
                                       grad_h, grad_q, grad_k, grad_v, grad_igate, grad_fgate};
    // Padding: no gradient; the state's cotangent passes through.
    it.rows_of(grad_q, len, time - len, dqk).setZero();
    it.rows_of(grad_k, len, time - len, dqk).setZero();
    it.rows_of(grad_v, len, time - len, dv).setZero();
    it.rows_of(grad_igate, len, time - len, 1).setZero();
    it.rows_of(grad_fgate, len, time - len, 1).setZero();
    if (len == 0) return;
    auto& ws = tape.buffers[std::size_t(thread)];
    const MLstmForm form = tape.forms[std::size_t(b)];
    detail::reserve_backward(ws, form == MLstmForm::parallel ? len : std::min(segment, len), dqk,
                             dv);
    ws.d_state.leftCols(dv) = grad_state.C_of(b, head);
    ws.d_state.col(dv) = grad_state.n.row(item).transpose();
    Scalar d_m = grad_state.m(item);
    if (form == MLstmForm::parallel) {
      detail::chunk_backward(it, 0, len, 0, /*inter=*/false, ws, d_m);
    } else {
      for (Index j = (len - 1) / segment; j >= 0; --j) {
        const Index t0 = j * segment, chunk = std::min(segment, len - t0);
        if (form == MLstmForm::chunkwise) {
          detail::chunk_backward(it, t0, chunk, j, /*inter=*/true, ws, d_m);
        } else {
          detail::segment_backward(it, t0, chunk, j, ws, d_m);
        }
      }
    }
    grad_state.C_of(b, head) = ws.d_state.leftCols(dv);
    grad_state.n.row(item) = ws.d_state.col(dv).transpose();
    grad_state.m(item) = d_m;
  });
}

/// The same on Sequences (B x T x features); `grads` is resized like the
/// forward's inputs.
template <typename Scalar>
void backward(const MLstmCell<Scalar>& cell, MLstmTape<Scalar>& tape,
              const Sequence<Scalar>& grad_h, MLstmState<Scalar>& grad_state,
              MLstmInputGradients<Scalar>& grads) {
  detail::check_mlstm_tape(cell, tape);
  const Index batch = tape.batch, time = tape.time, nh = cell.num_heads();
  check(grad_h.batch() == batch && grad_h.time() == time &&
            grad_h.features() == nh * cell.v_head_dim(),
        "backward (MLstmCell): argument 'grad_h' must be ", batch, " x ", time, " x ",
        nh * cell.v_head_dim(), " (the forward's batch x time x NH*DHV), got ", grad_h.batch(),
        " x ", grad_h.time(), " x ", grad_h.features());
  grads.q.resize(batch, time, nh * cell.qk_head_dim());
  grads.k.resize(batch, time, nh * cell.qk_head_dim());
  grads.v.resize(batch, time, nh * cell.v_head_dim());
  grads.igate.resize(batch, time, nh);
  grads.fgate.resize(batch, time, nh);
  backward(cell, tape, grad_h.matrix(), grad_state, grads.q.matrix(), grads.k.matrix(),
           grads.v.matrix(), grads.igate.matrix(), grads.fgate.matrix());
}

}  // namespace xlstm
