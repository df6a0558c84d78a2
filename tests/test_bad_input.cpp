// Bad input at every level of the public API, one test per kind of bad input
// (the README's "Bad input" table cites these names):
//
// every call below must throw xlstm::Error (no other exception, no crash, no
// undefined behaviour under the sanitizers) whose message names the argument
// or field at fault, and must leave the model's parameters and the recurrent
// state bit-identical to what they were before (strong exception guarantee).
//
// Float only and small sizes: these tests check what a call refuses, not what
// it computes.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/state_io.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_bad_input {

namespace {

namespace io = xlstm::io;
using test_util::mlstm_block_config;
using test_util::mlstm_cell_config;
using test_util::slstm_block_config;
using test_util::slstm_cell_config;
using test_util::ThrowsMentioning;
using xlstm::BlockStack;
using xlstm::BlockStackConfig;
using xlstm::BlockStackState;
using xlstm::CausalConv1dState;
using xlstm::Index;
using xlstm::LanguageModel;
using xlstm::LanguageModelConfig;
using xlstm::LargeModel;
using xlstm::LargeModelConfig;
using xlstm::Lengths;
using xlstm::Matrix;
using xlstm::MLstmBlock;
using xlstm::MLstmBlockConfig;
using xlstm::MLstmCell;
using xlstm::MLstmCellConfig;
using xlstm::MLstmState;
using xlstm::Sequence;
using xlstm::SLstmBlock;
using xlstm::SLstmBlockConfig;
using xlstm::SLstmCell;
using xlstm::SLstmCellConfig;
using xlstm::SLstmState;
using xlstm::Tokens;

using S = float;
using Bytes = std::string;

constexpr Index kEmbedding = 16;
constexpr Index kVocab = 20;
constexpr Index kHuge = Index(1) << 40;  // fits Index; products of two overflow

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// ThrowsMentioning, and `snapshot()` (parameters and state) is the same after.
template <typename Snapshot, typename Fn>
::testing::AssertionResult ThrowsAndKeeps(Snapshot&& snapshot, Fn&& fn,
                                          std::initializer_list<std::string> needles) {
  const Bytes before = snapshot();
  auto result = ThrowsMentioning(fn, needles);
  if (snapshot() != before) {
    return ::testing::AssertionFailure()
           << "changed the parameters or the state" << (result ? "" : "; also ")
           << (result ? "" : result.message());
  }
  return result;
}

/// The sizes and raw bytes of dense matrices, for bit-exact comparison (NaN
/// included).
template <typename Derived>
void append(Bytes& out, const Eigen::PlainObjectBase<Derived>& m) {
  const Index sizes[2] = {m.rows(), m.cols()};
  out.append(reinterpret_cast<const char*>(sizes), sizeof sizes);
  out.append(reinterpret_cast<const char*>(m.data()),
             std::size_t(m.size()) * sizeof(typename Derived::Scalar));
}

Bytes bytes_of(const MLstmState<S>& s) {
  Bytes out;
  append(out, s.C);
  append(out, s.n);
  append(out, s.m);
  return out;
}

Bytes bytes_of(const SLstmState<S>& s) {
  Bytes out;
  for (const Matrix<S>* m : {&s.y, &s.c, &s.n, &s.m}) append(out, *m);
  return out;
}

/// A block's recurrent state: conv window and cell state (not the scratch
/// workspace, which holds no information between calls).
template <typename BlockState>
Bytes bytes_of_block(const BlockState& s) {
  Bytes out;
  append(out, s.conv.window);
  return out + bytes_of(s.cell);
}

Bytes bytes_of(const BlockStackState<S>& s) {
  Bytes out;
  for (const auto& block : s.blocks) {
    std::visit([&](const auto& b) { out += bytes_of_block(b); }, block);
  }
  return out;
}

Bytes bytes_of(const xlstm::LanguageModelState<S>& s) { return bytes_of(s.stack); }

Bytes bytes_of(const xlstm::LargeModelState<S>& s) {
  Bytes out;
  for (const auto& block : s.blocks) out += bytes_of(block.cell);
  return out;
}

/// Every parameter a module lists (names, shapes and values).
template <typename Module>
Bytes parameters_of(Module& module) {
  xlstm::ParameterList<S> list;
  list = xlstm::parameter_list(module, "");
  Bytes out;
  for (const auto& p : list) {
    out += p.name;
    out.append(reinterpret_cast<const char*>(p.data), xlstm::shape_product(p.shape) * sizeof(S));
  }
  return out;
}

Bytes parameters_of(LargeModel<S>& model) {
  Bytes out;
  for (const xlstm::WeightMatrix<S>* w : xlstm::weight_matrices(model)) {
    Matrix<S> decoded(w->rows(), w->cols());
    for (Index r = 0; r < w->rows(); ++r) w->copy_row(r, decoded.row(r));
    append(out, decoded);
  }
  return out;
}

/// The language model of these tests: mLSTM, sLSTM, mLSTM blocks of width 16,
/// 4 heads each, context 8.
LanguageModelConfig lm_config() { return test_util::lm_config(kEmbedding, 3, {1}, kVocab, 8); }

/// The xLSTM-Large model of these tests: 2 blocks of width 32 with 2 heads.
LargeModelConfig large_config() { return test_util::large_config(32, 2, 2, kVocab); }

Tokens tokens_of(Index batch, Index time, std::int64_t seed) {
  Tokens t(batch, time);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = (seed + 7 * i) % kVocab;
  return t;
}

Sequence<S> random_sequence(Index batch, Index time, Index features) {
  Sequence<S> s(batch, time, features);
  s.matrix().setRandom();
  return s;
}

/// A language model with random weights and a batch-2 state that is not zero.
struct LmFixture {
  LanguageModel<S> model{lm_config()};
  LanguageModel<S>::State state;
  LmFixture() {
    xlstm::Rng rng(1);
    model.initialize(rng);
    state = model.initial_state(2);
    Sequence<S> logits;
    model.forward(tokens_of(2, 5, 3), state, logits);
  }
  Bytes snapshot() { return parameters_of(model) + bytes_of(state); }
};

struct LargeFixture {
  LargeModel<S> model{large_config()};
  LargeModel<S>::State state;
  LargeFixture() {
    xlstm::Rng rng(2);
    model.initialize(rng, 0.1);
    state = model.initial_state(2);
    Sequence<S> logits;
    model.forward(tokens_of(2, 5, 4), state, logits);
  }
  Bytes snapshot() { return parameters_of(model) + bytes_of(state); }
};

/// The model's parameters as an in-memory safetensors file, with `edit`
/// applied to the writer's input first (name -> (shape, values)).
template <typename Edit>
io::SafetensorsFile edited_checkpoint(LanguageModel<S>& model, Edit&& edit) {
  xlstm::ParameterList<S> list;
  list = xlstm::parameter_list(model, "");
  io::SafetensorsWriter writer;
  for (const auto& p : list) {
    std::vector<S> values(p.data, p.data + xlstm::shape_product(p.shape));
    if (!edit(writer, p.name, p.shape, values)) writer.add(p.name, p.shape, values.data());
  }
  return io::SafetensorsFile::from_bytes(writer.to_bytes(), "edited.safetensors");
}

// ---------------------------------------------------------------------------
// Wrong shapes and widths
// ---------------------------------------------------------------------------

TEST(BadInput, CellInputsOfTheWrongWidth) {
  const MLstmCellConfig mc = mlstm_cell_config(2, 4, 4);
  const MLstmCell<S> mlstm(mc);
  auto ms = mlstm.initial_state(2);
  Matrix<S> q = Matrix<S>::Random(2, 8), v = Matrix<S>::Random(2, 8), h(2, 8);
  Matrix<S> gates = Matrix<S>::Random(2, 2), narrow = Matrix<S>::Random(2, 7);
  mlstm.step(q, q, v, gates, gates, ms, h);  // a state that is not zero
  auto keep_m = [&] { return bytes_of(ms); };
  EXPECT_TRUE(ThrowsAndKeeps(keep_m, [&] { mlstm.step(q, narrow, v, gates, gates, ms, h); },
                             {"MLstmCell::step", "'k'", "2 x 8", "got 2 x 7"}));
  EXPECT_TRUE(
      ThrowsAndKeeps(keep_m, [&] { mlstm.step(q, q, v, gates, q, ms, h); }, {"'fgate'", "2 x 2"}));
  Matrix<S> h_narrow(2, 7);
  EXPECT_TRUE(
      ThrowsAndKeeps(keep_m, [&] { mlstm.step(q, q, v, gates, gates, ms, h_narrow); }, {"'h'"}));
  Sequence<S> out;
  const auto seq = random_sequence(2, 3, 8), seq_gates = random_sequence(2, 3, 2);
  EXPECT_TRUE(ThrowsAndKeeps(
      keep_m,
      [&] { mlstm.forward(seq, seq, random_sequence(2, 3, 9), seq_gates, seq_gates, ms, out); },
      {"MLstmCell::forward", "'v'", "2 x 3 x 8", "got 2 x 3 x 9"}));

  const SLstmCellConfig sc = slstm_cell_config(8, 2);
  const SLstmCell<S> slstm(sc);
  auto ss = slstm.initial_state(2);
  slstm.step(Matrix<S>::Random(2, 32), ss);
  auto keep_s = [&] { return bytes_of(ss); };
  EXPECT_TRUE(ThrowsAndKeeps(keep_s, [&] { slstm.step(Matrix<S>::Random(2, 31), ss); },
                             {"SLstmCell::step", "'preactivations'", "2 x 32", "got 2 x 31"}));
  EXPECT_TRUE(ThrowsAndKeeps(keep_s, [&] { slstm.forward(random_sequence(2, 3, 8), ss, out); },
                             {"SLstmCell::forward", "preactivations.features()", "32", "got 8"}));
}

TEST(BadInput, BlockAndModelInputsOfTheWrongWidth) {
  LmFixture f;
  auto& stack = f.model.stack();
  auto keep = [&] { return f.snapshot(); };
  Sequence<S> y;
  EXPECT_TRUE(ThrowsAndKeeps(
      keep, [&] { stack.forward(random_sequence(2, 3, kEmbedding + 1), f.state.stack, y); },
      {"'x'", "16 features", "got 17"}));
  Matrix<S> x_t = Matrix<S>::Random(2, kEmbedding), y_t(2, kEmbedding), narrow(2, kEmbedding - 1);
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { stack.step(narrow, f.state.stack, y_t); },
                             {"BlockStack::step", "'x_t'", "got 15"}));
  // Outputs: a Matrix is resized (as forward does); a view must have the size.
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { stack.step(x_t, f.state.stack, narrow.leftCols(15)); },
                             {"BlockStack::step", "'y_t'", "2 x 15"}));
  Matrix<S> logits(2, kVocab - 1);
  EXPECT_TRUE(ThrowsAndKeeps(keep,
                             [&] {
                               f.model.step(std::vector<std::int64_t>{1, 2}, f.state,
                                            logits.leftCols(kVocab - 1));
                             },
                             {"LanguageModel::step", "'logits'", "2 x 20", "got 2 x 19"}));

  MLstmBlock<S> mlstm(mlstm_block_config(kEmbedding));
  xlstm::Rng rng(3);
  mlstm.initialize(rng);
  auto ms = mlstm.initial_state(2);
  mlstm.forward(random_sequence(2, 3, kEmbedding), ms, y);
  auto keep_m = [&] { return parameters_of(mlstm) + bytes_of_block(ms); };
  EXPECT_TRUE(ThrowsAndKeeps(keep_m, [&] { mlstm.step(narrow, ms, y_t); },
                             {"MLstmBlock::step", "'x_t'", "embedding_dim", "got 15"}));
  EXPECT_TRUE(ThrowsAndKeeps(keep_m, [&] { mlstm.step(x_t, ms, narrow.leftCols(15)); },
                             {"MLstmBlock::step", "'y_t'", "2 x 16", "got 2 x 15"}));
  SLstmBlock<S> slstm(slstm_block_config(kEmbedding));
  slstm.initialize(rng);
  auto ss = slstm.initial_state(2);
  slstm.forward(random_sequence(2, 3, kEmbedding), ss, y);
  auto keep_s = [&] { return parameters_of(slstm) + bytes_of_block(ss); };
  EXPECT_TRUE(ThrowsAndKeeps(keep_s, [&] { slstm.forward(random_sequence(2, 3, 15), ss, y); },
                             {"SLstmBlock::forward", "'x'", "got 15"}));

  LargeFixture large;
  Matrix<S> large_logits(2, 7);
  EXPECT_TRUE(
      ThrowsAndKeeps([&] { return large.snapshot(); },
                     [&] {
                       large.model.step(std::vector<std::int64_t>{1, 2}, large.state,
                                        large_logits.leftCols(7));
                     },
                     {"LargeModel::step", "'logits'", "2 x 20"}));
}

// ---------------------------------------------------------------------------
// Batch mismatch between input and state
// ---------------------------------------------------------------------------

TEST(BadInput, BatchOfInputAndStateDiffer) {
  LmFixture f;
  auto keep = [&] { return f.snapshot(); };
  Sequence<S> y;
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { f.model.forward(tokens_of(3, 4, 1), f.state, y); },
                             {"LanguageModel::forward", "'tokens'", "batch 3", "batch 2"}));
  Matrix<S> logits(2, kVocab);
  EXPECT_TRUE(ThrowsAndKeeps(keep,
                             [&] { f.model.step(std::vector<std::int64_t>{1}, f.state, logits); },
                             {"LanguageModel::step", "'tokens'", "1 ids", "batch 2"}));
  Matrix<S> x3 = Matrix<S>::Random(3, kEmbedding), y3(3, kEmbedding);
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { f.model.stack().step(x3, f.state.stack, y3); },
                             {"BlockStack::step", "batch 3", "batch 2"}));

  MLstmCellConfig mc;
  mc.num_heads = 1;
  mc.qk_head_dim = 2;
  mc.v_head_dim = 2;
  const MLstmCell<S> cell(mc);
  auto cs = cell.initial_state(2);
  const auto seq = random_sequence(3, 2, 2), gates = random_sequence(3, 2, 1);
  Sequence<S> h;
  EXPECT_TRUE(ThrowsAndKeeps([&] { return bytes_of(cs); },
                             [&] { cell.forward(seq, seq, seq, gates, gates, cs, h); },
                             {"MLstmCell::forward", "'q'", "2 x 2 x 2", "got 3 x 2 x 2"}));

  LargeFixture large;
  EXPECT_TRUE(ThrowsAndKeeps([&] { return large.snapshot(); },
                             [&] { large.model.forward(tokens_of(1, 3, 2), large.state, y); },
                             {"LargeModel::forward", "'tokens'", "batch 1", "batch 2"}));
}

// A state whose parts disagree (here: one block's state made for another
// batch) used to advance the blocks before the bad one and then throw. Every
// block state is now checked before the first block runs.
TEST(BadInput, StateWithOneBlockOfAnotherBatchIsRejectedBeforeAnythingRuns) {
  LmFixture f;
  auto keep = [&] { return f.snapshot(); };
  const auto batch3 = f.model.initial_state(3);
  f.state.stack.blocks[2] = batch3.stack.blocks[2];  // the last block: batch 3
  Sequence<S> y;
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { f.model.forward(tokens_of(2, 4, 5), f.state, y); },
                             {"BlockStack::forward", "argument 'state'", "got 3 x 4 x 64"}));
  Matrix<S> logits(2, kVocab);
  EXPECT_TRUE(ThrowsAndKeeps(keep,
                             [&] {
                               f.model.step(std::vector<std::int64_t>{1, 2}, f.state, logits);
                             },
                             {"BlockStack::step", "argument 'state'"}));

  // Step scratch is not state: scratch of the wrong size is sized again, and
  // the step gives what it gives from an untouched copy of the state.
  LmFixture g;
  auto untouched = g.state;
  std::get<xlstm::SLstmBlockState<S>>(g.state.stack.blocks[1]).scratch.get().preact.resize(2, 5);
  Matrix<S> healed, reference;
  g.model.step(std::vector<std::int64_t>{1, 2}, g.state, healed);
  g.model.step(std::vector<std::int64_t>{1, 2}, untouched, reference);
  EXPECT_EQ(healed, reference);

  LargeFixture large;
  large.state.blocks[1] = large.model.initial_state(3).blocks[1];
  EXPECT_TRUE(ThrowsAndKeeps([&] { return large.snapshot(); },
                             [&] { large.model.forward(tokens_of(2, 3, 6), large.state, y); },
                             {"LargeModel::forward", "argument 'state'", "batch 3"}));
  Matrix<S> large_logits(2, kVocab);
  EXPECT_TRUE(
      ThrowsAndKeeps([&] { return large.snapshot(); },
                     [&] {
                       large.model.step(std::vector<std::int64_t>{1, 2}, large.state, large_logits);
                     },
                     {"LargeModel::step", "argument 'state'"}));
}

TEST(BadInput, StateOfAnotherCellIsRejected) {
  const MLstmCellConfig mc = mlstm_cell_config(2, 4, 4);
  const MLstmCell<S> cell(mc);
  MLstmCellConfig other = mc;
  other.qk_head_dim = 2;
  auto wrong = MLstmCell<S>(other).initial_state(2);
  Matrix<S> q = Matrix<S>::Random(2, 8), gates = Matrix<S>::Random(2, 2), h(2, 8);
  EXPECT_TRUE(ThrowsAndKeeps([&] { return bytes_of(wrong); },
                             [&] { cell.step(q, q, q, gates, gates, wrong, h); },
                             {"MLstmCell::step", "argument 'state'", "DHQK 4", "DHQK 2"}));

  const SLstmCellConfig sc = slstm_cell_config(8, 2);
  const SLstmCell<S> slstm(sc);
  auto tampered = slstm.initial_state(2);
  tampered.n.resize(1, 8);  // n no longer has a row per batch row
  EXPECT_TRUE(ThrowsAndKeeps([&] { return bytes_of(tampered); },
                             [&] { slstm.step(Matrix<S>::Random(2, 32), tampered); },
                             {"SLstmCell::step", "argument 'state'"}));
}

// ---------------------------------------------------------------------------
// Zero and negative sizes
// ---------------------------------------------------------------------------

TEST(BadInput, ZeroAndNegativeSizes) {
  MLstmCellConfig mc = mlstm_cell_config(2, 4, 4);
  mc.num_heads = 0;
  EXPECT_TRUE(
      ThrowsMentioning([&] { MLstmCell<S> c(mc); }, {"MLstmCellConfig", "'num_heads'", "0"}));
  mc.num_heads = 2;
  mc.v_head_dim = -3;
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmCell<S> c(mc); }, {"'v_head_dim'", "-3"}));
  mc.v_head_dim = 4;
  mc.chunk_size = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmCell<S> c(mc); }, {"'chunk_size'"}));
  SLstmCellConfig sc;
  sc.hidden_size = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { SLstmCell<S> c(sc); }, {"SLstmCellConfig", "'hidden_size'"}));

  mc.chunk_size = 64;
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)MLstmCell<S>(mc).initial_state(-1); }, {"'batch'", "-1"}));
  sc.hidden_size = 8;
  sc.num_heads = 2;
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)SLstmCell<S>(sc).initial_state(-2); }, {"'batch'", "-2"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)xlstm::CausalConv1d<S>(8, 4).initial_state(-1); },
                               {"CausalConv1dState", "'batch'"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)xlstm::CausalConv1d<S>(8, -1); }, {"'kernel_size'"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)xlstm::Linear<S>(0, 4, true); }, {"'in_features'"}));
  EXPECT_TRUE(ThrowsMentioning([&] { Sequence<S> s(2, -1, 3); }, {"Sequence", "non-negative"}));

  LmFixture f;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)f.model.initial_state(-1); }, {"'batch'", "-1"}));
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)f.model.stack().initial_state(-5); }, {"'batch'", "-5"}));
  const LargeModel<S> large(large_config());
  EXPECT_TRUE(ThrowsMentioning([&] { (void)large.initial_state(-1); }, {"'batch'", "-1"}));

  // Zero and negative sizes in configs, field by field.
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, Index>>{{"embedding_dim", 0},
                                                  {"embedding_dim", -16},
                                                  {"num_blocks", 0},
                                                  {"vocab_size", 0},
                                                  {"vocab_size", -1}}) {
    LanguageModelConfig c = lm_config();
    if (field == "embedding_dim") c.embedding_dim = value;
    if (field == "num_blocks") c.num_blocks = value;
    if (field == "vocab_size") c.vocab_size = value;
    EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'" + field + "'"}))
        << field << " = " << value;
  }
  LargeModelConfig lc = large_config();
  lc.num_blocks = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"xLSTMLargeConfig", "'num_blocks'"}));
  lc = large_config();
  lc.chunk_size = -64;
  EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"'chunk_size'"}));
  MLstmBlockConfig mb = mlstm_block_config(kEmbedding);
  mb.mlstm.qkv_proj_blocksize = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmBlock<S> b(mb); }, {"'qkv_proj_blocksize'"}));
  mb = mlstm_block_config(kEmbedding);
  mb.mlstm.round_proj_up_to_multiple_of = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmBlock<S> b(mb); }, {"'round_proj_up_to_multiple_of'"}));
}

// ---------------------------------------------------------------------------
// Sizes whose products overflow
// ---------------------------------------------------------------------------

TEST(BadInput, SizeProductsThatOverflowAreRejectedBeforeAllocating) {
  // Each size fits Index; their product does not fit std::size_t bytes.
  MLstmCellConfig mc;
  mc.num_heads = Index(1) << 21;
  mc.qk_head_dim = Index(1) << 21;
  mc.v_head_dim = Index(1) << 21;
  EXPECT_TRUE(ThrowsMentioning(
      [&] { MLstmCell<S> c(mc); },
      {"MLstmCellConfig", "'num_heads' x 'qk_head_dim' x 'v_head_dim'", "too large"}));
  SLstmCellConfig sc;
  sc.hidden_size = kHuge;
  sc.num_heads = 1;
  EXPECT_TRUE(ThrowsMentioning([&] { SLstmCell<S> c(sc); }, {"SLstmCellConfig", "'hidden_size'"}));

  // A batch so large that the state would not fit.
  mc.num_heads = 2;
  mc.qk_head_dim = 4;
  mc.v_head_dim = 4;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)MLstmCell<S>(mc).initial_state(Index(1) << 60); },
                               {"MLstmState", "'batch'", "too large"}));
  LmFixture f;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)f.model.initial_state(Index(1) << 60); },
                               {"initial_state", "'batch'", "too large"}));
  const LargeModel<S> large(large_config());
  EXPECT_TRUE(ThrowsMentioning([&] { (void)large.initial_state(Index(1) << 60); },
                               {"LargeModel::initial_state", "'batch'", "too large"}));
  EXPECT_TRUE(ThrowsMentioning([&] { Sequence<S> s(kHuge, kHuge, 4); }, {"Sequence", "too large"}));

  // Configs: vocabulary x width, and widths derived from a factor.
  LanguageModelConfig c = lm_config();
  c.vocab_size = Index(1) << 60;
  EXPECT_TRUE(
      ThrowsMentioning([&] { LanguageModel<S> m(c); },
                       {"xLSTMLMModelConfig", "'vocab_size' x 'embedding_dim'", "too large"}));
  c = lm_config();
  c.embedding_dim = kHuge;
  c.slstm_block->slstm.num_heads = 1;
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'embedding_dim'", "too large"}));
  c = lm_config();
  c.num_blocks = Index(1) << 60;
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'num_blocks'", "too large"}));
  MLstmBlockConfig mb = mlstm_block_config(kEmbedding);
  mb.mlstm.proj_factor = 1e300;  // int(ceil(1e300 * 16 / 64) * 64) is not an Index
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmBlock<S> b(mb); }, {"'proj_factor'", "'embedding_dim'"}));
  mb.mlstm.proj_factor = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmBlock<S> b(mb); }, {"'proj_factor'", "nan"}));
  SLstmBlockConfig sb = slstm_block_config(kEmbedding);
  sb.feedforward->proj_factor = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(ThrowsMentioning([&] { SLstmBlock<S> b(sb); }, {"'proj_factor'", "inf"}));

  LargeModelConfig lc = large_config();
  lc.vocab_size = Index(1) << 60;
  EXPECT_TRUE(
      ThrowsMentioning([&] { LargeModel<S> m(lc); },
                       {"xLSTMLargeConfig", "'vocab_size' x 'embedding_dim'", "too large"}));
  for (double factor : {1e300, -0.5, std::numeric_limits<double>::quiet_NaN(),
                        std::numeric_limits<double>::infinity()}) {
    lc = large_config();
    lc.qk_dim_factor = factor;
    EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"'qk_dim_factor'"})) << factor;
    lc = large_config();
    lc.ffn_proj_factor = factor;
    EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"'ffn_proj_factor'"})) << factor;
  }

  // The same through JSON, where such numbers arrive from files.
  io::Json j = io::to_json(lm_config());
  j["embedding_dim"] = Index(1) << 62;
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)io::language_model_config_from_json(j); }, {"'embedding_dim'"}));
  j = io::to_json(lm_config());
  j["mlstm_block"]["mlstm"]["proj_factor"] = 1e300;
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)io::language_model_config_from_json(j); }, {"'proj_factor'"}));
  io::Json lj = io::to_json(large_config());
  lj["v_dim_factor"] = 1e300;
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)io::large_model_config_from_json(lj); }, {"'v_dim_factor'"}));
  lj = io::to_json(large_config());
  lj["vocab_size"] = Index(1) << 62;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)io::large_model_config_from_json(lj); },
                               {"'vocab_size' x 'embedding_dim'"}));
}

// ---------------------------------------------------------------------------
// Token ids out of range
// ---------------------------------------------------------------------------

TEST(BadInput, TokenIdOutOfRange) {
  LmFixture f;
  auto keep = [&] { return f.snapshot(); };
  Sequence<S> logits;
  for (std::int64_t id :
       {std::int64_t(-1), std::int64_t(kVocab), std::int64_t(kVocab + 1000),
        std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()}) {
    Tokens bad = tokens_of(2, 4, 1);
    bad(1, 3) = id;  // the last token of the last row: everything before it is valid
    const std::string needle = "token id " + std::to_string(id);
    EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { f.model.forward(bad, f.state, logits); },
                               {"LanguageModel::forward", needle, "[0, 20)"}));
    Matrix<S> step_logits(2, kVocab);
    EXPECT_TRUE(
        ThrowsAndKeeps(keep,
                       [&] {
                         f.model.step(std::vector<std::int64_t>{3, id}, f.state, step_logits);
                       },
                       {"LanguageModel::step", needle}));
  }
  // Ragged batches: an id inside a row's length is checked, padding is not.
  Tokens ragged = tokens_of(2, 4, 2);
  ragged(0, 1) = kVocab;
  ragged(1, 3) = -7;
  EXPECT_TRUE(ThrowsAndKeeps(keep,
                             [&] {
                               f.model.forward(ragged, Lengths{3, 3}, f.state, logits);
                             },
                             {"token id 20"}));
  ragged(0, 1) = 1;
  EXPECT_NO_THROW(f.model.forward(ragged, Lengths{3, 3}, f.state, logits));

  LargeFixture large;
  auto keep_large = [&] { return large.snapshot(); };
  Tokens bad = tokens_of(2, 3, 1);
  bad(1, 2) = -1;
  EXPECT_TRUE(ThrowsAndKeeps(keep_large, [&] { large.model.forward(bad, large.state, logits); },
                             {"LargeModel::forward", "token id -1", "[0, 20)"}));
  Matrix<S> step_logits(2, kVocab);
  EXPECT_TRUE(ThrowsAndKeeps(
      keep_large,
      [&] {
        large.model.step(std::vector<std::int64_t>{0, kVocab}, large.state, step_logits);
      },
      {"LargeModel::step", "token id 20"}));
}

// ---------------------------------------------------------------------------
// Configs with inconsistent fields
// ---------------------------------------------------------------------------

TEST(BadInput, InconsistentConfigs) {
  LanguageModelConfig c = lm_config();
  c.slstm_block->slstm.num_heads = 3;  // 16 not divisible by 3
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); },
                               {"'embedding_dim' (16)", "'num_heads' (3)"}));
  c = lm_config();
  c.mlstm_block->mlstm.num_heads = 5;  // inner dim 64 not divisible by 5
  EXPECT_TRUE(
      ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"inner (up-projected) width 64", "'num_heads' (5)"}));
  c = lm_config();
  c.mlstm_block->mlstm.qkv_proj_blocksize = 5;
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'qkv_proj_blocksize' (5)"}));
  c = lm_config();
  c.slstm_at = {3};  // == num_blocks
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'slstm_at'", "3", "[0, 3)"}));
  c = lm_config();
  c.slstm_at = {-1};
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'slstm_at'", "-1"}));
  c = lm_config();
  c.slstm_block.reset();  // placed at 1 but not configured
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'slstm_block' is null"}));
  c = lm_config();
  c.mlstm_block.reset();
  c.slstm_block.reset();
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'mlstm_block' or 'slstm_block'"}));
  c = lm_config();
  c.mlstm_block->mlstm.conv1d_kernel_size = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'conv1d_kernel_size'", "got 0"}));
  c = lm_config();
  c.slstm_block->slstm.function = "gru";
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'function'", "gru"}));
  c = lm_config();
  c.slstm_block->feedforward->act_fn = "swish7";
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"swish7"}));
  c = lm_config();
  c.slstm_block->feedforward->ff_type = "moe";
  EXPECT_TRUE(ThrowsMentioning([&] { LanguageModel<S> m(c); }, {"'ff_type'", "moe"}));

  SLstmBlockConfig sb = slstm_block_config(kEmbedding);
  sb._num_blocks = 2;
  sb._block_idx = 2;
  EXPECT_TRUE(
      ThrowsMentioning([&] { SLstmBlock<S> b(sb); }, {"'_block_idx' (2)", "_num_blocks = 2"}));

  MLstmCellConfig mc;
  mc.qk_head_dim = 4;
  mc.v_head_dim = 4;
  mc.eps = -1e-6;
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmCell<S> cell(mc); }, {"'eps'"}));
  mc.eps = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(ThrowsMentioning([&] { MLstmCell<S> cell(mc); }, {"'eps'"}));

  LargeModelConfig lc = large_config();
  lc.num_heads = 3;  // qk dim 16 not a multiple of 3
  EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"qk dim", "'num_heads' (3)"}));
  lc = large_config();
  lc.weight_mode = "split";
  EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"'weight_mode'", "split"}));
  lc = large_config();
  lc.norm_eps = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(ThrowsMentioning([&] { LargeModel<S> m(lc); }, {"'norm_eps'"}));

  // JSON: malformed text, a field of the wrong type, a wrong derived field.
  EXPECT_TRUE(ThrowsMentioning([] { (void)io::parse_json("{\"embedding_dim\": ", "config.json"); },
                               {"config.json", "malformed JSON"}));
  io::Json j = io::to_json(lm_config());
  j["mlstm_block"]["mlstm"]["round_proj_up_to_multiple_of"] = 0;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)io::language_model_config_from_json(j); },
                               {"'round_proj_up_to_multiple_of'"}));
  j = io::to_json(lm_config());
  j["vocab_size"] = "20";
  EXPECT_TRUE(ThrowsMentioning([&] { (void)io::language_model_config_from_json(j); },
                               {"'vocab_size'", "wrong type"}));

  // context_length is not used at inference (sequences of any length run), so
  // any value is accepted, as the official code accepts it.
  c = lm_config();
  c.context_length = 0;
  EXPECT_NO_THROW(LanguageModel<S> m(c));
}

// ---------------------------------------------------------------------------
// Truncated and corrupt files; tensors of the wrong dtype, shape or values
// ---------------------------------------------------------------------------

TEST(BadInput, TruncatedAndCorruptCheckpointsLeaveTheModelAlone) {
  LmFixture f;
  xlstm::ParameterList<S> list;
  list = xlstm::parameter_list(f.model, "");
  io::SafetensorsWriter writer;
  io::add_module(writer, f.model);
  const std::vector<std::uint8_t> good = writer.to_bytes();

  LanguageModel<S> target(lm_config());
  xlstm::Rng rng(9);
  target.initialize(rng);
  auto keep = [&] { return parameters_of(target); };
  // Cut anywhere: in the length field, the header, the data.
  for (std::size_t keep_bytes : {std::size_t(3), std::size_t(40), good.size() - 1}) {
    const std::vector<std::uint8_t> cut(good.begin(), good.begin() + std::ptrdiff_t(keep_bytes));
    EXPECT_TRUE(ThrowsAndKeeps(
        keep,
        [&] { io::load_module(target, io::SafetensorsFile::from_bytes(cut, "cut.safetensors")); },
        {"cut.safetensors"}))
        << keep_bytes << " bytes";
  }
  // A header that is not JSON.
  std::vector<std::uint8_t> corrupt = good;
  corrupt[8] = '[';
  corrupt[9] = '!';
  EXPECT_TRUE(ThrowsAndKeeps(
      keep, [&] { io::load_module(target, io::SafetensorsFile::from_bytes(corrupt, "c.st")); },
      {"c.st", "not valid JSON"}));

  // A tensor of an integer dtype and one of the wrong shape: both listed,
  // nothing written.
  const std::string int_name = "xlstm_block_stack.blocks.0.xlstm.learnable_skip";
  const std::string shape_name = "token_embedding.weight";
  const auto edited =
      edited_checkpoint(f.model, [&](io::SafetensorsWriter& w, const std::string& name,
                                     const xlstm::Shape& shape, std::vector<S>& values) {
        if (name == int_name) {
          const std::vector<std::int64_t> ints(values.size(), 1);
          w.add(name, shape, ints.data());
          return true;
        }
        if (name == shape_name) {
          w.add(name, {shape[1], shape[0]}, values.data());  // transposed
          return true;
        }
        return false;
      });
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { io::load_module(target, edited); },
                             {"edited.safetensors", "misshaped tensors (1)",
                              shape_name + ": expected [20, 16], file has [16, 20]",
                              "dtype that is not F32/F64/BF16/F16", int_name + " (I64)"}));
}

TEST(BadInput, NonFiniteWeightsAreRejectedOnRequest) {
  LmFixture f;
  const std::string name = "xlstm_block_stack.blocks.2.xlstm.proj_down.weight";
  // An F64 value beyond float's range becomes infinite when narrowed.
  const auto file =
      edited_checkpoint(f.model, [&](io::SafetensorsWriter& w, const std::string& n,
                                     const xlstm::Shape& shape, std::vector<S>& values) {
        if (n != name) return false;
        std::vector<double> wide(values.begin(), values.end());
        wide[3] = 1e300;
        w.add(n, shape, wide.data());
        return true;
      });
  LanguageModel<S> target(lm_config());
  xlstm::Rng rng(10);
  target.initialize(rng);
  io::LoadOptions strict;
  strict.check_finite = true;
  EXPECT_TRUE(ThrowsAndKeeps([&] { return parameters_of(target); },
                             [&] { io::load_module(target, file, strict); },
                             {"NaN or infinite", name}));
}

TEST(BadInput, LargeCheckpointsWithBadTensors) {
  // Shapes are inferred when there is no config; a weight of the wrong rank
  // used to be indexed out of bounds.
  LargeModel<S> model(large_config());
  xlstm::Rng rng(11);
  model.initialize(rng, 0.1);
  const std::string dir = ::testing::TempDir() + "/xlstm_bad_input_large";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/model.safetensors";
  io::save_large_model(model, path);
  {
    // Scoped: the mapping must be gone before the directory is removed
    // (Windows does not delete a mapped file).
    const auto good = io::SafetensorsFile::open(path);
    const std::string igate = "backbone.blocks.0.mlstm_layer.igate_preact.weight";
    io::SafetensorsWriter writer;
    for (const auto& name : good.names()) {
      const auto values = good.read<S>(name);
      if (name == igate) {
        writer.add(name, {}, values.data());  // a 0-D tensor
      } else {
        writer.add(name, good.info(name).shape, values.data());
      }
    }
    const auto files = io::CheckpointFiles::from_file(
        io::SafetensorsFile::from_bytes(writer.to_bytes(), "scalar.safetensors"));
    EXPECT_TRUE(ThrowsMentioning([&] { (void)io::load_large_model<S>(files); },
                                 {"scalar.safetensors", igate, "2-D with 32 columns", "shape []"}));
  }

  // A truncated file on disk.
  std::vector<char> bytes(std::filesystem::file_size(path));
  std::ifstream(path, std::ios::binary).read(bytes.data(), std::streamsize(bytes.size()));
  const std::string cut = dir + "/cut.safetensors";
  std::ofstream(cut, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() / 2));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)io::load_large_model<S>(cut); }, {cut}));
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------
// Recurrent state files
// ---------------------------------------------------------------------------

TEST(BadInput, CorruptStateFilesLeaveTheStateAlone) {
  LmFixture f;
  io::SafetensorsWriter writer;
  io::add_state(writer, f.state.stack);
  const std::vector<std::uint8_t> good = writer.to_bytes();
  auto target = f.model.initial_state(2);
  Sequence<S> logits;
  f.model.forward(tokens_of(2, 3, 8), target, logits);
  auto keep = [&] { return bytes_of(target); };

  const std::vector<std::uint8_t> cut(good.begin(), good.end() - 5);
  EXPECT_TRUE(ThrowsAndKeeps(
      keep, [&] { io::load_state(target.stack, io::SafetensorsFile::from_bytes(cut, "state.st")); },
      {"state.st"}));

  // An integer tensor where the sLSTM state belongs; the rest matches.
  const auto source = io::SafetensorsFile::from_bytes(good);
  io::SafetensorsWriter edited;
  for (const auto& name : source.names()) {
    const auto values = source.read<S>(name);
    if (name == "block_1.slstm_state") {
      const std::vector<std::int32_t> ints(values.size(), 0);
      edited.add(name, source.info(name).shape, ints.data());
    } else {
      edited.add(name, source.info(name).shape, values.data());
    }
  }
  const auto file = io::SafetensorsFile::from_bytes(edited.to_bytes(), "edited_state.st");
  EXPECT_TRUE(ThrowsAndKeeps(keep, [&] { io::load_state(target.stack, file); },
                             {"edited_state.st", "block_1.slstm_state (I32)"}));
}

}  // namespace

}  // namespace xlstm_test_bad_input
