// The backward passes of the block stack and the language model
// (model/block_stack_backward.hpp, model/language_model_backward.hpp, math
// §6.6) against float64 central finite differences of the same C++ forward:
// sLSTM-only and mixed stacks, with and without the post-blocks norm, an
// initial state with cotangents on the final state, ragged lengths; the
// language model's cross-entropy loss with ignored targets, tied and untied
// heads. Also: names and shapes, a tied head's one gradient under both
// names, accumulation, consumed tapes, argument checks. The goldens against
// the official autograd are in test_golden.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "xlstm/model/block_stack_backward.hpp"
#include "xlstm/model/language_model_backward.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_lm_backward {

namespace {

using test_util::dot;
using test_util::expect_gradients_match_differences;
using test_util::fill_normal;
using test_util::parameter_targets;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using xlstm::Index;
using xlstm::Lengths;
using xlstm::Sequence;

using Stack = xlstm::BlockStack<double>;
using StackState = xlstm::BlockStackState<double>;

struct StackCase {
  std::string name;
  Index batch, time, embedding_dim, num_blocks;
  std::vector<Index> slstm_at;
  bool all_slstm = false;
  bool post_norm = true;
  bool state_in = false;  // a prefix's state, and cotangents on the final state
  Lengths lengths = {};
};

xlstm::BlockStackConfig stack_config(const StackCase& c) {
  auto config = test_util::mixed_stack_config<xlstm::BlockStackConfig>(
      c.embedding_dim, c.num_blocks, c.slstm_at, /*num_heads=*/2);
  if (c.all_slstm) config.mlstm_block.reset();
  config.slstm_block->slstm.conv1d_kernel_size = 3;
  config.slstm_block->feedforward->round_proj_up_to_multiple_of = 4;
  if (config.mlstm_block) config.mlstm_block->mlstm.conv1d_kernel_size = 3;
  config.add_post_blocks_norm = c.post_norm;
  return config;
}

// The tensors of a state (sliced ones part by part), in visiting order.
std::vector<std::pair<std::string, std::pair<double*, Index>>> state_tensors(StackState& s) {
  std::vector<std::pair<std::string, std::pair<double*, Index>>> out;
  s.for_each_tensor([&](const xlstm::ParameterRef<double>& r) {
    out.push_back({r.name + "[" + std::to_string(r.part) + "]", {r.data, Index(r.slice_size())}});
  });
  return out;
}

struct StackProblem {
  Stack stack;
  Sequence<double> x, grad_y;
  StackState start, grad_final;
  Lengths lengths;
};

StackProblem make_stack_problem(const StackCase& c, std::uint64_t seed) {
  Stack stack(stack_config(c));
  test_util::randomize(stack, seed, 0.3);
  std::mt19937_64 rng(seed);
  auto x = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  auto start = stack.initial_state(c.batch);
  auto grad_final = stack.initial_state(c.batch);
  if (c.state_in) {
    const auto prefix = random_sequence<double>(c.batch, 3, c.embedding_dim, rng);
    Sequence<double> unused;
    stack.forward(prefix, start, unused);
    for (auto& [name, tensor] : state_tensors(grad_final)) {
      for (Index i = 0; i < tensor.second; ++i) {
        tensor.first[i] = xlstm::NormalDistribution()(rng);
      }
    }
  }
  auto grad_y = random_sequence<double>(c.batch, c.time, c.embedding_dim, rng);
  return {std::move(stack), std::move(x),          std::move(grad_y),
          std::move(start), std::move(grad_final), c.lengths};
}

long double stack_loss(StackProblem& p) {
  auto state = p.start;
  Sequence<double> y;
  p.stack.forward(p.x, p.lengths, state, y);
  long double sum = dot(y.matrix(), p.grad_y.matrix());
  auto finals = state_tensors(state), cotangents = state_tensors(p.grad_final);
  for (std::size_t i = 0; i < finals.size(); ++i) {
    for (Index k = 0; k < finals[i].second.second; ++k) {
      sum += (long double)finals[i].second.first[k] * cotangents[i].second.first[k];
    }
  }
  return sum;
}

TEST(BlockStackBackward, MatchesFiniteDifferences) {
  const std::vector<StackCase> cases = {
      {"sLSTM only, post norm", 2, 5, 8, 2, {}, true},
      {"sLSTM only, no post norm, ragged", 3, 4, 6, 2, {}, true, false, false, {4, 1, 0}},
      {"sLSTM only, state in", 2, 4, 8, 2, {}, true, true, true},
      {"mLSTM, sLSTM, mLSTM", 2, 5, 8, 3, {1}},
      {"mixed, ragged, state in", 3, 5, 8, 2, {0}, false, true, true, {5, 2, 3}},
      {"one mLSTM block, no post norm", 2, 4, 8, 1, {}, false, false},
  };
  std::uint64_t seed = 6100;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    StackProblem p = make_stack_problem(c, seed);
    auto state = p.start;
    Sequence<double> y, grad_x;
    xlstm::BlockStackTape<double> tape;
    p.stack.forward(p.x, p.lengths, state, y, tape);
    xlstm::BlockStackGradients<double> grads(p.stack);
    auto grad_start = p.grad_final;
    xlstm::backward(p.stack, tape, p.grad_y, grad_start, grads, grad_x);

    auto targets = parameter_targets(p.stack, grads);
    targets.push_back({"x", p.x.matrix().data(), p.x.matrix().size(), grad_x.matrix().data()});
    if (c.state_in) {
      auto start = state_tensors(p.start), grad = state_tensors(grad_start);
      ASSERT_EQ(start.size(), grad.size());
      for (std::size_t i = 0; i < start.size(); ++i) {
        targets.push_back({"initial " + start[i].first, start[i].second.first,
                           start[i].second.second, grad[i].second.first});
      }
    }
    const double worst =
        expect_gradients_match_differences([&] { return stack_loss(p); }, targets, seed++);
    std::printf("  %-36s worst relative error %.2e\n", c.name.c_str(), worst);
    for (Index b = 0; b < c.batch; ++b) {
      const Index len = xlstm::length_of(c.lengths, b, c.time);
      EXPECT_EQ(grad_x.rows_of(b).bottomRows(c.time - len).cwiseAbs().sum(), 0.0);
    }
  }
}

struct LmCase {
  std::string name;
  Index batch, time, vocab, embedding_dim, num_blocks;
  std::vector<Index> slstm_at;
  bool all_slstm = false;
  bool tied = false;
  Lengths lengths = {};
};

xlstm::LanguageModelConfig lm_config_of(const LmCase& c) {
  auto config = test_util::lm_config(c.embedding_dim, c.num_blocks, c.slstm_at, c.vocab,
                                     /*context_length=*/-1, /*num_heads=*/2);
  if (c.all_slstm) config.mlstm_block.reset();
  config.slstm_block->feedforward->round_proj_up_to_multiple_of = 4;
  config.tie_weights = c.tied;
  return config;
}

// Targets: the next token, about a quarter ignored, and -1 past the lengths.
xlstm::Tokens targets_for(const xlstm::Tokens& tokens, const Lengths& lengths, Index vocab,
                          std::mt19937_64& rng) {
  xlstm::Tokens targets = test_util::random_tokens(tokens.rows(), tokens.cols(), vocab, rng);
  std::bernoulli_distribution ignored(0.25);
  for (Index b = 0; b < tokens.rows(); ++b) {
    for (Index t = 0; t < tokens.cols(); ++t) {
      if (ignored(rng) || t >= xlstm::length_of(lengths, b, tokens.cols())) targets(b, t) = -1;
    }
  }
  return targets;
}

TEST(LanguageModelBackward, MatchesFiniteDifferences) {
  const std::vector<LmCase> cases = {
      {"sLSTM only", 2, 5, 11, 8, 2, {}, true},
      {"sLSTM only, tied, ragged", 3, 4, 9, 6, 1, {}, true, true, {4, 2, 1}},
      {"mixed", 2, 5, 13, 8, 2, {1}},
      {"mixed, tied, ragged", 3, 5, 7, 8, 2, {0}, false, true, {3, 5, 1}},
  };
  std::uint64_t seed = 6200;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    xlstm::LanguageModel<double> model(lm_config_of(c));
    test_util::randomize(model, seed, 0.3);
    std::mt19937_64 rng(seed);
    const auto tokens = test_util::random_tokens(c.batch, c.time, c.vocab, rng);
    const auto targets = targets_for(tokens, c.lengths, c.vocab, rng);

    xlstm::LanguageModelGradients<double> grads(model);
    xlstm::LanguageModelLossWorkspace<double> work;
    const double loss = xlstm::loss_and_backward(model, tokens, targets, c.lengths, grads, work);
    auto plain_loss = [&]() -> long double {
      auto state = model.initial_state(c.batch);
      Sequence<double> logits;
      model.forward(tokens, c.lengths, state, logits);
      return xlstm::cross_entropy(logits, targets);
    };
    EXPECT_EQ(loss, double(plain_loss()));
    auto targets_list = parameter_targets(model, grads);
    if (c.tied) {
      // One tensor under two names: perturb it once.
      ASSERT_EQ(targets_list.back().name, "lm_head.weight");
      EXPECT_EQ(targets_list.back().data, targets_list.front().data);
      EXPECT_EQ(targets_list.back().grad, targets_list.front().grad);
      targets_list.pop_back();
    }
    const double worst = expect_gradients_match_differences(plain_loss, targets_list, seed++);
    std::printf("  %-36s worst relative error %.2e\n", c.name.c_str(), worst);
  }
}

TEST(LanguageModelBackward, UnseenTokensGetNoEmbeddingGradientAndCallsAccumulate) {
  LmCase c{"", 2, 4, 10, 8, 2, {1}, true};
  xlstm::LanguageModel<double> model(lm_config_of(c));
  test_util::randomize(model, 7, 0.3);
  xlstm::Tokens tokens(2, 4);
  tokens << 1, 2, 3, 1, 4, 4, 2, 1;
  xlstm::Tokens targets(2, 4);
  targets << 2, 3, 1, -1, 4, 2, 1, 0;
  xlstm::LanguageModelGradients<double> grads(model);
  xlstm::LanguageModelLossWorkspace<double> work;
  const double loss = xlstm::loss_and_backward(model, tokens, targets, grads, work);
  EXPECT_GT(loss, 0.0);
  const auto& g = grads.embedding().weight();
  for (Index v : {0, 5, 6, 7, 8, 9}) EXPECT_EQ(g.row(v).cwiseAbs().sum(), 0.0) << v;
  for (Index v : {1, 2, 3, 4}) EXPECT_GT(g.row(v).cwiseAbs().sum(), 0.0) << v;
  // A second call adds the same again (and reuses the workspace's tape).
  const xlstm::Matrix<double> once = grads.lm_head().weight();
  EXPECT_EQ(xlstm::loss_and_backward(model, tokens, targets, grads, work), loss);
  EXPECT_LT((grads.lm_head().weight() - 2 * once).cwiseAbs().maxCoeff(), 1e-12);
  grads.zero();
  for (const auto& p : xlstm::parameter_list(grads)) {
    EXPECT_EQ(std::count(p.data, p.data + p.size(), 0.0), std::ptrdiff_t(p.size())) << p.name;
  }
}

TEST(LanguageModelBackward, RejectsBadArguments) {
  LmCase c{"", 2, 4, 10, 8, 1, {}, true};
  xlstm::LanguageModel<double> model(lm_config_of(c));
  xlstm::LanguageModelGradients<double> grads(model);
  xlstm::LanguageModelLossWorkspace<double> work;
  xlstm::Tokens tokens = xlstm::Tokens::Zero(2, 4), targets = xlstm::Tokens::Zero(2, 3);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::loss_and_backward(model, tokens, targets, grads, work); },
                       "'targets' must be 2 x 4"));
  targets = xlstm::Tokens::Zero(2, 4);
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        xlstm::loss_and_backward(model, tokens, targets, {4, 2}, grads, work);
      },
      "past row 1's length 2 and must be -1"));
  targets(0, 0) = 10;
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::loss_and_backward(model, tokens, targets, grads, work); },
                       "must be in [0, 10)"));
  // A consumed tape serves no second backward.
  auto state = model.initial_state(2), grad_state = model.initial_state(2);
  Sequence<double> logits;
  xlstm::LanguageModelTape<double> tape;
  model.forward(tokens, {}, state, logits, tape);
  xlstm::backward(model, tape, logits, grad_state, grads);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(model, tape, logits, grad_state, grads); },
                               "holds no recorded forward pass"));
  model.forward(tokens, {}, state, logits, tape);
  Sequence<double> wrong(2, 4, 9);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(model, tape, wrong, grad_state, grads); },
                               "'grad_logits' must be 2 x 4 x 10"));
}

TEST(BlockStackBackward, RejectsBadArguments) {
  StackCase c{"", 2, 3, 8, 2, {}, true};
  Stack stack(stack_config(c));
  auto state = stack.initial_state(2), grad_state = stack.initial_state(2);
  Sequence<double> x(2, 3, 8), y, grad_x;
  x.matrix().setOnes();
  xlstm::BlockStackTape<double> tape;
  xlstm::BlockStackGradients<double> grads(stack);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(stack, tape, y, grad_state, grads, grad_x); },
                               "holds no recorded forward pass"));
  stack.forward(x, state, y, tape);
  Sequence<double> wrong(2, 3, 7);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(stack, tape, wrong, grad_state, grads, grad_x); },
                       "'grad_y' must be 2 x 3 x 8"));
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(stack, tape, y, grad_state, grads, y); },
                               "must be different sequences"));
  auto other_batch = stack.initial_state(3);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(stack, tape, y, other_batch, grads, grad_x); },
                               "'grad_state' must be a state of this stack for batch 2"));
  EXPECT_NO_THROW(xlstm::backward(stack, tape, y, grad_state, grads, grad_x));
}

}  // namespace

}  // namespace xlstm_test_lm_backward
