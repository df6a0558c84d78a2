// Tests of the official TiRex numerics of the sLSTM cell (math §12); the
// golden files of kind tirex_slstm_cell (golden README §12) pin it to the
// official code, these check the relations that must hold on any input:
// forward equals stepping, the rounding points and clamps of math §12, bad
// configs throw, and the default (plain) mode is untouched.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/half.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_slstm_tirex {

namespace {

using test_util::AllFinite;
using test_util::at_time;
using test_util::BitIdentical;
using test_util::Close;
using test_util::random_matrix;
using test_util::random_sequence;
using test_util::slstm_cell_config;
using test_util::ThrowsMentioning;
using xlstm::FirstStepRule;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::Sequence;
using xlstm::SLstmCell;
using xlstm::SLstmCellConfig;
using xlstm::SLstmFunction;
using xlstm::SLstmNumerics;
using xlstm::SLstmTrace;

SLstmCellConfig tirex_config(Index hidden_size, Index num_heads) {
  SLstmCellConfig config = slstm_cell_config(hidden_size, num_heads);
  config.numerics = SLstmNumerics::tirex_official;
  return config;
}

// Parameters like the TiRex golden files (golden README §12): R ~ N(0, 1/DH),
// biases i ~ N(0, 0.5^2), f ~ N(2, 1), z and o ~ N(0, 0.3^2).
template <typename S>
SLstmCell<S> random_tirex_cell(const SLstmCellConfig& config, std::mt19937& rng) {
  SLstmCell<S> cell(config);
  const Index h = config.hidden_size;
  cell.recurrent_kernel() =
      random_matrix<S>(cell.recurrent_kernel().rows(), cell.recurrent_kernel().cols(), rng, 0.0,
                       1.0 / std::sqrt(double(config.head_dim())));
  const double mean[4] = {0, 2, 0, 0}, stddev[4] = {0.5, 1, 0.3, 0.3};
  for (Index g = 0; g < 4; ++g) {
    cell.bias().segment(g * h, h) = random_matrix<S>(h, 1, rng, mean[g], stddev[g]);
  }
  return cell;
}

// A state with n >= 1 (as after a first step), c, m and y of order 1.
template <typename S>
xlstm::SLstmState<S> random_state(const SLstmCell<S>& cell, Index batch, std::mt19937& rng) {
  auto state = cell.initial_state(batch);
  state.y = random_matrix<S>(batch, cell.hidden_size(), rng, 0.0, 0.5);
  state.c = random_matrix<S>(batch, cell.hidden_size(), rng);
  state.n = random_matrix<S>(batch, cell.hidden_size(), rng, 0.0, 1.0).cwiseAbs().array() + S(1);
  state.m = random_matrix<S>(batch, cell.hidden_size(), rng);
  return state;
}

template <typename S>
Sequence<S> run_forward(const SLstmCell<S>& cell, const Sequence<S>& x, xlstm::SLstmState<S>& state,
                        SLstmTrace<S>* trace = nullptr) {
  Sequence<S> y;
  cell.forward(x, state, y, trace);
  return y;
}

template <typename D>
bool all_bf16(const Eigen::DenseBase<D>& x) {
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      if (xlstm::round_to_bf16(x(i, j)) != x(i, j)) return false;
    }
  }
  return true;
}

float bf16(double v) { return xlstm::round_to_bf16(float(v)); }

// Math §12.2-§12.5 written out element by element in float with the C
// library's functions: Ry as an exact (double) sum, rounded to float, then to
// bf16. Returns y of every step (B x T x H, head-major) and leaves the final
// state in y, c, n, m.
struct Transcription {
  Sequence<float> y;
  Matrix<float> ys, c, n, m;
};

Transcription transcribe(const SLstmCell<float>& cell, const Sequence<float>& x,
                         const xlstm::SLstmState<float>& initial) {
  const Index batch = x.batch(), time = x.time(), h = cell.hidden_size(), dh = cell.head_dim();
  Transcription r{Sequence<float>(batch, time, h), initial.y, initial.c, initial.n, initial.m};
  for (Matrix<float>* s : {&r.ys, &r.c, &r.n, &r.m}) {
    *s = s->unaryExpr([](float v) { return bf16(v); });
  }
  const Matrix<float>& kernel = cell.recurrent_kernel();  // row head*4DH + g*DH + j, column k
  for (Index t = 0; t < time; ++t) {
    const bool first = (r.n.array() == 0.0f).all();
    Matrix<float> y = r.ys, c = r.c, n = r.n, m = r.m;
    for (Index b = 0; b < batch; ++b) {
      for (Index u = 0; u < h; ++u) {
        const Index head = u / dh, j = u % dh;
        float raw[4];
        for (Index g = 0; g < 4; ++g) {
          double sum = 0;
          for (Index k = 0; k < dh; ++k) {
            sum += double(r.ys(b, head * dh + k)) *
                   double(bf16(kernel(head * 4 * dh + g * dh + j, k)));
          }
          const float ry = bf16(float(sum));
          raw[g] = (bf16(x(b, t, g * h + u)) + ry) + cell.bias()(g * h + u);
        }
        const float f_clamped = std::min(raw[1], 15.0f);
        const float log_sig =
            std::min(f_clamped, 0.0f) - std::log1p(std::exp(-std::abs(f_clamped)));
        const float lfm = r.m(b, u) + log_sig;
        const float m_new = first ? raw[0] : std::max(raw[0], lfm);
        const float i_gate = std::exp(std::min(raw[0] - m_new, 0.0f));
        const float f_gate = std::exp(std::min(lfm - m_new, 0.0f));
        const float c_new = f_gate * r.c(b, u) + i_gate * std::tanh(raw[2]);
        const float n_new = f_gate * r.n(b, u) + i_gate;
        const float o_gate = 1.0f / (1.0f + std::exp(-raw[3]));
        y(b, u) = bf16((o_gate * c_new) / n_new);
        c(b, u) = bf16(c_new);
        n(b, u) = bf16(n_new);
        m(b, u) = bf16(m_new);
      }
    }
    r.ys = y;
    r.c = c;
    r.n = n;
    r.m = m;
    at_time(r.y, t) = y;
  }
  return r;
}

// The fraction of elements that are exactly equal.
template <typename A, typename B>
double fraction_identical(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  Index same = 0;
  for (Index i = 0; i < a.rows(); ++i) {
    for (Index j = 0; j < a.cols(); ++j) same += a(i, j) == b(i, j) ? 1 : 0;
  }
  return double(same) / double(std::max<Index>(1, a.size()));
}

// The cell computes math §12 as transcribed element by element. Different
// exp/tanh/log1p implementations and summation orders flip a bf16 rounding
// now and then (math §12.6), so: close to within a few bf16 steps, and most
// elements bit for bit (a missed rounding point or clamp makes nearly all of
// them differ).
TEST(SLstmTirex, MatchesAnElementwiseTranscription) {
  const Index B = 3, T = 8, H = 32, NH = 2;
  std::mt19937 rng(1501);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  const auto x = random_sequence<float>(B, T, 4 * H, rng, 0.0, 1.5);
  for (const bool zero_start : {true, false}) {
    SCOPED_TRACE(zero_start ? "zero state" : "given state");
    auto state = zero_start ? cell.initial_state(B) : random_state(cell, B, rng);
    const Transcription ref = transcribe(cell, x, state);
    SLstmTrace<float> trace;
    const auto y = run_forward(cell, x, state, &trace);
    EXPECT_TRUE(Close(y.matrix(), ref.y.matrix(), 0.02));
    EXPECT_TRUE(Close(state.c, ref.c, 0.02));
    EXPECT_TRUE(Close(state.n, ref.n, 0.02));
    EXPECT_TRUE(Close(state.m, ref.m, 0.02));
    EXPECT_GE(fraction_identical(y.matrix(), ref.y.matrix()), 0.9);
    EXPECT_GE(fraction_identical(state.m, ref.m), 0.9);
  }
}

// forward equals step by step, bit for bit, from a zero and a given state;
// and a sequence split in two runs as one.
TEST(SLstmTirex, ForwardEqualsStepByStep) {
  const Index B = 2, T = 12, H = 48, NH = 3;
  std::mt19937 rng(1502);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  const auto x = random_sequence<float>(B, T, 4 * H, rng, 0.0, 1.5);
  for (const bool zero_start : {true, false}) {
    SCOPED_TRACE(zero_start ? "zero state" : "given state");
    const auto start = zero_start ? cell.initial_state(B) : random_state(cell, B, rng);
    auto forward_state = start;
    SLstmTrace<float> trace;
    const auto y = run_forward(cell, x, forward_state, &trace);

    auto step_state = start;
    for (Index t = 0; t < T; ++t) {
      cell.step(at_time(x, t), step_state);
      EXPECT_TRUE(BitIdentical(step_state.y, at_time(y, t))) << "step " << t;
      EXPECT_TRUE(BitIdentical(step_state.c, at_time(trace.c, t))) << "step " << t;
      EXPECT_TRUE(BitIdentical(step_state.n, at_time(trace.n, t))) << "step " << t;
      EXPECT_TRUE(BitIdentical(step_state.m, at_time(trace.m, t))) << "step " << t;
    }

    auto split_state = start;
    run_forward(cell, test_util::time_slice(x, 0, 5), split_state);
    run_forward(cell, test_util::time_slice(x, 5, T - 5), split_state);
    for (const auto& [a, b] :
         {std::pair{&split_state.y, &forward_state.y}, std::pair{&split_state.c, &forward_state.c},
          std::pair{&split_state.n, &forward_state.n},
          std::pair{&split_state.m, &forward_state.m}}) {
      EXPECT_TRUE(BitIdentical(*a, *b));
    }
  }
}

// math §12.2: every state the cell leaves is bf16, and a state the caller
// sets enters rounded (starting from s or from bf16(s) is the same).
TEST(SLstmTirex, StatesAreBf16AndAGivenStateIsRoundedOnEntry) {
  const Index B = 2, H = 16, NH = 2;
  std::mt19937 rng(1503);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  const Matrix<float> x = random_matrix<float>(B, 4 * H, rng);
  auto state = random_state(cell, B, rng);
  auto rounded = state;
  for (Matrix<float>* s : {&rounded.y, &rounded.c, &rounded.n, &rounded.m}) {
    *s = s->unaryExpr([](float v) { return xlstm::round_to_bf16(v); });
  }
  ASSERT_FALSE(all_bf16(state.c));  // the test needs values that are not bf16
  cell.step(x, state);
  cell.step(x, rounded);
  for (const auto* s : {&state.y, &state.c, &state.n, &state.m}) EXPECT_TRUE(all_bf16(*s));
  EXPECT_TRUE(BitIdentical(state.y, rounded.y));
  EXPECT_TRUE(BitIdentical(state.m, rounded.m));
}

// The state after one step from m = 0, n = 1, c = 0.5, y = 0 with R = 0 and
// b = 0 (the raw pre-activations are bf16 of the input), input gate `i` and
// forget gate `f`. With i far below log f, m' = m + log-sigmoid(f) shows
// what the forget gate saw.
template <typename S>
xlstm::SLstmState<S> one_step_with_gates(const SLstmCell<S>& cell, float i, float f) {
  const Index h = cell.hidden_size();
  auto state = cell.initial_state(1);
  state.n.setConstant(S(1));
  state.c.setConstant(S(0.5));
  Matrix<S> x = Matrix<S>::Constant(1, 4 * h, S(0.3));
  x.middleCols(0, h).setConstant(S(i));
  x.middleCols(h, h).setConstant(S(f));
  cell.step(x, state);
  return state;
}

// math §12.4: the forget pre-activation is clamped at +15 before its
// log-sigmoid, and only from above. m' = log-sigmoid(min(f, 15)): -3.1e-7
// for f = 15, 20 and 1000 alike (unclamped, 20 would give -2.1e-9 and 1000
// would give 0); -15 and -20 stay apart.
TEST(SLstmTirex, ForgetPreactivationIsClampedAtFifteenFromAboveOnly) {
  SLstmCell<float> cell(tirex_config(4, 1));
  const auto at15 = one_step_with_gates(cell, -5, 15);
  EXPECT_LT(at15.m(0, 0), 0.0f);
  for (const float f : {20.0f, 1000.0f}) {
    const auto above = one_step_with_gates(cell, -5, f);
    EXPECT_TRUE(BitIdentical(above.m, at15.m)) << f;
    EXPECT_TRUE(BitIdentical(above.c, at15.c)) << f;
    EXPECT_TRUE(BitIdentical(above.n, at15.n)) << f;
  }
  EXPECT_FALSE(
      BitIdentical(one_step_with_gates(cell, -30, -20).m, one_step_with_gates(cell, -30, -15).m));
  // The plain mode has no such clamp: f = 1000 gives m' = log-sigmoid(1000),
  // 0 up to a subnormal, where f = 15 gives -3.1e-7.
  SLstmCell<float> plain(slstm_cell_config(4, 1));
  EXPECT_GT(one_step_with_gates(plain, -5, 1000).m(0, 0), -1e-30f);
  EXPECT_LT(one_step_with_gates(plain, -5, 15).m(0, 0), -1e-7f);
}

// math §12.4: the gates are capped at 1. In the first-step branch (all n
// zero) with a non-zero c set by the caller, the forget gate exp(log f + m
// - i) would exceed 1 when log f > i; capped, c' = c + tanh(z) exactly as
// float arithmetic on the bf16 values gives it.
TEST(SLstmTirex, GatesAreCappedAtOne) {
  const Index H = 4, NH = 1;
  SLstmCell<float> cell(tirex_config(H, NH));
  auto state = cell.initial_state(1);
  state.c.setConstant(0.5f);  // n = 0, m = 0, y = 0: the first-step rule applies
  Matrix<float> x(1, 4 * H);
  x.middleCols(0, H).setConstant(-10.0f);  // i: m' = -10
  x.middleCols(H, H).setConstant(10.0f);   // f: log f ~ -4.5e-5 > -10, exp(10) uncapped
  x.middleCols(2 * H, H).setConstant(0.25f);
  x.middleCols(3 * H, H).setConstant(0.0f);
  cell.step(x, state);
  // Uncapped, f' = exp(10 - 4.5e-5 + 10) would make c' about 1.1e4.
  const float c_capped = 0.5f + std::tanh(0.25f);
  for (Index u = 0; u < H; ++u) {
    EXPECT_NEAR(state.c(0, u), c_capped, 0.01f);  // within a bf16 step
    EXPECT_EQ(state.n(0, u), 1.0f);               // n' = f' * 0 + i' = 1
    EXPECT_EQ(state.m(0, u), -10.0f);             // m' = i
  }
}

// Extreme but finite pre-activations (±1e4) and gates of ±30 keep every
// output and state finite over many steps.
TEST(SLstmTirex, ExtremePreactivationsGiveFiniteOutputs) {
  const Index B = 2, T = 40, H = 8, NH = 2;
  std::mt19937 rng(1505);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  for (const float magnitude : {30.0f, 1e4f}) {
    auto x = random_sequence<float>(B, T, 4 * H, rng);
    std::bernoulli_distribution pick(0.3);
    for (Index i = 0; i < x.matrix().size(); ++i) {
      if (pick(rng)) x.matrix().data()[i] = x.matrix().data()[i] > 0 ? magnitude : -magnitude;
    }
    auto state = cell.initial_state(B);
    SLstmTrace<float> trace;
    const auto y = run_forward(cell, x, state, &trace);
    EXPECT_TRUE(AllFinite(y.matrix())) << magnitude;
    EXPECT_TRUE(AllFinite(trace.c.matrix())) << magnitude;
    EXPECT_TRUE(AllFinite(trace.n.matrix())) << magnitude;
    EXPECT_TRUE(AllFinite(trace.m.matrix())) << magnitude;
  }
}

// math §12.5: one first-step test over the whole batch. Row 0 starts from
// zero next to a row that does not, so row 0 takes m' = max(i, log f + 0)
// (not m' = i), and its y is the same as alone.
TEST(SLstmTirex, WholeBatchFirstStepRule) {
  const Index H = 8, NH = 2;
  std::mt19937 rng(1506);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  const Matrix<float> x = random_matrix<float>(2, 4 * H, rng, 0.0, 2.0);
  auto mixed = random_state(cell, 2, rng);
  mixed.reset_row(0);
  auto alone = cell.initial_state(1);
  cell.step(x, mixed);
  cell.step(x.topRows(1), alone);
  EXPECT_TRUE(Close(mixed.y.topRows(1), alone.y, 0.01));
  EXPECT_FALSE(BitIdentical(mixed.m.topRows(1), alone.m));
}

// Official numerics with double: the same rounding points, double between
// them; close to float (a few bf16 steps).
TEST(SLstmTirex, DoubleIsCloseToFloat) {
  const Index B = 2, T = 6, H = 16, NH = 2;
  std::mt19937 rng(1507);
  const auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);
  SLstmCell<double> cell64(tirex_config(H, NH));
  cell64.recurrent_kernel() = cell.recurrent_kernel().cast<double>();
  cell64.bias() = cell.bias().cast<double>();
  const auto x = random_sequence<float>(B, T, 4 * H, rng);
  Sequence<double> x64(B, T, 4 * H);
  x64.matrix() = x.matrix().cast<double>();
  auto state = cell.initial_state(B);
  auto state64 = cell64.initial_state(B);
  const auto y = run_forward(cell, x, state);
  const auto y64 = run_forward(cell64, x64, state64);
  EXPECT_TRUE(Close(y64.matrix(), y.matrix().cast<double>(), 0.02));
}

// The default is the plain mode, and the official mode really differs from it.
TEST(SLstmTirex, DefaultIsPlainAndDiffersFromOfficial) {
  EXPECT_EQ(SLstmCellConfig{}.numerics, SLstmNumerics::plain);
  const Index B = 2, T = 5, H = 16, NH = 2;
  std::mt19937 rng(1508);
  const auto official = random_tirex_cell<float>(tirex_config(H, NH), rng);
  SLstmCell<float> plain(slstm_cell_config(H, NH));
  plain.recurrent_kernel() = official.recurrent_kernel();
  plain.bias() = official.bias();
  const auto x = random_sequence<float>(B, T, 4 * H, rng);
  auto s1 = official.initial_state(B);
  auto s2 = plain.initial_state(B);
  const auto y1 = run_forward(official, x, s1);
  const auto y2 = run_forward(plain, x, s2);
  EXPECT_TRUE(Close(y1.matrix(), y2.matrix(), 0.1));
  EXPECT_LT(fraction_identical(y1.matrix(), y2.matrix()), 0.5);
  EXPECT_FALSE(all_bf16(s2.c));
}

TEST(SLstmTirex, ContradictoryConfigsThrowNamingTheField) {
  auto lstm = tirex_config(8, 2);
  lstm.function = SLstmFunction::lstm;
  EXPECT_TRUE(ThrowsMentioning([&] { SLstmCell<float> cell(lstm); }, {"numerics", "function"}));
  auto per_element = tirex_config(8, 2);
  per_element.first_step_rule = FirstStepRule::per_element;
  EXPECT_TRUE(ThrowsMentioning([&] { SLstmCell<float> cell(per_element); },
                               {"numerics", "first_step_rule"}));
}

// The backward (math §2.8) is of the plain math: recording a tape in the
// TiRex numerics is refused, and the state is left as it was.
TEST(SLstmTirex, RecordingATapeIsRefused) {
  std::mt19937 rng(1503);
  const auto cell = random_tirex_cell<float>(tirex_config(8, 2), rng);
  const auto x = random_sequence<float>(2, 3, 32, rng, 0.0, 1.0);
  auto state = random_state(cell, 2, rng);
  const auto before = state;
  SLstmCell<float>::Tape tape;
  Sequence<float> y;
  EXPECT_TRUE(ThrowsMentioning([&] { cell.forward(x, state, y, tape); }, {"tape", "plain"}));
  EXPECT_TRUE(BitIdentical(state.y, before.y));
  EXPECT_TRUE(BitIdentical(state.m, before.m));
}

// prepare_bf16_kernel stores bf16(R) once instead of rounding it every step:
// the same bits (with either product of R y), and any writable access to the
// parameters drops the copy.
TEST(SLstmTirex, PreparedBf16KernelGivesTheSameBits) {
  const Index B = 3, T = 9, H = 64, NH = 2;
  std::mt19937 rng(1504);
  for (const bool row_invariant : {false, true}) {
    SCOPED_TRACE(row_invariant ? "row-invariant products" : "panelled products");
    SLstmCellConfig config = tirex_config(H, NH);
    config.row_invariant = row_invariant;
    auto cell = random_tirex_cell<float>(config, rng);
    const auto x = random_sequence<float>(B, T, 4 * H, rng, 0.0, 1.5);
    const auto start = random_state(cell, B, rng);
    auto plain_state = start;
    const auto y_plain = run_forward(cell, x, plain_state);
    ASSERT_FALSE(cell.has_bf16_kernel());
    cell.prepare_bf16_kernel();
    ASSERT_TRUE(cell.has_bf16_kernel());
    auto prepared_state = start;
    const auto y_prepared = run_forward(cell, x, prepared_state);
    EXPECT_TRUE(BitIdentical(y_prepared.matrix(), y_plain.matrix()));
    EXPECT_TRUE(BitIdentical(prepared_state.m, plain_state.m));
    EXPECT_TRUE(BitIdentical(prepared_state.c, plain_state.c));
    EXPECT_TRUE(BitIdentical(prepared_state.n, plain_state.n));
  }
  auto cell = random_tirex_cell<float>(tirex_config(H, NH), rng);

  // A changed kernel must be seen: writable access drops the copy.
  cell.prepare_bf16_kernel();
  cell.recurrent_kernel()(0, 0) += 1.0f;
  EXPECT_FALSE(cell.has_bf16_kernel());
  cell.prepare_bf16_kernel();
  cell.for_each_parameter([](const xlstm::ParameterRef<float>&) {});
  EXPECT_FALSE(cell.has_bf16_kernel());
  cell.prepare_bf16_kernel();
  const SLstmCell<float>& const_cell = cell;
  const_cell.for_each_parameter([](const xlstm::ConstParameterRef<float>&) {});
  EXPECT_TRUE(cell.has_bf16_kernel());  // reading keeps it

  SLstmCell<float> plain(xlstm::SLstmCellConfig{8, 2});
  EXPECT_TRUE(ThrowsMentioning([&] { plain.prepare_bf16_kernel(); }, {"tirex_official", "plain"}));
}

}  // namespace

}  // namespace xlstm_test_slstm_tirex
