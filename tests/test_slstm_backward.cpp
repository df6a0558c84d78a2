// The sLSTM cell's backward pass (cells/slstm_backward.hpp, math §2.8)
// against float64 central finite differences of the same C++ forward, in
// random directions, at odd shapes, T = 1, non-zero, mixed and zero initial
// states, both first-step rules, function lstm and ragged lengths; finite
// gradients for gate pre-activations of +-1000 (where the official backward
// gives NaN); the zero input-gate-bias gradient of golden README §11.2; the
// API's contracts (names, accumulation, consumed tapes, argument checks).
// The goldens against the official autograd are in test_golden.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/core/parallel.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_slstm_backward {

namespace {

using test_util::fill_normal;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using xlstm::FirstStepRule;
using xlstm::Index;
using xlstm::Lengths;
using xlstm::Matrix;
using xlstm::Sequence;
using xlstm::SLstmFunction;

using Cell = xlstm::SLstmCell<double>;
using State = xlstm::SLstmState<double>;
using Gradients = Cell::Gradients;

enum class Start { zero, prefix, mixed };  // initial state: zeros, a prefix's, row 0 zero

struct Case {
  std::string name;
  Index batch, time, hidden_size, num_heads;
  Start start = Start::prefix;
  SLstmFunction function = SLstmFunction::slstm;
  FirstStepRule rule = FirstStepRule::whole_batch;
  Lengths lengths = {};
};

// Everything the loss depends on, and the cotangents that define it:
// L = sum(y * grad_y) + sum over the final state of (state * cotangent).
struct Problem {
  Cell cell;
  Sequence<double> x;
  State start;
  Sequence<double> grad_y;
  State grad_final;
  Lengths lengths;
};

Problem make_problem(const Case& c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Cell cell(test_util::slstm_cell_config(c.hidden_size, c.num_heads, c.rule, c.function));
  fill_normal(cell.recurrent_kernel(), rng, 0.0, 0.4);
  fill_normal(cell.bias(), rng, 0.0, 0.5);
  auto x = random_sequence<double>(c.batch, c.time, 4 * c.hidden_size, rng);
  auto start = cell.initial_state(c.batch);
  if (c.start != Start::zero) {
    // The state after a few steps of the cell itself: n >= 1, m finite.
    const auto prefix = random_sequence<double>(c.batch, 3, 4 * c.hidden_size, rng);
    Sequence<double> unused;
    cell.forward(prefix, start, unused);
    if (c.start == Start::mixed) start.reset_row(0);
  }
  auto grad_y = random_sequence<double>(c.batch, c.time, c.hidden_size, rng);
  xlstm::zero_padding(grad_y, c.lengths);
  auto grad_final = cell.initial_state(c.batch);
  for (Matrix<double>* s : {&grad_final.y, &grad_final.c, &grad_final.n, &grad_final.m}) {
    fill_normal(*s, rng);
  }
  return {std::move(cell),   std::move(x),          std::move(start),
          std::move(grad_y), std::move(grad_final), c.lengths};
}

// L in long double (the differences of two nearby losses lose fewer digits).
long double loss(const Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  p.cell.forward(p.x, p.lengths, state, y);
  long double sum = 0;
  auto add = [&](const auto& a, const auto& b) {
    for (Index i = 0; i < a.size(); ++i) sum += (long double)a.data()[i] * b.data()[i];
  };
  add(y.matrix(), p.grad_y.matrix());
  add(state.y, p.grad_final.y);
  add(state.c, p.grad_final.c);
  add(state.n, p.grad_final.n);
  add(state.m, p.grad_final.m);
  return sum;
}

struct Analytic {
  Gradients grads;
  State grad_start;
  Sequence<double> grad_x;
};

Analytic analytic(const Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  xlstm::SLstmTape<double> tape;
  p.cell.forward(p.x, p.lengths, state, y, tape);
  Analytic a{Gradients(p.cell), p.grad_final, {}};
  xlstm::backward(p.cell, tape, p.grad_y, a.grad_start, a.grads, a.grad_x);
  return a;
}

// Every gradient of `p` against finite differences (test_util). `n_differentiable`:
// false where a first-step rule tests an n that is zero (it switches as soon as n moves);
// with the whole-batch rule and mixed rows L is differentiable in n.
double expect_gradients_match_differences(Problem& p, bool n_differentiable, std::uint64_t seed) {
  const Analytic a = analytic(p);
  std::vector<test_util::GradientTarget> targets = {
      {"recurrent kernel", p.cell.recurrent_kernel().data(), a.grads.recurrent_kernel().size(),
       a.grads.recurrent_kernel().data()},
      {"bias", p.cell.bias().data(), a.grads.bias().size(), a.grads.bias().data()},
      {"preactivations", p.x.matrix().data(), p.x.matrix().size(), a.grad_x.matrix().data()},
      {"initial y", p.start.y.data(), p.start.y.size(), a.grad_start.y.data()},
      {"initial c", p.start.c.data(), p.start.c.size(), a.grad_start.c.data()},
      {"initial m", p.start.m.data(), p.start.m.size(), a.grad_start.m.data()},
  };
  if (n_differentiable) {
    targets.push_back({"initial n", p.start.n.data(), p.start.n.size(), a.grad_start.n.data()});
  }
  return test_util::expect_gradients_match_differences([&] { return loss(p); }, targets, seed + 1);
}

TEST(SLstmBackward, MatchesFiniteDifferences) {
  const std::vector<Case> cases = {
      {"odd shape, prefix state", 3, 7, 15, 3},
      {"T = 1", 2, 1, 6, 2},
      {"T = 1, zero state", 2, 1, 6, 2, Start::zero},
      {"zero state, one head", 2, 5, 7, 1, Start::zero},
      {"mixed fresh rows, whole-batch rule", 3, 4, 6, 3, Start::mixed},
      {"mixed fresh rows, per-element rule", 3, 4, 6, 3, Start::mixed, SLstmFunction::slstm,
       FirstStepRule::per_element},
      {"function lstm", 2, 6, 9, 3, Start::prefix, SLstmFunction::lstm},
      {"function lstm, zero state", 1, 3, 5, 1, Start::zero, SLstmFunction::lstm},
      {"ragged lengths",
       3,
       6,
       10,
       2,
       Start::prefix,
       SLstmFunction::slstm,
       FirstStepRule::whole_batch,
       {6, 2, 0}},
  };
  std::uint64_t seed = 1600;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Problem p = make_problem(c, seed);
    // The per-element rule switches on the zero n of a fresh row as the
    // whole-batch rule does on an all-zero n.
    const bool n_differentiable = c.start == Start::prefix ||
                                  (c.start == Start::mixed && c.rule == FirstStepRule::whole_batch);
    const double worst = expect_gradients_match_differences(p, n_differentiable, seed++);
    std::printf("  %-40s worst relative error %.2e\n", c.name.c_str(), worst);
  }
}

// Gate pre-activations of +-1000: at the first step from a zero state an
// input gate of -1000 makes exp(log f - i) overflow, and the official
// backward returns NaN everywhere (math §2.8); this one returns the finite
// gradient, which the differences confirm.
TEST(SLstmBackward, HugeGatePreactivationsGiveFiniteExactGradients) {
  Case c{"+-1000 gates", 2, 4, 6, 2, Start::zero};
  Problem p = make_problem(c, 1700);
  // Step 0, row 0: i = -1000 < log sigmoid(f) - 709.8 (the float64 overflow).
  for (Index u = 0; u < 6; ++u) {
    p.x(0, 0, u) = -1000;
    p.x(0, 0, 6 + u) = 2;
  }
  // Elsewhere a few +-1000 in every gate, away from ties.
  std::mt19937_64 rng(1701);
  std::bernoulli_distribution pick(0.3), sign(0.5);
  for (Index b = 0; b < 2; ++b) {
    for (Index t = 1; t < 4; ++t) {
      for (Index k = 0; k < 24; ++k) {
        if (pick(rng)) p.x(b, t, k) = sign(rng) ? 1000 : -1000;
      }
    }
  }
  const Analytic a = analytic(p);
  EXPECT_TRUE(test_util::AllFinite(a.grads.recurrent_kernel()));
  EXPECT_TRUE(test_util::AllFinite(a.grads.bias()));
  EXPECT_TRUE(test_util::AllFinite(a.grad_x.matrix()));
  for (const Matrix<double>* s :
       {&a.grad_start.y, &a.grad_start.c, &a.grad_start.n, &a.grad_start.m}) {
    EXPECT_TRUE(test_util::AllFinite(*s));
  }
  const double worst = expect_gradients_match_differences(p, false, 1700);
  std::printf("  worst relative error %.2e\n", worst);
}

template <typename S>
class SLstmBackwardTyped : public ::testing::Test {};
// The empty third argument: clang's -Wpedantic rejects a variadic macro
// called without one (-Wgnu-zero-variadic-macro-arguments).
TYPED_TEST_SUITE(SLstmBackwardTyped, test_util::Scalars, ::testing::internal::DefaultNameGenerator);

// A cell of `hidden_size` units in `num_heads` heads with random parameters.
template <typename S>
xlstm::SLstmCell<S> random_cell(Index hidden_size, Index num_heads, std::mt19937_64& rng) {
  xlstm::SLstmCell<S> cell(test_util::slstm_cell_config(hidden_size, num_heads));
  fill_normal(cell.recurrent_kernel(), rng, 0.0, 0.4);
  fill_normal(cell.bias(), rng);
  return cell;
}

// The float run of the test above, with +-1000 in every gate and the official
// float32 NaN condition (i < log sigmoid(f) - 88.7 at the first step).
TYPED_TEST(SLstmBackwardTyped, HugeGatePreactivationsGiveFiniteGradients) {
  using S = TypeParam;
  std::mt19937_64 rng(1702);
  const auto cell = random_cell<S>(8, 2, rng);
  auto x = random_sequence<S>(3, 16, 32, rng);
  std::bernoulli_distribution pick(0.3), sign(0.5);
  for (Index i = 0; i < x.matrix().size(); ++i) {
    if (pick(rng)) x.matrix().data()[i] = sign(rng) ? S(1000) : S(-1000);
  }
  for (Index u = 0; u < 8; ++u) x(1, 0, u) = S(-1000);
  auto state = cell.initial_state(3);
  Sequence<S> y;
  xlstm::SLstmTape<S> tape;
  cell.forward(x, state, y, tape);
  auto grad_state = cell.initial_state(3);
  for (Matrix<S>* s : {&grad_state.y, &grad_state.c, &grad_state.n, &grad_state.m}) {
    fill_normal(*s, rng);
  }
  const auto grad_y = random_sequence<S>(3, 16, 8, rng);
  xlstm::SLstmCellGradients<S> grads(cell);
  Sequence<S> grad_x;
  xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);
  EXPECT_TRUE(test_util::AllFinite(grads.recurrent_kernel()));
  EXPECT_TRUE(test_util::AllFinite(grads.bias()));
  EXPECT_TRUE(test_util::AllFinite(grad_x.matrix()));
  EXPECT_TRUE(test_util::AllFinite(grad_state.m));
  EXPECT_TRUE(test_util::AllFinite(grad_state.y));
}

// golden README §11.2: from a zero state, shifting the input-gate
// pre-activations of a unit shifts m only, so the input-gate rows of the bias
// gradient are sum_b dL/dm_final[b, :]: zero when the loss does not see m.
TYPED_TEST(SLstmBackwardTyped, InputGateBiasGradientIsTheFinalMCotangent) {
  using S = TypeParam;
  const Index batch = 3, time = 9, h = 10;
  std::mt19937_64 rng(1800);
  const auto cell = random_cell<S>(h, 2, rng);
  const auto x = random_sequence<S>(batch, time, 4 * h, rng);
  const auto grad_y = random_sequence<S>(batch, time, h, rng);
  for (const bool loss_sees_m : {false, true}) {
    SCOPED_TRACE(loss_sees_m ? "loss sees m" : "loss does not see m");
    auto state = cell.initial_state(batch);
    Sequence<S> y;
    xlstm::SLstmTape<S> tape;
    cell.forward(x, state, y, tape);
    auto grad_state = cell.initial_state(batch);
    for (Matrix<S>* s : {&grad_state.y, &grad_state.c, &grad_state.n}) fill_normal(*s, rng);
    if (loss_sees_m) fill_normal(grad_state.m, rng);
    const Matrix<S> grad_m = grad_state.m;
    xlstm::SLstmCellGradients<S> grads(cell);
    Sequence<S> grad_x;
    xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);
    const auto expected = grad_m.colwise().sum().transpose().eval();
    const double scale = grads.bias().cwiseAbs().maxCoeff();
    // Rounding of sums over B*T terms of size ~scale.
    const double tol = test_util::per_scalar<S>(1e-5, 1e-13) * scale;
    EXPECT_LE(test_util::max_abs_diff(grads.bias().head(h), expected), tol);
  }
}

// Same names and shapes as the cell's parameters; accumulation across calls;
// zero(); a tape serves one backward.
TYPED_TEST(SLstmBackwardTyped, GradientsAreNamedLikeParametersAndAccumulate) {
  using S = TypeParam;
  std::mt19937_64 rng(1900);
  const auto cell = random_cell<S>(12, 3, rng);
  xlstm::SLstmCellGradients<S> grads(cell);
  const auto params = xlstm::parameter_list(cell, "layer.");
  const auto grad_list = xlstm::parameter_list(grads, "layer.");
  ASSERT_EQ(params.size(), grad_list.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(grad_list[i].name, params[i].name);
    EXPECT_EQ(grad_list[i].shape, params[i].shape);
  }

  const auto x = random_sequence<S>(2, 5, 48, rng);
  const auto grad_y = random_sequence<S>(2, 5, 12, rng);
  auto run = [&](xlstm::SLstmTape<S>& tape) {
    auto state = cell.initial_state(2);
    Sequence<S> y, grad_x;
    cell.forward(x, state, y, tape);
    auto grad_state = cell.initial_state(2);
    xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);
  };
  xlstm::SLstmTape<S> tape;
  run(tape);
  const Matrix<S> once = grads.recurrent_kernel();
  run(tape);  // the same tape, recorded again
  EXPECT_TRUE(test_util::Close(grads.recurrent_kernel(), (2 * once).eval(),
                               test_util::per_scalar<S>(1e-6, 1e-14)));
  grads.zero();
  EXPECT_EQ(grads.recurrent_kernel().cwiseAbs().maxCoeff(), S(0));
  EXPECT_EQ(grads.bias().cwiseAbs().maxCoeff(), S(0));

  // The tape was consumed by the last backward.
  auto grad_state = cell.initial_state(2);
  Sequence<S> grad_x;
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x); }, "'tape'"));
}

// Heads are independent, so the backward gives the same bits with any thread
// count. H 512 in 4 heads: a kernel large enough for the per-head parallel
// loop (when built with OpenMP).
TYPED_TEST(SLstmBackwardTyped, SameBitsWithAnyThreadCount) {
  using S = TypeParam;
  std::mt19937_64 rng(2100);
  const auto cell = random_cell<S>(512, 4, rng);
  const auto x = random_sequence<S>(3, 4, 4 * 512, rng);
  const auto grad_y = random_sequence<S>(3, 4, 512, rng);
  struct Result {
    Matrix<S> kernel, initial_y;
    Sequence<S> grad_x;
  };
  auto run = [&](int threads) {
    xlstm::set_num_threads(threads);
    auto state = cell.initial_state(3), grad_state = cell.initial_state(3);
    Sequence<S> y, grad_x;
    xlstm::SLstmTape<S> tape;
    cell.forward(x, state, y, tape);
    xlstm::SLstmCellGradients<S> grads(cell);
    xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);
    return Result{grads.recurrent_kernel(), grad_state.y, grad_x};
  };
  const int saved = xlstm::num_threads();
  const Result one = run(1), two = run(2);
  xlstm::set_num_threads(saved);
  EXPECT_TRUE(test_util::BitIdentical(one.kernel, two.kernel));
  EXPECT_TRUE(test_util::BitIdentical(one.initial_y, two.initial_y));
  EXPECT_TRUE(test_util::BitIdentical(one.grad_x.matrix(), two.grad_x.matrix()));
}

// The tape holds raw = x + R y + b (math §2.3) of every row at every step,
// including rows whose sequence has ended, and the states before each step.
// Heads of 56 units: the float forward with AVX-512 sums them in the
// packets of its pointwise update (slstm_pointwise.hpp) and the rest by
// expressions, every other forward by expressions. Checked against the sum in double from the
// taped y, to the rounding of a sum of DH + 2 terms.
TYPED_TEST(SLstmBackwardTyped, TapeHoldsThePreActivationsOfEveryRowAndStep) {
  using S = TypeParam;
  const Index batch = 3, time = 5, h = 112, heads = 2, dh = h / heads;
  std::mt19937_64 rng(2101);
  const auto cell = random_cell<S>(h, heads, rng);
  const auto x = random_sequence<S>(batch, time, 4 * h, rng);
  auto state = cell.initial_state(batch);
  Sequence<S> y;
  xlstm::SLstmTape<S> tape;
  cell.forward(x, Lengths{time, 2, 0}, state, y, tape);
  ASSERT_EQ(tape.raw.rows(), time * batch);
  const double eps = double(std::numeric_limits<S>::epsilon());
  double worst = 0;
  for (Index t = 0; t < time; ++t) {
    for (Index b = 0; b < batch; ++b) {
      for (Index head = 0; head < heads; ++head) {
        for (Index g = 0; g < 4; ++g) {
          for (Index j = 0; j < dh; ++j) {
            const Index unit = g * h + head * dh + j, row = head * 4 * dh + g * dh + j;
            double sum = double(x(b, t, unit)) + double(cell.bias()(unit)), scale = std::abs(sum);
            for (Index i = 0; i < dh; ++i) {
              const double term = double(cell.recurrent_kernel()(row, i)) *
                                  double(tape.y(t * batch + b, head * dh + i));
              sum += term;
              scale += std::abs(term);
            }
            const double error = std::abs(double(tape.raw(t * batch + b, row)) - sum);
            worst = std::max(worst, error / scale);
            ASSERT_LE(error, double(dh + 2) * eps * scale)
                << "t " << t << ", row " << b << ", head " << head << ", gate " << g << ", unit "
                << j;
          }
        }
      }
    }
  }
  std::printf("  worst error %.2e of the sum of |terms| (eps %.2e)\n", worst, eps);
}

// The pointwise backward of one unit written one unit at a time, as math
// §2.8 reads (the reference for the array version the cell runs). `a` is
// recomputed with the forward's log-sigmoid, as the cell does.
template <typename S>
struct UnitReference {
  S raw_i, raw_f, raw_z, raw_o, c0, n0, m0, y1, n1, m1, gy, gc, gn, gm;
  bool first;

  static S clamped(S grad, S e) {
    if (e < S(1)) return grad * e;
    if (e == S(1)) return S(0.5) * grad;
    return S(0);
  }
  static S log_sigmoid(S x) {
    Eigen::Array<S, 1, 1> v;
    v(0) = x;
    return xlstm::log_sigmoid(v)(0);
  }
  static S sigmoid(S x) { return S(1) / (S(1) + std::exp(-x)); }
  static S inside(S x) { return std::abs(x) <= xlstm::gate_limit<S>() ? S(1) : S(0); }

  // The forward step from (c0, n0, m0): y1, n1, m1.
  void forward() {
    const S i = xlstm::clamp_gate(raw_i);
    const S a = m0 + log_sigmoid(xlstm::clamp_gate(raw_f));
    m1 = first ? i : std::max(i, a);
    const S ig = std::min(std::exp(i - m1), S(1)), fg = std::min(std::exp(a - m1), S(1));
    const S c1 = fg * c0 + ig * std::tanh(raw_z);
    n1 = fg * n0 + ig;
    y1 = sigmoid(raw_o) * c1 / n1;
  }

  void backward() {
    const S i = xlstm::clamp_gate(raw_i), f = xlstm::clamp_gate(raw_f);
    const S o = sigmoid(raw_o), tz = std::tanh(raw_z);
    const S dc = gc + gy * o / n1, dn = gn - gy * y1 / n1;
    const S d_raw_o = gy * y1 * sigmoid(-raw_o);
    const bool a_taken = !first && m1 != i;
    const S a = a_taken ? m1 : m0 + log_sigmoid(f);
    const S e_i = std::exp(i - m1), e_f = std::exp(a - m1);
    const S d_raw_z = dc * std::min(e_i, S(1)) * (S(1) - tz * tz);
    const S to_i = clamped(dc * tz + dn, e_i), to_a = clamped(dc * c0 + dn * n0, e_f);
    const S dm = gm - to_i - to_a;
    S dm_to_i = dm, dm_to_a = 0;
    if (a_taken) {
      dm_to_i = 0;
      dm_to_a = dm;
    } else if (!first && a == i) {
      dm_to_i = dm_to_a = S(0.5) * dm;
    }
    const S d_a = to_a + dm_to_a;
    raw_i = inside(raw_i) == S(0) ? S(0) : to_i + dm_to_i;
    raw_f = inside(raw_f) == S(0) ? S(0) : d_a * sigmoid(-f);
    raw_z = d_raw_z;
    raw_o = d_raw_o;
    gc = dc * std::min(e_f, S(1));
    gn = dn * std::min(e_f, S(1));
    gm = d_a;
  }
};

// The array version (detail::slstm_units_backward) against the reference,
// unit by unit, for every count up to kUnitLanes: first steps (n0 = 0), ties
// of the max (i = a, chosen so that every log-sigmoid gives a = m0 exactly),
// either gate the max, e = 1 exactly, and +-1000 pre-activations. exp and
// tanh may differ in the last bits between the two.
TYPED_TEST(SLstmBackwardTyped, UnitsBackwardMatchesOneUnitAtATime) {
  using S = TypeParam;
  constexpr Index lanes = xlstm::detail::kUnitLanes;
  const double tol = test_util::per_scalar<S>(2e-5, 1e-13);
  std::mt19937_64 rng(2300);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::uniform_int_distribution<int> scenario(0, 4);
  for (int round = 0; round < 40; ++round) {
    const Index count = 1 + round % lanes;
    std::vector<UnitReference<S>> ref(std::size_t(count), UnitReference<S>{});
    for (auto& r : ref) {
      r.raw_i = S(normal(rng));
      r.raw_f = S(normal(rng) + 2);
      r.raw_z = S(normal(rng));
      r.raw_o = S(normal(rng));
      r.c0 = S(normal(rng));
      r.n0 = S(1 + std::abs(normal(rng)));
      r.m0 = S(normal(rng));
      r.first = false;
      switch (scenario(rng)) {
        case 0:  // the first step from a zero state
          r.c0 = r.n0 = r.m0 = 0;
          r.first = true;
          break;
        case 1:  // a tie of the max: log sigmoid(200) is below half an ulp of m0
          r.raw_f = S(200);
          r.m0 = S(0.5) + std::abs(r.m0);
          r.raw_i = r.m0;
          break;
        case 2:  // huge pre-activations
          r.raw_i = normal(rng) > 0 ? S(1000) : S(-1000);
          r.raw_f = normal(rng) > 0 ? S(1000) : S(-1000);
          break;
        default:
          break;
      }
      r.forward();
      r.gy = S(normal(rng));
      r.gc = S(normal(rng));
      r.gn = S(normal(rng));
      r.gm = S(normal(rng));
    }
    // Structure of arrays for the lane version.
    auto column = [&](S UnitReference<S>::*field) {
      std::vector<S> v;
      for (const auto& r : ref) v.push_back(r.*field);
      return v;
    };
    auto ri = column(&UnitReference<S>::raw_i), rf = column(&UnitReference<S>::raw_f);
    auto rz = column(&UnitReference<S>::raw_z), ro = column(&UnitReference<S>::raw_o);
    const auto c0 = column(&UnitReference<S>::c0), n0 = column(&UnitReference<S>::n0);
    const auto m0 = column(&UnitReference<S>::m0), y1 = column(&UnitReference<S>::y1);
    const auto n1 = column(&UnitReference<S>::n1), m1 = column(&UnitReference<S>::m1);
    const auto gy = column(&UnitReference<S>::gy);
    auto gc = column(&UnitReference<S>::gc), gn = column(&UnitReference<S>::gn);
    auto gm = column(&UnitReference<S>::gm);
    xlstm::detail::SLstmUnits<S> units;
    units.count = count;
    units.raw_i = ri.data();
    units.raw_f = rf.data();
    units.raw_z = rz.data();
    units.raw_o = ro.data();
    units.c0 = c0.data();
    units.n0 = n0.data();
    units.m0 = m0.data();
    units.y1 = y1.data();
    units.n1 = n1.data();
    units.m1 = m1.data();
    units.gy = gy.data();
    units.gc = gc.data();
    units.gn = gn.data();
    units.gm = gm.data();
    xlstm::detail::slstm_units_backward(units, /*whole_batch=*/false, false);
    for (Index k = 0; k < count; ++k) {
      auto& r = ref[std::size_t(k)];
      r.backward();
      const std::size_t j = std::size_t(k);
      const S got[] = {ri[j], rf[j], rz[j], ro[j], gc[j], gn[j], gm[j]};
      const S want[] = {r.raw_i, r.raw_f, r.raw_z, r.raw_o, r.gc, r.gn, r.gm};
      for (int q = 0; q < 7; ++q) {
        ASSERT_TRUE(std::isfinite(got[q])) << "round " << round << " unit " << k << " output " << q;
        ASSERT_LE(std::abs(double(got[q]) - double(want[q])), tol * (1 + std::abs(double(want[q]))))
            << "round " << round << " unit " << k << " output " << q << ": " << got[q] << " vs "
            << want[q];
      }
    }
  }
}

TYPED_TEST(SLstmBackwardTyped, RejectsMismatchedArguments) {
  using S = TypeParam;
  std::mt19937_64 rng(2000);
  xlstm::SLstmCell<S> cell(test_util::slstm_cell_config(8, 2));
  const xlstm::SLstmCell<S> other(test_util::slstm_cell_config(12, 2));
  const auto x = random_sequence<S>(2, 4, 32, rng);
  auto state = cell.initial_state(2);
  Sequence<S> y, grad_x;
  xlstm::SLstmTape<S> tape;
  cell.forward(x, state, y, tape);
  xlstm::SLstmCellGradients<S> grads(cell), other_grads(other);
  auto grad_state = cell.initial_state(2);
  const auto grad_y = random_sequence<S>(2, 4, 8, rng);

  const auto short_grad_y = random_sequence<S>(2, 3, 8, rng);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(cell, tape, short_grad_y, grad_state, grads, grad_x); },
      {"'grad_y'", "2 x 4 x 8", "2 x 3 x 8"}));
  auto wrong_state = cell.initial_state(3);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(cell, tape, grad_y, wrong_state, grads, grad_x); }, "'grad_state'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(cell, tape, grad_y, grad_state, other_grads, grad_x); }, "'grads'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(other, tape, grad_y, grad_state, other_grads, grad_x); }, "'tape'"));
  // A tape of function lstm (no n, m) for a cell of function slstm.
  const xlstm::SLstmCell<S> lstm(test_util::slstm_cell_config(
      8, 2, xlstm::FirstStepRule::whole_batch, xlstm::SLstmFunction::lstm));
  xlstm::SLstmTape<S> lstm_tape;
  auto lstm_state = lstm.initial_state(2);
  lstm.forward(x, lstm_state, y, lstm_tape);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(cell, lstm_tape, grad_y, grad_state, grads, grad_x); },
                       {"'tape'", "function slstm"}));
  // A rejected call leaves the tape recorded.
  EXPECT_NO_THROW(xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x));
}

}  // namespace

}  // namespace xlstm_test_slstm_backward
