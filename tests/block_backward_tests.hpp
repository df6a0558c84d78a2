// Checks shared by the block backward tests (test_slstm_block_backward.cpp,
// test_mlstm_block_backward.cpp): the gradient object's names, accumulation
// and zero(), consumed tapes, the same bits at any thread count, and the
// common argument checks. `Tape` and `Grads` are the block's tape and
// gradient types; `backward` is found by argument-dependent lookup, so this
// header may come before the block headers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "test_util.hpp"
#include "xlstm/core/parallel.hpp"

namespace block_backward_tests {

using xlstm::Index;
using xlstm::Sequence;

/// The gradients list the block's names and shapes; a second forward and
/// backward on the same tape doubles them; zero() clears them; a consumed
/// tape is refused.
template <typename Tape, typename Grads, typename Block>
void expect_named_accumulating_gradients(const Block& block, Index batch, Index time,
                                         std::uint64_t seed) {
  using S = typename Block::Scalar;
  const Index e = block.embedding_dim();
  Grads grads(block);
  const auto params = xlstm::parameter_list(block, "blocks.0.");
  const auto list = xlstm::parameter_list(grads, "blocks.0.");
  ASSERT_EQ(params.size(), list.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(list[i].name, params[i].name);
    EXPECT_EQ(list[i].shape, params[i].shape);
  }
  std::mt19937_64 rng(seed);
  const auto x = test_util::random_sequence<S>(batch, time, e, rng);
  const auto grad_y = test_util::random_sequence<S>(batch, time, e, rng);
  Tape tape;
  auto run = [&] {
    auto state = block.initial_state(batch), grad_state = block.initial_state(batch);
    Sequence<S> y, grad_x;
    block.forward(x, state, y, tape);
    backward(block, tape, grad_y, grad_state, grads, grad_x);
  };
  run();
  const auto once = xlstm::parameter_list(grads);
  std::vector<std::vector<S>> first;
  for (const auto& p : once) first.emplace_back(p.data, p.data + p.size());
  run();  // the same tape, recorded again
  const double tol = test_util::per_scalar<S>(1e-5, 1e-12);
  for (std::size_t i = 0; i < once.size(); ++i) {
    for (std::size_t j = 0; j < first[i].size(); ++j) {
      ASSERT_NEAR(double(once[i].data[j]), 2.0 * double(first[i][j]),
                  tol * (1 + std::abs(double(first[i][j]))))
          << once[i].name;
    }
  }
  grads.zero();
  for (const auto& p : xlstm::parameter_list(grads)) {
    for (std::size_t j = 0; j < p.size(); ++j) ASSERT_EQ(p.data[j], S(0)) << p.name;
  }
  // The tape was consumed.
  auto grad_state = block.initial_state(batch);
  Sequence<S> grad_x;
  EXPECT_TRUE(test_util::ThrowsMentioning(
      [&] { backward(block, tape, grad_y, grad_state, grads, grad_x); }, "'tape'"));
}

/// The parameter gradients and dL/dx at one thread and at two, bit for bit.
template <typename Tape, typename Grads, typename Block>
void expect_same_bits_with_any_thread_count(const Block& block, Index batch, Index time,
                                            std::uint64_t seed) {
  using S = typename Block::Scalar;
  const Index e = block.embedding_dim();
  std::mt19937_64 rng(seed);
  const auto x = test_util::random_sequence<S>(batch, time, e, rng);
  const auto grad_y = test_util::random_sequence<S>(batch, time, e, rng);
  struct Result {
    std::vector<S> grads;
    Sequence<S> grad_x;
  };
  auto run = [&](int threads) {
    xlstm::set_num_threads(threads);
    auto state = block.initial_state(batch), grad_state = block.initial_state(batch);
    Sequence<S> y, grad_x;
    Tape tape;
    block.forward(x, state, y, tape);
    Grads grads(block);
    backward(block, tape, grad_y, grad_state, grads, grad_x);
    Result r{{}, grad_x};
    for (const auto& p : xlstm::parameter_list(grads))
      r.grads.insert(r.grads.end(), p.data, p.data + p.size());
    return r;
  };
  const int saved = xlstm::num_threads();
  const Result one = run(1), two = run(2);
  xlstm::set_num_threads(saved);
  EXPECT_TRUE(one.grads == two.grads);
  EXPECT_TRUE(test_util::BitIdentical(one.grad_x.matrix(), two.grad_x.matrix()));
}

/// A B 2 x T 4 recording: a grad_y of the wrong shape and a state of the
/// wrong batch are refused, naming the argument and the sizes; then
/// `more_checks(tape, grad_y, grad_state, grads, grad_x)` (the block's own);
/// a rejected call leaves the tape recorded.
template <typename Tape, typename Grads, typename Block, typename MoreChecks>
void expect_rejects_mismatched_arguments(const Block& block, std::uint64_t seed,
                                         MoreChecks&& more_checks) {
  using S = typename Block::Scalar;
  const Index e = block.embedding_dim();
  std::mt19937_64 rng(seed);
  const auto x = test_util::random_sequence<S>(2, 4, e, rng);
  auto state = block.initial_state(2);
  Sequence<S> y, grad_x;
  Tape tape;
  block.forward(x, state, y, tape);
  Grads grads(block);
  auto grad_state = block.initial_state(2), wrong_state = block.initial_state(3);
  const auto grad_y = test_util::random_sequence<S>(2, 4, e, rng);
  const auto short_grad_y = test_util::random_sequence<S>(2, 3, e, rng);
  const std::string e_text = std::to_string(e);
  EXPECT_TRUE(test_util::ThrowsMentioning(
      [&] { backward(block, tape, short_grad_y, grad_state, grads, grad_x); },
      {"'grad_y'", "2 x 4 x " + e_text, "2 x 3 x " + e_text}));
  EXPECT_TRUE(test_util::ThrowsMentioning(
      [&] { backward(block, tape, grad_y, wrong_state, grads, grad_x); }, "'grad_state'"));
  more_checks(tape, grad_y, grad_state, grads, grad_x);
  EXPECT_NO_THROW(backward(block, tape, grad_y, grad_state, grads, grad_x));
}

}  // namespace block_backward_tests
