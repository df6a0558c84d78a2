// The sLSTM cell's pointwise update with exponential gating (math §2.3-2.4)
// over one row's units of one head: from R y, the input x and the bias to the
// gate pre-activations, and from those and the state (y, c, n, m) before the
// step to the state after it (design §7.10).
//
// Written once as Eigen array expressions (any scalar type, any build) and,
// for float with AVX-512, as one pass of packets. The update is bound by the
// arithmetic of its exps, log-sigmoid, tanh and divisions (in a B = 8 step
// half as long as the recurrent product); the pass does less of it and
// overlaps more: one exp where the expressions take two for i' and f' (one
// of them is exp(0)), two packets' chains of dependent operations side by
// side, and x and b added as R y is loaded. The bits are those of the
// expressions wherever those ran in packets (the exps' arguments are the
// same values); where a row's units end in less than a packet, the
// expressions take the rest.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "xlstm/cells/gates.hpp"
#include "xlstm/core/activations.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace detail {

/// One row's units of one head for the functions below: `count` units
/// per gate and state, each run contiguous. Gate g (i, f, z, o) of the
/// workspace and the tape is at raw + g count and taped + g count, of the
/// input and the bias at x + g gate_stride and bias + g gate_stride
/// (gate-major, math §2.2).
template <typename Scalar>
struct SLstmRowUnits {
  /// In: R y. Workspace: the update may overwrite it.
  Scalar* raw;
  const Scalar* x;
  const Scalar* bias;
  Index gate_stride;
  /// Where the pre-activations raw = R y + x + b are recorded (a tape; the
  /// backward recomputes the gates from them, design §7.3), or nullptr.
  Scalar* taped;
  /// The state, updated in place.
  Scalar *y, *c, *n, *m;
  Index count;
};

/// Whether a unit takes the first-step branch of math §2.4 (m = raw_i): the
/// same for every unit (`all_first`), or, with `per_element`, where n == 0.
struct FirstStep {
  bool all_first;
  bool per_element;
};

/// raw = (R y + x) + b over units [first, first + count) of every gate, in
/// the workspace and, when taped, in the tape (math §2.3, in the order of
/// the official sum).
template <typename Scalar>
void slstm_add_input_and_bias(const SLstmRowUnits<Scalar>& u, Index first, Index count) {
  using Units = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
  using ConstUnits = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
  for (Index g = 0; g < 4; ++g) {
    Units raw(u.raw + g * u.count + first, count);
    raw = (raw + ConstUnits(u.x + g * u.gate_stride + first, count)) +
          ConstUnits(u.bias + g * u.gate_stride + first, count);
    if (u.taped) Units(u.taped + g * u.count + first, count) = raw;
  }
}

/// Math §2.4 over units [first, first + count) by array expressions, from
/// the summed pre-activations in the workspace, which it reuses in place:
/// raw_f becomes log f + m, then f'; raw_i becomes i'.
template <typename Scalar>
void slstm_pointwise_arrays(const SLstmRowUnits<Scalar>& u, Index first, Index count,
                            FirstStep rule) {
  using Units = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
  Units raw_i(u.raw + first, count), raw_f(u.raw + u.count + first, count),
      raw_z(u.raw + 2 * u.count + first, count), raw_o(u.raw + 3 * u.count + first, count);
  Units y(u.y + first, count), c(u.c + first, count), n(u.n + first, count), m(u.m + first, count);
  raw_i = clamp_gates(raw_i);
  auto log_f_plus_m = raw_f;
  log_f_plus_m = m + log_sigmoid(clamp_gates(raw_f));
  if (rule.per_element) {
    m = (n == Scalar(0)).select(raw_i, raw_i.max(log_f_plus_m));
  } else if (rule.all_first) {
    m = raw_i;
  } else {
    m = raw_i.max(log_f_plus_m);
  }
  auto i_gate = raw_i, f_gate = raw_f;
  i_gate = (raw_i - m).exp().min(Scalar(1));
  f_gate = (log_f_plus_m - m).exp().min(Scalar(1));
  c = f_gate * c + i_gate * raw_z.tanh();
  n = f_gate * n + i_gate;
  y = sigmoid(raw_o) * c / n;  // no epsilon: n >= 1 after the first step
}

/// Whether float updates take packets (slstm_pointwise_packets): with
/// AVX-512's 32 vector registers. With AVX2's 16 the pass's live values and
/// constants spill, and it measured 10-40 % slower than the expressions'
/// short loops (design §7.10): those builds keep the expressions.
template <typename Scalar>
inline constexpr bool kSLstmPointwisePackets =
    std::is_same_v<Scalar, float> && (simd::kLanes<float> > 1) && simd::kVectorRegisters >= 32;

/// slstm_add_input_and_bias and math §2.4 for float units [0, count)
/// rounded down to whole packets, as the array forms compute them; returns
/// how many units it updated. Everything stays in the registers but the new
/// state and the taped pre-activations.
inline Index slstm_pointwise_packets(const SLstmRowUnits<float>& u, FirstStep rule) {
  using Packet = simd::Packet<float>;
  constexpr Index lanes = simd::kLanes<float>;
  if constexpr (!kSLstmPointwisePackets<float>) {
    (void)u;
    (void)rule;
    return 0;
  } else {
    namespace ei = Eigen::internal;
    const Packet one = ei::pset1<Packet>(1.0f), zero = ei::pset1<Packet>(0.0f);
    const Packet hi = ei::pset1<Packet>(gate_limit<float>()), lo = ei::pnegate(hi);
    const detail::Log1pOfExpOfMinusAbs log1p_of_exp_of_minus_abs;
    auto pre_activation = [&](Index g, Index j) {
      const Packet sum = ei::padd(
          ei::padd(simd::load(u.raw + g * u.count + j), simd::load(u.x + g * u.gate_stride + j)),
          simd::load(u.bias + g * u.gate_stride + j));
      if (u.taped) simd::store(u.taped + g * u.count + j, sum);
      return sum;
    };
    // kWays packets side by side, statement by statement: each packet's
    // chain of dependent operations is long (two exps, a log-sigmoid, a
    // tanh, a division), and interleaved chains let the scheduler overlap
    // them where one chain at a time left it waiting.
    constexpr Index kWays = 2;
    auto update = [&](Index j, auto ways) {
      constexpr Index w = decltype(ways)::value;
      Packet raw_i[w], raw_f[w], raw_z[w], raw_o[w], m_old[w], n_old[w], lfm[w], m[w];
      for (Index k = 0; k < w; ++k) {
        const Index at = j + k * lanes;
        // The gates' clamps (min, then max), as gates.hpp.
        raw_i[k] = ei::pmax(ei::pmin(pre_activation(0, at), hi), lo);
        raw_f[k] = ei::pmax(ei::pmin(pre_activation(1, at), hi), lo);
        raw_z[k] = pre_activation(2, at);
        raw_o[k] = pre_activation(3, at);
        m_old[k] = simd::load(u.m + at);
        n_old[k] = simd::load(u.n + at);
      }
      // log f + m with the log-sigmoid min(x, 0) - log1p(exp(-|x|)) of
      // activations.hpp.
      for (Index k = 0; k < w; ++k) {
        lfm[k] = ei::padd(m_old[k], ei::psub(ei::pmin(raw_f[k], zero),
                                             log1p_of_exp_of_minus_abs.packetOp(raw_f[k])));
      }
      for (Index k = 0; k < w; ++k) {
        m[k] = ei::pmax(raw_i[k], lfm[k]);
        if (rule.per_element) {
          m[k] = ei::pselect(ei::pcmp_eq(n_old[k], zero), raw_i[k], m[k]);
        } else if (rule.all_first) {
          m[k] = raw_i[k];
        }
      }
      Packet i_gate[w], f_gate[w], tanh_z[w], exp_minus_o[w];
      // One of i', f' is exp(0) = 1 (m is raw_i or log f + m); the other is
      // exp(-|raw_i - (log f + m)|), the same argument as exp(i - m) or
      // exp(log f + m - m) and the same value: one exp instead of two.
      // f' = 1 where log f + m > raw_i (on the first step too, where the
      // min(., 1) clamps it), else the exp, which also carries a NaN of
      // either operand. i' = 1 where m = raw_i: on the first step, and where
      // log f + m does not exceed raw_i.
      for (Index k = 0; k < w; ++k) {
        const Packet e = ei::pexp(ei::pnegate(ei::pabs(ei::psub(raw_i[k], lfm[k]))));
        const Packet f_above = ei::pcmp_lt(raw_i[k], lfm[k]);
        f_gate[k] = ei::pselect(f_above, one, e);
        if (rule.per_element) {
          i_gate[k] = ei::pselect(ei::pandnot(f_above, ei::pcmp_eq(n_old[k], zero)), e, one);
        } else if (rule.all_first) {
          i_gate[k] = one;
        } else {
          i_gate[k] = ei::pselect(f_above, e, one);
        }
      }
      for (Index k = 0; k < w; ++k) tanh_z[k] = ei::ptanh(raw_z[k]);
      for (Index k = 0; k < w; ++k) exp_minus_o[k] = ei::pexp(ei::pnegate(raw_o[k]));
      for (Index k = 0; k < w; ++k) {
        const Index at = j + k * lanes;
        const Packet c =
            ei::padd(ei::pmul(f_gate[k], simd::load(u.c + at)), ei::pmul(i_gate[k], tanh_z[k]));
        const Packet n = ei::padd(ei::pmul(f_gate[k], n_old[k]), i_gate[k]);
        // y = sigmoid(o) c / n, sigmoid(o) = 1 / (1 + exp(-o)) (activations.hpp).
        const Packet o = ei::pdiv(one, ei::padd(one, exp_minus_o[k]));
        simd::store(u.y + at, ei::pdiv(ei::pmul(o, c), n));
        simd::store(u.c + at, c);
        simd::store(u.n + at, n);
        simd::store(u.m + at, m[k]);
      }
    };
    const Index body = u.count / lanes * lanes;
    Index j = 0;
    for (; j + kWays * lanes <= body; j += kWays * lanes) {
      update(j, std::integral_constant<Index, kWays>());
    }
    for (; j < body; j += lanes) update(j, std::integral_constant<Index, 1>());
    return body;
  }
}

/// raw = R y + x + b and math §2.4 over a row's units of one head: whole
/// packets in one pass (kSLstmPointwisePackets), the rest by array
/// expressions. Builds without the packets add x and b to a whole block of
/// rows at once and take slstm_pointwise_arrays (SLstmCell::step_head).
template <typename Scalar>
void slstm_sum_and_update(const SLstmRowUnits<Scalar>& u, FirstStep rule) {
  Index done = 0;
  if constexpr (kSLstmPointwisePackets<Scalar>) done = slstm_pointwise_packets(u, rule);
  if (done < u.count) {
    slstm_add_input_and_bias(u, done, u.count - done);
    slstm_pointwise_arrays(u, done, u.count - done, rule);
  }
}

}  // namespace detail
}  // namespace xlstm
