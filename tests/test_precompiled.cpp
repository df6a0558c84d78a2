// xlstm::precompiled (xlstm/precompiled.hpp, src/): this program links it, so
// it is compiled with XLSTM_PRECOMPILED and every class template of the
// library's list is declared `extern` for float and double here; their
// out-of-class members (constructors, initial_state, forward, step,
// initialize, ...) come from the library. Each class is used in both types,
// so a member that the library lacks is a link error of this program. The
// checks are properties that hold however the code was compiled (forward then
// step equals forward over the longer input, a save/load round trip, small
// products against a loop); example_quickstart_precompiled compares the
// library's numbers with the header-only ones.
//
// Tolerances: step vs forward with the parallel mLSTM form on one side,
// test_util::kWithParallelTol (1e-4 in float, 1e-5 in double).

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "xlstm/xlstm.hpp"

#include "test_util.hpp"

#ifndef XLSTM_PRECOMPILED
#error "test_precompiled links xlstm::precompiled, which defines XLSTM_PRECOMPILED"
#endif

namespace {

using test_util::Close;
using test_util::fill_normal;
using test_util::Identical;
using test_util::random_sequence;
using test_util::random_tokens;
using test_util::randomize;
using test_util::TempPath;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::Sequence;

template <typename T>
class Precompiled : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Precompiled, Scalars, ::testing::internal::DefaultNameGenerator);

// A language model's step after forward over all tokens but the last gives
// the logits of forward over all of them (returned).
template <typename Model>
Sequence<typename Model::Scalar> expect_step_continues_forward(const Model& model,
                                                               const xlstm::Tokens& tokens) {
  using S = typename Model::Scalar;
  const Index batch = tokens.rows(), time = tokens.cols();
  auto state = model.initial_state(batch);
  Sequence<S> full, prefix;
  model.forward(tokens, state, full);
  auto prefix_state = model.initial_state(batch);
  model.forward(tokens.leftCols(time - 1), prefix_state, prefix);
  std::vector<std::int64_t> last(static_cast<std::size_t>(batch));
  for (Index b = 0; b < batch; ++b) last[std::size_t(b)] = tokens(b, time - 1);
  Matrix<S> logits;
  model.step(last, prefix_state, logits);
  for (Index b = 0; b < batch; ++b) {
    EXPECT_TRUE(Close(logits.row(b), full.at(b, time - 1), test_util::kWithParallelTol<S>));
  }
  return full;
}

// LanguageModel, BlockStack, MLstmBlock, SLstmBlock and their cells and
// components: the logits of forward(T-1) then step equal forward(T), and a
// saved and reloaded model gives the same logits.
TYPED_TEST(Precompiled, LanguageModel) {
  using S = TypeParam;
  const auto config = test_util::lm_config(32, 3, {1}, 40);
  xlstm::LanguageModel<S> model(config);
  randomize(model, 1);
  const xlstm::Tokens tokens = random_tokens(/*batch*/ 2, /*time*/ 12, config.vocab_size, 2);
  const Sequence<S> full = expect_step_continues_forward(model, tokens);

  TempPath path("precompiled_lm");
  xlstm::io::save_module(model, path.str());
  xlstm::LanguageModel<S> loaded(config, xlstm::uninitialized);
  xlstm::io::load_module(loaded, xlstm::io::SafetensorsFile::open(path.str()));
  auto loaded_state = loaded.initial_state(tokens.rows());
  Sequence<S> again;
  loaded.forward(tokens, loaded_state, again);
  EXPECT_TRUE(Identical(again.matrix(), full.matrix()));
}

// LargeModel, LargeBlock, RmsNorm, GatedFeedForward (split) and WeightMatrix.
TYPED_TEST(Precompiled, LargeModel) {
  using S = TypeParam;
  auto config = test_util::large_config(32, 2, 2, 30);
  config.chunk_size = 8;
  xlstm::LargeModel<S> model(config);
  xlstm::Rng rng(3);
  model.initialize(rng, 0.5);
  expect_step_continues_forward(model,
                                random_tokens(/*batch*/ 2, /*time*/ 10, config.vocab_size, 4));
}

// The blocks and cells used on their own, forward then step.
TYPED_TEST(Precompiled, BlocksAndCells) {
  using S = TypeParam;
  std::mt19937_64 gen(5);
  const Index batch = 2, time = 6, e = 32;
  const Sequence<S> x = random_sequence<S>(batch, time, e, gen);

  xlstm::MLstmBlockConfig mc;
  mc.mlstm.embedding_dim = e;
  mc.mlstm.num_heads = 4;
  xlstm::MLstmBlock<S> mblock(mc);
  randomize(mblock, 6);
  xlstm::SLstmBlockConfig sc;
  sc.slstm.embedding_dim = e;
  sc.slstm.num_heads = 4;
  xlstm::SLstmBlock<S> sblock(sc);
  randomize(sblock, 7);
  xlstm::LargeBlockConfig lc;
  lc.embedding_dim = e;
  lc.num_heads = 2;
  xlstm::LargeBlock<S> lblock(lc);
  randomize(lblock, 8);

  auto forward_then_step = [&](const auto& block) {
    auto state = block.initial_state(batch);
    Sequence<S> y;
    block.forward(x, state, y);
    auto prefix_state = block.initial_state(batch);
    Sequence<S> prefix;
    block.forward(test_util::time_slice(x, 0, time - 1), prefix_state, prefix);
    Matrix<S> y_t;
    block.step(x.time_step(time - 1), prefix_state, y_t);
    for (Index b = 0; b < batch; ++b) {
      EXPECT_TRUE(Close(y_t.row(b), y.at(b, time - 1), test_util::kWithParallelTol<S>));
    }
  };
  forward_then_step(mblock);
  forward_then_step(sblock);
  forward_then_step(lblock);

  // SLstmCell: the CUDA layout round trip, then forward vs step.
  xlstm::SLstmCellConfig cc;
  cc.hidden_size = 8;
  cc.num_heads = 2;
  xlstm::SLstmCell<S> scell(cc);
  Matrix<S> kernel(8, 16);
  xlstm::Vector<S> bias(32);
  fill_normal(kernel, gen, 0.0, 0.3);
  fill_normal(bias, gen);
  scell.set_from_cuda_layout(kernel, bias);
  Matrix<S> kernel_back;
  xlstm::Vector<S> bias_back;
  scell.get_cuda_layout(kernel_back, bias_back);
  EXPECT_TRUE(Identical(kernel_back, kernel));
  EXPECT_TRUE(Identical(bias_back, bias));
  const Sequence<S> pre = random_sequence<S>(batch, 3, 32, gen);
  auto scell_state = scell.initial_state(batch);
  Sequence<S> sy;
  scell.forward(pre, scell_state, sy);
  auto scell_steps = scell.initial_state(batch);
  for (Index t = 0; t < 3; ++t) scell.step(pre.time_step(t), scell_steps);
  EXPECT_TRUE(Close(scell_steps.y, scell_state.y, test_util::kWithParallelTol<S>));

  // MLstmCell: forward vs step.
  xlstm::MLstmCellConfig mcc;
  mcc.num_heads = 2;
  mcc.qk_head_dim = 4;
  mcc.v_head_dim = 4;
  xlstm::MLstmCell<S> mcell(mcc);
  const Sequence<S> q = random_sequence<S>(batch, 1, 8, gen),
                    k = random_sequence<S>(batch, 1, 8, gen),
                    v = random_sequence<S>(batch, 1, 8, gen),
                    ig = random_sequence<S>(batch, 1, 2, gen),
                    fg = random_sequence<S>(batch, 1, 2, gen);
  auto mstate = mcell.initial_state(batch);
  Sequence<S> h;
  mcell.forward(q, k, v, ig, fg, mstate, h);
  auto mstep_state = mcell.initial_state(batch);
  Matrix<S> h_t(batch, 8);
  mcell.step(q.matrix(), k.matrix(), v.matrix(), ig.matrix(), fg.matrix(), mstep_state, h_t);
  EXPECT_TRUE(Close(h_t, h.matrix(), test_util::kWithParallelTol<S>));
}

// The components on their own.
TYPED_TEST(Precompiled, Components) {
  using S = TypeParam;
  std::mt19937_64 gen(9);
  Matrix<S> x(5, 16);
  fill_normal(x, gen);

  xlstm::Linear<S> linear(16, 12, true);
  fill_normal(linear.weight(), gen);
  fill_normal(linear.bias(), gen);
  Matrix<S> expected = (x * linear.weight().transpose()).rowwise() + linear.bias().transpose();
  EXPECT_TRUE(Close(linear(x), expected, 1e-5));

  // 16-bit weights: WeightMatrix widens them; the same as the decoded matrix.
  xlstm::Linear<S> half(16, 12, false, xlstm::WeightStorage::bf16);
  std::uint16_t* bits = half.weight_matrix().owned_half_bits();
  for (Index i = 0; i < 16 * 12; ++i) bits[i] = std::uint16_t(0x3f80 + (i * 13) % 256 - 128);
  Matrix<S> decoded(12, 16);
  for (Index r = 0; r < 12; ++r) half.weight_matrix().copy_row(r, decoded.row(r));
  EXPECT_TRUE(Close(half(x), Matrix<S>(x * decoded.transpose()), 1e-5));

  xlstm::HeadwiseLinear<S> headwise(16, 4, false);
  fill_normal(headwise.weight(), gen);
  Matrix<S> hy(5, 16);
  headwise.forward(x, hy);
  for (Index h = 0; h < 4; ++h) {
    const Matrix<S> block =
        x.middleCols(h * 4, 4) * headwise.weight().middleRows(h * 4, 4).transpose();
    EXPECT_TRUE(Close(hy.middleCols(h * 4, 4), block, 1e-5));
  }

  Matrix<S> ny(5, 16), ry(5, 16);
  xlstm::make_layer_norm<S>(16).forward(x, ny);
  xlstm::RmsNorm<S>(16, 1e-6, false).forward(x, ry);
  for (Index r = 0; r < 5; ++r) {
    EXPECT_NEAR(double(ny.row(r).mean()), 0.0, 1e-5);
    EXPECT_NEAR(double(ry.row(r).squaredNorm()) / 16, 1.0, 1e-4);
  }

  xlstm::CausalConv1d<S> conv(16, 3);
  fill_normal(conv.weight(), gen);
  const Sequence<S> seq = random_sequence<S>(1, 4, 16, gen);
  auto conv_state = conv.initial_state(1);
  Sequence<S> cy;
  conv.forward(seq, conv_state, cy);
  auto conv_steps = conv.initial_state(1);
  Matrix<S> c_t(1, 16);
  for (Index t = 0; t < 4; ++t) {
    conv.step(seq.time_step(t), conv_steps, c_t);
    EXPECT_TRUE(Close(c_t, cy.at(0, t), 1e-5));
  }

  xlstm::GatedFeedForward<S> ffn(16, 32, xlstm::Activation::gelu, false);
  fill_normal(ffn.proj_up().weight(), gen, 0.0, 0.2);
  fill_normal(ffn.proj_down().weight(), gen, 0.0, 0.2);
  Matrix<S> fy(5, 16), fy_row(1, 16), up;
  ffn.forward(x, fy, up);
  ffn.forward(x.row(2), fy_row, up, xlstm::Workload::step);
  EXPECT_TRUE(Close(fy_row, fy.row(2), 1e-5));
}

}  // namespace
