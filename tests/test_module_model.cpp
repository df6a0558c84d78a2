// The module model shared by both families: the parameter visitor (names,
// constness, 16-bit matrices), state tensors and their save/restore for the
// NeurIPS language model and xLSTM-Large alike, scratch that is not state,
// LargeBlock with the MLstmBlock interface, the gated feed-forward in both
// layouts, construction with the official initialisation, step outputs that
// resize like forward's, and Sequence::time_step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <set>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "xlstm/xlstm.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_module_model {

namespace {

using test_util::random_tokens;
using test_util::TempPath;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::Sequence;
using xlstm::Tokens;

// Both families small: a mixed NeurIPS stack (sLSTM at block 1) and a
// two-block Large model with short chunks.
xlstm::LanguageModelConfig small_lm_config() { return test_util::lm_config(32, 3, {1}, 40); }

xlstm::LargeModelConfig small_large_config() {
  auto c = test_util::large_config(32, 2, 2, 50);
  c.chunk_size = 8;
  return c;
}

template <typename Module>
std::vector<std::string> names_of(const Module& module) {
  std::vector<std::string> names;
  module.for_each_parameter(
      [&](const xlstm::ConstParameterRef<typename Module::Scalar>& p) { names.push_back(p.name); });
  return names;
}

// The visitor lists the official names once each, const and non-const alike,
// and a const module hands out read-only references (checked at compile time).
TEST(ParameterVisitor, BothFamiliesListOfficialNamesOnceConstOrNot) {
  xlstm::LanguageModel<float> lm(small_lm_config());
  xlstm::LargeModel<float> large(small_large_config());
  const auto lm_names = names_of(lm);
  const auto large_names = names_of(large);
  std::vector<std::string> mutable_names;
  lm.for_each_parameter([&](const xlstm::ParameterRef<float>& p) {
    static_assert(std::is_same_v<decltype(p.data), float*>);
    mutable_names.push_back(p.name);
  });
  const auto& const_lm = lm;
  const_lm.for_each_parameter([&](const auto& p) {
    static_assert(std::is_same_v<decltype(p.data), const float*>);
  });
  EXPECT_EQ(lm_names, mutable_names);
  for (const auto* names : {&lm_names, &large_names}) {
    EXPECT_EQ(std::set<std::string>(names->begin(), names->end()).size(), names->size());
  }
  EXPECT_EQ(lm_names.front(), "token_embedding.weight");
  EXPECT_EQ(lm_names.back(), "lm_head.weight");
  EXPECT_NE(std::find(lm_names.begin(), lm_names.end(),
                      "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"),
            lm_names.end());
  EXPECT_EQ(large_names.front(), "embedding.weight");
  EXPECT_NE(std::find(large_names.begin(), large_names.end(),
                      "backbone.blocks.1.mlstm_layer.fgate_preact.bias"),
            large_names.end());
  EXPECT_NE(std::find(large_names.begin(), large_names.end(), "backbone.blocks.0.ffn.proj_up_gate.weight"),
            large_names.end());
  // What the visitor lists is exactly what a saved checkpoint holds.
  TempPath path("visitor_names");
  xlstm::io::save_large_model(large, path.str());
  auto file_names = xlstm::io::SafetensorsFile::open(path.str()).names();
  std::sort(file_names.begin(), file_names.end());
  auto sorted = large_names;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(file_names, sorted);
}

/// Every value of a state, in visiting order (what "the state is").
template <typename State>
std::vector<double> values_of(const State& state) {
  std::vector<double> out;
  state.for_each_tensor([&](const xlstm::ConstParameterRef<float>& r) {
    for (std::size_t i = 0; i < r.slice_size(); ++i) out.push_back(r.data[i]);
  });
  return out;
}

// One mechanism saves and restores the states of both families, and a
// restored state continues exactly.
TEST(StateIo, SaveAndRestoreWorksForBothFamilies) {
  const xlstm::Tokens tokens = random_tokens(2, 7, 40, 3);
  auto run = [&](const auto& model, const char* tag) {
    SCOPED_TRACE(tag);
    auto state = model.initial_state(2);
    Sequence<float> logits;
    model.forward(tokens, state, logits);
    TempPath path(tag);
    xlstm::io::save_state(state, path.str());
    auto restored = model.initial_state(2);
    xlstm::io::load_state(restored, path.str());
    EXPECT_EQ(values_of(restored), values_of(state));
    Matrix<float> a, b;
    const std::vector<std::int64_t> next{5, 9};
    model.step(next, state, a);
    model.step(next, restored, b);
    EXPECT_EQ(a, b);  // bit for bit
    // The file holds the state's tensors and nothing else (no scratch).
    std::size_t count = 0;
    state.for_each_tensor([&](const xlstm::ConstParameterRef<float>& r) { count += r.part == 0; });
    EXPECT_EQ(xlstm::io::SafetensorsFile::open(path.str()).names().size(), count);
    // A state of another batch is refused and the target left alone.
    auto other = model.initial_state(1);
    const auto before = values_of(other);
    EXPECT_THROW(xlstm::io::load_state(other, path.str()), xlstm::Error);
    EXPECT_EQ(values_of(other), before);
  };
  run(xlstm::LanguageModel<float>(small_lm_config()), "neurips");
  run(xlstm::LargeModel<float>(small_large_config()), "large");
}

// Copying a state copies what it is, not its scratch; a copy steps exactly
// like the original (its scratch is sized on the first step).
TEST(Scratch, CopiesOfAStateDoNotCarryScratch) {
  xlstm::LanguageModel<float> lm(small_lm_config());
  auto state = lm.initial_state(2);
  Matrix<float> logits;
  lm.step(std::vector<std::int64_t>{1, 2}, state, logits);
  EXPECT_EQ(state.scratch.get().hidden.rows(), 2);
  auto copy = state;
  EXPECT_EQ(copy.scratch.get().hidden.size(), 0);
  EXPECT_EQ(values_of(copy), values_of(state));
  Matrix<float> a, b;
  lm.step(std::vector<std::int64_t>{3, 4}, state, a);
  lm.step(std::vector<std::int64_t>{3, 4}, copy, b);
  EXPECT_EQ(a, b);
}

// LargeBlock has MLstmBlock's interface: forward over a sequence equals step
// by step, a ragged forward equals each row alone, and the state continues.
TEST(LargeBlock, ForwardEqualsStepsAndRaggedRowsRunAlone) {
  xlstm::LargeBlockConfig config;
  config.embedding_dim = 32;
  config.num_heads = 2;
  config.chunk_size = 4;
  xlstm::LargeBlock<double> block(config);
  xlstm::Rng rng(11);
  block.initialize(rng, /*noise=*/0.5);
  std::mt19937_64 gen(5);
  const Sequence<double> x = test_util::random_sequence<double>(2, 11, 32, gen);
  auto state = block.initial_state(2);
  Sequence<double> y;
  block.forward(x, state, y);
  auto step_state = block.initial_state(2);
  Matrix<double> y_t;
  for (Index t = 0; t < x.time(); ++t) {
    block.step(x.time_step(t), step_state, y_t);
    EXPECT_LE((y_t - Matrix<double>(y.time_step(t))).cwiseAbs().maxCoeff(), 1e-10) << "t = " << t;
  }
  EXPECT_LE((state.cell.C - step_state.cell.C).cwiseAbs().maxCoeff(), 1e-10);
  // Ragged: row 1 has 6 steps; it equals running its first 6 steps alone.
  auto ragged_state = block.initial_state(2);
  Sequence<double> ragged;
  block.forward(x, xlstm::Lengths{11, 6}, ragged_state, ragged);
  Sequence<double> alone_in = test_util::time_slice(x, 0, 6), alone;
  auto alone_state = block.initial_state(2);
  block.forward(alone_in, alone_state, alone);
  EXPECT_LE((ragged.rows_of(1).topRows(6) - alone.rows_of(1)).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_EQ(ragged.rows_of(1).bottomRows(5).cwiseAbs().maxCoeff(), 0.0);
  // Its parameters carry the official per-block names.
  const auto names = names_of(block);
  EXPECT_EQ(names.front(), "norm_mlstm.weight");
  EXPECT_EQ(names.back(), "ffn.proj_down.weight");
}

// The split gate layout computes what the fused one does with the same weights.
TEST(GatedFeedForward, SplitAndFusedLayoutsAgree) {
  for (auto act : {xlstm::Activation::gelu, xlstm::Activation::swish, xlstm::Activation::relu}) {
    xlstm::GatedFeedForward<double> fused(8, 12, act, true, xlstm::GateLayout::fused);
    xlstm::GatedFeedForward<double> split(8, 12, act, true, xlstm::GateLayout::split);
    fused.proj_up().weight().setRandom();
    fused.proj_up().bias().setRandom();
    fused.proj_down().weight().setRandom();
    fused.proj_down().bias().setRandom();
    split.proj_up_gate().weight() = fused.proj_up().weight().topRows(12);
    split.proj_up_gate().bias() = fused.proj_up().bias().head(12);
    split.proj_up().weight() = fused.proj_up().weight().bottomRows(12);
    split.proj_up().bias() = fused.proj_up().bias().tail(12);
    split.proj_down().weight() = fused.proj_down().weight();
    split.proj_down().bias() = fused.proj_down().bias();
    const Matrix<double> x = Matrix<double>::Random(5, 8);
    Matrix<double> a(5, 8), b(5, 8), up;
    fused.forward(x, a, up);
    split.forward(x, b, up);
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 1e-12);
  }
}

// A model is never silently all-zero: constructed, it holds the official
// initialisation (seed kDefaultSeed); `uninitialized` asks for zeros.
TEST(Construction, ModelsAreInitialisedUnlessAskedNotTo) {
  auto largest = [](const auto& module) {
    double m = 0;
    module.for_each_parameter([&](const auto& p) {
      if (!p.data) return;
      for (std::size_t i = 0; i < p.size(); ++i) m = std::max(m, std::abs(double(p.data[i])));
    });
    return m;
  };
  xlstm::MLstmBlockConfig mc;
  mc.mlstm.embedding_dim = 16;
  mc.mlstm.num_heads = 2;
  xlstm::SLstmBlockConfig sc;
  sc.slstm.embedding_dim = 16;
  sc.slstm.num_heads = 2;
  EXPECT_GT(largest(xlstm::MLstmBlock<float>(mc)), 0.0);
  EXPECT_GT(largest(xlstm::SLstmBlock<float>(sc)), 0.0);
  EXPECT_GT(largest(xlstm::LanguageModel<float>(small_lm_config())), 0.0);
  // Two constructions draw the same weights (one default seed).
  EXPECT_EQ(xlstm::MLstmBlock<float>(mc).initial_state(1).batch(), 1);
  xlstm::MLstmBlock<float> a(mc), b(mc);
  std::vector<float> va, vb;
  a.for_each_parameter([&](const auto& p) { va.insert(va.end(), p.data, p.data + p.size()); });
  b.for_each_parameter([&](const auto& p) { vb.insert(vb.end(), p.data, p.data + p.size()); });
  EXPECT_EQ(va, vb);
  // A forward of a fresh block does not return its input unchanged.
  std::mt19937_64 gen(2);
  const auto x = test_util::random_sequence<float>(1, 5, 16, gen);
  auto state = a.initial_state(1);
  Sequence<float> y;
  a.forward(x, state, y);
  EXPECT_GT((y.matrix() - x.matrix()).cwiseAbs().maxCoeff(), 0.0f);
  // Explicitly uninitialised: zero weights (norm weights of the Large
  // block's RMSNorm are ones, its scale).
  xlstm::MLstmBlock<float> zero(mc, xlstm::uninitialized);
  double zero_max = 0;
  zero.for_each_parameter([&](const auto& p) {
    if (p.name.find("learnable_skip") != std::string::npos) return;  // ones: a skip, not a weight
    for (std::size_t i = 0; i < p.size(); ++i) zero_max = std::max(zero_max, double(std::abs(p.data[i])));
  });
  EXPECT_EQ(zero_max, 0.0);
}

// `step` resizes a Matrix output like `forward` resizes its Sequence, and
// refuses a view of the wrong size naming the argument.
TEST(StepOutput, MatrixIsResizedViewMustFit) {
  xlstm::LanguageModel<float> lm(small_lm_config());
  auto state = lm.initial_state(2);
  Matrix<float> logits;  // empty
  lm.step(std::vector<std::int64_t>{1, 2}, state, logits);
  EXPECT_EQ(logits.rows(), 2);
  EXPECT_EQ(logits.cols(), 40);
  Matrix<float> wide(2, 41);
  EXPECT_TRUE(test_util::ThrowsMentioning(
      [&] { lm.step(std::vector<std::int64_t>{1, 2}, state, wide.leftCols(39)); },
      {"LanguageModel::step", "'logits'", "2 x 40"}));
}

// Sequence::time_step is a view of rows b*T + t.
TEST(SequenceTimeStep, ViewsOneStepOfEveryRow) {
  Sequence<float> s(3, 4, 2);
  for (Index i = 0; i < s.matrix().size(); ++i) s.matrix().data()[i] = float(i);
  const Matrix<float> step2 = s.time_step(2);
  for (Index b = 0; b < 3; ++b) EXPECT_EQ(Matrix<float>(step2.row(b)), Matrix<float>(s.at(b, 2)));
  s.time_step(1).setZero();
  EXPECT_EQ(s.at(2, 1).cwiseAbs().sum(), 0.0f);
  EXPECT_THROW(s.time_step(4), xlstm::Error);
}

}  // namespace

}  // namespace xlstm_test_module_model
