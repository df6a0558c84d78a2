// The sLSTM block's backward pass (blocks/slstm_block_backward.hpp, math §3.4)
// against float64 central finite differences of the same C++ forward, in
// random directions: odd shapes, T = 1, an initial state (conv window and
// cell state) with cotangents on the final state, a zero state with a loss on
// y only, no conv, one head, no feed-forward, function lstm, other
// activations, ragged lengths. Also: the recording forward gives the plain
// forward's output, names, accumulation, consumed tapes, argument checks.
// The goldens against the official autograd are in test_golden.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "block_backward_tests.hpp"
#include "test_util.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/blocks/slstm_block_backward.hpp"
#include "xlstm/core/parallel.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_slstm_block_backward {

namespace {

using test_util::dot;
using test_util::expect_gradients_match_differences;
using test_util::fill_normal;
using test_util::GradientTarget;
using test_util::parameter_targets;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using xlstm::Index;
using xlstm::Lengths;
using xlstm::Sequence;

using Block = xlstm::SLstmBlock<double>;
using State = xlstm::SLstmBlockState<double>;

struct Case {
  std::string name;
  Index batch, time, embedding_dim, num_heads, kernel_size;
  bool state_in = true;  // a prefix's state, and cotangents on the final state
  Lengths lengths = {};
  bool feedforward = true;
  std::string act_fn = "gelu";
  std::string function = "slstm";
  bool group_norm_weight = true;
  bool ffn_bias = false;
  bool rms_pre_norm = false;  // the TiRex block: RMSNorm pre-norms, split SwiGLU (math §13.3)
};

xlstm::SLstmBlockConfig config_of(const Case& c) {
  auto config = test_util::slstm_block_config(c.embedding_dim, c.num_heads);
  config.slstm.conv1d_kernel_size = c.kernel_size;
  config.slstm.function = c.function;
  config.slstm.group_norm_weight = c.group_norm_weight;
  if (c.feedforward) {
    config.feedforward->act_fn = c.act_fn;
    config.feedforward->bias = c.ffn_bias;
    config.feedforward->round_proj_up_to_multiple_of = 4;  // a small, odd-ish width
  } else {
    config.feedforward.reset();
  }
  if (c.rms_pre_norm) {
    config.pre_norm = xlstm::PreNormKind::rms_norm;
    if (config.feedforward) {
      config.feedforward->act_fn = "swish";
      config.feedforward->gate_layout = xlstm::GateLayout::split;
    }
  }
  return config;
}

// The tensors of a state (sliced ones part by part), in visiting order.
std::vector<std::pair<std::string, double*>> state_tensors(State& s) {
  std::vector<std::pair<std::string, double*>> out;
  s.for_each_tensor([&](const xlstm::ParameterRef<double>& r) {
    out.push_back({r.name + "[" + std::to_string(r.part) + "]", r.data});
  });
  return out;
}

struct Problem {
  Block block;
  Sequence<double> x, grad_y;
  State start, grad_final;
  Lengths lengths;
};

Problem make_problem(const Case& c, std::uint64_t seed) {
  Block block(config_of(c));
  test_util::randomize(block, seed, 0.3);
  std::mt19937_64 rng(seed);
  auto x = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  auto start = block.initial_state(c.batch);
  auto grad_final = block.initial_state(c.batch);
  if (c.state_in) {
    const auto prefix = random_sequence<double>(c.batch, 3, c.embedding_dim, rng);
    Sequence<double> unused;
    block.forward(prefix, start, unused);
    fill_normal(grad_final.conv.window, rng);
    for (auto* m :
         {&grad_final.cell.y, &grad_final.cell.c, &grad_final.cell.n, &grad_final.cell.m}) {
      fill_normal(*m, rng);
    }
  }
  auto grad_y = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  return {std::move(block), std::move(x),          std::move(grad_y),
          std::move(start), std::move(grad_final), c.lengths};
}

long double loss(Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  p.block.forward(p.x, p.lengths, state, y);
  long double sum = dot(y.matrix(), p.grad_y.matrix());
  sum += dot(state.conv.window, p.grad_final.conv.window);
  sum += dot(state.cell.y, p.grad_final.cell.y) + dot(state.cell.c, p.grad_final.cell.c);
  sum += dot(state.cell.n, p.grad_final.cell.n) + dot(state.cell.m, p.grad_final.cell.m);
  return sum;
}

struct Analytic {
  xlstm::SLstmBlockGradients<double> grads;
  State grad_start;
  Sequence<double> grad_x;
};

Analytic analytic(const Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  xlstm::SLstmBlockTape<double> tape;
  p.block.forward(p.x, p.lengths, state, y, tape);
  Analytic a{xlstm::SLstmBlockGradients<double>(p.block), p.grad_final, {}};
  xlstm::backward(p.block, tape, p.grad_y, a.grad_start, a.grads, a.grad_x);
  return a;
}

TEST(SLstmBlockBackward, MatchesFiniteDifferences) {
  const std::vector<Case> cases = {
      {"odd shape, state in", 2, 5, 12, 3, 4},
      {"T = 1, state in", 3, 1, 8, 2, 4},
      {"zero state, loss on y only", 2, 6, 8, 4, 4, false},
      {"no conv, one head", 2, 4, 6, 1, 0},
      {"ragged lengths, state in", 3, 5, 8, 2, 3, true, {5, 2, 0}},
      {"ragged, no conv, zero state", 3, 4, 6, 3, 0, false, {1, 4, 3}},
      {"no feed-forward, kernel 2", 2, 4, 6, 2, 2, true, {}, false},
      {"function lstm", 2, 4, 6, 2, 4, true, {}, true, "gelu", "lstm"},
      {"relu^2 with bias, no group-norm weight",
       2,
       3,
       8,
       2,
       4,
       true,
       {},
       true,
       "relu^2",
       "slstm",
       false,
       true},
      {"swish", 1, 4, 6, 3, 1, true, {}, true, "swish"},
      {"TiRex block: RMSNorm, no conv, split SwiGLU",
       2,
       5,
       8,
       2,
       0,
       true,
       {},
       true,
       "swish",
       "slstm",
       true,
       false,
       true},
      {"RMSNorm pre-norm, conv, ragged, state in",
       3,
       4,
       6,
       3,
       3,
       true,
       {4, 1, 3},
       true,
       "gelu",
       "slstm",
       true,
       false,
       true},
  };
  std::uint64_t seed = 3000;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Problem p = make_problem(c, seed);
    const Analytic a = analytic(p);
    auto targets = parameter_targets(p.block, a.grads);
    targets.push_back({"x", p.x.matrix().data(), p.x.matrix().size(), a.grad_x.matrix().data()});
    if (c.state_in) {
      auto start = state_tensors(p.start);
      auto grad = state_tensors(const_cast<State&>(a.grad_start));
      ASSERT_EQ(start.size(), grad.size());
      const Index rows_cols = c.batch * c.embedding_dim;
      for (std::size_t i = 0; i < start.size(); ++i) {
        const bool conv = start[i].first.find("conv_state") != std::string::npos;
        const Index size = conv ? p.start.conv.window.size() : rows_cols;
        targets.push_back({"initial " + start[i].first, start[i].second, size, grad[i].second});
      }
    }
    const double worst =
        expect_gradients_match_differences([&] { return loss(p); }, targets, seed++);
    std::printf("  %-44s worst relative error %.2e\n", c.name.c_str(), worst);
    // Past a row's length the input gradient is zero.
    for (Index b = 0; b < c.batch; ++b) {
      const Index len = xlstm::length_of(c.lengths, b, c.time);
      EXPECT_EQ(a.grad_x.rows_of(b).bottomRows(c.time - len).cwiseAbs().sum(), 0.0);
    }
  }
}

template <typename S>
class SLstmBlockBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(SLstmBlockBackwardTyped, test_util::Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(SLstmBlockBackwardTyped, RecordingForwardGivesThePlainOutputAndState) {
  using S = TypeParam;
  xlstm::SLstmBlock<S> block(test_util::slstm_block_config(16, 4));
  test_util::randomize(block, 3100, 0.2);
  std::mt19937_64 rng(3101);
  const auto x = random_sequence<S>(3, 7, 16, rng);
  const Lengths lengths = {7, 3, 5};
  auto state = block.initial_state(3), taped_state = block.initial_state(3);
  Sequence<S> y, y_taped;
  block.forward(x, lengths, state, y);
  xlstm::SLstmBlockTape<S> tape;
  block.forward(x, lengths, taped_state, y_taped, tape);
  EXPECT_TRUE(test_util::BitIdentical(y_taped.matrix(), y.matrix()));
  EXPECT_TRUE(test_util::BitIdentical(taped_state.cell.c, state.cell.c));
  EXPECT_TRUE(test_util::BitIdentical(taped_state.conv.window, state.conv.window));
}

TYPED_TEST(SLstmBlockBackwardTyped, GradientsAreNamedLikeParametersAndAccumulate) {
  using S = TypeParam;
  for (const bool ffn : {true, false}) {
    auto config = test_util::slstm_block_config(12, 3);
    if (!ffn) config.feedforward.reset();
    xlstm::SLstmBlock<S> block(config);
    test_util::randomize(block, 3200, 0.2);
    block_backward_tests::expect_named_accumulating_gradients<xlstm::SLstmBlockTape<S>,
                                                              xlstm::SLstmBlockGradients<S>>(
        block, 2, 5, 3201);
  }
}

// The parallel loops split work by heads, panels and row ranges, never a sum,
// so the gradients have the same bits with any thread count. E 256 in 4
// heads: large enough for every parallel loop of the backward (with OpenMP).
TYPED_TEST(SLstmBlockBackwardTyped, SameBitsWithAnyThreadCount) {
  using S = TypeParam;
  xlstm::SLstmBlock<S> block(test_util::slstm_block_config(256, 4));
  test_util::randomize(block, 3400, 0.1);
  block_backward_tests::expect_same_bits_with_any_thread_count<xlstm::SLstmBlockTape<S>,
                                                               xlstm::SLstmBlockGradients<S>>(
      block, 3, 8, 3401);
}

TYPED_TEST(SLstmBlockBackwardTyped, RejectsMismatchedArguments) {
  using S = TypeParam;
  xlstm::SLstmBlock<S> block(test_util::slstm_block_config(8, 2));
  block_backward_tests::expect_rejects_mismatched_arguments<xlstm::SLstmBlockTape<S>,
                                                            xlstm::SLstmBlockGradients<S>>(
      block, 3300, [](auto&&...) {});
}

}  // namespace

}  // namespace xlstm_test_slstm_block_backward
