// Property tests of the mLSTM cell (math §4); the sLSTM cell's are in
// test_slstm_cell.cpp.
//
// The golden tests pin the cell to the reference on a few fixed cases; these
// tests check the relations that must hold on any input: the forms agree
// (§4.4, §4.5), a sequence can be split anywhere, states convert between the
// conventions, copies are independent, rows can be reset independently,
// extreme and NaN inputs behave as documented, and bad arguments throw.
//
// Tolerances. A comparison "close(a, ref, tol)" means
//     max_i |a_i - ref_i| <= tol * max(1, max_i |ref_i|)      (outputs, m)
// or, for the memory C and normaliser n, relative to max_i |ref_i| alone:
// those are stabilised quantities (scaled by exp(-m)) of arbitrary magnitude.
// The value of `tol`, Tol<S>::rounding, is test_util::CellTol in
// test_util.hpp, with its derivation.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/cells/mlstm.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_mlstm_cell {

namespace {

using test_util::AllFinite;
using test_util::any_nan;
using test_util::at_time;
using test_util::batch_row;
using test_util::BitIdentical;
using test_util::Close;
using test_util::random_sequence;
using test_util::Scalars;
using test_util::ThrowsMentioning;
using test_util::time_slice;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::MLstmCell;
using xlstm::MLstmCellConfig;
using xlstm::MLstmForm;
using xlstm::MLstmState;
using xlstm::MLstmStateConvention;
using xlstm::Sequence;

template <typename S>
using Tol = test_util::CellTol<S>;

// ---------------------------------------------------------------------------
// mLSTM helpers
// ---------------------------------------------------------------------------

constexpr auto kScaled = MLstmStateConvention::scaled_keys;
constexpr auto kUnscaled = MLstmStateConvention::unscaled_keys;

const char* name_of(MLstmForm form) { return xlstm::form_name(form); }
const char* name_of(MLstmStateConvention c) {
  return c == kScaled ? "scaled_keys" : "unscaled_keys";
}

// The cells of these tests: chunks of 16 (several per sequence) unless given.
MLstmCellConfig mlstm_config(Index num_heads, Index qk_head_dim, Index v_head_dim,
                             MLstmStateConvention convention = kScaled, Index chunk_size = 16) {
  return test_util::mlstm_cell_config(num_heads, qk_head_dim, v_head_dim, convention, chunk_size);
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
TYPED_TEST_SUITE(MLstmCellTest, Scalars, ::testing::internal::DefaultNameGenerator);

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

// The plain forward keeps its per-(row, head) buffers on the calling thread
// (design §7.7), grown by earlier calls and never shrunk: a forward gives the
// same bits whatever ran before it. Each form on 10 steps, from buffers
// freshly released, then after a 100-step parallel forward has grown them.
TYPED_TEST(MLstmCellTest, ForwardGivesTheSameBitsWhateverRanBefore) {
  using S = TypeParam;
  std::mt19937 rng(112);
  const auto cfg = mlstm_config(2, 8, 12, kScaled, /*chunk_size=*/4);
  const MLstmCell<S> cell(cfg);
  const auto small = random_mlstm_inputs<S>(cfg, 2, 10, rng);
  const auto large = random_mlstm_inputs<S>(cfg, 2, 100, rng);
  for (const auto form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(xlstm::form_name(form));
    xlstm::release_thread_buffers();
    auto fresh_state = cell.initial_state(2);
    const auto fresh = run_forward(cell, small, fresh_state, form);
    auto large_state = cell.initial_state(2);
    (void)run_forward(cell, large, large_state, MLstmForm::parallel);
    auto state = cell.initial_state(2);
    const auto after = run_forward(cell, small, state, form);
    EXPECT_TRUE(BitIdentical(after.matrix(), fresh.matrix()));
    EXPECT_TRUE(BitIdentical(state.C, fresh_state.C));
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

// ---------------------------------------------------------------------------
// mLSTM: C stored in bfloat16 (math §4.8)
// ---------------------------------------------------------------------------

template <typename S>
MLstmState<S> widened(const MLstmState<S>& s) {
  MLstmState<S> out;
  s.widen_into(out);
  return out;
}

// A state after `time` random steps, for tests that start from a nonzero C.
template <typename S>
MLstmState<S> warm_state(const MLstmCell<S>& cell, Index batch, Index time, std::mt19937& rng) {
  auto state = cell.initial_state(batch);
  run_forward(cell, random_mlstm_inputs<S>(cell.config(), batch, time, rng), state,
              MLstmForm::chunkwise);
  return state;
}

template <typename S>
::testing::AssertionResult Bf16Identical(const MLstmState<S>& a, const MLstmState<S>& b) {
  if (!a.is_bf16() || !b.is_bf16()) return ::testing::AssertionFailure() << "not bf16 storage";
  if (a.C_bf16.rows() != b.C_bf16.rows() || a.C_bf16.cols() != b.C_bf16.cols() ||
      !(a.C_bf16.array() == b.C_bf16.array()).all()) {
    return ::testing::AssertionFailure() << "C_bf16 differs";
  }
  auto r = BitIdentical(a.n, b.n);
  if (!r) return r << " [n]";
  r = BitIdentical(a.m, b.m);
  if (!r) return r << " [m]";
  return ::testing::AssertionSuccess();
}

// A forward over a bf16 state is the forward over its widened copy, with C
// rounded once at the end: bit for bit, in every form, from a nonzero state
// (chunkwise, recurrent) and from the zero state (parallel).
TYPED_TEST(MLstmCellTest, Bf16StateForwardIsTheFullForwardWithCRoundedAtTheEnd) {
  using S = TypeParam;
  std::mt19937 rng(801);
  const auto cfg = mlstm_config(2, 8, 12, kUnscaled, 8);
  const MLstmCell<S> cell(cfg);
  auto start = warm_state(cell, 2, 13, rng);
  start.set_storage(xlstm::MLstmStateStorage::bf16);
  const auto in = random_mlstm_inputs<S>(cfg, 2, 21, rng);
  for (MLstmForm form : {MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(name_of(form));
    auto bf = start;
    auto ref = widened(start);
    const auto h_bf = run_forward(cell, in, bf, form);
    const auto h_ref = run_forward(cell, in, ref, form);
    EXPECT_TRUE(BitIdentical(h_bf.matrix(), h_ref.matrix()));
    ref.set_storage(xlstm::MLstmStateStorage::bf16);
    EXPECT_TRUE(Bf16Identical(bf, ref));
  }
  auto cfg_bf = cfg;
  cfg_bf.state_storage = xlstm::MLstmStateStorage::bf16;
  const MLstmCell<S> cell_bf(cfg_bf);
  auto zero_bf = cell_bf.initial_state(2);
  auto zero = cell.initial_state(2);
  ASSERT_TRUE(zero_bf.is_bf16() && zero_bf.is_zero());
  EXPECT_TRUE(BitIdentical(run_forward(cell_bf, in, zero_bf, MLstmForm::parallel).matrix(),
                           run_forward(cell, in, zero, MLstmForm::parallel).matrix()));
  zero.set_storage(xlstm::MLstmStateStorage::bf16);
  EXPECT_TRUE(Bf16Identical(zero_bf, zero));
}

// step() on a bf16 state (its own fused kernel) does what a one-step forward
// does: widen, update in Scalar, round. Each step starts both from the same
// state. Where both run the packet loop of MLstmCell::update_memory (float
// with in-register bf16 widening) they do the same operations: bit for bit.
// Elsewhere (double, builds without it) the bf16 loop is scalar and the
// compiler may contract its multiply-add into an FMA, which can move a
// rounding of C by one bfloat16 ulp (2^-8 relative).
TYPED_TEST(MLstmCellTest, Bf16StateStepEqualsAOneStepForward) {
  using S = TypeParam;
  std::mt19937 rng(802);
  // The second shape's rows prefetch C further on (8 KiB ahead is 20 rows
  // of 100 floats, 40 in bfloat16) and end in a tail of partial packets.
  for (const auto& [heads, qk_dim, v_dim] : {std::tuple{3, 16, 24}, std::tuple{2, 64, 100}})
    for (auto convention : {kScaled, kUnscaled}) {
      SCOPED_TRACE(std::string(name_of(convention)) + " DV " + std::to_string(v_dim));
      const auto cfg = mlstm_config(heads, qk_dim, v_dim, convention);
      const MLstmCell<S> cell(cfg);
      auto state = warm_state(cell, 2, 9, rng);
      state.set_storage(xlstm::MLstmStateStorage::bf16);
      const auto in = random_mlstm_inputs<S>(cfg, 2, 12, rng);
      for (Index t = 0; t < in.time(); ++t) {
        SCOPED_TRACE(t);
        auto by_forward = state;
        const auto h_forward = run_forward(cell, in.slice(t, 1), by_forward, MLstmForm::recurrent);
        const auto h_step = run_steps(cell, in.slice(t, 1), state);
        if constexpr (std::is_same_v<S, float> && xlstm::simd::kWidenBf16) {
          EXPECT_TRUE(BitIdentical(h_step.matrix(), h_forward.matrix()));
          EXPECT_TRUE(Bf16Identical(state, by_forward));
        } else {
          EXPECT_TRUE(Close(h_step.matrix(), h_forward.matrix(), Tol<S>::rounding));
          EXPECT_TRUE(Close(widened(state).C, widened(by_forward).C, 1.0 / 256, 0.0));
          EXPECT_TRUE(Close(state.n, by_forward.n, Tol<S>::rounding));
          EXPECT_TRUE(BitIdentical(state.m, by_forward.m));
        }
      }
    }
}

// A decode with C in bfloat16 stays near the full-precision one. Each step
// rounds every element of C with a relative error of at most 2^-9; with forget
// gates ~ N(3, 1.5) the memory lasts about 20 steps (math §10.7), so at most
// about 20 roundings of 2^-9 live in C at once: h within 20 * 2^-9 = 0.04 of
// its scale.
TYPED_TEST(MLstmCellTest, Bf16StateDecodeStaysWithinItsRoundingBound) {
  using S = TypeParam;
  std::mt19937 rng(803);
  const auto cfg = mlstm_config(2, 16, 16);
  const MLstmCell<S> cell(cfg);
  auto full = cell.initial_state(2);
  auto bf = full;
  bf.set_storage(xlstm::MLstmStateStorage::bf16);
  const auto in = random_mlstm_inputs<S>(cfg, 2, 300, rng);
  const auto h_full = run_steps(cell, in, full);
  const auto h_bf = run_steps(cell, in, bf);
  EXPECT_TRUE(Close(h_bf.matrix(), h_full.matrix(), 20.0 / 512));
  EXPECT_FALSE(BitIdentical(h_bf.matrix(), h_full.matrix()));  // the rounding is really there
  EXPECT_TRUE(Close(widened(bf).C, full.C, 20.0 / 512, 0.0));
}

TYPED_TEST(MLstmCellTest, Bf16StorageConvertsRowsAndRefusesWhatNeedsFullStorage) {
  using S = TypeParam;
  using xlstm::MLstmStateStorage;
  std::mt19937 rng(804);
  const auto cfg = mlstm_config(2, 4, 6);
  const MLstmCell<S> cell(cfg);
  auto full = warm_state(cell, 3, 7, rng);
  auto bf = full;
  bf.set_storage(MLstmStateStorage::bf16);
  EXPECT_EQ(bf.C.size(), 0);
  EXPECT_EQ(bf.C_bf16.rows(), full.C.rows());
  const auto back = widened(bf);
  for (Index i = 0; i < full.C.size(); ++i) {
    ASSERT_EQ(back.C.data()[i], S(xlstm::round_to_bf16(float(full.C.data()[i])))) << i;
  }
  auto again = back;
  again.set_storage(MLstmStateStorage::bf16);  // rounding a bfloat16 value changes nothing
  EXPECT_TRUE(Bf16Identical(again, bf));

  // Rows: reset, compare with zero, copy between states of the same storage.
  auto rows = bf;
  rows.reset_row(1);
  EXPECT_TRUE(rows.row_is_zero(1));
  EXPECT_FALSE(rows.row_is_zero(0));
  rows.copy_row_from(bf, 2, 1);
  auto expected = bf;
  expected.copy_row_from(bf, 2, 1);
  EXPECT_TRUE(Bf16Identical(rows, expected));
  EXPECT_TRUE(ThrowsMentioning([&] { rows.copy_row_from(full, 0, 0); }, "storage"));
  rows.reset();
  EXPECT_TRUE(rows.is_zero());

  // What needs C in Scalar says so.
  EXPECT_TRUE(ThrowsMentioning([&] { bf.C_of(0, 0); }, {"C_of", "bfloat16", "set_storage"}));
  EXPECT_TRUE(ThrowsMentioning([&] { bf.for_each_tensor([](const auto&) {}); },
                               {"for_each_tensor", "bfloat16"}));
  const auto in = random_mlstm_inputs<S>(cfg, 3, 5, rng);
  typename MLstmCell<S>::Tape tape;
  Sequence<S> h;
  EXPECT_TRUE(
      ThrowsMentioning([&] { cell.forward(in.q, in.k, in.v, in.igate, in.fgate, bf, h, tape); },
                       {"recording forward", "bf16"}));
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

}  // namespace

}  // namespace xlstm_test_mlstm_cell
