// Model-level properties: blocks, the block stack and the language model
// (math §3, §5, §6) continue a forward pass exactly where step() would be,
// reject bad input with messages that name the problem, keep independent
// state copies and rows, and are initialised as math §8 prescribes.
//
// Tolerances. close(a, ref, tol) means
//     max_i |a_i - ref_i| <= tol * max(1, max_i |ref_i|).
// Two tolerances, in Tol<S> below:
//
// * `rounding`: the same function evaluated in a different order (batched
//   products over B*T rows vs B rows, chunkwise vs recurrent mLSTM, sLSTM
//   cell forward vs step). The longest dot products in these models have
//   3I = 192 terms (the mLSTM gate projections), so one layer's worst-case
//   relative rounding error is about 192 u; through 4 residual blocks and up
//   to 300 recurrent steps we allow 10x that, ~2000 u: 1e-4 in float
//   (u = 6e-8; also math §10's "full small LM logits: atol 1e-4") and 2e-13
//   in double (u = 1.1e-16). Measured maxima: 1.1e-6 (float), 2.9e-15
//   (double).
// * `with_parallel`: comparisons where one side ran the mLSTM parallel form
//   (the forward pass from a zero state with T <= parallel_max_length), whose
//   outputs differ from the recurrent step by the eps term of math §4.5:
//   1e-4 in float, 1e-5 in double (test_util::kWithParallelTol, derived in
//   test_util.hpp; measured 1.3e-8 in double, as math §4.5 predicts).
// Any real defect (a lost state, a shifted conv window, a wrong gate) shows up
// as differences of order 1e-2 or more.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/language_model.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_model {

namespace {

using test_util::Close;
using test_util::Identical;
using test_util::mlstm_block_config;
using test_util::random_sequence;
using test_util::random_tokens;
using test_util::randomize;
using test_util::Scalars;
using test_util::slstm_block_config;
using test_util::ThrowsMentioning;
using test_util::time_slice;
using xlstm::BlockStack;
using xlstm::BlockStackConfig;
using xlstm::Index;
using xlstm::LanguageModel;
using xlstm::LanguageModelConfig;
using xlstm::Matrix;
using xlstm::MLstmBlock;
using xlstm::MLstmBlockConfig;
using xlstm::MLstmForm;
using xlstm::ParameterList;
using xlstm::Rng;
using xlstm::Sequence;
using xlstm::SLstmBlock;
using xlstm::SLstmBlockConfig;
using xlstm::Tokens;

template <typename S>
struct Tol {
  static constexpr double rounding = test_util::per_scalar<S>(1e-4, 2e-13);
  static constexpr double with_parallel = test_util::kWithParallelTol<S>;
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// Close for stabilised quantities (mLSTM C and n are scaled by exp(-m) and
// can be of any size): relative to max |expected| alone.
template <typename A, typename B>
::testing::AssertionResult RelativelyClose(const Eigen::DenseBase<A>& actual,
                                           const Eigen::DenseBase<B>& expected, double tol) {
  const double scale = double(expected.derived().cwiseAbs().maxCoeff());
  const double worst = double((actual.derived() - expected.derived()).cwiseAbs().maxCoeff());
  if (worst <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| " << worst << " > " << tol << " * " << scale;
}

template <typename S>
Sequence<S> concat_time(const Sequence<S>& a, const Sequence<S>& b) {
  Sequence<S> out(a.batch(), a.time() + b.time(), a.features());
  for (Index r = 0; r < a.batch(); ++r) {
    out.rows_of(r).topRows(a.time()) = a.rows_of(r);
    out.rows_of(r).bottomRows(b.time()) = b.rows_of(r);
  }
  return out;
}

// Runs `module.step` over every time step of x from `state` (B x T x E).
template <typename Module>
Sequence<typename Module::Scalar> step_through(const Module& module,
                                               const Sequence<typename Module::Scalar>& x,
                                               typename Module::State& state) {
  using S = typename Module::Scalar;
  Sequence<S> y(x.batch(), x.time(), module.embedding_dim());
  Matrix<S> x_t(x.batch(), x.features()), y_t(x.batch(), module.embedding_dim());
  for (Index t = 0; t < x.time(); ++t) {
    for (Index b = 0; b < x.batch(); ++b) x_t.row(b) = x.at(b, t);
    module.step(x_t, state, y_t);
    for (Index b = 0; b < x.batch(); ++b) y.at(b, t) = y_t.row(b);
  }
  return y;
}

// LanguageModel::step over tokens[:, t0 : t0 + len), logits B x len x V.
template <typename S>
Sequence<S> step_tokens(const LanguageModel<S>& model, const Tokens& tokens, Index t0, Index len,
                        typename LanguageModel<S>::State& state) {
  const Index batch = tokens.rows();
  Sequence<S> logits(batch, len, model.vocab_size());
  Matrix<S> step_logits(batch, model.vocab_size());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(batch));
  for (Index t = 0; t < len; ++t) {
    for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = tokens(b, t0 + t);
    model.step(ids, state, step_logits);
    for (Index b = 0; b < batch; ++b) logits.at(b, t) = step_logits.row(b);
  }
  return logits;
}

Tokens token_slice(const Tokens& tokens, Index t0, Index len) { return tokens.middleCols(t0, len); }

constexpr Index kEmbedding = 32;
constexpr Index kContext = 16;
constexpr Index kVocab = 50;

// The mixed stack of the brief: E = 32, 4 blocks, sLSTM at {1, 3}, context 16.
template <typename Config = BlockStackConfig>
Config mixed_stack_config(Index embedding = kEmbedding, Index num_blocks = 4,
                          std::vector<Index> slstm_at = {1, 3}) {
  auto c = test_util::mixed_stack_config<Config>(embedding, num_blocks, std::move(slstm_at));
  c.context_length = kContext;
  return c;
}

// The language model over that stack.
LanguageModelConfig lm_config(Index vocab = kVocab) {
  return test_util::lm_config(kEmbedding, 4, {1, 3}, vocab, kContext);
}

// ---------------------------------------------------------------------------
// Forward then step equals step all the way
// ---------------------------------------------------------------------------

template <typename S>
class ForwardThenStepTest : public ::testing::Test {};
TYPED_TEST_SUITE(ForwardThenStepTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(ForwardThenStepTest, MLstmBlockForwardThenStepEqualsStepAllTheWay) {
  using S = TypeParam;
  std::mt19937_64 rng(101);
  MLstmBlock<S> block(mlstm_block_config(kEmbedding, 4, kContext));
  randomize(block, 1);
  const Index batch = 2, time = kContext;
  const Sequence<S> x = random_sequence<S>(batch, time, kEmbedding, rng);
  auto ref_state = block.initial_state(batch);
  const Sequence<S> ref = step_through(block, x, ref_state);

  struct Case {
    MLstmForm form;
    double tol;
  };
  for (const Case c : {Case{MLstmForm::automatic, Tol<S>::with_parallel},
                       Case{MLstmForm::chunkwise, Tol<S>::rounding},
                       Case{MLstmForm::recurrent, Tol<S>::rounding}}) {
    for (Index prefix : std::initializer_list<Index>{1, 3, 7, time - 1, time}) {
      auto state = block.initial_state(batch);
      Sequence<S> y_prefix;
      block.forward(time_slice(x, 0, prefix), state, y_prefix, c.form);
      // The state after the forward pass is computed with the recurrent
      // stabiliser in every form (math §4.4), so it matches to rounding.
      auto mid_state = block.initial_state(batch);
      step_through(block, time_slice(x, 0, prefix), mid_state);
      EXPECT_TRUE(RelativelyClose(state.cell.C, mid_state.cell.C, Tol<S>::rounding));
      EXPECT_TRUE(RelativelyClose(state.cell.n, mid_state.cell.n, Tol<S>::rounding));
      EXPECT_TRUE(Close(state.cell.m, mid_state.cell.m, Tol<S>::rounding));
      EXPECT_TRUE(Close(state.conv.window, mid_state.conv.window, Tol<S>::rounding));

      Sequence<S> y = y_prefix;
      if (prefix < time)
        y = concat_time(y_prefix, step_through(block, time_slice(x, prefix, time - prefix), state));
      EXPECT_TRUE(Close(y.matrix(), ref.matrix(), c.tol))
          << "form " << int(c.form) << ", prefix " << prefix;
    }
  }
}

TYPED_TEST(ForwardThenStepTest, SLstmBlockForwardThenStepEqualsStepAllTheWay) {
  using S = TypeParam;
  std::mt19937_64 rng(102);
  SLstmBlock<S> block(slstm_block_config(kEmbedding));
  randomize(block, 2);
  const Index batch = 2, time = kContext;
  const Sequence<S> x = random_sequence<S>(batch, time, kEmbedding, rng);
  auto ref_state = block.initial_state(batch);
  const Sequence<S> ref = step_through(block, x, ref_state);
  for (Index prefix : std::initializer_list<Index>{1, 3, 7, time - 1, time}) {
    auto state = block.initial_state(batch);
    Sequence<S> y_prefix;
    block.forward(time_slice(x, 0, prefix), state, y_prefix);
    Sequence<S> y = y_prefix;
    if (prefix < time) {
      y = concat_time(y_prefix, step_through(block, time_slice(x, prefix, time - prefix), state));
    }
    EXPECT_TRUE(Close(y.matrix(), ref.matrix(), Tol<S>::rounding)) << "prefix " << prefix;
    EXPECT_TRUE(Close(state.cell.y, ref_state.cell.y, Tol<S>::rounding));
    EXPECT_TRUE(Close(state.cell.c, ref_state.cell.c, Tol<S>::rounding));
    EXPECT_TRUE(Close(state.cell.n, ref_state.cell.n, Tol<S>::rounding));
    EXPECT_TRUE(Close(state.cell.m, ref_state.cell.m, Tol<S>::rounding));
    EXPECT_TRUE(Close(state.conv.window, ref_state.conv.window, Tol<S>::rounding));
  }
}

TYPED_TEST(ForwardThenStepTest, BlockStackForwardThenStepEqualsStepAllTheWay) {
  using S = TypeParam;
  std::mt19937_64 rng(103);
  BlockStack<S> stack(mixed_stack_config());
  ASSERT_EQ(stack.config().block_map_string(), "0,1,0,1");
  randomize(stack, 3);
  const Index batch = 2, time = kContext;
  const Sequence<S> x = random_sequence<S>(batch, time, kEmbedding, rng);
  auto ref_state = stack.initial_state(batch);
  const Sequence<S> ref = step_through(stack, x, ref_state);
  for (Index prefix : std::initializer_list<Index>{1, 5, 9, time}) {
    auto state = stack.initial_state(batch);
    Sequence<S> y_prefix;
    stack.forward(time_slice(x, 0, prefix), state, y_prefix);
    Sequence<S> y = y_prefix;
    if (prefix < time) {
      y = concat_time(y_prefix, step_through(stack, time_slice(x, prefix, time - prefix), state));
    }
    EXPECT_TRUE(Close(y.matrix(), ref.matrix(), Tol<S>::with_parallel)) << "prefix " << prefix;
  }
}

TYPED_TEST(ForwardThenStepTest, LanguageModelForwardThenStepEqualsStepAllTheWay) {
  using S = TypeParam;
  std::mt19937_64 rng(104);
  LanguageModel<S> model(lm_config());
  randomize(model, 4);
  const Index batch = 2, time = kContext;
  const Tokens tokens = random_tokens(batch, time, kVocab, rng);
  auto ref_state = model.initial_state(batch);
  const Sequence<S> ref = step_tokens(model, tokens, 0, time, ref_state);
  for (Index prefix : std::initializer_list<Index>{1, 6, time}) {
    auto state = model.initial_state(batch);
    Sequence<S> logits;
    model.forward(token_slice(tokens, 0, prefix), state, logits);
    if (prefix < time) {
      logits = concat_time(logits, step_tokens(model, tokens, prefix, time - prefix, state));
    }
    EXPECT_TRUE(Close(logits.matrix(), ref.matrix(), Tol<S>::with_parallel)) << "prefix " << prefix;
  }
}

// T = 3 x context_length: longer than the official parallel form allows (SPEC
// §4.2); ours must simply work. Also the pieces: the second forward starts
// from a non-zero state, so it runs the chunkwise form (math §4.4).
TYPED_TEST(ForwardThenStepTest, LanguageModelHandlesThreeTimesContextLength) {
  using S = TypeParam;
  std::mt19937_64 rng(105);
  LanguageModel<S> model(lm_config());
  randomize(model, 5);
  const Index batch = 2, time = 3 * kContext;
  const Tokens tokens = random_tokens(batch, time, kVocab, rng);
  auto ref_state = model.initial_state(batch);
  const Sequence<S> ref = step_tokens(model, tokens, 0, time, ref_state);

  auto state = model.initial_state(batch);
  Sequence<S> logits;
  model.forward(tokens, state, logits);
  EXPECT_TRUE(Close(logits.matrix(), ref.matrix(), Tol<S>::with_parallel));

  auto piece_state = model.initial_state(batch);
  Sequence<S> first, second, tail;
  model.forward(token_slice(tokens, 0, kContext), piece_state, first);
  model.forward(token_slice(tokens, kContext, time - kContext - 3), piece_state, second);
  tail = step_tokens(model, tokens, time - 3, 3, piece_state);
  EXPECT_TRUE(Close(concat_time(concat_time(first, second), tail).matrix(), ref.matrix(),
                    Tol<S>::with_parallel));
}

// T beyond the parallel form's limit (MLstmCellConfig::parallel_max_length):
// the forward pass from the zero state is chunkwise (several chunks of 64 and
// a remainder), which uses the recurrent stabiliser, so it matches step() to
// rounding, eps term included.
TYPED_TEST(ForwardThenStepTest, LongSequenceForwardIsChunkwiseAndMatchesStepToRounding) {
  using S = TypeParam;
  std::mt19937_64 rng(106);
  LanguageModel<S> model(lm_config());
  randomize(model, 6);
  const Index batch = 1, time = 300;
  ASSERT_GT(time, xlstm::MLstmCellConfig{}.parallel_max_length) << "premise: chunkwise forward";
  const Tokens tokens = random_tokens(batch, time, kVocab, rng);
  auto ref_state = model.initial_state(batch);
  const Sequence<S> ref = step_tokens(model, tokens, 0, time, ref_state);
  auto state = model.initial_state(batch);
  Sequence<S> logits;
  model.forward(tokens, state, logits);
  EXPECT_TRUE(Close(logits.matrix(), ref.matrix(), Tol<S>::rounding));
  // The continuation from the forward state matches too.
  const Tokens next = random_tokens(batch, 4, kVocab, rng);
  EXPECT_TRUE(Close(step_tokens(model, next, 0, 4, state).matrix(),
                    step_tokens(model, next, 0, 4, ref_state).matrix(), Tol<S>::rounding));
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

class BadInputTest : public ::testing::Test {
 protected:
  using S = double;
  BadInputTest() : model_(lm_config()), stack_(mixed_stack_config()) {
    randomize(model_, 7);
    randomize(stack_, 8);
  }
  LanguageModel<S> model_;
  BlockStack<S> stack_;
  std::mt19937_64 rng_{9};
};

TEST_F(BadInputTest, WrongWidthIsRejectedNamingTheExpectedWidth) {
  auto state = stack_.initial_state(2);
  Sequence<S> y;
  EXPECT_TRUE(
      ThrowsMentioning([&] { stack_.forward(random_sequence<S>(2, 3, 33, rng_), state, y); },
                       {"'x'", "32 features", "got 33"}));
  Matrix<S> x_t(2, 31), y_t(2, 32);
  EXPECT_TRUE(ThrowsMentioning([&] { stack_.step(x_t, state, y_t); }, {"x_t", "31"}));

  MLstmBlock<S> mlstm(mlstm_block_config(kEmbedding, 4, kContext));
  auto ms = mlstm.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning([&] { mlstm.forward(random_sequence<S>(2, 3, 31, rng_), ms, y); },
                               {"MLstmBlock::forward", "embedding_dim", "got 31"}));
  Matrix<S> y_bad(2, 30);
  Matrix<S> x_ok(2, 32);
  x_ok.setZero();
  // A view of the wrong size is refused (a Matrix output is resized, as forward does).
  EXPECT_TRUE(
      ThrowsMentioning([&] { mlstm.step(x_ok, ms, y_bad.leftCols(30)); }, {"y_t", "2 x 32"}));

  SLstmBlock<S> slstm(slstm_block_config(kEmbedding));
  auto ss = slstm.initial_state(2);
  EXPECT_TRUE(
      ThrowsMentioning([&] { slstm.step(x_t, ss, y_t); }, {"SLstmBlock::step", "'x_t'", "got 31"}));
}

TEST_F(BadInputTest, OutOfRangeTokenIdsAreRejectedAndLeaveTheStateAlone) {
  auto state = model_.initial_state(2);
  Sequence<S> logits;
  Tokens tokens = random_tokens(2, 5, kVocab, rng_);
  model_.forward(tokens, state, logits);
  const auto before = state;

  Tokens bad = tokens;
  bad(1, 4) = -1;
  EXPECT_TRUE(
      ThrowsMentioning([&] { model_.forward(bad, state, logits); }, {"token id -1", "[0, 50)"}));
  bad(1, 4) = kVocab;
  EXPECT_TRUE(
      ThrowsMentioning([&] { model_.forward(bad, state, logits); }, {"token id 50", "[0, 50)"}));
  Matrix<S> step_logits(2, kVocab);
  std::vector<std::int64_t> ids{3, kVocab + 7};
  EXPECT_TRUE(ThrowsMentioning([&] { model_.step(ids, state, step_logits); }, {"token id 57"}));
  ids = {-4, 3};
  EXPECT_TRUE(ThrowsMentioning([&] { model_.step(ids, state, step_logits); }, {"token id -4"}));

  // Nothing was consumed: continuing gives exactly what the untouched copy gives.
  auto copy = before;
  const Tokens next = random_tokens(2, 3, kVocab, rng_);
  EXPECT_TRUE(Identical(step_tokens(model_, next, 0, 3, state).matrix(),
                        step_tokens(model_, next, 0, 3, copy).matrix()));
}

TEST_F(BadInputTest, EmptySequencesAreRejected) {
  auto state = model_.initial_state(2);
  Sequence<S> y;
  EXPECT_TRUE(ThrowsMentioning([&] { model_.forward(Tokens(2, 0), state, y); },
                               {"LanguageModel::forward", "at least one time step"}));
  auto stack_state = stack_.initial_state(2);
  EXPECT_TRUE(
      ThrowsMentioning([&] { stack_.forward(Sequence<S>(2, 0, kEmbedding), stack_state, y); },
                       {"at least one time step"}));
  MLstmBlock<S> mlstm(mlstm_block_config(kEmbedding, 4, kContext));
  auto ms = mlstm.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning([&] { mlstm.forward(Sequence<S>(2, 0, kEmbedding), ms, y); },
                               {"MLstmBlock::forward", "at least one time step"}));
  SLstmBlock<S> slstm(slstm_block_config(kEmbedding));
  auto ss = slstm.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning([&] { slstm.forward(Sequence<S>(2, 0, kEmbedding), ss, y); },
                               {"SLstmBlock::forward", "at least one time step"}));
}

TEST_F(BadInputTest, MismatchedBatchBetweenInputAndStateIsRejected) {
  auto state = model_.initial_state(2);
  Sequence<S> y;
  EXPECT_TRUE(ThrowsMentioning([&] { model_.forward(random_tokens(3, 4, kVocab, rng_), state, y); },
                               {"batch 3", "batch 2"}));
  Matrix<S> logits(2, kVocab);
  std::vector<std::int64_t> ids{1, 2, 3};
  EXPECT_TRUE(ThrowsMentioning([&] { model_.step(ids, state, logits); }, {"3 ids", "batch 2"}));
  Matrix<S> wrong_logits(3, kVocab);
  ids = {1, 2};
  // A view of the wrong size is refused (a Matrix output is resized, as forward does).
  EXPECT_TRUE(
      ThrowsMentioning([&] { model_.step(ids, state, wrong_logits.topRows(3)); }, {"logits"}));

  auto stack_state = stack_.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { stack_.forward(random_sequence<S>(1, 4, kEmbedding, rng_), stack_state, y); },
      {"batch 1", "batch 2"}));
  Matrix<S> x_t(3, kEmbedding), y_t(3, kEmbedding);
  EXPECT_TRUE(
      ThrowsMentioning([&] { stack_.step(x_t, stack_state, y_t); }, {"batch 3", "batch 2"}));

  MLstmBlock<S> mlstm(mlstm_block_config(kEmbedding, 4, kContext));
  auto ms = mlstm.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning([&] { mlstm.step(x_t, ms, y_t); }, {"batch 3", "batch 2"}));
  SLstmBlock<S> slstm(slstm_block_config(kEmbedding));
  auto ss = slstm.initial_state(2);
  EXPECT_TRUE(
      ThrowsMentioning([&] { slstm.forward(random_sequence<S>(4, 2, kEmbedding, rng_), ss, y); },
                       {"batch 4", "batch 2"}));
}

TEST_F(BadInputTest, StateOfAnotherStackIsRejected) {
  BlockStack<S> other(mixed_stack_config(kEmbedding, 4, {0, 2}));
  auto wrong_kinds = other.initial_state(2);
  Sequence<S> y;
  EXPECT_TRUE(ThrowsMentioning(
      [&] { stack_.forward(random_sequence<S>(2, 3, kEmbedding, rng_), wrong_kinds, y); },
      {"wrong kind"}));
  BlockStack<S> shorter(mixed_stack_config(kEmbedding, 3, {1}));
  auto too_few = shorter.initial_state(2);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { stack_.forward(random_sequence<S>(2, 3, kEmbedding, rng_), too_few, y); },
      {"3 block states", "4 blocks"}));
}

// ---------------------------------------------------------------------------
// State copies and per-row reset
// ---------------------------------------------------------------------------

template <typename S>
class StateTest : public ::testing::Test {};
TYPED_TEST_SUITE(StateTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(StateTest, CopiedStateContinuesLikeTheOriginalAndIsIndependent) {
  using S = TypeParam;
  std::mt19937_64 rng(201);
  LanguageModel<S> model(lm_config());
  randomize(model, 11);
  auto original = model.initial_state(2);
  Sequence<S> logits;
  model.forward(random_tokens(2, 8, kVocab, rng), original, logits);

  auto copy = original;
  auto disturbed = original;
  // Advancing another copy must not touch the original or the first copy.
  const Sequence<S> disturbed_out =
      step_tokens(model, random_tokens(2, 3, kVocab, rng), 0, 3, disturbed);
  const Tokens next = random_tokens(2, 5, kVocab, rng);
  const Sequence<S> from_original = step_tokens(model, next, 0, 5, original);
  const Sequence<S> from_copy = step_tokens(model, next, 0, 5, copy);
  EXPECT_TRUE(Identical(from_copy.matrix(), from_original.matrix()));
  // ... and the disturbed copy really is in a different state.
  const Sequence<S> from_disturbed = step_tokens(model, next, 0, 5, disturbed);
  EXPECT_GT((from_disturbed.matrix() - from_original.matrix()).cwiseAbs().maxCoeff(), S(1e-3));
  (void)disturbed_out;
}

TYPED_TEST(StateTest, ResetRowResetsOnlyThatRow) {
  using S = TypeParam;
  std::mt19937_64 rng(202);
  LanguageModel<S> model(lm_config());
  randomize(model, 12);
  const Index batch = 3;
  auto state = model.initial_state(batch);
  Sequence<S> logits;
  model.forward(random_tokens(batch, 8, kVocab, rng), state, logits);
  auto untouched = state;
  state.reset_row(1);

  const Tokens next = random_tokens(batch, 6, kVocab, rng);
  const Sequence<S> after_reset = step_tokens(model, next, 0, 6, state);
  const Sequence<S> without_reset = step_tokens(model, next, 0, 6, untouched);
  // Rows 0 and 2 go through exactly the same arithmetic as without the reset.
  for (Index b : {0, 2}) {
    EXPECT_TRUE(Identical(after_reset.rows_of(b), without_reset.rows_of(b))) << "row " << b;
  }
  EXPECT_GT((after_reset.rows_of(1) - without_reset.rows_of(1)).cwiseAbs().maxCoeff(), S(1e-3));
  // Row 1 starts over: as a fresh batch-1 state fed the same tokens. (The
  // sLSTM whole-batch first-step rule scales its c, n, m differently there,
  // which leaves y unchanged up to rounding, math §2.4.)
  auto fresh = model.initial_state(1);
  const Tokens row1 = next.middleRows(1, 1);
  const Sequence<S> fresh_out = step_tokens(model, row1, 0, 6, fresh);
  EXPECT_TRUE(Close(after_reset.rows_of(1), fresh_out.rows_of(0), Tol<S>::rounding));

  EXPECT_TRUE(ThrowsMentioning([&] { state.reset_row(3); }, {"row", "[0, 3)"}));
  EXPECT_TRUE(ThrowsMentioning([&] { state.reset_row(-1); }, {"row"}));
}

TYPED_TEST(StateTest, ResetReturnsToTheInitialState) {
  using S = TypeParam;
  std::mt19937_64 rng(203);
  LanguageModel<S> model(lm_config());
  randomize(model, 13);
  auto state = model.initial_state(2);
  Sequence<S> logits;
  model.forward(random_tokens(2, 7, kVocab, rng), state, logits);
  state.reset();
  auto fresh = model.initial_state(2);
  const Tokens next = random_tokens(2, 4, kVocab, rng);
  EXPECT_TRUE(Identical(step_tokens(model, next, 0, 4, state).matrix(),
                        step_tokens(model, next, 0, 4, fresh).matrix()));
}

// math §4.8: set_mlstm_storage(bf16) converts the mLSTM blocks' C (the sLSTM
// blocks have none), and a step then does what a full-storage step from the
// widened state does, with C rounded after it. Each step starts both from the
// same state; an FMA contraction may move a rounding of C by one bfloat16 ulp.
TYPED_TEST(StateTest, Bf16MLstmStorageStepIsTheFullStepWithCRounded) {
  using S = TypeParam;
  using xlstm::MLstmStateStorage;
  std::mt19937_64 rng(204);
  LanguageModel<S> model(lm_config());
  randomize(model, 14);
  auto state = model.initial_state(2);
  Sequence<S> logits;
  model.forward(random_tokens(2, 7, kVocab, rng), state, logits);
  state.set_mlstm_storage(MLstmStateStorage::bf16);
  Index mlstm_blocks = 0;
  for (auto& block : state.stack.blocks) {
    if (auto* m = std::get_if<xlstm::MLstmBlockState<S>>(&block)) {
      EXPECT_TRUE(m->cell.is_bf16());
      ++mlstm_blocks;
    }
  }
  EXPECT_EQ(mlstm_blocks, 2);
  const Tokens next = random_tokens(2, 6, kVocab, rng);
  for (Index t = 0; t < next.cols(); ++t) {
    SCOPED_TRACE(t);
    auto reference = state;
    reference.set_mlstm_storage(MLstmStateStorage::full);
    const auto expected = step_tokens(model, next, t, 1, reference);
    reference.set_mlstm_storage(MLstmStateStorage::bf16);
    const auto actual = step_tokens(model, next, t, 1, state);
    EXPECT_TRUE(Close(actual.matrix(), expected.matrix(), Tol<S>::rounding));
    for (std::size_t i = 0; i < state.stack.blocks.size(); ++i) {
      if (auto* m = std::get_if<xlstm::MLstmBlockState<S>>(&state.stack.blocks[i])) {
        auto widened = m->cell,
             reference_cell = std::get<xlstm::MLstmBlockState<S>>(reference.stack.blocks[i]).cell;
        widened.set_storage(MLstmStateStorage::full);
        reference_cell.set_storage(MLstmStateStorage::full);
        EXPECT_TRUE(Close(widened.C, reference_cell.C, 1.0 / 256, 0.0)) << "block " << i;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Initialisation (math §8)
// ---------------------------------------------------------------------------

template <typename Module>
std::map<std::string, xlstm::ParameterRef<typename Module::Scalar>> parameters_by_name(
    Module& module) {
  ParameterList<typename Module::Scalar> list;
  list = xlstm::parameter_list(module, "");
  std::map<std::string, xlstm::ParameterRef<typename Module::Scalar>> map;
  for (auto& p : list) map.emplace(p.name, p);
  return map;
}

template <typename S>
std::vector<double> values_of(const xlstm::ParameterRef<S>& p) {
  return std::vector<double>(p.data, p.data + xlstm::shape_product(p.shape));
}

// Sample mean, standard deviation and kurtosis of n i.i.d. draws from
// N(0, sigma): the mean has standard error sigma/sqrt(n), the standard
// deviation sigma/sqrt(2n), the kurtosis (3 for a normal, 1.8 for a uniform)
// sqrt(24/n). We allow 5 standard errors: the seed is fixed, so the test is
// deterministic, and a wrong std (e.g. sqrt(2/(5 I)) instead of
// sqrt(2/(5 E)), a factor 0.71) or a uniform instead of a normal fails by far.
::testing::AssertionResult LooksNormal(const std::vector<double>& v, double sigma) {
  const double n = double(v.size());
  double mean = 0;
  for (double x : v) mean += x;
  mean /= n;
  double m2 = 0, m4 = 0;
  for (double x : v) {
    const double d = x - mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m4 /= n;
  const double sd = std::sqrt(m2), kurtosis = m4 / (m2 * m2);
  auto failure = [&]() {
    return ::testing::AssertionFailure() << "n " << n << ": mean " << mean << ", std " << sd
                                         << " (expected " << sigma << "), kurtosis " << kurtosis;
  };
  if (std::abs(mean) > 5 * sigma / std::sqrt(n)) return failure() << " [mean]";
  if (std::abs(sd / sigma - 1) > 5 / std::sqrt(2 * n)) return failure() << " [std]";
  if (std::abs(kurtosis - 3) > 5 * std::sqrt(24 / n)) return failure() << " [kurtosis]";
  return ::testing::AssertionSuccess() << "mean " << mean << ", std/sigma " << sd / sigma;
}

// U(-a, a): inside the range, both ends nearly reached, std a/sqrt(3) within 5
// standard errors (for a uniform the sample std has relative error
// sqrt(1/5)/sqrt(n)).
::testing::AssertionResult LooksUniform(const std::vector<double>& v, double a) {
  const double n = double(v.size());
  double lo = v[0], hi = v[0], mean = 0, m2 = 0;
  for (double x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    mean += x;
  }
  mean /= n;
  for (double x : v) m2 += (x - mean) * (x - mean);
  const double sd = std::sqrt(m2 / n), expected_sd = a / std::sqrt(3.0);
  if (lo < -a || hi > a || lo > -0.95 * a || hi < 0.95 * a ||
      std::abs(sd / expected_sd - 1) > 5 * std::sqrt(0.2 / n)) {
    return ::testing::AssertionFailure() << "range [" << lo << ", " << hi << "] for U(-" << a
                                         << ", " << a << "), std " << sd << " vs " << expected_sd;
  }
  return ::testing::AssertionSuccess();
}

bool all_equal(const std::vector<double>& v, double value) {
  for (double x : v) {
    if (x != value) return false;
  }
  return true;
}

class InitTest : public ::testing::Test {
 protected:
  static constexpr Index kE = 256, kBlocks = 4, kV = 1000;
  static LanguageModelConfig big_config() {
    auto c = mixed_stack_config<LanguageModelConfig>(kE, kBlocks, {1, 3});
    c.vocab_size = kV;
    return c;
  }
  InitTest() : model_(big_config()) {
    Rng rng(2024);
    model_.initialize(rng);
    params_ = parameters_by_name(model_);
  }
  std::vector<double> get(const std::string& name) {
    auto it = params_.find(name);
    if (it == params_.end()) ADD_FAILURE() << "no parameter " << name;
    return it == params_.end() ? std::vector<double>{} : values_of(it->second);
  }
  std::vector<double> pooled(std::initializer_list<std::string> names) {
    std::vector<double> all;
    for (const auto& n : names) {
      const auto v = get(n);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  }
  static std::string block(Index i) {
    return "xlstm_block_stack.blocks." + std::to_string(i) + ".";
  }
  const double small_std_ = std::sqrt(2.0 / (5.0 * kE));           // small_init(dim = E)
  const double wang_std_ = 2.0 / kBlocks / std::sqrt(double(kE));  // wang_init(E, NB)
  LanguageModel<double> model_;
  std::map<std::string, xlstm::ParameterRef<double>> params_;
};

TEST_F(InitTest, MLstmBlockFollowsSpec82) {
  for (Index b : {0, 2}) {
    const std::string p = block(b) + "xlstm.";
    EXPECT_TRUE(LooksNormal(get(p + "proj_up.weight"), small_std_)) << p;
    // q, k, v use small_init with dim = E, not the inner dim (math §8.2).
    EXPECT_TRUE(LooksNormal(pooled({p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"}),
                            small_std_))
        << p;
    EXPECT_TRUE(LooksNormal(get(p + "proj_down.weight"), wang_std_)) << p;
    EXPECT_TRUE(LooksUniform(pooled({p + "conv1d.conv.weight", p + "conv1d.conv.bias"}),
                             1 / std::sqrt(4.0)))
        << p;
    EXPECT_TRUE(all_equal(get(p + "mlstm_cell.igate.weight"), 0));
    EXPECT_TRUE(all_equal(get(p + "mlstm_cell.fgate.weight"), 0));
    EXPECT_EQ(get(p + "mlstm_cell.fgate.bias"), (std::vector<double>{3, 4, 5, 6}));
    EXPECT_TRUE(all_equal(get(p + "learnable_skip"), 1));
    EXPECT_TRUE(all_equal(get(p + "mlstm_cell.outnorm.weight"), 0));
    EXPECT_TRUE(all_equal(get(block(b) + "xlstm_norm.weight"), 0));
    EXPECT_FALSE(all_equal(get(p + "mlstm_cell.igate.bias"), 0));
  }
}

TEST_F(InitTest, SLstmBlockFollowsSpec83WithBlockDependentForgetBias) {
  const Index nh = 4, dh = kE / nh;
  for (Index b : {1, 3}) {
    const std::string p = block(b) + "xlstm.";
    EXPECT_TRUE(LooksNormal(
        pooled({p + "fgate.weight", p + "igate.weight", p + "zgate.weight", p + "ogate.weight"}),
        small_std_))
        << p;
    EXPECT_TRUE(LooksUniform(pooled({p + "conv1d.conv.weight", p + "conv1d.conv.bias"}), 0.5));
    EXPECT_TRUE(all_equal(get(p + "slstm_cell._recurrent_kernel_"), 0));
    EXPECT_TRUE(all_equal(get(p + "group_norm.weight"), 0));
    EXPECT_TRUE(all_equal(get(block(b) + "xlstm_norm.weight"), 0));
    EXPECT_TRUE(all_equal(get(block(b) + "ffn_norm.weight"), 0));
    EXPECT_TRUE(LooksNormal(get(block(b) + "ffn.proj_up.weight"), small_std_));
    EXPECT_TRUE(LooksNormal(get(block(b) + "ffn.proj_down.weight"), wang_std_));

    // Gate-major vanilla bias [g][h][j]: i, z, o zero; f the power law with
    // ratio = block_idx / (num_blocks - 1), the same in every head.
    const auto bias = get(p + "slstm_cell._bias_");
    ASSERT_EQ(bias.size(), std::size_t(4 * kE));
    const double ratio = double(b) / double(kBlocks - 1);
    for (Index g : {0, 2, 3}) {
      for (Index c = 0; c < kE; ++c) EXPECT_EQ(bias[std::size_t(g * kE + c)], 0) << g << " " << c;
    }
    for (Index h = 0; h < nh; ++h) {
      for (Index j = 0; j < dh; ++j) {
        const double expected = 5 - 12 * std::pow(double(j) / double(dh - 1), 0.3 + 1.3 * ratio);
        // Both sides compute this in double; only the operation order may
        // differ, by an ulp or two of values <= 7.
        EXPECT_NEAR(bias[std::size_t(kE + h * dh + j)], expected, 1e-14)
            << "block " << b << " head " << h << " j " << j;
      }
      EXPECT_EQ(bias[std::size_t(kE + h * dh)], 5);
      EXPECT_NEAR(bias[std::size_t(kE + h * dh + dh - 1)], -7, 1e-14);
    }
  }
  // The two sLSTM blocks really got different ratios (1/3 and 1).
  const auto b1 = get(block(1) + "xlstm.slstm_cell._bias_");
  const auto b3 = get(block(3) + "xlstm.slstm_cell._bias_");
  EXPECT_GT(b3[std::size_t(kE + dh / 2)] - b1[std::size_t(kE + dh / 2)], 1.0);
}

TEST_F(InitTest, LanguageModelEmbeddingAndHeadUseSmallInit) {
  EXPECT_TRUE(LooksNormal(get("token_embedding.weight"), small_std_));
  EXPECT_TRUE(LooksNormal(get("lm_head.weight"), small_std_));
  EXPECT_NE(get("token_embedding.weight"), get("lm_head.weight"));
  EXPECT_TRUE(all_equal(get("xlstm_block_stack.post_blocks_norm.weight"), 0));
}

// igate.bias ~ N(0, 0.1) has only NH entries per block, so pool many blocks
// (seeds) of a block with many heads: 40 x 32 = 1280 draws.
TEST(Init, MLstmInputGateBiasIsNormalWithStd01AndForgetBiasIsLinspace) {
  const MLstmBlockConfig c = mlstm_block_config(64, 32, 8);  // E 64 (inner 128), context 8
  std::vector<double> igate_bias;
  for (std::uint64_t seed = 0; seed < 40; ++seed) {
    MLstmBlock<double> block(c);
    Rng rng(seed);
    block.initialize(rng);
    auto params = parameters_by_name(block);
    const auto v = values_of(params.at("xlstm.mlstm_cell.igate.bias"));
    igate_bias.insert(igate_bias.end(), v.begin(), v.end());
    const auto f = values_of(params.at("xlstm.mlstm_cell.fgate.bias"));
    ASSERT_EQ(f.size(), 32u);
    for (std::size_t h = 0; h < f.size(); ++h) {
      EXPECT_NEAR(f[h], 3.0 + 3.0 * double(h) / 31.0, 1e-15) << h;
    }
  }
  EXPECT_TRUE(LooksNormal(igate_bias, 0.1));
}

TEST(Init, SLstmAlternativeInitialisersFollowSpec83) {
  SLstmBlockConfig c = slstm_block_config(kEmbedding);  // E = 32, NH = 4, DH = 8
  c.slstm.recurrent_weight_init = "standard";
  c.slstm.bias_init = "small_init";
  SLstmBlock<double> block(c);
  Rng rng(5);
  block.initialize(rng);
  auto params = parameters_by_name(block);
  const auto kernel = values_of(params.at("xlstm.slstm_cell._recurrent_kernel_"));
  const double bound = 1 / std::sqrt(32.0);
  for (double x : kernel) {
    EXPECT_LE(std::abs(x), bound);
  }
  EXPECT_FALSE(all_equal(kernel, 0));
  const auto bias = values_of(params.at("xlstm.slstm_cell._bias_"));
  for (Index h = 0; h < 4; ++h) {
    for (Index j = 0; j < 8; ++j) {
      EXPECT_NEAR(bias[std::size_t(32 + h * 8 + j)], 3.0 + 3.0 * double(j) / 7.0, 1e-15);
      EXPECT_EQ(bias[std::size_t(h * 8 + j)], 0);
    }
  }
}

TEST(Init, SameSeedGivesIdenticalParametersAndOtherSeedsDiffer) {
  LanguageModel<double> a(lm_config()), b(lm_config()), c(lm_config());
  Rng ra(77), rb(77), rc(78);
  a.initialize(ra);
  b.initialize(rb);
  c.initialize(rc);
  auto pa = parameters_by_name(a), pb = parameters_by_name(b), pc = parameters_by_name(c);
  ASSERT_EQ(pa.size(), pb.size());
  std::size_t random_tensors = 0;
  for (const auto& [name, p] : pa) {
    const auto va = values_of(p), vb = values_of(pb.at(name)), vc = values_of(pc.at(name));
    EXPECT_EQ(va, vb) << name;
    // A tensor with any spread is drawn at random and must change with the seed.
    const bool random =
        *std::min_element(va.begin(), va.end()) != *std::max_element(va.begin(), va.end());
    if (random && name.find("_bias_") == std::string::npos &&
        name.find("fgate.bias") == std::string::npos) {
      ++random_tensors;
      EXPECT_NE(va, vc) << name;
    }
  }
  EXPECT_GT(random_tensors, 20u);
}

}  // namespace

}  // namespace xlstm_test_model
