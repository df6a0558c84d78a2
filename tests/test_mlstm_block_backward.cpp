// The mLSTM block's backward pass (blocks/mlstm_block_backward.hpp, math §5.5)
// against float64 central finite differences of the same C++ forward, in
// random directions: every parameter, the input and the initial state (conv
// window and cell state {C, n, m}) with cotangents on the final state; the
// cell in its parallel, chunkwise (T larger than a chunk) and recurrent
// forms; odd shapes, T = 1, one head, a bias, kernel size 1, ragged lengths
// with NaN padding. Also: the recording forward gives the plain forward's
// output and state, names, accumulation, consumed tapes, thread counts,
// argument checks. The goldens against the official autograd are in
// test_golden.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "block_backward_tests.hpp"
#include "test_util.hpp"
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/mlstm_block_backward.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_mlstm_block_backward {

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
using xlstm::MLstmForm;
using xlstm::Sequence;

using Block = xlstm::MLstmBlock<double>;
using State = xlstm::MLstmBlockState<double>;

struct Case {
  std::string name;
  Index batch, time, embedding_dim, num_heads;
  bool state_in = true;  // a prefix's state, and cotangents on the final state
  Lengths lengths = {};
  MLstmForm form = MLstmForm::automatic;
  Index chunk_size = 64;  // also the parallel form's limit under `automatic`
  Index kernel_size = 4;
  bool bias = false;
};

// A block of inner width 2E rounded to a multiple of 8, q/k/v blocks of 4,
// and a cell with the given chunk size.
template <typename S>
xlstm::MLstmBlock<S> make_block(Index embedding_dim, Index num_heads, Index chunk_size,
                                Index kernel_size, bool bias, std::uint64_t seed) {
  auto config = test_util::mlstm_block_config(embedding_dim, num_heads);
  config.mlstm.round_proj_up_to_multiple_of = 8;
  config.mlstm.conv1d_kernel_size = kernel_size;
  config.mlstm.bias = bias;
  xlstm::MLstmBlock<S> block(config);
  test_util::randomize(block, seed, 0.3);
  auto cell_config = block.cell().config();
  cell_config.chunk_size = chunk_size;
  cell_config.parallel_max_length = chunk_size;
  block.cell() = xlstm::MLstmCell<S>(cell_config);
  return block;
}

// The tensors of a state (sliced ones part by part), in visiting order.
std::vector<GradientTarget> state_targets(State& start, State& grad) {
  std::vector<std::pair<std::string, double*>> values;
  std::vector<Index> sizes;
  start.for_each_tensor([&](const xlstm::ParameterRef<double>& r) {
    values.push_back({"initial " + r.name + "[" + std::to_string(r.part) + "]", r.data});
    sizes.push_back(Index(r.slice_size()));
  });
  std::vector<GradientTarget> out;
  std::size_t i = 0;
  grad.for_each_tensor([&](const xlstm::ParameterRef<double>& r) {
    out.push_back({values[i].first, values[i].second, sizes[i], r.data});
    ++i;
  });
  EXPECT_EQ(i, values.size());
  return out;
}

struct Problem {
  Block block;
  Sequence<double> x, grad_y;
  State start, grad_final;
  Lengths lengths;
  MLstmForm form;
};

Problem make_problem(const Case& c, std::uint64_t seed) {
  Block block =
      make_block<double>(c.embedding_dim, c.num_heads, c.chunk_size, c.kernel_size, c.bias, seed);
  std::mt19937_64 rng(seed);
  auto x = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  // Padding is never read: NaN there must not reach the gradients.
  for (Index b = 0; b < c.batch; ++b) {
    const Index len = xlstm::length_of(c.lengths, b, c.time);
    x.rows_of(b).bottomRows(c.time - len).setConstant(std::numeric_limits<double>::quiet_NaN());
  }
  auto start = block.initial_state(c.batch);
  auto grad_final = block.initial_state(c.batch);
  if (c.state_in) {
    const auto prefix = random_sequence<double>(c.batch, 3, c.embedding_dim, rng);
    Sequence<double> unused;
    block.forward(prefix, start, unused);
    fill_normal(grad_final.conv.window, rng);
    for (auto* m : {&grad_final.cell.C, &grad_final.cell.n}) fill_normal(*m, rng);
    fill_normal(grad_final.cell.m, rng);
  }
  auto grad_y = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  return {
      std::move(block), std::move(x), std::move(grad_y), std::move(start), std::move(grad_final),
      c.lengths,        c.form};
}

long double loss(Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  p.block.forward(p.x, p.lengths, state, y, p.form);
  long double sum = dot(y.matrix(), p.grad_y.matrix());
  sum += dot(state.conv.window, p.grad_final.conv.window);
  sum += dot(state.cell.C, p.grad_final.cell.C) + dot(state.cell.n, p.grad_final.cell.n);
  sum += dot(state.cell.m, p.grad_final.cell.m);
  return sum;
}

struct Analytic {
  xlstm::MLstmBlockGradients<double> grads;
  State grad_start;
  Sequence<double> grad_x;
};

Analytic analytic(const Problem& p) {
  auto state = p.start;
  Sequence<double> y;
  xlstm::MLstmBlockTape<double> tape;
  p.block.forward(p.x, p.lengths, state, y, tape, p.form);
  Analytic a{xlstm::MLstmBlockGradients<double>(p.block), p.grad_final, {}};
  xlstm::backward(p.block, tape, p.grad_y, a.grad_start, a.grads, a.grad_x);
  return a;
}

TEST(MLstmBlockBackward, MatchesFiniteDifferences) {
  const MLstmForm chunkwise = MLstmForm::chunkwise, recurrent = MLstmForm::recurrent;
  const std::vector<Case> cases = {
      {"parallel (zero state), 3 heads, odd T", 2, 5, 12, 3, false},
      {"T = 1, state in", 3, 1, 8, 2},
      {"chunkwise T 11 > chunk 4, state in", 2, 11, 8, 2, true, {}, MLstmForm::automatic, 4},
      {"chunkwise T 9 > chunk 4, zero state", 2, 9, 8, 2, false, {}, MLstmForm::automatic, 4},
      {"explicit chunkwise, chunk 3, state in", 1, 8, 8, 4, true, {}, chunkwise, 3},
      {"recurrent, chunk 4, state in", 2, 6, 8, 2, true, {}, recurrent, 4},
      {"ragged, NaN padding, chunkwise, state in", 3, 7, 8, 2, true, {7, 2, 0}, chunkwise, 3},
      {"ragged, NaN padding, parallel", 3, 5, 8, 2, false, {5, 1, 3}},
      {"bias, kernel 1, one head, state in",
       2,
       4,
       8,
       1,
       true,
       {},
       MLstmForm::automatic,
       64,
       1,
       true},
  };
  std::uint64_t seed = 4000;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Problem p = make_problem(c, seed);
    Analytic a = analytic(p);
    auto targets = parameter_targets(p.block, a.grads);
    targets.push_back({"x", p.x.matrix().data(), p.x.matrix().size(), a.grad_x.matrix().data()});
    if (c.state_in) {
      for (const auto& t : state_targets(p.start, a.grad_start)) targets.push_back(t);
    }
    const double worst =
        expect_gradients_match_differences([&] { return loss(p); }, targets, seed++);
    std::printf("  %-44s worst relative error %.2e\n", c.name.c_str(), worst);
    EXPECT_TRUE(a.grad_x.matrix().allFinite());
    // Past a row's length the input gradient is zero.
    for (Index b = 0; b < c.batch; ++b) {
      const Index len = xlstm::length_of(c.lengths, b, c.time);
      EXPECT_EQ(a.grad_x.rows_of(b).bottomRows(c.time - len).cwiseAbs().sum(), 0.0);
    }
  }
}

template <typename S>
class MLstmBlockBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(MLstmBlockBackwardTyped, test_util::Scalars, ::testing::internal::DefaultNameGenerator);

// Every form, ragged rows, and T beyond the parallel limit (chunkwise). One
// exception to "bit for bit", from the cell: in the parallel form with ragged
// rows, the recording cell reuses one set of buffers for rows of different
// lengths (the plain cell sizes fresh ones per row), and Eigen's small
// products over a buffer's corner may round the last bit differently.
TYPED_TEST(MLstmBlockBackwardTyped, RecordingForwardGivesThePlainOutputAndState) {
  using S = TypeParam;
  auto block = make_block<S>(16, 4, 4, 4, false, 4100);
  std::mt19937_64 rng(4101);
  const auto x = random_sequence<S>(3, 9, 16, rng);
  for (const auto form :
       {MLstmForm::automatic, MLstmForm::chunkwise, MLstmForm::recurrent, MLstmForm::parallel}) {
    for (const Lengths& lengths : {Lengths{}, Lengths{9, 3, 4}}) {
      SCOPED_TRACE(::testing::Message() << xlstm::form_name(form) << ", " << lengths.size());
      auto state = block.initial_state(3), taped_state = block.initial_state(3);
      Sequence<S> y, y_taped;
      block.forward(x, lengths, state, y, form);
      xlstm::MLstmBlockTape<S> tape;
      block.forward(x, lengths, taped_state, y_taped, tape, form);
      if (form == MLstmForm::parallel && !lengths.empty()) {
        EXPECT_TRUE(y_taped.matrix().isApprox(y.matrix(), test_util::per_scalar<S>(1e-6, 1e-14)));
      } else {
        EXPECT_TRUE(test_util::BitIdentical(y_taped.matrix(), y.matrix()));
      }
      EXPECT_TRUE(test_util::BitIdentical(taped_state.cell.C, state.cell.C));
      EXPECT_TRUE(test_util::BitIdentical(taped_state.cell.m, state.cell.m));
      EXPECT_TRUE(test_util::BitIdentical(taped_state.conv.window, state.conv.window));
    }
  }
}

TYPED_TEST(MLstmBlockBackwardTyped, GradientsAreNamedLikeParametersAndAccumulate) {
  using S = TypeParam;
  for (const bool bias : {false, true}) {
    const auto block = make_block<S>(12, 3, 64, 4, bias, 4200);
    block_backward_tests::expect_named_accumulating_gradients<xlstm::MLstmBlockTape<S>,
                                                              xlstm::MLstmBlockGradients<S>>(
        block, 2, 5, 4201);
  }
}

// The backward's parallel loops split work by (row, head) items, panels and
// row ranges, never a sum, so the gradients have the same bits with any
// thread count. E 64 (inner 128) in 2 heads of 64, T 12 in chunks of 4: every
// parallel loop of the backward runs in parallel (with OpenMP).
TYPED_TEST(MLstmBlockBackwardTyped, SameBitsWithAnyThreadCount) {
  using S = TypeParam;
  const auto block = make_block<S>(64, 2, 4, 4, false, 4400);
  block_backward_tests::expect_same_bits_with_any_thread_count<xlstm::MLstmBlockTape<S>,
                                                               xlstm::MLstmBlockGradients<S>>(
      block, 3, 12, 4401);
}

TYPED_TEST(MLstmBlockBackwardTyped, RejectsMismatchedArguments) {
  using S = TypeParam;
  const auto block = make_block<S>(8, 2, 64, 4, false, 4300);
  const auto wider = make_block<S>(16, 2, 64, 4, false, 4301);
  block_backward_tests::expect_rejects_mismatched_arguments<xlstm::MLstmBlockTape<S>,
                                                            xlstm::MLstmBlockGradients<S>>(
      block, 4300,
      [&](auto& tape, const auto& grad_y, auto& grad_state, auto& grads, auto& grad_x) {
        EXPECT_TRUE(ThrowsMentioning(
            [&] {
              xlstm::backward(block, tape, grad_y, grad_state, grads,
                              const_cast<Sequence<S>&>(grad_y));
            },
            {"'grad_y'", "'grad_x'"}));
        xlstm::MLstmBlockGradients<S> wider_grads(wider);
        auto wider_state = wider.initial_state(2);
        EXPECT_TRUE(ThrowsMentioning(
            [&] { xlstm::backward(wider, tape, grad_y, wider_state, wider_grads, grad_x); },
            {"'tape'", "width 8", "has 16"}));
        EXPECT_TRUE(ThrowsMentioning(
            [&] { xlstm::backward(block, tape, grad_y, grad_state, wider_grads, grad_x); },
            {"'grads'", "proj_up 32 x 8", "64 x 16"}));
      });
}

}  // namespace

}  // namespace xlstm_test_mlstm_block_backward
