// The mLSTM cell's backward pass (cells/mlstm_backward.hpp, math §4.7) in its
// three forms against float64 central finite differences of the same C++
// forward, in random directions, at odd shapes, T = 1, non-zero initial
// states, both state conventions, input gates large enough for the eps·e^m
// path to matter, and ragged lengths; the forms against each other for every
// chunk size 1..T; finite gradients for gate pre-activations of +-1000 (where
// exp(-m) overflows and the official backward gives NaN); the API's contracts.
// The goldens against the official autograd are in test_golden.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
#include "xlstm/core/parallel.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_mlstm_backward {

namespace {

using test_util::fill_normal;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using xlstm::form_name;
using xlstm::Index;
using xlstm::Lengths;
using xlstm::Matrix;
using xlstm::MLstmForm;
using xlstm::MLstmStateConvention;
using xlstm::Sequence;

struct Case {
  std::string name;
  Index batch, time, num_heads, qk_head_dim, v_head_dim;
  MLstmForm form;
  Index chunk_size = 3;
  bool prefix_state = true;  // start from the state after a few steps
  Lengths lengths = {};
  MLstmStateConvention convention = MLstmStateConvention::scaled_keys;
  double igate_mean = 0;  // ~14 and more: the eps·e^m term is O(1) (math §4.7)
};

// Everything the loss depends on, and the cotangents that define it:
// L = sum(h * grad_h) + sum over the final state of (state * cotangent).
template <typename S>
struct Problem {
  xlstm::MLstmCell<S> cell;
  MLstmForm form;
  Sequence<S> q, k, v, igate, fgate;
  xlstm::MLstmState<S> start;
  Sequence<S> grad_h;
  xlstm::MLstmState<S> grad_final;
  Lengths lengths;
};

template <typename S>
Problem<S> make_problem(const Case& c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  xlstm::MLstmCell<S> cell(test_util::mlstm_cell_config(c.num_heads, c.qk_head_dim, c.v_head_dim,
                                                        c.convention, c.chunk_size));
  const Index nh = c.num_heads, dqk = c.qk_head_dim, dv = c.v_head_dim;
  auto inputs = [&](Index time) {
    return std::vector<Sequence<S>>{random_sequence<S>(c.batch, time, nh * dqk, rng),
                                    random_sequence<S>(c.batch, time, nh * dqk, rng),
                                    random_sequence<S>(c.batch, time, nh * dv, rng),
                                    random_sequence<S>(c.batch, time, nh, rng, c.igate_mean, 2.0),
                                    random_sequence<S>(c.batch, time, nh, rng, 2.0, 1.5)};
  };
  auto x = inputs(c.time);
  auto start = cell.initial_state(c.batch);
  if (c.prefix_state) {
    const auto prefix = inputs(4);
    Sequence<S> unused;
    cell.forward(prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], start, unused,
                 MLstmForm::recurrent);
  }
  auto grad_h = random_sequence<S>(c.batch, c.time, nh * dv, rng);
  xlstm::zero_padding(grad_h, c.lengths);
  auto grad_final = cell.initial_state(c.batch);
  fill_normal(grad_final.C, rng);
  fill_normal(grad_final.n, rng);
  fill_normal(grad_final.m, rng);
  return {std::move(cell),       c.form,           std::move(x[0]),
          std::move(x[1]),       std::move(x[2]),  std::move(x[3]),
          std::move(x[4]),       std::move(start), std::move(grad_h),
          std::move(grad_final), c.lengths};
}

// L in long double (the differences of two nearby losses lose fewer digits).
long double loss(const Problem<double>& p) {
  auto state = p.start;
  Sequence<double> h;
  p.cell.forward(p.q, p.k, p.v, p.igate, p.fgate, p.lengths, state, h, p.form);
  long double sum = 0;
  auto add = [&](const auto& a, const auto& b) {
    for (Index i = 0; i < a.size(); ++i) sum += (long double)a.data()[i] * b.data()[i];
  };
  add(h.matrix(), p.grad_h.matrix());
  add(state.C, p.grad_final.C);
  add(state.n, p.grad_final.n);
  add(state.m, p.grad_final.m);
  return sum;
}

template <typename S>
struct Analytic {
  xlstm::MLstmInputGradients<S> inputs;
  xlstm::MLstmState<S> grad_start;
};

template <typename S>
Analytic<S> analytic(const Problem<S>& p) {
  auto state = p.start;
  Sequence<S> h;
  xlstm::MLstmTape<S> tape;
  p.cell.forward(p.q, p.k, p.v, p.igate, p.fgate, p.lengths, state, h, tape, p.form);
  Analytic<S> a{{}, p.grad_final};
  xlstm::backward(p.cell, tape, p.grad_h, a.grad_start, a.inputs);
  return a;
}

// Sets a fraction of the gate pre-activations to +-1000.
template <typename S>
void set_huge_gates(Problem<S>& p, double fraction, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution pick(fraction), sign(0.5);
  for (Sequence<S>* gates : {&p.igate, &p.fgate}) {
    for (Index i = 0; i < gates->matrix().size(); ++i) {
      if (pick(rng)) gates->matrix().data()[i] = sign(rng) ? S(1000) : S(-1000);
    }
  }
}

// Every gradient of `p` against finite differences (test_util).
double expect_gradients_match_differences(Problem<double>& p, std::uint64_t seed) {
  const Analytic<double> a = analytic(p);
  std::vector<test_util::GradientTarget> targets = {
      {"q", p.q.matrix().data(), p.q.matrix().size(), a.inputs.q.matrix().data()},
      {"k", p.k.matrix().data(), p.k.matrix().size(), a.inputs.k.matrix().data()},
      {"v", p.v.matrix().data(), p.v.matrix().size(), a.inputs.v.matrix().data()},
      {"igate", p.igate.matrix().data(), p.igate.matrix().size(), a.inputs.igate.matrix().data()},
      {"fgate", p.fgate.matrix().data(), p.fgate.matrix().size(), a.inputs.fgate.matrix().data()},
  };
  if (p.form != MLstmForm::parallel) {  // the parallel form starts from the zero state
    targets.push_back({"initial C", p.start.C.data(), p.start.C.size(), a.grad_start.C.data()});
    targets.push_back({"initial n", p.start.n.data(), p.start.n.size(), a.grad_start.n.data()});
    targets.push_back({"initial m", p.start.m.data(), p.start.m.size(), a.grad_start.m.data()});
  }
  return test_util::expect_gradients_match_differences([&] { return loss(p); }, targets, seed + 1);
}

TEST(MLstmBackward, MatchesFiniteDifferences) {
  using F = MLstmForm;
  const auto unscaled = MLstmStateConvention::unscaled_keys;
  const std::vector<Case> cases = {
      {"parallel, odd shape", 3, 7, 3, 5, 7, F::parallel, 3, false},
      {"parallel, T = 1", 2, 1, 2, 4, 3, F::parallel, 3, false},
      {"parallel, big input gates", 2, 6, 2, 4, 5, F::parallel, 3, false, {}, unscaled, 14.0},
      {"chunkwise L=3, odd shape, prefix state", 3, 7, 3, 5, 7, F::chunkwise},
      {"chunkwise L=1", 2, 5, 2, 3, 4, F::chunkwise, 1},
      {"chunkwise L=4, zero state, unscaled keys",
       2,
       9,
       2,
       4,
       3,
       F::chunkwise,
       4,
       false,
       {},
       unscaled},
      {"chunkwise L=8 > T", 2, 5, 1, 6, 5, F::chunkwise, 8},
      {"chunkwise T = 1, prefix state", 2, 1, 2, 4, 3, F::chunkwise},
      {"chunkwise, big input gates",
       2,
       8,
       2,
       4,
       5,
       F::chunkwise,
       3,
       true,
       {},
       MLstmStateConvention::scaled_keys,
       14.0},
      {"chunkwise, ragged", 3, 7, 2, 3, 5, F::chunkwise, 3, true, {7, 2, 0}},
      {"recurrent, odd shape, prefix state", 3, 7, 3, 5, 7, F::recurrent},
      {"recurrent T = 1, zero state", 2, 1, 2, 4, 3, F::recurrent, 3, false},
      {"recurrent, big input gates, unscaled keys",
       2,
       8,
       2,
       4,
       5,
       F::recurrent,
       3,
       true,
       {},
       unscaled,
       14.0},
      {"recurrent, ragged", 3, 7, 2, 3, 5, F::recurrent, 2, true, {5, 7, 0}},
  };
  std::uint64_t seed = 4700;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto p = make_problem<double>(c, seed);
    const double worst = expect_gradients_match_differences(p, seed++);
    std::printf("  %-46s worst relative error %.2e\n", c.name.c_str(), worst);
  }
}

// Gate pre-activations of +-1000: the stabiliser m falls by ~1000 per step
// with a forget gate of -1000, exp(-m) overflows (float and double), h = 0
// there, and the official backward returns NaN (math §4.7); this one returns
// finite gradients, which the differences confirm.
TEST(MLstmBackward, HugeGatePreactivationsGiveFiniteExactGradients) {
  for (const MLstmForm form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(form_name(form));
    Case c{"+-1000 gates", 2, 6, 2, 3, 4, form, 4, false};
    auto p = make_problem<double>(c, 4800);
    set_huge_gates(p, 0.4, 4801);
    // Row 0, head 0: every gate -1000, so m_t <= -1000 and exp(-m) = inf.
    for (Index t = 0; t < c.time; ++t) p.igate(0, t, 0) = p.fgate(0, t, 0) = -1000;
    const auto a = analytic(p);
    for (const Sequence<double>* g :
         {&a.inputs.q, &a.inputs.k, &a.inputs.v, &a.inputs.igate, &a.inputs.fgate}) {
      EXPECT_TRUE(test_util::AllFinite(g->matrix()));
    }
    EXPECT_TRUE(test_util::AllFinite(a.grad_start.C));
    EXPECT_TRUE(test_util::AllFinite(a.grad_start.m));
    const double worst = expect_gradients_match_differences(p, 4800);
    std::printf("  %-10s worst relative error %.2e\n", form_name(form), worst);
  }
}

template <typename S>
class MLstmBackwardTyped : public ::testing::Test {};
// The empty third argument: clang's -Wpedantic rejects a variadic macro
// called without one (-Wgnu-zero-variadic-macro-arguments).
TYPED_TEST_SUITE(MLstmBackwardTyped, test_util::Scalars, ::testing::internal::DefaultNameGenerator);

template <typename S>
Analytic<S> analytic_with(Problem<S> p, MLstmForm form, Index chunk_size) {
  auto config = p.cell.config();
  config.chunk_size = chunk_size;
  p.cell = xlstm::MLstmCell<S>(config);
  p.form = form;
  return analytic(p);
}

// The largest difference between two sets of gradients, relative to the
// largest gradient of each tensor.
template <typename S>
double relative_difference(const Analytic<S>& a, const Analytic<S>& b, bool with_state) {
  double worst = 0;
  auto compare = [&](const auto& x, const auto& y) {
    const double scale = std::max<double>(x.cwiseAbs().maxCoeff(), 1e-30);
    worst = std::max(worst, double(test_util::max_abs_diff(x, y)) / scale);
  };
  compare(a.inputs.q.matrix(), b.inputs.q.matrix());
  compare(a.inputs.k.matrix(), b.inputs.k.matrix());
  compare(a.inputs.v.matrix(), b.inputs.v.matrix());
  compare(a.inputs.igate.matrix(), b.inputs.igate.matrix());
  compare(a.inputs.fgate.matrix(), b.inputs.fgate.matrix());
  if (with_state) {
    compare(a.grad_start.C, b.grad_start.C);
    compare(a.grad_start.n, b.grad_start.n);
    compare(a.grad_start.m, b.grad_start.m);
  }
  return worst;
}

// Chunkwise and recurrent compute the same function (math §4.5): the same
// gradients for every chunk size 1..T, from a state and with ragged rows. The
// parallel form too, where its stabiliser equals theirs: with a first input
// gate >= 0, max_s logD[t, s] >= b_t, so the recurrent m_0 = 0 never wins.
TYPED_TEST(MLstmBackwardTyped, FormsGiveTheSameGradientsForEveryChunkSize) {
  using S = TypeParam;
  const double tol = test_util::per_scalar<S>(2e-4, 1e-11);
  for (const bool from_state : {false, true}) {
    SCOPED_TRACE(from_state ? "from a state, ragged" : "zero state");
    const Index time = 11;
    Case c{"forms", 3, time, 2, 5, 6, MLstmForm::recurrent, 1, from_state};
    if (from_state) c.lengths = {11, 6, 1};
    auto p = make_problem<S>(c, 4900);
    for (Index b = 0; b < c.batch; ++b) {
      for (Index h = 0; h < c.num_heads; ++h) p.igate(b, 0, h) = std::abs(p.igate(b, 0, h));
    }
    const auto recurrent = analytic_with(p, MLstmForm::recurrent, 4);
    double worst = 0;
    for (Index chunk = 1; chunk <= time + 1; ++chunk) {
      const auto chunkwise = analytic_with(p, MLstmForm::chunkwise, chunk);
      const double diff = relative_difference(recurrent, chunkwise, true);
      EXPECT_LE(diff, tol) << "chunk size " << chunk;
      worst = std::max(worst, diff);
      // The recurrent form's segments have the chunk size too.
      const auto segments = analytic_with(p, MLstmForm::recurrent, chunk);
      EXPECT_LE(relative_difference(recurrent, segments, true), tol) << "segment " << chunk;
    }
    if (!from_state) {
      const auto parallel = analytic_with(p, MLstmForm::parallel, 4);
      // Its outputs do not depend on the (zero) initial state.
      const double diff = relative_difference(recurrent, parallel, false);
      EXPECT_LE(diff, tol) << "parallel";
      worst = std::max(worst, diff);
    }
    std::printf("  %s: worst relative difference %.2e\n", from_state ? "state" : "zero", worst);
  }
}

// The float run with +-1000 gates: finite gradients in every form.
TYPED_TEST(MLstmBackwardTyped, HugeGatePreactivationsGiveFiniteGradients) {
  using S = TypeParam;
  for (const MLstmForm form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(form_name(form));
    Case c{"+-1000", 3, 16, 2, 4, 4, form, 5, false};
    auto p = make_problem<S>(c, 5000);
    set_huge_gates(p, 0.3, 5001);
    // float: m < -88.7 after one step; input gates of a row all below -89
    // make the parallel form's exp(-m) overflow too.
    for (Index t = 0; t < c.time; ++t) p.igate(1, t, 1) = p.fgate(1, t, 1) = S(-1000);
    const auto a = analytic(p);
    for (const Sequence<S>* g :
         {&a.inputs.q, &a.inputs.k, &a.inputs.v, &a.inputs.igate, &a.inputs.fgate}) {
      EXPECT_TRUE(test_util::AllFinite(g->matrix()));
    }
    EXPECT_TRUE(test_util::AllFinite(a.grad_start.C));
    EXPECT_TRUE(test_util::AllFinite(a.grad_start.n));
    EXPECT_TRUE(test_util::AllFinite(a.grad_start.m));
  }
}

// A recording forward gives the same bits as a plain one; (batch row, head)
// items are independent, so the backward gives the same bits with any thread
// count.
TYPED_TEST(MLstmBackwardTyped, RecordingChangesNothingAndThreadsDoNotMatter) {
  using S = TypeParam;
  for (const MLstmForm form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    SCOPED_TRACE(form_name(form));
    Case c{"threads", 3, 40, 4, 32, 32, form, 16, form != MLstmForm::parallel};
    const auto p = make_problem<S>(c, 5100);
    auto plain_state = p.start;
    Sequence<S> plain_h;
    p.cell.forward(p.q, p.k, p.v, p.igate, p.fgate, plain_state, plain_h, form);
    auto state = p.start;
    Sequence<S> h;
    xlstm::MLstmTape<S> tape;
    p.cell.forward(p.q, p.k, p.v, p.igate, p.fgate, state, h, tape, form);
    EXPECT_TRUE(test_util::BitIdentical(plain_h.matrix(), h.matrix()));
    EXPECT_TRUE(test_util::BitIdentical(plain_state.C, state.C));

    const int saved = xlstm::num_threads();
    xlstm::set_num_threads(1);
    const auto one = analytic(p);
    xlstm::set_num_threads(2);
    const auto two = analytic(p);
    xlstm::set_num_threads(saved);
    EXPECT_TRUE(test_util::BitIdentical(one.inputs.q.matrix(), two.inputs.q.matrix()));
    EXPECT_TRUE(test_util::BitIdentical(one.inputs.fgate.matrix(), two.inputs.fgate.matrix()));
    EXPECT_TRUE(test_util::BitIdentical(one.grad_start.C, two.grad_start.C));
  }
}

TYPED_TEST(MLstmBackwardTyped, RejectsMismatchedArgumentsAndConsumesTheTape) {
  using S = TypeParam;
  Case c{"api", 2, 5, 2, 4, 3, MLstmForm::chunkwise, 2, false};
  const auto p = make_problem<S>(c, 5200);
  const xlstm::MLstmCell<S> other(test_util::mlstm_cell_config(2, 4, 5));
  auto state = p.start;
  Sequence<S> h;
  xlstm::MLstmTape<S> tape;
  xlstm::MLstmInputGradients<S> grads;
  auto grad_state = p.grad_final;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(p.cell, tape, p.grad_h, grad_state, grads); },
                               "'tape'"));
  p.cell.forward(p.q, p.k, p.v, p.igate, p.fgate, state, h, tape, c.form);

  std::mt19937_64 rng(5201);
  const auto short_grad_h = random_sequence<S>(2, 4, 6, rng);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(p.cell, tape, short_grad_h, grad_state, grads); },
                       {"'grad_h'", "2 x 5 x 6", "2 x 4 x 6"}));
  auto wrong_state = p.cell.initial_state(3);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(p.cell, tape, p.grad_h, wrong_state, grads); },
                               "'grad_state'"));
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(other, tape, p.grad_h, grad_state, grads); },
                               "'tape'"));
  // A rejected call leaves the tape recorded; a backward consumes it.
  EXPECT_NO_THROW(xlstm::backward(p.cell, tape, p.grad_h, grad_state, grads));
  EXPECT_EQ(grads.q.batch(), 2);
  EXPECT_EQ(grads.v.features(), 6);
  EXPECT_EQ(grads.igate.features(), 2);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(p.cell, tape, p.grad_h, grad_state, grads); },
                               "'tape'"));
}

}  // namespace

}  // namespace xlstm_test_mlstm_backward
