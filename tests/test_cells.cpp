// Property tests of the sLSTM cell (math §2) and the mLSTM cell (math §4).
//
// The golden tests pin the cells to the reference on a few fixed cases; these
// tests check the relations that must hold on any input: the mLSTM forms agree
// (§4.4, §4.5), a sequence can be split anywhere, states convert between the
// conventions, copies are independent, rows can be reset independently,
// extreme and NaN inputs behave as documented, and bad arguments throw.
//
// Tolerances. A comparison "close(a, ref, tol)" means
//     max_i |a_i - ref_i| <= tol * max(1, max_i |ref_i|)      (outputs, m)
// or, for the memory C and normaliser n, relative to max_i |ref_i| alone:
// those are stabilised quantities (scaled by exp(-m)) of arbitrary magnitude.
// The values of `tol` are in Tol<> below, with their derivation.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"

#include "test_util.hpp"

namespace {

using test_util::AllFinite;
using test_util::BitIdentical;
using test_util::Close;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using test_util::time_slice;
using xlstm::FirstStepRule;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::MLstmCell;
using xlstm::MLstmCellConfig;
using xlstm::MLstmForm;
using xlstm::MLstmState;
using xlstm::MLstmStateConvention;
using xlstm::Sequence;
using xlstm::SLstmCell;
using xlstm::SLstmCellConfig;
using xlstm::SLstmFunction;
using xlstm::SLstmState;
using xlstm::SLstmTrace;
using xlstm::Vector;

using Scalars = ::testing::Types<float, double>;

// ---------------------------------------------------------------------------
// Tolerances
// ---------------------------------------------------------------------------

// Rounding tolerance for two computations of the same function in different
// orders (chunkwise vs recurrent, split vs whole sequence, two conventions).
//
// Each output is a ratio of two sums of at most T_eff terms, where T_eff ~ 20
// is the memory length of forget gates ~ N(3, 1.5) (log f ~ -0.05 per step).
// Every term carries a few roundings (exp, products, the scale). The absolute
// error of a sum is about u * (number of terms) * (largest term), and the
// terms are at most of the output's scale, so the error bound is roughly
// 4 * T_eff * u ~ 80 u relative to max(1, |h|): 5e-6 in float (u = 6e-8),
// 1.8e-14 in double (u = 1.1e-16). The largest errors measured on these
// tests are 2.7e-6 (float, T = 100000) and 2e-15 (double) relative to that
// scale. Allowed: float 2e-5 (4x the estimate; math §10 asks atol 1e-5
// between forms for h of order 1, and h here reaches 20 to 80), double 1e-12
// (math §10: "all three forms agree to ~1e-12" in float64; 50x the estimate,
// room for other compilers, FMA contraction and vectorisation orders).
template <typename S>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double rounding = 2e-5;
};
template <>
struct Tol<double> {
  static constexpr double rounding = 1e-12;
};

// ---------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------

template <typename D>
bool any_nan(const Eigen::DenseBase<D>& x) {
  return x.derived().array().isNaN().any();
}

// ---------------------------------------------------------------------------
// Sequence helpers
// ---------------------------------------------------------------------------

// Batch row b only, as a batch of one.
template <typename S>
Sequence<S> batch_row(const Sequence<S>& s, Index b) {
  Sequence<S> out(1, s.time(), s.features());
  out.rows_of(0) = s.rows_of(b);
  return out;
}

// The B x D matrix of time step t, as a strided view (rows t, T + t, ...).
template <typename S>
using ConstStepView = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using StepView = Eigen::Map<Matrix<S>, 0, Eigen::OuterStride<>>;

template <typename S>
ConstStepView<S> at_time(const Sequence<S>& s, Index t) {
  return ConstStepView<S>(s.matrix().data() + t * s.features(), s.batch(), s.features(),
                          Eigen::OuterStride<>(s.time() * s.features()));
}
template <typename S>
StepView<S> at_time(Sequence<S>& s, Index t) {
  return StepView<S>(s.matrix().data() + t * s.features(), s.batch(), s.features(),
                     Eigen::OuterStride<>(s.time() * s.features()));
}

// ---------------------------------------------------------------------------
// mLSTM helpers
// ---------------------------------------------------------------------------

constexpr auto kScaled = MLstmStateConvention::scaled_keys;
constexpr auto kUnscaled = MLstmStateConvention::unscaled_keys;

const char* name_of(MLstmForm form) {
  switch (form) {
    case MLstmForm::automatic:
      return "automatic";
    case MLstmForm::parallel:
      return "parallel";
    case MLstmForm::chunkwise:
      return "chunkwise";
    default:
      return "recurrent";
  }
}
const char* name_of(MLstmStateConvention c) {
  return c == kScaled ? "scaled_keys" : "unscaled_keys";
}

MLstmCellConfig mlstm_config(Index num_heads, Index qk_head_dim, Index v_head_dim,
                             MLstmStateConvention convention = kScaled, Index chunk_size = 16) {
  MLstmCellConfig c;
  c.num_heads = num_heads;
  c.qk_head_dim = qk_head_dim;
  c.v_head_dim = v_head_dim;
  c.convention = convention;
  c.chunk_size = chunk_size;
  return c;
}

template <typename S>
struct MLstmInputs {
  Sequence<S> q, k, v, igate, fgate;

  Index batch() const { return q.batch(); }
  Index time() const { return q.time(); }

  MLstmInputs slice(Index t0, Index len) const {
    return {time_slice(q, t0, len), time_slice(k, t0, len), time_slice(v, t0, len),
            time_slice(igate, t0, len), time_slice(fgate, t0, len)};
  }
  MLstmInputs row(Index b) const {
    return {batch_row(q, b), batch_row(k, b), batch_row(v, b), batch_row(igate, b),
            batch_row(fgate, b)};
  }
};

// q, k, v ~ N(0, 1); input gates ~ N(0, 1); forget gates ~ N(3, 1.5) as in the
// official mLSTM kernel tests (forget gates mostly near 1, memory ~20 steps).
template <typename S>
MLstmInputs<S> random_mlstm_inputs(const MLstmCellConfig& c, Index batch, Index time,
                                   std::mt19937& rng) {
  const Index nh = c.num_heads;
  MLstmInputs<S> in;
  in.q = random_sequence<S>(batch, time, nh * c.qk_head_dim, rng);
  in.k = random_sequence<S>(batch, time, nh * c.qk_head_dim, rng);
  in.v = random_sequence<S>(batch, time, nh * c.v_head_dim, rng);
  in.igate = random_sequence<S>(batch, time, nh, rng, 0.0, 1.0);
  in.fgate = random_sequence<S>(batch, time, nh, rng, 3.0, 1.5);
  return in;
}

template <typename S>
Sequence<S> run_forward(const MLstmCell<S>& cell, const MLstmInputs<S>& in, MLstmState<S>& state,
                        MLstmForm form) {
  Sequence<S> h;
  cell.forward(in.q, in.k, in.v, in.igate, in.fgate, state, h, form);
  return h;
}

// The sequence through MLstmCell::step, one time step at a time.
template <typename S>
Sequence<S> run_steps(const MLstmCell<S>& cell, const MLstmInputs<S>& in, MLstmState<S>& state) {
  Sequence<S> h(in.batch(), in.time(), cell.num_heads() * cell.v_head_dim());
  for (Index t = 0; t < in.time(); ++t) {
    auto h_t = at_time(h, t);
    cell.step(at_time(in.q, t), at_time(in.k, t), at_time(in.v, t), at_time(in.igate, t),
              at_time(in.fgate, t), state, h_t);
  }
  return h;
}

template <typename S>
::testing::AssertionResult StatesClose(const MLstmState<S>& a, const MLstmState<S>& ref,
                                       double tol) {
  if (a.convention != ref.convention) return ::testing::AssertionFailure() << "convention";
  auto r = Close(a.C, ref.C, tol, 0.0);
  if (!r) return r << " [C]";
  r = Close(a.n, ref.n, tol, 0.0);
  if (!r) return r << " [n]";
  r = Close(a.m, ref.m, tol);
  if (!r) return r << " [m]";
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult StatesIdentical(const MLstmState<S>& a, const MLstmState<S>& b) {
  auto r = BitIdentical(a.C, b.C);
  if (!r) return r << " [C]";
  r = BitIdentical(a.n, b.n);
  if (!r) return r << " [n]";
  r = BitIdentical(a.m, b.m);
  if (!r) return r << " [m]";
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult StateFinite(const MLstmState<S>& s) {
  auto r = AllFinite(s.C);
  if (!r) return r << " [C]";
  r = AllFinite(s.n);
  if (!r) return r << " [n]";
  r = AllFinite(s.m);
  if (!r) return r << " [m]";
  return ::testing::AssertionSuccess();
}

// The rows of state `s` that belong to batch row b, as a one-row state.
template <typename S>
MLstmState<S> state_row(const MLstmState<S>& s, Index b) {
  MLstmState<S> out(1, s.num_heads, s.qk_head_dim, s.v_head_dim, s.convention);
  out.C = s.C.middleRows(b * s.num_heads * s.qk_head_dim, s.num_heads * s.qk_head_dim);
  out.n = s.n.middleRows(b * s.num_heads, s.num_heads);
  out.m = s.m.segment(b * s.num_heads, s.num_heads);
  return out;
}

// math §4.5: the parallel form differs from the recurrent one only through
// eps * exp(m). Writing h = num / (max(|den|, 1) + eps exp(m)) (unstabilised),
//   |h_par - h_rec| = |num| eps |exp(m_rec) - exp(m_par)| / (D_par D_rec)
//                   <= |h_rec| * eps * |exp(m_rec) - exp(m_par)| / D_par,
// with D_* = max(|den|, 1) + eps exp(m_*) >= 1. The two m differ only when
// m_rec = b_t > m_par, and b_t <= 0, so |exp(m_rec) - exp(m_par)| <= 1:
//   |h_par - h_rec| <= eps * |h_rec|  per element, plus rounding.
template <typename A, typename B>
::testing::AssertionResult WithinEpsBound(const Eigen::DenseBase<A>& h_par,
                                          const Eigen::DenseBase<B>& h_rec, double eps,
                                          double rounding) {
  double scale = 1.0;
  for (Index i = 0; i < h_rec.rows(); ++i) {
    for (Index j = 0; j < h_rec.cols(); ++j) {
      scale = std::max(scale, std::abs(double(h_rec(i, j))));
    }
  }
  for (Index i = 0; i < h_rec.rows(); ++i) {
    for (Index j = 0; j < h_rec.cols(); ++j) {
      const double d = std::abs(double(h_par(i, j)) - double(h_rec(i, j)));
      const double bound = eps * std::abs(double(h_rec(i, j))) + rounding * scale;
      if (!(d <= bound)) {
        return ::testing::AssertionFailure() << "at (" << i << ", " << j << "): |diff| " << d
                                             << " > eps*|h| + rounding = " << bound;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// max_i |h_par - h_rec| / (eps |h_rec|) over the elements with |h_rec| >= 0.1:
// how much of the eps bound the difference uses.
template <typename A, typename B>
double largest_eps_ratio(const Eigen::DenseBase<A>& h_par, const Eigen::DenseBase<B>& h_rec,
                         double eps) {
  double ratio = 0;
  for (Index i = 0; i < h_rec.rows(); ++i) {
    for (Index j = 0; j < h_rec.cols(); ++j) {
      const double ref = std::abs(double(h_rec(i, j)));
      if (ref < 0.1) continue;
      ratio = std::max(ratio, std::abs(double(h_par(i, j)) - double(h_rec(i, j))) / (eps * ref));
    }
  }
  return ratio;
}

template <typename S>
class MLstmCellTest : public ::testing::Test {};
TYPED_TEST_SUITE(MLstmCellTest, Scalars);

// ---------------------------------------------------------------------------
// mLSTM: the forms agree
// ---------------------------------------------------------------------------

// math §4.4: chunkwise and recurrent use the same stabiliser at every step, so
// they agree including the eps term, for any chunk size and any T (T = 45 is
// no multiple of 7, 16 or 64; 64 > T makes one short chunk; 1 degenerates to
// recurrent). DHQK != DHV catches any mix-up of the two head sizes.
TYPED_TEST(MLstmCellTest, ChunkwiseEqualsRecurrentForAnyChunkSizeInBothConventions) {
  using S = TypeParam;
  const Index B = 2, T = 45, NH = 2, DQK = 8, DV = 12;
  for (const auto convention : {kScaled, kUnscaled}) {
    SCOPED_TRACE(name_of(convention));
    std::mt19937 rng(101);
    const auto in = random_mlstm_inputs<S>(mlstm_config(NH, DQK, DV), B, T, rng);
    const MLstmCell<S> recurrent(mlstm_config(NH, DQK, DV, convention));
    auto ref_state = recurrent.initial_state(B);
    const auto h_ref = run_forward(recurrent, in, ref_state, MLstmForm::recurrent);
    ASSERT_TRUE(AllFinite(h_ref.matrix()));
    for (const Index chunk : {Index(1), Index(7), Index(16), Index(64), T}) {
      SCOPED_TRACE("chunk_size " + std::to_string(chunk));
      const MLstmCell<S> cell(mlstm_config(NH, DQK, DV, convention, chunk));
      auto state = cell.initial_state(B);
      const auto h = run_forward(cell, in, state, MLstmForm::chunkwise);
      EXPECT_TRUE(Close(h.matrix(), h_ref.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(StatesClose(state, ref_state, Tol<S>::rounding));
    }
  }
}

// The recurrent form of forward is the step function applied T times.
TYPED_TEST(MLstmCellTest, RecurrentForwardEqualsStepLoop) {
  using S = TypeParam;
  std::mt19937 rng(102);
  const auto cfg = mlstm_config(2, 8, 12);
  const auto in = random_mlstm_inputs<S>(cfg, 2, 30, rng);
  const MLstmCell<S> cell(cfg);
  auto a = cell.initial_state(2);
  auto b = cell.initial_state(2);
  const auto h_forward = run_forward(cell, in, a, MLstmForm::recurrent);
  const auto h_steps = run_steps(cell, in, b);
  EXPECT_TRUE(Close(h_forward.matrix(), h_steps.matrix(), Tol<S>::rounding));
  EXPECT_TRUE(StatesClose(a, b, Tol<S>::rounding));
}

// Prefill with any form, then generate with step: same as stepping from the
// start (math §4.6). The prefix length 29 is no multiple of the chunk size 16.
TYPED_TEST(MLstmCellTest, ForwardOnAPrefixThenStepEqualsSteppingAllTheWay) {
  using S = TypeParam;
  const Index B = 2, T = 45, prefix = 29;
  for (const auto convention : {kScaled, kUnscaled}) {
    SCOPED_TRACE(name_of(convention));
    std::mt19937 rng(103);
    const auto cfg = mlstm_config(2, 8, 12, convention, 16);
    const auto in = random_mlstm_inputs<S>(cfg, B, T, rng);
    const MLstmCell<S> cell(cfg);
    auto all_state = cell.initial_state(B);
    const auto h_all = run_steps(cell, in, all_state);
    const auto head = in.slice(0, prefix), tail = in.slice(prefix, T - prefix);
    const auto h_all_head = time_slice(h_all, 0, prefix),
               h_all_tail = time_slice(h_all, prefix, T - prefix);
    for (const auto form :
         {MLstmForm::chunkwise, MLstmForm::recurrent, MLstmForm::parallel, MLstmForm::automatic}) {
      SCOPED_TRACE(name_of(form));
      auto state = cell.initial_state(B);
      const auto h_head = run_forward(cell, head, state, form);
      if (form == MLstmForm::parallel || form == MLstmForm::automatic) {
        // From the zero state `automatic` is the parallel form (T <= 256).
        EXPECT_TRUE(
            WithinEpsBound(h_head.matrix(), h_all_head.matrix(), cfg.eps, Tol<S>::rounding));
      } else {
        EXPECT_TRUE(Close(h_head.matrix(), h_all_head.matrix(), Tol<S>::rounding));
      }
      // The state after the prefix does not depend on the form (the parallel
      // form computes it with the chunkwise inter-chunk recurrence).
      const auto h_tail = run_steps(cell, tail, state);
      EXPECT_TRUE(Close(h_tail.matrix(), h_all_tail.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(StatesClose(state, all_state, Tol<S>::rounding));
    }
  }
}

// math §4.4: "Initial state (C_0, n_0, m_0) is given, or zeros". Starting the
// chunkwise form from a state in the middle of a sequence continues exactly
// like the recurrence.
TYPED_TEST(MLstmCellTest, ChunkwiseFromANonZeroStateEqualsTheRecurrentContinuation) {
  using S = TypeParam;
  const Index B = 2, T1 = 20, T2 = 37;
  for (const auto convention : {kScaled, kUnscaled}) {
    SCOPED_TRACE(name_of(convention));
    std::mt19937 rng(104);
    const auto cfg = mlstm_config(2, 8, 12, convention);
    const auto first = random_mlstm_inputs<S>(cfg, B, T1, rng);
    const auto rest = random_mlstm_inputs<S>(cfg, B, T2, rng);
    const MLstmCell<S> recurrent(cfg);
    auto start = recurrent.initial_state(B);
    run_forward(recurrent, first, start, MLstmForm::recurrent);
    ASSERT_FALSE(start.is_zero());
    auto ref_state = start;
    const auto h_ref = run_forward(recurrent, rest, ref_state, MLstmForm::recurrent);
    for (const Index chunk : {Index(1), Index(7), Index(16), Index(64)}) {
      SCOPED_TRACE("chunk_size " + std::to_string(chunk));
      auto chunk_cfg = cfg;
      chunk_cfg.chunk_size = chunk;
      const MLstmCell<S> cell(chunk_cfg);
      auto state = start;
      const auto h = run_forward(cell, rest, state, MLstmForm::chunkwise);
      EXPECT_TRUE(Close(h.matrix(), h_ref.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(StatesClose(state, ref_state, Tol<S>::rounding));
    }
  }
}

// math §4.5: parallel and recurrent differ only through eps * exp(m), by at
// most eps * |h| per element (bound derived at WithinEpsBound). With eps = 0
// the forms compute the same function and agree to rounding; with eps = 1e-2
// the difference is visible, and must still respect the bound.
TYPED_TEST(MLstmCellTest, ParallelMatchesRecurrentWithinTheEpsBound) {
  using S = TypeParam;
  const Index B = 2, T = 45;
  for (const double eps : {1e-6, 1e-2, 0.0}) {
    SCOPED_TRACE("eps " + std::to_string(eps));
    std::mt19937 rng(105);
    auto cfg = mlstm_config(2, 8, 12);
    cfg.eps = eps;
    const auto in = random_mlstm_inputs<S>(cfg, B, T, rng);
    const MLstmCell<S> cell(cfg);
    auto par_state = cell.initial_state(B);
    auto rec_state = cell.initial_state(B);
    const auto h_par = run_forward(cell, in, par_state, MLstmForm::parallel);
    const auto h_rec = run_forward(cell, in, rec_state, MLstmForm::recurrent);
    EXPECT_TRUE(WithinEpsBound(h_par.matrix(), h_rec.matrix(), eps, Tol<S>::rounding));
    if (eps == 0.0) {
      EXPECT_TRUE(Close(h_par.matrix(), h_rec.matrix(), Tol<S>::rounding));
    }
    if (eps == 1e-2) {
      // The forms really differ here, and by an amount of the order of the
      // bound (else the bound above tests nothing): early steps with a
      // negative input gate have m_rec = b_t > m_par.
      EXPECT_GT(largest_eps_ratio(h_par.matrix(), h_rec.matrix(), eps), 0.1);
    }
    EXPECT_TRUE(StatesClose(par_state, rec_state, Tol<S>::rounding));
  }
}

TYPED_TEST(MLstmCellTest, ParallelFormFromANonZeroStateThrows) {
  using S = TypeParam;
  std::mt19937 rng(106);
  const auto cfg = mlstm_config(2, 8, 12);
  const auto in = random_mlstm_inputs<S>(cfg, 2, 10, rng);
  const MLstmCell<S> cell(cfg);
  auto state = cell.initial_state(2);
  run_forward(cell, in, state, MLstmForm::recurrent);
  const auto before = state;
  EXPECT_TRUE(ThrowsMentioning([&] { run_forward(cell, in, state, MLstmForm::parallel); },
                               "parallel form starts from the zero state"));
  EXPECT_TRUE(StatesIdentical(state, before));  // the failed call left the state alone
}

// `automatic` picks parallel from a zero state up to parallel_max_length and
// chunkwise otherwise (longer sequences, or any non-zero state).
TYPED_TEST(MLstmCellTest, AutomaticFormIsParallelFromZeroForShortSequencesElseChunkwise) {
  using S = TypeParam;
  std::mt19937 rng(107);
  auto cfg = mlstm_config(2, 8, 12);
  cfg.parallel_max_length = 20;
  const MLstmCell<S> cell(cfg);
  const auto short_in = random_mlstm_inputs<S>(cfg, 2, 20, rng);
  const auto long_in = random_mlstm_inputs<S>(cfg, 2, 21, rng);
  auto run = [&](const MLstmInputs<S>& in, const MLstmState<S>& start, MLstmForm form) {
    auto state = start;
    return run_forward(cell, in, state, form);
  };
  const auto zero = cell.initial_state(2);
  EXPECT_TRUE(BitIdentical(run(short_in, zero, MLstmForm::automatic).matrix(),
                           run(short_in, zero, MLstmForm::parallel).matrix()));
  EXPECT_TRUE(BitIdentical(run(long_in, zero, MLstmForm::automatic).matrix(),
                           run(long_in, zero, MLstmForm::chunkwise).matrix()));
  auto started = zero;
  run_forward(cell, short_in, started, MLstmForm::recurrent);
  EXPECT_TRUE(BitIdentical(run(short_in, started, MLstmForm::automatic).matrix(),
                           run(short_in, started, MLstmForm::chunkwise).matrix()));
}

// ---------------------------------------------------------------------------
// mLSTM: state conventions
// ---------------------------------------------------------------------------

// math §4: the outputs do not depend on the convention; C_K = sqrt(DHQK) C_X,
// n_K = sqrt(DHQK) n_X, m_K = m_X.
TYPED_TEST(MLstmCellTest, BothConventionsGiveTheSameOutputsAndStatesDifferBySqrtDqk) {
  using S = TypeParam;
  const Index B = 2, T = 45, DQK = 8;
  std::mt19937 rng(108);
  const auto in = random_mlstm_inputs<S>(mlstm_config(2, DQK, 12), B, T, rng);
  const MLstmCell<S> scaled(mlstm_config(2, DQK, 12, kScaled));
  const MLstmCell<S> unscaled(mlstm_config(2, DQK, 12, kUnscaled));
  const S root = std::sqrt(S(DQK));
  for (const auto form : {MLstmForm::recurrent, MLstmForm::chunkwise, MLstmForm::parallel}) {
    SCOPED_TRACE(name_of(form));
    auto xs = scaled.initial_state(B);
    auto ks = unscaled.initial_state(B);
    const auto h_x = run_forward(scaled, in, xs, form);
    const auto h_k = run_forward(unscaled, in, ks, form);
    EXPECT_TRUE(Close(h_k.matrix(), h_x.matrix(), Tol<S>::rounding));
    EXPECT_EQ(ks.convention, kUnscaled);
    EXPECT_TRUE(Close(ks.C, Matrix<S>(xs.C * root), Tol<S>::rounding, 0.0));
    EXPECT_TRUE(Close(ks.n, Matrix<S>(xs.n * root), Tol<S>::rounding, 0.0));
    EXPECT_TRUE(Close(ks.m, xs.m, Tol<S>::rounding));
  }
}

// convert_to rescales C and n by sqrt(DHQK), keeps m, and the converted state
// continues in a cell of the other convention like the original would have.
TYPED_TEST(MLstmCellTest, ConvertedStateContinuesInACellOfTheOtherConvention) {
  using S = TypeParam;
  const Index B = 2, DQK = 8;
  std::mt19937 rng(109);
  const auto cfg = mlstm_config(2, DQK, 12);
  const auto first = random_mlstm_inputs<S>(cfg, B, 25, rng);
  const auto rest = random_mlstm_inputs<S>(cfg, B, 20, rng);
  const MLstmCell<S> scaled(mlstm_config(2, DQK, 12, kScaled));
  const MLstmCell<S> unscaled(mlstm_config(2, DQK, 12, kUnscaled));

  auto x_state = scaled.initial_state(B);
  run_forward(scaled, first, x_state, MLstmForm::chunkwise);
  auto k_state = x_state;
  k_state.convert_to(kUnscaled);
  EXPECT_EQ(k_state.convention, kUnscaled);
  const S root = std::sqrt(S(DQK));
  EXPECT_TRUE(Close(k_state.C, Matrix<S>(x_state.C * root), Tol<S>::rounding, 0.0));
  EXPECT_TRUE(Close(k_state.n, Matrix<S>(x_state.n * root), Tol<S>::rounding, 0.0));
  EXPECT_TRUE(BitIdentical(k_state.m, x_state.m));

  // A state of the wrong convention is rejected, not silently misread.
  auto wrong = x_state;
  EXPECT_TRUE(ThrowsMentioning([&] { run_forward(unscaled, rest, wrong, MLstmForm::chunkwise); },
                               "'state'"));

  auto x_cont = x_state, k_cont = k_state;
  const auto h_x = run_steps(scaled, rest, x_cont);
  const auto h_k = run_steps(unscaled, rest, k_cont);
  EXPECT_TRUE(Close(h_k.matrix(), h_x.matrix(), Tol<S>::rounding));
  k_cont.convert_to(kScaled);
  EXPECT_TRUE(StatesClose(k_cont, x_cont, Tol<S>::rounding));

  // Round trip; converting to the current convention is a no-op.
  auto back = k_state;
  back.convert_to(kScaled);
  EXPECT_TRUE(StatesClose(back, x_state, Tol<S>::rounding));
  auto same = x_state;
  same.convert_to(kScaled);
  EXPECT_TRUE(StatesIdentical(same, x_state));
}

// ---------------------------------------------------------------------------
// mLSTM: extreme and NaN inputs
// ---------------------------------------------------------------------------

// Gate pre-activations of ±1e4 and ±inf (clamped to ±1e30, gates.hpp) give
// finite outputs and states in every form: +inf input gate = "this step
// dominates", -inf forget gate = "forget everything", and so on.
TYPED_TEST(MLstmCellTest, ExtremeGatePreactivationsGiveFiniteOutputsInEveryForm) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  const std::vector<S> extremes = {S(1e4), S(-1e4), inf, -inf};
  const Index B = 2, T = 40;
  const auto cfg = mlstm_config(2, 8, 12, kScaled, 16);
  const MLstmCell<S> cell(cfg);
  std::mt19937 rng(110);
  const auto base = random_mlstm_inputs<S>(cfg, B, T, rng);

  // Cases: each extreme value in every step of one gate (other gate normal),
  // and a random mixture in both gates.
  std::vector<std::pair<std::string, MLstmInputs<S>>> cases;
  for (const S x : extremes) {
    std::ostringstream name;
    name << x;
    auto in = base;
    in.igate.matrix().setConstant(x);
    cases.emplace_back("igate = " + name.str(), in);
    in = base;
    in.fgate.matrix().setConstant(x);
    cases.emplace_back("fgate = " + name.str(), in);
  }
  auto mixed = base;
  std::uniform_int_distribution<int> pick(0, 5);  // 4 extremes + 2 chances to stay normal
  for (Sequence<S>* gate : {&mixed.igate, &mixed.fgate}) {
    for (Index i = 0; i < gate->matrix().size(); ++i) {
      const int p = pick(rng);
      if (p < 4) gate->matrix().data()[i] = extremes[std::size_t(p)];
    }
  }
  cases.emplace_back("mixed", mixed);

  for (const auto& [name, in] : cases) {
    SCOPED_TRACE(name);
    for (const auto form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
      SCOPED_TRACE(name_of(form));
      auto state = cell.initial_state(B);
      const auto h = run_forward(cell, in, state, form);
      EXPECT_TRUE(AllFinite(h.matrix()));
      EXPECT_TRUE(StateFinite(state));
      // ... and again from the state the extreme inputs left behind.
      const auto h2 =
          run_forward(cell, in, state, form == MLstmForm::parallel ? MLstmForm::chunkwise : form);
      EXPECT_TRUE(AllFinite(h2.matrix()));
      EXPECT_TRUE(StateFinite(state));
    }
    auto state = cell.initial_state(B);
    EXPECT_TRUE(AllFinite(run_steps(cell, in, state).matrix()));
    EXPECT_TRUE(StateFinite(state));
  }
}

// Documented behaviour: the batch rows are independent, so NaN in the inputs
// of one row reaches that row's outputs and state only. The other row is bit
// for bit what it would be without the NaN.
TYPED_TEST(MLstmCellTest, NaNInOneBatchRowStaysInThatRow) {
  using S = TypeParam;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const Index B = 2, T = 40;
  const auto cfg = mlstm_config(2, 8, 12, kScaled, 16);
  const MLstmCell<S> cell(cfg);
  std::mt19937 rng(111);
  const auto clean = random_mlstm_inputs<S>(cfg, B, T, rng);
  auto dirty = clean;
  dirty.q(0, 10, 3) = nan;      // row 0 only: one query element at t = 10
  dirty.igate(0, 25, 1) = nan;  // and one input gate at t = 25
  const Index hv = cfg.num_heads * cfg.v_head_dim;
  auto check = [&](const Sequence<S>& h_clean, const MLstmState<S>& s_clean,
                   const Sequence<S>& h_dirty, const MLstmState<S>& s_dirty) {
    EXPECT_TRUE(BitIdentical(h_dirty.rows_of(1), h_clean.rows_of(1)));
    EXPECT_TRUE(StatesIdentical(state_row(s_dirty, 1), state_row(s_clean, 1)));
    // Row 0 does see the NaN: h at t = 10, and everything of head 1 after t = 25.
    EXPECT_TRUE(any_nan(h_dirty.at(0, 10)));
    EXPECT_TRUE(any_nan(h_dirty.at(0, T - 1).segment(hv / 2, hv / 2)));
    EXPECT_TRUE(any_nan(state_row(s_dirty, 0).C));
  };
  for (const auto form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(name_of(form));
    auto s_clean = cell.initial_state(B), s_dirty = cell.initial_state(B);
    const auto h_clean = run_forward(cell, clean, s_clean, form);
    const auto h_dirty = run_forward(cell, dirty, s_dirty, form);
    check(h_clean, s_clean, h_dirty, s_dirty);
  }
  SCOPED_TRACE("step");
  auto s_clean = cell.initial_state(B), s_dirty = cell.initial_state(B);
  const auto h_clean = run_steps(cell, clean, s_clean);
  const auto h_dirty = run_steps(cell, dirty, s_dirty);
  check(h_clean, s_clean, h_dirty, s_dirty);
}

// ---------------------------------------------------------------------------
// mLSTM: copies and resets
// ---------------------------------------------------------------------------

// A state is a value: a copy continued with other inputs leaves the original
// untouched, and the original then continues as if no copy had been made.
TYPED_TEST(MLstmCellTest, CopiedStateEvolvesIndependently) {
  using S = TypeParam;
  const Index B = 2;
  std::mt19937 rng(112);
  const auto cfg = mlstm_config(2, 8, 12);
  const MLstmCell<S> cell(cfg);
  const auto first = random_mlstm_inputs<S>(cfg, B, 15, rng);
  const auto rest = random_mlstm_inputs<S>(cfg, B, 10, rng);
  const auto other = random_mlstm_inputs<S>(cfg, B, 10, rng);

  auto reference = cell.initial_state(B);
  run_steps(cell, first, reference);
  const auto h_reference = run_steps(cell, rest, reference);

  auto original = cell.initial_state(B);
  run_steps(cell, first, original);
  const auto snapshot = original;
  auto copy = original;
  const auto h_copy = run_steps(cell, other, copy);
  run_forward(cell, other, copy, MLstmForm::chunkwise);
  EXPECT_TRUE(StatesIdentical(original, snapshot));
  EXPECT_FALSE(StatesIdentical(copy, original));
  const auto h_original = run_steps(cell, rest, original);
  EXPECT_TRUE(BitIdentical(h_original.matrix(), h_reference.matrix()));
  EXPECT_TRUE(StatesIdentical(original, reference));
  EXPECT_FALSE(Close(h_copy.matrix(), h_original.matrix(), 1e-3));
}

// reset_row(b) zeroes that row's (C, n, m): the row then runs as if it started
// from zero, while every other row continues bit for bit unchanged.
TYPED_TEST(MLstmCellTest, ResetRowRestartsThatRowAndLeavesTheOthersUntouched) {
  using S = TypeParam;
  const Index B = 3, NH = 2;
  std::mt19937 rng(113);
  const auto cfg = mlstm_config(NH, 8, 12, kScaled, 16);
  const MLstmCell<S> cell(cfg);
  const auto first = random_mlstm_inputs<S>(cfg, B, 20, rng);
  const auto rest = random_mlstm_inputs<S>(cfg, B, 27, rng);
  auto start = cell.initial_state(B);
  run_forward(cell, first, start, MLstmForm::chunkwise);

  for (const auto form : {MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(name_of(form));
    auto untouched = start;
    const auto h_untouched = run_forward(cell, rest, untouched, form);
    auto reset = start;
    reset.reset_row(1);
    EXPECT_FALSE(reset.is_zero());
    const auto h_reset = run_forward(cell, rest, reset, form);
    auto fresh = cell.initial_state(1);
    const auto h_fresh = run_forward(cell, rest.row(1), fresh, form);

    for (const Index b : {Index(0), Index(2)}) {
      EXPECT_TRUE(BitIdentical(h_reset.rows_of(b), h_untouched.rows_of(b)));
      EXPECT_TRUE(StatesIdentical(state_row(reset, b), state_row(untouched, b)));
    }
    EXPECT_TRUE(Close(h_reset.rows_of(1), h_fresh.rows_of(0), Tol<S>::rounding));
    EXPECT_TRUE(StatesClose(state_row(reset, 1), fresh, Tol<S>::rounding));
    EXPECT_FALSE(Close(h_reset.rows_of(1), h_untouched.rows_of(1), 1e-3));
  }
  auto state = start;
  EXPECT_TRUE(ThrowsMentioning([&] { state.reset_row(3); }, "'row'"));
  EXPECT_TRUE(ThrowsMentioning([&] { state.reset_row(-1); }, "'row'"));
}

// ---------------------------------------------------------------------------
// mLSTM: bad arguments
// ---------------------------------------------------------------------------

TYPED_TEST(MLstmCellTest, MismatchedShapesThrowNamingTheArgument) {
  using S = TypeParam;
  const Index B = 2, T = 5, NH = 2, DQK = 4, DV = 6;
  const auto cfg = mlstm_config(NH, DQK, DV);
  const MLstmCell<S> cell(cfg);
  std::mt19937 rng(114);
  const auto good = random_mlstm_inputs<S>(cfg, B, T, rng);
  auto state = cell.initial_state(B);

  // forward: wrong feature size, wrong time, wrong batch.
  auto bad = good;
  bad.q = Sequence<S>::zeros(B, T, NH * DQK + 1);
  EXPECT_TRUE(
      ThrowsMentioning([&] { run_forward(cell, bad, state, MLstmForm::chunkwise); }, "'q'"));
  bad = good;
  bad.k = Sequence<S>::zeros(B, T, NH * DV);
  EXPECT_TRUE(
      ThrowsMentioning([&] { run_forward(cell, bad, state, MLstmForm::chunkwise); }, "'k'"));
  bad = good;
  bad.v = Sequence<S>::zeros(B, T, NH * DQK);
  EXPECT_TRUE(
      ThrowsMentioning([&] { run_forward(cell, bad, state, MLstmForm::recurrent); }, "'v'"));
  bad = good;
  bad.igate = Sequence<S>::zeros(B, T + 1, NH);
  EXPECT_TRUE(
      ThrowsMentioning([&] { run_forward(cell, bad, state, MLstmForm::parallel); }, "'igate'"));
  bad = good;
  bad.fgate = Sequence<S>::zeros(B + 1, T, NH);
  EXPECT_TRUE(
      ThrowsMentioning([&] { run_forward(cell, bad, state, MLstmForm::automatic); }, "'fgate'"));
  auto wrong_batch = cell.initial_state(B + 1);
  EXPECT_TRUE(ThrowsMentioning([&] { run_forward(cell, good, wrong_batch, MLstmForm::chunkwise); },
                               "must be 3 x 5"));
  const MLstmCell<S> other_cell(mlstm_config(NH, DQK + 1, DV));
  auto other_state = other_cell.initial_state(B);
  EXPECT_TRUE(ThrowsMentioning([&] { run_forward(cell, good, other_state, MLstmForm::chunkwise); },
                               "'state'"));
  EXPECT_TRUE(state.is_zero());

  // step: each argument in turn.
  Matrix<S> q = Matrix<S>::Zero(B, NH * DQK), k = q, v = Matrix<S>::Zero(B, NH * DV),
            ig = Matrix<S>::Zero(B, NH), fg = ig, h = v;
  EXPECT_NO_THROW(cell.step(q, k, v, ig, fg, state, h));
  const Matrix<S> wrong = Matrix<S>::Zero(B, 1);
  Matrix<S> wrong_h = Matrix<S>::Zero(B + 1, NH * DV);
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(wrong, k, v, ig, fg, state, h); }, "'q'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, wrong, v, ig, fg, state, h); }, "'k'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, wrong, ig, fg, state, h); }, "'v'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, v, wrong, fg, state, h); }, "'igate'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, v, ig, wrong, state, h); }, "'fgate'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, v, ig, fg, state, wrong_h); }, "'h'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, v, ig, fg, other_state, h); }, "'state'"));
  MLstmState<S> default_state;
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(q, k, v, ig, fg, default_state, h); }, "'state'"));
}

TEST(MLstmCellConfig, InvalidConfigsThrowNamingTheField) {
  auto with = [](auto change) {
    auto c = mlstm_config(2, 4, 6);
    change(c);
    return c;
  };
  EXPECT_NO_THROW(MLstmCell<float>(mlstm_config(2, 4, 6)));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<float>(with([](MLstmCellConfig& c) { c.num_heads = 0; })); }, "'num_heads'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<float>(with([](MLstmCellConfig& c) { c.num_heads = -1; })); },
      "'num_heads'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<double>(with([](MLstmCellConfig& c) { c.qk_head_dim = 0; })); },
      "'qk_head_dim'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<double>(with([](MLstmCellConfig& c) { c.v_head_dim = -3; })); },
      "'v_head_dim'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<float>(with([](MLstmCellConfig& c) { c.chunk_size = 0; })); },
      "'chunk_size'"));
  for (const double eps :
       {-1e-6, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    EXPECT_TRUE(ThrowsMentioning(
        [&] { MLstmCell<float>(with([eps](MLstmCellConfig& c) { c.eps = eps; })); }, "'eps'"));
  }
  EXPECT_TRUE(ThrowsMentioning([] { MLstmCell<float>(mlstm_config(2, 4, 6)).initial_state(-1); },
                               "'batch'"));
}

// ---------------------------------------------------------------------------
// mLSTM: long sequences (plain tests, one scalar type each)
// ---------------------------------------------------------------------------

// 100000 steps in float: the stabiliser keeps everything finite (no exp
// overflow of the input gates, no underflow of the normaliser into 0/0).
// The two forms also still agree to float rounding at every step: the memory
// forgets (|log f| ~ 0.05 per step), so rounding errors do not accumulate.
TEST(MLstmCellLong, FloatOutputsAndStatesStayFiniteOver100000Steps) {
  const Index T = 100000;
  std::mt19937 rng(115);
  const auto cfg = mlstm_config(1, 8, 8, kScaled, 64);
  const MLstmCell<float> cell(cfg);
  const auto in = random_mlstm_inputs<float>(cfg, 1, T, rng);

  auto chunk_state = cell.initial_state(1);
  const auto h_chunk = run_forward(cell, in, chunk_state, MLstmForm::chunkwise);
  EXPECT_TRUE(AllFinite(h_chunk.matrix()));
  EXPECT_TRUE(StateFinite(chunk_state));

  // Recurrent, checking the state after every step.
  auto state = cell.initial_state(1);
  Sequence<float> h_rec(1, T, 8);
  Index first_bad_step = -1;
  for (Index t = 0; t < T; ++t) {
    auto h_t = at_time(h_rec, t);
    cell.step(at_time(in.q, t), at_time(in.k, t), at_time(in.v, t), at_time(in.igate, t),
              at_time(in.fgate, t), state, h_t);
    if (first_bad_step < 0 &&
        !(state.C.allFinite() && state.n.allFinite() && state.m.allFinite() && h_t.allFinite())) {
      first_bad_step = t;
    }
  }
  EXPECT_EQ(first_bad_step, -1);
  EXPECT_TRUE(Close(h_chunk.matrix(), h_rec.matrix(), Tol<float>::rounding));
  EXPECT_TRUE(StatesClose(chunk_state, state, Tol<float>::rounding));
}

// In double the chunkwise and recurrent forms still agree to 1e-12 after
// 100000 steps: chunk-local cumulative sums (math §10.7) do not drift.
TEST(MLstmCellLong, DoubleChunkwiseAndRecurrentStillAgreeAfter100000Steps) {
  const Index T = 100000;
  std::mt19937 rng(116);
  const auto cfg = mlstm_config(1, 8, 8, kUnscaled, 64);
  const MLstmCell<double> cell(cfg);
  const auto in = random_mlstm_inputs<double>(cfg, 1, T, rng);
  auto chunk_state = cell.initial_state(1), rec_state = cell.initial_state(1);
  const auto h_chunk = run_forward(cell, in, chunk_state, MLstmForm::chunkwise);
  const auto h_rec = run_forward(cell, in, rec_state, MLstmForm::recurrent);
  EXPECT_TRUE(Close(h_chunk.matrix(), h_rec.matrix(), Tol<double>::rounding));
  EXPECT_TRUE(StatesClose(chunk_state, rec_state, Tol<double>::rounding));
}

// ---------------------------------------------------------------------------
// sLSTM helpers
// ---------------------------------------------------------------------------

SLstmCellConfig slstm_config(Index hidden_size, Index num_heads,
                             FirstStepRule rule = FirstStepRule::whole_batch,
                             SLstmFunction function = SLstmFunction::slstm) {
  SLstmCellConfig c;
  c.hidden_size = hidden_size;
  c.num_heads = num_heads;
  c.first_step_rule = rule;
  c.function = function;
  return c;
}

// Backend-independent parameters of math §2.2: R_ext (NH, DH, 4, DH) and
// b_ext (NH, 4, DH), held in double but rounded to S.
struct SLstmExternal {
  Index nh = 0, dh = 0;
  std::vector<double> R, b;

  double& r(Index h, Index i, Index g, Index j) {
    return R[std::size_t(((h * dh + i) * 4 + g) * dh + j)];
  }
  double r(Index h, Index i, Index g, Index j) const {
    return R[std::size_t(((h * dh + i) * 4 + g) * dh + j)];
  }
  double& bias(Index h, Index g, Index j) { return b[std::size_t((h * 4 + g) * dh + j)]; }
  double bias(Index h, Index g, Index j) const { return b[std::size_t((h * 4 + g) * dh + j)]; }
};

// Recurrent weights ~ N(0, 1/DH) (so R y is O(1)), biases ~ N(0, 0.5) with the
// forget gate biased to +2 (remember by default).
template <typename S>
SLstmExternal random_external(Index nh, Index dh, std::mt19937& rng) {
  SLstmExternal e;
  e.nh = nh;
  e.dh = dh;
  e.R.resize(std::size_t(nh * dh * 4 * dh));
  e.b.resize(std::size_t(nh * 4 * dh));
  std::normal_distribution<double> n01(0.0, 1.0);
  const double r_scale = 1.0 / std::sqrt(double(dh));
  for (double& x : e.R) x = double(S(r_scale * n01(rng)));
  for (Index h = 0; h < nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j)
        e.bias(h, g, j) = double(S((g == 1 ? 2.0 : 0.0) + 0.5 * n01(rng)));
    }
  }
  return e;
}

// math §2.2 vanilla layout: Rv[h, g*DH + j, i] = R_ext[h, i, g, j],
// bv[g*H + h*DH + j] = b_ext[h, g, j].
template <typename S>
void set_vanilla(const SLstmExternal& e, SLstmCell<S>& cell) {
  const Index dh = e.dh, H = e.nh * e.dh;
  for (Index h = 0; h < e.nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j) {
        for (Index i = 0; i < dh; ++i) {
          cell.recurrent_kernel()(h * 4 * dh + g * dh + j, i) = S(e.r(h, i, g, j));
        }
        cell.bias()(g * H + h * dh + j) = S(e.bias(h, g, j));
      }
    }
  }
}

// math §2.2 CUDA layout: Rc[h, i, g*DH + j] = R_ext[h, i, g, j] flattened to
// (NH*DH) x 4DH, bc[h*4*DH + g*DH + j] = b_ext[h, g, j].
template <typename S>
void cuda_layout(const SLstmExternal& e, Matrix<S>& kernel, Vector<S>& bias) {
  const Index dh = e.dh;
  kernel.resize(e.nh * dh, 4 * dh);
  bias.resize(4 * e.nh * dh);
  for (Index h = 0; h < e.nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j) {
        for (Index i = 0; i < dh; ++i) kernel(h * dh + i, g * dh + j) = S(e.r(h, i, g, j));
        bias(h * 4 * dh + g * dh + j) = S(e.bias(h, g, j));
      }
    }
  }
}

template <typename S>
SLstmCell<S> random_slstm(const SLstmCellConfig& cfg, std::mt19937& rng,
                          SLstmExternal* external = nullptr) {
  SLstmCell<S> cell(cfg);
  const auto e = random_external<S>(cfg.num_heads, cfg.head_dim(), rng);
  set_vanilla(e, cell);
  if (external) *external = e;
  return cell;
}

struct SLstmReference {
  Sequence<double> y, c, n, m;
};

// math §2.3 and §2.4 written out elementwise in double, from the zero state,
// straight from R_ext / b_ext (no layout involved). From the zero state the
// whole-batch and per-element first-step rules coincide.
template <typename S>
SLstmReference naive_slstm(const SLstmExternal& e, const Sequence<S>& x, SLstmFunction function) {
  const Index B = x.batch(), T = x.time(), dh = e.dh, H = e.nh * e.dh;
  SLstmReference out;
  for (Sequence<double>* s : {&out.y, &out.c, &out.n, &out.m}) s->resize(B, T, H);
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  auto logsig = [](double v) { return std::min(v, 0.0) - std::log1p(std::exp(-std::abs(v))); };
  for (Index b = 0; b < B; ++b) {
    std::vector<double> y(std::size_t(H), 0.0), c = y, n = y, m = y;
    for (Index t = 0; t < T; ++t) {
      std::vector<double> raw(std::size_t(4 * H));
      for (Index h = 0; h < e.nh; ++h) {
        for (Index g = 0; g < 4; ++g) {
          for (Index j = 0; j < dh; ++j) {
            double sum = double(x(b, t, g * H + h * dh + j)) + e.bias(h, g, j);
            for (Index i = 0; i < dh; ++i) sum += e.r(h, i, g, j) * y[std::size_t(h * dh + i)];
            raw[std::size_t(g * H + h * dh + j)] = sum;
          }
        }
      }
      for (Index u = 0; u < H; ++u) {
        const auto U = std::size_t(u);
        const double ri = raw[U], rf = raw[std::size_t(H) + U], rz = raw[std::size_t(2 * H) + U],
                     ro = raw[std::size_t(3 * H) + U];
        if (function == SLstmFunction::lstm) {
          c[U] = sig(rf) * c[U] + sig(ri) * std::tanh(rz);
          y[U] = sig(ro) * std::tanh(c[U]);
        } else {
          const double lfm = m[U] + logsig(rf);
          const double m_new = t == 0 ? ri : std::max(ri, lfm);
          const double ig = std::min(std::exp(ri - m_new), 1.0);
          const double fg = std::min(std::exp(lfm - m_new), 1.0);
          c[U] = fg * c[U] + ig * std::tanh(rz);
          n[U] = fg * n[U] + ig;
          m[U] = m_new;
          y[U] = sig(ro) * c[U] / n[U];
        }
        out.y(b, t, u) = y[U];
        out.c(b, t, u) = c[U];
        out.n(b, t, u) = n[U];
        out.m(b, t, u) = m[U];
      }
    }
  }
  return out;
}

template <typename S>
Sequence<S> run_slstm_steps(const SLstmCell<S>& cell, const Sequence<S>& x, SLstmState<S>& state) {
  Sequence<S> y(x.batch(), x.time(), cell.hidden_size());
  for (Index t = 0; t < x.time(); ++t) {
    cell.step(at_time(x, t), state);
    at_time(y, t) = state.y;
  }
  return y;
}

template <typename S>
Sequence<S> run_slstm(const SLstmCell<S>& cell, const Sequence<S>& x, SLstmState<S>& state,
                      SLstmTrace<S>* trace = nullptr) {
  Sequence<S> y;
  cell.forward(x, state, y, trace);
  return y;
}

template <typename S>
::testing::AssertionResult SStatesIdentical(const SLstmState<S>& a, const SLstmState<S>& b) {
  for (const auto& [name, pa, pb] : {std::tuple{"y", &a.y, &b.y}, std::tuple{"c", &a.c, &b.c},
                                     std::tuple{"n", &a.n, &b.n}, std::tuple{"m", &a.m, &b.m}}) {
    auto r = BitIdentical(*pa, *pb);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult SStatesClose(const SLstmState<S>& a, const SLstmState<S>& b,
                                        double tol) {
  for (const auto& [name, pa, pb] : {std::tuple{"y", &a.y, &b.y}, std::tuple{"c", &a.c, &b.c},
                                     std::tuple{"n", &a.n, &b.n}, std::tuple{"m", &a.m, &b.m}}) {
    auto r = Close(*pa, *pb, tol);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult SStateFinite(const SLstmState<S>& s) {
  for (const auto& [name, p] :
       {std::pair{"y", &s.y}, std::pair{"c", &s.c}, std::pair{"n", &s.n}, std::pair{"m", &s.m}}) {
    auto r = AllFinite(*p);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

const char* name_of(FirstStepRule r) {
  return r == FirstStepRule::whole_batch ? "whole_batch" : "per_element";
}
const char* name_of(SLstmFunction f) { return f == SLstmFunction::slstm ? "slstm" : "lstm"; }

template <typename S>
class SLstmCellTest : public ::testing::Test {};
TYPED_TEST_SUITE(SLstmCellTest, Scalars);

// ---------------------------------------------------------------------------
// sLSTM
// ---------------------------------------------------------------------------

// The cell computes math §2.3-§2.4 (and §2.7 for function = lstm): compared
// with a direct elementwise transcription in double, outputs and the c, n, m
// traces agree to rounding. The recurrent map is a contraction here
// (sigmoids, tanh, |R y| = O(1)), so errors stay at the level of one step.
TYPED_TEST(SLstmCellTest, MatchesAnElementwiseTranscriptionOfTheSpec) {
  using S = TypeParam;
  const Index B = 2, T = 20, H = 12, NH = 3;
  for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
    for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
      SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule));
      std::mt19937 rng(201);
      SLstmExternal e;
      const auto cell = random_slstm<S>(slstm_config(H, NH, rule, function), rng, &e);
      const auto x = random_sequence<S>(B, T, 4 * H, rng);
      const auto ref = naive_slstm(e, x, function);
      auto state = cell.initial_state(B);
      SLstmTrace<S> trace;
      const auto y = run_slstm(cell, x, state, &trace);
      EXPECT_TRUE(Close(y.matrix(), ref.y.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(Close(trace.c.matrix(), ref.c.matrix(), Tol<S>::rounding));
      if (function == SLstmFunction::slstm) {
        EXPECT_TRUE(Close(trace.n.matrix(), ref.n.matrix(), Tol<S>::rounding));
        EXPECT_TRUE(Close(trace.m.matrix(), ref.m.matrix(), Tol<S>::rounding));
      }
    }
  }
}

// Batches above 32 rows and heads with 4*DH*DH*sizeof(Scalar) > 128 KiB: the
// recurrent product R y is then computed in panels (SLstmCell keeps Eigen's
// packing buffers on the stack that way). Same check as above, on sizes that
// cut it into 2 row panels and 2 (float) or 4 (double) column panels.
TYPED_TEST(SLstmCellTest, LargeBatchAndLargeHeadsMatchTheTranscription) {
  using S = TypeParam;
  const Index B = 40, T = 3, H = 256, NH = 2;  // DH = 128
  std::mt19937 rng(212);
  SLstmExternal e;
  const auto cell = random_slstm<S>(slstm_config(H, NH), rng, &e);
  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  auto state = cell.initial_state(B);
  const auto y = run_slstm(cell, x, state);
  EXPECT_TRUE(
      Close(y.matrix(), naive_slstm(e, x, SLstmFunction::slstm).y.matrix(), Tol<S>::rounding));
}

// forward(prefix) then step(rest), or forward(prefix) then forward(rest),
// equals stepping through the whole sequence.
TYPED_TEST(SLstmCellTest, ForwardOnAPrefixThenStepEqualsSteppingAllTheWay) {
  using S = TypeParam;
  const Index B = 2, T = 30, prefix = 13, H = 16, NH = 4;
  for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
    for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
      SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule));
      std::mt19937 rng(202);
      const auto cell = random_slstm<S>(slstm_config(H, NH, rule, function), rng);
      const auto x = random_sequence<S>(B, T, 4 * H, rng);
      const auto head = time_slice(x, 0, prefix), tail = time_slice(x, prefix, T - prefix);
      auto all_state = cell.initial_state(B);
      const auto y_all = run_slstm_steps(cell, x, all_state);

      auto state = cell.initial_state(B);
      const auto y_head = run_slstm(cell, head, state);
      auto state2 = state;
      const auto y_tail = run_slstm_steps(cell, tail, state);
      EXPECT_TRUE(Close(y_head.matrix(), time_slice(y_all, 0, prefix).matrix(), Tol<S>::rounding));
      EXPECT_TRUE(
          Close(y_tail.matrix(), time_slice(y_all, prefix, T - prefix).matrix(), Tol<S>::rounding));
      EXPECT_TRUE(SStatesClose(state, all_state, Tol<S>::rounding));

      const auto y_tail2 = run_slstm(cell, tail, state2);
      EXPECT_TRUE(Close(y_tail2.matrix(), y_tail.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(SStatesClose(state2, all_state, Tol<S>::rounding));
    }
  }
}

// math §2.2: the CUDA layout is a permutation of the vanilla one, so
// get_cuda_layout -> set_from_cuda_layout restores the parameters exactly.
TYPED_TEST(SLstmCellTest, CudaLayoutRoundTripsExactly) {
  using S = TypeParam;
  std::mt19937 rng(203);
  const auto cfg = slstm_config(24, 3);
  const auto cell = random_slstm<S>(cfg, rng);
  Matrix<S> kernel;
  Vector<S> bias;
  cell.get_cuda_layout(kernel, bias);
  EXPECT_EQ(kernel.rows(), 24);  // NH * DH
  EXPECT_EQ(kernel.cols(), 32);  // 4 * DH
  SLstmCell<S> copy(cfg);
  copy.set_from_cuda_layout(kernel, bias);
  EXPECT_TRUE(BitIdentical(copy.recurrent_kernel(), cell.recurrent_kernel()));
  EXPECT_TRUE(BitIdentical(copy.bias(), cell.bias()));
  Matrix<S> kernel2;
  Vector<S> bias2;
  copy.get_cuda_layout(kernel2, bias2);
  EXPECT_TRUE(BitIdentical(kernel2, kernel));
  EXPECT_TRUE(BitIdentical(bias2, bias));
}

// A CUDA-layout kernel and bias built by hand from math §2.2 (from the same
// R_ext, b_ext as a vanilla-layout cell) give the same outputs, and both
// match the elementwise transcription of the spec.
TYPED_TEST(SLstmCellTest, HandBuiltCudaLayoutGivesTheSameOutputsAsTheVanillaLayout) {
  using S = TypeParam;
  const Index B = 2, T = 15, H = 24, NH = 3;
  std::mt19937 rng(204);
  const auto cfg = slstm_config(H, NH);
  SLstmExternal e;
  const auto vanilla = random_slstm<S>(cfg, rng, &e);
  Matrix<S> kernel;
  Vector<S> bias;
  cuda_layout<S>(e, kernel, bias);
  SLstmCell<S> cuda(cfg);
  cuda.set_from_cuda_layout(kernel, bias);
  EXPECT_TRUE(BitIdentical(cuda.recurrent_kernel(), vanilla.recurrent_kernel()));
  EXPECT_TRUE(BitIdentical(cuda.bias(), vanilla.bias()));

  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  auto s1 = vanilla.initial_state(B), s2 = cuda.initial_state(B);
  const auto y1 = run_slstm(vanilla, x, s1);
  const auto y2 = run_slstm(cuda, x, s2);
  EXPECT_TRUE(BitIdentical(y2.matrix(), y1.matrix()));
  EXPECT_TRUE(
      Close(y1.matrix(), naive_slstm(e, x, SLstmFunction::slstm).y.matrix(), Tol<S>::rounding));
  // The bias layouts differ (head-major vs gate-major): reading the CUDA bias
  // as if it were vanilla scrambles the gates and changes the outputs.
  SLstmCell<S> confused(cfg);
  confused.recurrent_kernel() = vanilla.recurrent_kernel();
  confused.bias() = bias;
  auto s3 = confused.initial_state(B);
  EXPECT_FALSE(Close(run_slstm(confused, x, s3).matrix(), y1.matrix(), 1e-3));
}

// ±1e4 and ±inf in every gate (i, f, z, o): outputs and states stay finite.
// i and f are clamped to ±1e30 (gates.hpp); tanh(z) and sigmoid(o) have finite
// limits at ±inf; n >= 1 after the first step, so y = o c / n is finite.
TYPED_TEST(SLstmCellTest, ExtremePreactivationsGiveFiniteOutputs) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  const std::vector<S> extremes = {S(1e4), S(-1e4), inf, -inf};
  const Index B = 2, T = 40, H = 8, NH = 2;
  for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
    for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
      SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule));
      std::mt19937 rng(205);
      const auto cell = random_slstm<S>(slstm_config(H, NH, rule, function), rng);
      const auto base = random_sequence<S>(B, T, 4 * H, rng);
      std::vector<std::pair<std::string, Sequence<S>>> cases;
      for (Index g = 0; g < 4; ++g) {
        for (const S v : extremes) {
          auto x = base;
          for (Index r = 0; r < x.matrix().rows(); ++r) {
            x.matrix().row(r).segment(g * H, H).setConstant(v);
          }
          std::ostringstream name;
          name << "gate "
               << "ifzo"[g] << " = " << v;
          cases.emplace_back(name.str(), x);
        }
      }
      auto mixed = base;
      std::uniform_int_distribution<int> pick(0, 5);
      for (Index i = 0; i < mixed.matrix().size(); ++i) {
        const int p = pick(rng);
        if (p < 4) mixed.matrix().data()[i] = extremes[std::size_t(p)];
      }
      cases.emplace_back("mixed", mixed);
      for (const auto& [name, x] : cases) {
        SCOPED_TRACE(name);
        auto state = cell.initial_state(B);
        SLstmTrace<S> trace;
        const auto y = run_slstm(cell, x, state, &trace);
        EXPECT_TRUE(AllFinite(y.matrix()));
        EXPECT_TRUE(AllFinite(trace.c.matrix()));
        EXPECT_TRUE(AllFinite(trace.n.matrix()));
        EXPECT_TRUE(AllFinite(trace.m.matrix()));
        EXPECT_TRUE(SStateFinite(state));
      }
    }
  }
}

// Documented behaviour: NaN in the pre-activations of one batch row reaches
// that row only; the other row is bit for bit unchanged, with both rules.
//
// Why the whole-batch first-step rule does not leak here: the rule tests
// "n == 0 over the whole batch". From a zero state that is true at the first
// step in both runs (NaN in the *inputs* has not reached the state yet) and
// false from then on in both runs (the clean row has n >= 1; the NaN row has
// n >= 1 or NaN, and NaN == 0 is false). So row 1 takes the same branch at
// every step. The rule *can* couple rows through the state — see
// WholeBatchRuleLetsOtherRowsDecideTheFirstStepOfAResetRow below.
TYPED_TEST(SLstmCellTest, NaNInOneBatchRowStaysInThatRow) {
  using S = TypeParam;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const Index B = 2, T = 30, H = 8, NH = 2;
  for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
    SCOPED_TRACE(name_of(rule));
    std::mt19937 rng(206);
    const auto cell = random_slstm<S>(slstm_config(H, NH, rule), rng);
    const auto clean = random_sequence<S>(B, T, 4 * H, rng);
    auto dirty = clean;
    dirty(0, 0, 2 * H + 1) = nan;  // z of unit 1 at the very first step
    dirty(0, 12, 0) = nan;         // i of unit 0 at t = 12
    auto s_clean = cell.initial_state(B), s_dirty = cell.initial_state(B);
    SLstmTrace<S> t_clean, t_dirty;
    const auto y_clean = run_slstm(cell, clean, s_clean, &t_clean);
    const auto y_dirty = run_slstm(cell, dirty, s_dirty, &t_dirty);
    EXPECT_TRUE(BitIdentical(y_dirty.rows_of(1), y_clean.rows_of(1)));
    EXPECT_TRUE(BitIdentical(t_dirty.c.rows_of(1), t_clean.c.rows_of(1)));
    EXPECT_TRUE(BitIdentical(t_dirty.n.rows_of(1), t_clean.n.rows_of(1)));
    EXPECT_TRUE(BitIdentical(t_dirty.m.rows_of(1), t_clean.m.rows_of(1)));
    EXPECT_TRUE(BitIdentical(s_dirty.y.row(1), s_clean.y.row(1)));
    // The NaN does reach row 0 (through R y, the whole of head 0).
    EXPECT_TRUE(any_nan(y_dirty.at(0, 0)));
    EXPECT_TRUE(any_nan(s_dirty.y.row(0).segment(0, H / NH)));
  }
}

// math §2.4: the whole-batch rule takes the first-step branch only if n is
// zero in *every* row. After reset_row(1) the other rows have n != 0 (finite
// or even NaN), so the reset row takes the ordinary branch: m = max(i, log f)
// instead of m = i. y is the same up to rounding (c is zero where n is zero,
// so only the scaling of c, n, m changes), but the state differs from a fresh
// start. The per-element rule does not have this coupling.
TYPED_TEST(SLstmCellTest, WholeBatchRuleLetsOtherRowsDecideTheFirstStepOfAResetRow) {
  using S = TypeParam;
  const Index B = 2, T = 12, H = 8, NH = 2;
  std::mt19937 rng(207);
  SLstmExternal e;
  const auto cell = random_slstm<S>(slstm_config(H, NH, FirstStepRule::whole_batch), rng, &e);
  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  const auto x1 = batch_row(x, 1);
  auto fresh = cell.initial_state(1);
  SLstmTrace<S> t_fresh;
  const auto y_fresh = run_slstm(cell, x1, fresh, &t_fresh);

  for (const bool nan_row0 : {false, true}) {
    SCOPED_TRACE(nan_row0 ? "row 0 state NaN" : "row 0 state finite");
    auto state = cell.initial_state(B);
    run_slstm(cell, x, state);
    state.reset_row(1);
    if (nan_row0) {
      for (Matrix<S>* s : {&state.y, &state.c, &state.n, &state.m}) {
        s->row(0).setConstant(std::numeric_limits<S>::quiet_NaN());
      }
    }
    SLstmTrace<S> trace;
    const auto y = run_slstm(cell, x, state, &trace);
    // Outputs of the reset row: as from a fresh start, and no NaN leaks in.
    EXPECT_TRUE(Close(y.rows_of(1), y_fresh.rows_of(0), Tol<S>::rounding));
    // Its stabiliser at the first step after the reset: not the fresh m = raw_i.
    EXPECT_FALSE(Close(trace.m.at(1, 0), t_fresh.m.at(0, 0), 1e-3));
  }
}

// reset_row with the per-element rule (the one to use when rows are reset
// independently, math §2.4): the reset row continues exactly like a fresh
// start (state included), the other rows continue bit for bit unchanged.
TYPED_TEST(SLstmCellTest, ResetRowWithThePerElementRuleRestartsOnlyThatRow) {
  using S = TypeParam;
  const Index B = 3, H = 16, NH = 4;
  std::mt19937 rng(208);
  const auto cell = random_slstm<S>(slstm_config(H, NH, FirstStepRule::per_element), rng);
  const auto first = random_sequence<S>(B, 10, 4 * H, rng);
  const auto rest = random_sequence<S>(B, 15, 4 * H, rng);
  auto start = cell.initial_state(B);
  run_slstm(cell, first, start);

  auto untouched = start;
  SLstmTrace<S> t_untouched;
  const auto y_untouched = run_slstm(cell, rest, untouched, &t_untouched);
  auto reset = start;
  reset.reset_row(1);
  SLstmTrace<S> t_reset;
  const auto y_reset = run_slstm(cell, rest, reset, &t_reset);
  auto fresh = cell.initial_state(1);
  SLstmTrace<S> t_fresh;
  const auto y_fresh = run_slstm(cell, batch_row(rest, 1), fresh, &t_fresh);

  for (const Index b : {Index(0), Index(2)}) {
    EXPECT_TRUE(BitIdentical(y_reset.rows_of(b), y_untouched.rows_of(b)));
    EXPECT_TRUE(BitIdentical(t_reset.c.rows_of(b), t_untouched.c.rows_of(b)));
    EXPECT_TRUE(BitIdentical(t_reset.n.rows_of(b), t_untouched.n.rows_of(b)));
    EXPECT_TRUE(BitIdentical(t_reset.m.rows_of(b), t_untouched.m.rows_of(b)));
  }
  EXPECT_TRUE(Close(y_reset.rows_of(1), y_fresh.rows_of(0), Tol<S>::rounding));
  EXPECT_TRUE(Close(t_reset.c.rows_of(1), t_fresh.c.rows_of(0), Tol<S>::rounding));
  EXPECT_TRUE(Close(t_reset.n.rows_of(1), t_fresh.n.rows_of(0), Tol<S>::rounding));
  EXPECT_TRUE(Close(t_reset.m.rows_of(1), t_fresh.m.rows_of(0), Tol<S>::rounding));
  EXPECT_FALSE(Close(y_reset.rows_of(1), y_untouched.rows_of(1), 1e-3));

  EXPECT_TRUE(ThrowsMentioning([&] { reset.reset_row(3); }, "'row'"));
  EXPECT_TRUE(ThrowsMentioning([&] { reset.reset_row(-1); }, "'row'"));
}

TYPED_TEST(SLstmCellTest, CopiedStateEvolvesIndependently) {
  using S = TypeParam;
  const Index B = 2, H = 8, NH = 2;
  std::mt19937 rng(209);
  const auto cell = random_slstm<S>(slstm_config(H, NH), rng);
  const auto first = random_sequence<S>(B, 10, 4 * H, rng);
  const auto rest = random_sequence<S>(B, 10, 4 * H, rng);
  const auto other = random_sequence<S>(B, 10, 4 * H, rng);

  auto reference = cell.initial_state(B);
  run_slstm(cell, first, reference);
  const auto y_reference = run_slstm(cell, rest, reference);

  auto original = cell.initial_state(B);
  run_slstm(cell, first, original);
  const auto snapshot = original;
  auto copy = original;
  const auto y_copy = run_slstm_steps(cell, other, copy);
  EXPECT_TRUE(SStatesIdentical(original, snapshot));
  EXPECT_FALSE(SStatesIdentical(copy, original));
  const auto y_original = run_slstm(cell, rest, original);
  EXPECT_TRUE(BitIdentical(y_original.matrix(), y_reference.matrix()));
  EXPECT_TRUE(SStatesIdentical(original, reference));
  EXPECT_FALSE(Close(y_copy.matrix(), y_original.matrix(), 1e-3));
}

TYPED_TEST(SLstmCellTest, MismatchedShapesThrowNamingTheArgument) {
  using S = TypeParam;
  const Index B = 2, H = 8, NH = 2;
  std::mt19937 rng(210);
  const auto cell = random_slstm<S>(slstm_config(H, NH), rng);
  auto state = cell.initial_state(B);
  Sequence<S> y;

  const Matrix<S> good = Matrix<S>::Zero(B, 4 * H);
  EXPECT_NO_THROW(cell.step(good, state));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B, 4 * H - 1), state); },
                               "'preactivations'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B + 1, 4 * H), state); },
                               "'preactivations'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B, H), state); }, "4*hidden_size"));
  EXPECT_TRUE(ThrowsMentioning([&] { run_slstm(cell, Sequence<S>::zeros(B, 3, H), state); },
                               "preactivations.features()"));
  EXPECT_TRUE(ThrowsMentioning([&] { run_slstm(cell, Sequence<S>::zeros(B + 1, 3, 4 * H), state); },
                               "preactivations.batch()"));
  auto wrong_state = SLstmState<S>(B, H + 2);
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(good, wrong_state); }, "'state'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { run_slstm(cell, Sequence<S>::zeros(B, 3, 4 * H), wrong_state); }, "'state'"));
  SLstmState<S> default_state;
  EXPECT_TRUE(
      ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(0, 4 * H), default_state); }, "'state'"));

  SLstmCell<S> target(slstm_config(H, NH));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { target.set_from_cuda_layout(Matrix<S>::Zero(4 * H / NH, H), Vector<S>::Zero(4 * H)); },
      "'kernel'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { target.set_from_cuda_layout(Matrix<S>::Zero(H, 4 * H / NH), Vector<S>::Zero(H)); },
      "bias"));
}

TEST(SLstmCellConfig, InvalidConfigsThrowNamingTheField) {
  EXPECT_NO_THROW(SLstmCell<float>(slstm_config(12, 3)));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_config(10, 3)); }, "divisible"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<double>(slstm_config(0, 1)); }, "'hidden_size'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<double>(slstm_config(-4, 2)); }, "'hidden_size'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_config(8, 0)); }, "'num_heads'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_config(8, -2)); }, "'num_heads'"));
  EXPECT_TRUE(
      ThrowsMentioning([] { SLstmCell<float>(slstm_config(8, 2)).initial_state(-1); }, "'batch'"));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::parse_slstm_function("gru"); }, "'function'"));
}

// 100000 steps in float: every output and every state stays finite.
TEST(SLstmCellLong, FloatOutputsAndStatesStayFiniteOver100000Steps) {
  const Index T = 100000, H = 16, NH = 2;
  std::mt19937 rng(211);
  const auto cell = random_slstm<float>(slstm_config(H, NH), rng);
  const auto x = random_sequence<float>(1, T, 4 * H, rng);
  auto state = cell.initial_state(1);
  SLstmTrace<float> trace;
  const auto y = run_slstm(cell, x, state, &trace);
  EXPECT_TRUE(AllFinite(y.matrix()));
  EXPECT_TRUE(AllFinite(trace.c.matrix()));
  EXPECT_TRUE(AllFinite(trace.n.matrix()));
  EXPECT_TRUE(AllFinite(trace.m.matrix()));
  EXPECT_TRUE(SStateFinite(state));
  // n >= 1 after every step (math §2.4), even in floating point: m is the max
  // of raw_i and log f + m, so i' or f' is exp(0) = 1 exactly, and then
  // n = f' n + i' >= 1 (or >= n_prev >= 1) because rounding is monotone.
  EXPECT_GE(trace.n.matrix().minCoeff(), 1.0f);
}

}  // namespace
