// The backward passes of the layers in core/ (math §1.10-§1.14): Linear
// (with and without bias, 16-bit weights), HeadwiseLinear, LayerNorm and
// MultiHeadLayerNorm (every weight convention, with and without bias),
// RmsNorm, CausalConv1d (ragged, initial and final windows, + its SiLU) and
// GatedFeedForward (fused and split, every activation), against float64
// central finite differences of the same C++ forward in random directions at
// odd shapes; the gradient objects' names and accumulation; argument checks.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "test_util.hpp"
#include "xlstm/core/activations_backward.hpp"
#include "xlstm/core/causal_conv1d_backward.hpp"
#include "xlstm/core/feedforward_backward.hpp"
#include "xlstm/core/layer_norm_backward.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/rms_norm_backward.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_layers_backward {

namespace {

using test_util::dot;
using test_util::expect_gradients_match_differences;
using test_util::fill_normal;
using test_util::GradientTarget;
using test_util::parameter_targets;
using test_util::random_matrix;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using xlstm::Index;
using xlstm::Lengths;
using xlstm::Matrix;
using xlstm::Sequence;

// Checks a layer y = f(x) of N rows: L = sum(y * grad_y). `forward(x, y)` runs
// the layer, `backward(x, grad_y, grads, grad_x)` its backward.
template <typename Module, typename Grads, typename Forward, typename Backward>
double check_rowwise_layer(Module& module, Index rows, Index in, Index out, Forward forward,
                           Backward backward, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Matrix<double> x = random_matrix<double>(rows, in, rng);
  const Matrix<double> grad_y = random_matrix<double>(rows, out, rng);
  Grads grads(module);
  Matrix<double> grad_x(rows, in);
  backward(x, grad_y, grads, grad_x);
  auto loss = [&] {
    Matrix<double> y(rows, out);
    forward(x, y);
    return dot(y, grad_y);
  };
  auto targets = parameter_targets(module, grads);
  targets.push_back({"x", x.data(), x.size(), grad_x.data()});
  return expect_gradients_match_differences(loss, targets, seed + 1);
}

TEST(LayersBackward, LinearMatchesFiniteDifferences) {
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    xlstm::Linear<double> layer(7, 5, bias);
    std::mt19937_64 rng(10);
    test_util::add_noise(layer, rng, 0.5);
    const double worst = check_rowwise_layer<xlstm::Linear<double>, xlstm::LinearGradients<double>>(
        layer, 11, 7, 5, [&](const auto& x, auto& y) { layer.forward(x, y); },
        [&](const auto& x, const auto& gy, auto& grads, auto& gx) {
          xlstm::backward(layer, x, gy, grads, gx);
        },
        11);
    std::printf("  Linear, bias %d: worst relative error %.2e\n", int(bias), worst);
  }
}

// 16-bit weights: the gradients equal those of a native layer holding the
// decoded weights (the 16-bit weights are not perturbed, so no differences).
template <typename S>
class LayersBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE_P(LayersBackwardTyped);

TYPED_TEST_P(LayersBackwardTyped, HalfWeightsGiveTheGradientsOfTheDecodedWeights) {
  using S = TypeParam;
  std::mt19937_64 rng(20);
  for (const auto storage : {xlstm::WeightStorage::bf16, xlstm::WeightStorage::f16}) {
    // 40 x 150: several 32 x 128 decoding panels, partial ones at the edges.
    xlstm::Linear<S> half(150, 40, true, storage);
    std::uniform_int_distribution<int> bits(0x3000, 0x3c00);  // moderate positive values
    std::bernoulli_distribution negative(0.5);
    for (Index i = 0; i < 40 * 150; ++i) {
      half.weight_matrix().owned_half_bits()[i] =
          std::uint16_t(bits(rng) | (negative(rng) ? 0x8000 : 0));
    }
    fill_normal(half.bias(), rng);
    xlstm::Linear<S> native(150, 40, true);
    half.weight_matrix().copy_block(0, 0, native.weight());
    native.bias() = half.bias();
    const Matrix<S> x = random_matrix<S>(9, 150, rng), grad_y = random_matrix<S>(9, 40, rng);
    xlstm::LinearGradients<S> g_half(half), g_native(native);
    Matrix<S> gx_half(9, 150), gx_native(9, 150);
    xlstm::backward(half, x, grad_y, g_half, gx_half);
    xlstm::backward(native, x, grad_y, g_native, gx_native);
    const double tol = test_util::per_scalar<S>(1e-5, 1e-13);
    EXPECT_TRUE(test_util::Close(gx_half, gx_native, tol));
    EXPECT_TRUE(test_util::Close(g_half.weight(), g_native.weight(), tol));
    EXPECT_TRUE(test_util::Close(g_half.bias(), g_native.bias(), tol));
  }
}

TEST(LayersBackward, HeadwiseLinearMatchesFiniteDifferences) {
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    // 3 heads of 3 -> 2 (small-head kernel) and 2 heads of 9 -> 17 (GEMM per head).
    for (const auto& [in, heads, out] : {std::tuple<Index, Index, Index>{9, 3, 6}, {18, 2, 34}}) {
      xlstm::HeadwiseLinear<double> layer(in, heads, bias, out);
      std::mt19937_64 rng(30);
      test_util::add_noise(layer, rng, 0.5);
      const double worst = check_rowwise_layer<xlstm::HeadwiseLinear<double>,
                                               xlstm::HeadwiseLinearGradients<double>>(
          layer, 13, in, out, [&](const auto& x, auto& y) { layer.forward(x, y); },
          [&](const auto& x, const auto& gy, auto& grads, auto& gx) {
            xlstm::backward(layer, x, gy, grads, gx);
          },
          31);
      std::printf("  HeadwiseLinear %td/%td/%td, bias %d: worst relative error %.2e\n", in, heads,
                  out, int(bias), worst);
    }
  }
}

// The small-head backward kernel (heads of at most 16 x 16) at the sizes of
// its unrolled variants and a generic one, over enough rows to run in
// parallel: equal to the block-diagonal products written out, with
// InputGradient::add adding to grad_x and grads accumulating, and the same
// bits at one and two threads (rows and heads split, no sum).
TEST(LayersBackward, HeadwiseSmallHeadsMatchTheLoopAtAnyThreadCount) {
  for (const auto& [in, heads, out] :
       {std::tuple<Index, Index, Index>{64, 16, 64}, {64, 8, 64}, {48, 3, 48}, {30, 6, 12}}) {
    SCOPED_TRACE(std::to_string(heads) + " heads, " + std::to_string(in) + " -> " +
                 std::to_string(out));
    const Index head_in = in / heads, head_out = out / heads, rows = 1100;
    xlstm::HeadwiseLinear<double> layer(in, heads, true, out);
    std::mt19937_64 rng(40);
    test_util::add_noise(layer, rng, 0.5);
    const Matrix<double> x = random_matrix<double>(rows, in, rng);
    const Matrix<double> grad_y = random_matrix<double>(rows, out, rng);
    const Matrix<double> before = random_matrix<double>(rows, in, rng);
    // The products written out, head by head.
    Matrix<double> want_x = before, want_w = Matrix<double>::Zero(out, head_in);
    for (Index h = 0; h < heads; ++h) {
      for (Index n = 0; n < rows; ++n) {
        for (Index o = 0; o < head_out; ++o) {
          for (Index i = 0; i < head_in; ++i) {
            want_x(n, h * head_in + i) +=
                grad_y(n, h * head_out + o) * layer.weight()(h * head_out + o, i);
            want_w(h * head_out + o, i) += grad_y(n, h * head_out + o) * x(n, h * head_in + i);
          }
        }
      }
    }
    const int saved = xlstm::num_threads();
    std::vector<Matrix<double>> grad_xs, grad_ws;
    for (const int threads : {1, 2}) {
      xlstm::set_num_threads(threads);
      xlstm::HeadwiseLinearGradients<double> grads(layer);
      Matrix<double> grad_x = before;
      xlstm::backward(layer, x, grad_y, grads, grad_x, xlstm::InputGradient::add);
      EXPECT_TRUE(test_util::Close(grad_x, want_x, 1e-12));
      EXPECT_TRUE(test_util::Close(grads.weight(), want_w, 1e-12));
      EXPECT_TRUE(test_util::Close(grads.bias(), grad_y.colwise().sum().transpose(), 1e-12));
      // A second call accumulates into grads; replace mode overwrites grad_x.
      xlstm::backward(layer, x, grad_y, grads, grad_x);
      EXPECT_TRUE(test_util::Close(grad_x, Matrix<double>(want_x - before), 1e-12));
      EXPECT_TRUE(test_util::Close(grads.weight(), Matrix<double>(2 * want_w), 1e-12));
      grad_xs.push_back(grad_x);
      grad_ws.push_back(grads.weight());
      // grad_x may be x itself (square heads): the weight gradient still
      // sees the input.
      if (head_in == head_out) {
        xlstm::HeadwiseLinearGradients<double> in_place(layer);
        Matrix<double> x_then_grad = x;
        xlstm::backward(layer, x_then_grad, grad_y, in_place, x_then_grad);
        EXPECT_TRUE(test_util::Close(in_place.weight(), want_w, 1e-12));
        EXPECT_TRUE(test_util::Close(x_then_grad, Matrix<double>(want_x - before), 1e-12));
      }
    }
    xlstm::set_num_threads(saved);
    EXPECT_TRUE(test_util::BitIdentical(grad_xs[0], grad_xs[1]));
    EXPECT_TRUE(test_util::BitIdentical(grad_ws[0], grad_ws[1]));
  }
}

TEST(LayersBackward, NormsMatchFiniteDifferences) {
  struct Case {
    const char* name;
    Index groups;
    xlstm::NormWeight weight;
    bool bias;
  };
  const std::vector<Case> cases = {
      {"LayerNorm, offset weight", 1, xlstm::NormWeight::offset, false},
      {"LayerNorm, offset weight and bias", 1, xlstm::NormWeight::offset, true},
      {"LayerNorm, direct weight and bias", 1, xlstm::NormWeight::direct, true},
      {"LayerNorm, no weight", 1, xlstm::NormWeight::none, false},
      {"MultiHeadLayerNorm, 3 heads, offset weight", 3, xlstm::NormWeight::offset, false},
      {"MultiHeadLayerNorm, 5 heads, no weight", 5, xlstm::NormWeight::none, false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    xlstm::GroupedNorm<double> norm(15, c.groups, c.weight, c.bias, 1e-5);
    std::mt19937_64 rng(40);
    test_util::add_noise(norm, rng, 0.3);
    const double worst =
        check_rowwise_layer<xlstm::GroupedNorm<double>, xlstm::GroupedNormGradients<double>>(
            norm, 7, 15, 15, [&](const auto& x, auto& y) { norm.forward(x, y); },
            [&](const auto& x, const auto& gy, auto& grads, auto& gx) {
              xlstm::backward(norm, x, gy, grads, gx);
            },
            41);
    std::printf("  %-44s worst relative error %.2e\n", c.name, worst);
  }
  for (const bool bias : {false, true}) {
    xlstm::RmsNorm<double> norm(13, 1e-6, bias);
    std::mt19937_64 rng(42);
    test_util::add_noise(norm, rng, 0.3);
    const double worst =
        check_rowwise_layer<xlstm::RmsNorm<double>, xlstm::RmsNormGradients<double>>(
            norm, 6, 13, 13, [&](const auto& x, auto& y) { norm.forward(x, y); },
            [&](const auto& x, const auto& gy, auto& grads, auto& gx) {
              xlstm::backward(norm, x, gy, grads, gx);
            },
            43);
    std::printf("  RmsNorm, bias %d: worst relative error %.2e\n", int(bias), worst);
  }
}

// The conv (+ SiLU, as the blocks apply it) from a random initial window,
// with a cotangent on the final window, ragged rows, kernel sizes 0..5.
TEST(LayersBackward, CausalConvMatchesFiniteDifferences) {
  for (const Index k : {Index(0), Index(1), Index(3), Index(4), Index(5)}) {
    for (const bool silu : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "kernel size " << k << (silu ? ", SiLU" : ""));
      const Index batch = 3, time = 4, f = 5;
      const Lengths lengths = {4, 2, 0};
      xlstm::CausalConv1d<double> conv(f, k);
      std::mt19937_64 rng(50 + std::uint64_t(k));
      test_util::add_noise(conv, rng, 0.5);
      auto x = random_sequence<double>(batch, time, f, rng);
      auto start = conv.initial_state(batch);
      fill_normal(start.window, rng);
      auto grad_y = random_sequence<double>(batch, time, f, rng);
      auto grad_final = conv.initial_state(batch);
      fill_normal(grad_final.window, rng);

      auto run = [&](xlstm::CausalConv1dState<double>& state, Sequence<double>& y) {
        conv.forward(x, lengths, state, y);
        if (silu) y.matrix().array() = xlstm::silu(y.matrix().array());
        xlstm::zero_padding(y, lengths);
      };
      auto loss = [&] {
        auto state = start;
        Sequence<double> y;
        run(state, y);
        return dot(y.matrix(), grad_y.matrix()) + dot(state.window, grad_final.window);
      };
      // Backward: the SiLU's, then the conv's.
      auto state = start;
      Sequence<double> y, grad_x;
      conv.forward(x, lengths, state, y);
      Sequence<double> grad_conv = grad_y;
      if (silu) {
        auto g = grad_conv.matrix().array();
        xlstm::multiply_by_activation_derivative(xlstm::Activation::swish, y.matrix().array(), g);
      }
      xlstm::CausalConv1dGradients<double> grads(conv);
      auto grad_state = grad_final;
      xlstm::backward(conv, x, lengths, start, grad_conv, grad_state, grads, grad_x);
      // Past a row's length the input gradient is zero.
      EXPECT_EQ(grad_x.rows_of(1).bottomRows(2).cwiseAbs().maxCoeff(), 0.0);
      EXPECT_EQ(grad_x.rows_of(2).cwiseAbs().maxCoeff(), 0.0);
      auto targets = parameter_targets(conv, grads);
      targets.push_back({"x", x.matrix().data(), x.matrix().size(), grad_x.matrix().data()});
      if (k > 0) {
        targets.push_back(
            {"initial window", start.window.data(), start.window.size(), grad_state.window.data()});
      }
      const double worst = expect_gradients_match_differences(loss, targets, 51);
      std::printf("  conv K %td%s: worst relative error %.2e\n", k, silu ? " + SiLU" : "", worst);
    }
  }
}

// The row-wise layers split blocks of rows (the conv: batch rows) over the
// threads and sum their parameter gradients per block, then in block order:
// at sizes that run in parallel, one and two threads give the same bits, and
// the sums equal those of one block at a time (ragged conv rows included).
TEST(LayersBackward, NormAndConvSameBitsWithAnyThreadCount) {
  std::mt19937_64 rng(60);
  xlstm::GroupedNorm<double> norm(96, 3, xlstm::NormWeight::offset, true, 1e-5);
  test_util::add_noise(norm, rng, 0.5);
  const Matrix<double> x = random_matrix<double>(700, 96, rng);
  const Matrix<double> grad_y = random_matrix<double>(700, 96, rng);
  const Index batch = 5, time = 100, f = 64, k = 4;
  const Lengths lengths = {100, 37, 0, 64, 99};
  xlstm::CausalConv1d<double> conv(f, k);
  test_util::add_noise(conv, rng, 0.5);
  const auto cx = random_sequence<double>(batch, time, f, rng);
  const auto c_grad_y = random_sequence<double>(batch, time, f, rng);
  auto start = conv.initial_state(batch), grad_final = conv.initial_state(batch);
  fill_normal(start.window, rng);
  fill_normal(grad_final.window, rng);
  struct Result {
    Matrix<double> y, norm_x, norm_w, norm_b, conv_x, conv_w, conv_b, conv_state;
  };
  auto run = [&](int threads) {
    xlstm::set_num_threads(threads);
    Result r;
    r.y.resize(700, 96);
    norm.forward(x, r.y);
    xlstm::GroupedNormGradients<double> ng(norm);
    r.norm_x.resize(700, 96);
    xlstm::backward(norm, x, grad_y, ng, r.norm_x);
    r.norm_w = ng.weight();
    r.norm_b = ng.bias();
    auto state = start;
    Sequence<double> y, gx;
    conv.forward(cx, lengths, state, y);
    xlstm::CausalConv1dGradients<double> cg(conv);
    auto grad_state = grad_final;
    xlstm::backward(conv, cx, lengths, start, c_grad_y, grad_state, cg, gx);
    r.conv_x = gx.matrix();
    r.conv_w = cg.weight();
    r.conv_b = cg.bias();
    r.conv_state = grad_state.window;
    return std::make_pair(r, Matrix<double>(y.matrix()));
  };
  const int saved = xlstm::num_threads();
  const auto [one, one_y] = run(1);
  const auto [two, two_y] = run(2);
  xlstm::set_num_threads(saved);
  EXPECT_TRUE(test_util::BitIdentical(one.y, two.y));
  EXPECT_TRUE(test_util::BitIdentical(one_y, two_y));
  for (const auto& [a, b] : {std::pair{&one.norm_x, &two.norm_x},
                             {&one.norm_w, &two.norm_w},
                             {&one.norm_b, &two.norm_b},
                             {&one.conv_x, &two.conv_x},
                             {&one.conv_w, &two.conv_w},
                             {&one.conv_b, &two.conv_b},
                             {&one.conv_state, &two.conv_state}}) {
    EXPECT_TRUE(test_util::BitIdentical(*a, *b));
  }
  // The conv's bias gradient is the sum of grad_y over the valid rows.
  Matrix<double> want_bias = Matrix<double>::Zero(f, 1);
  for (Index b = 0; b < batch; ++b) {
    want_bias += c_grad_y.rows_of(b).topRows(lengths[std::size_t(b)]).colwise().sum().transpose();
  }
  EXPECT_TRUE(test_util::Close(one.conv_b, want_bias, 1e-12));
}

TEST(LayersBackward, GatedFeedForwardMatchesFiniteDifferences) {
  using xlstm::Activation;
  for (const auto layout : {xlstm::GateLayout::fused, xlstm::GateLayout::split}) {
    for (const auto act : {Activation::gelu, Activation::relu, Activation::relu_squared,
                           Activation::swish, Activation::selu, Activation::sigmoid}) {
      for (const bool bias : {false, true}) {
        SCOPED_TRACE(::testing::Message() << xlstm::activation_name(act) << " layout "
                                          << int(layout) << " bias " << bias);
        xlstm::GatedFeedForward<double> ffn(7, 5, act, bias, layout);
        std::mt19937_64 rng(60);
        test_util::add_noise(ffn, rng, 0.5);
        xlstm::GatedFeedForwardTape<double> tape;
        const double worst = check_rowwise_layer<xlstm::GatedFeedForward<double>,
                                                 xlstm::GatedFeedForwardGradients<double>>(
            ffn, 9, 7, 7,
            [&](const auto& x, auto& y) {
              Matrix<double> up;
              ffn.forward(x, y, up);
            },
            [&](const auto& x, const auto& gy, auto& grads, auto& gx) {
              Matrix<double> y(x.rows(), 7);
              ffn.forward(x, y, tape);
              xlstm::backward(ffn, x, tape, gy, grads, gx);
            },
            61);
        std::printf("  FFN %-7s %s bias %d: worst relative error %.2e\n",
                    xlstm::activation_name(act),
                    layout == xlstm::GateLayout::fused ? "fused" : "split", int(bias), worst);
      }
    }
  }
}

// The recording forward gives the plain forward's output.
TYPED_TEST_P(LayersBackwardTyped, RecordingFeedForwardGivesTheSameOutput) {
  using S = TypeParam;
  std::mt19937_64 rng(70);
  xlstm::GatedFeedForward<S> ffn(16, 24, xlstm::Activation::gelu, true);
  test_util::add_noise(ffn, rng, 0.3);
  const Matrix<S> x = random_matrix<S>(20, 16, rng);
  Matrix<S> y(20, 16), y_taped(20, 16), up;
  ffn.forward(x, y, up);
  xlstm::GatedFeedForwardTape<S> tape;
  ffn.forward(x, y_taped, tape);
  EXPECT_TRUE(test_util::BitIdentical(y_taped, y));
}

// Names and shapes of every gradient object are its module's; backward adds.
TYPED_TEST_P(LayersBackwardTyped, GradientsAreNamedLikeParametersAndAccumulate) {
  using S = TypeParam;
  std::mt19937_64 rng(80);
  auto same_names = [](const auto& module, const auto& grads) {
    const auto params = xlstm::parameter_list(module, "m.");
    const auto list = xlstm::parameter_list(grads, "m.");
    ASSERT_EQ(params.size(), list.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(list[i].name, params[i].name);
      EXPECT_EQ(list[i].shape, params[i].shape);
    }
  };
  const xlstm::Linear<S> linear(6, 4, true, xlstm::WeightStorage::bf16);
  same_names(linear, xlstm::LinearGradients<S>(linear));
  const xlstm::HeadwiseLinear<S> headwise(6, 3, true, 9);
  same_names(headwise, xlstm::HeadwiseLinearGradients<S>(headwise));
  const auto norm = xlstm::make_multi_head_layer_norm<S>(6, 2);
  same_names(norm, xlstm::GroupedNormGradients<S>(norm));
  const xlstm::RmsNorm<S> rms(6, 1e-6, true);
  same_names(rms, xlstm::RmsNormGradients<S>(rms));
  for (const Index k : {Index(0), Index(4)}) {
    const xlstm::CausalConv1d<S> conv(6, k);
    same_names(conv, xlstm::CausalConv1dGradients<S>(conv));
  }
  for (const auto layout : {xlstm::GateLayout::fused, xlstm::GateLayout::split}) {
    const xlstm::GatedFeedForward<S> ffn(6, 5, xlstm::Activation::gelu, true, layout);
    same_names(ffn, xlstm::GatedFeedForwardGradients<S>(ffn));
  }

  xlstm::Linear<S> layer(6, 4, true);
  test_util::add_noise(layer, rng, 1.0);
  const Matrix<S> x = random_matrix<S>(5, 6, rng), grad_y = random_matrix<S>(5, 4, rng);
  xlstm::LinearGradients<S> grads(layer);
  Matrix<S> grad_x(5, 6), grad_x_twice(5, 6);
  xlstm::backward(layer, x, grad_y, grads, grad_x);
  const Matrix<S> once = grads.weight();
  grad_x_twice = grad_x;
  xlstm::backward(layer, x, grad_y, grads, grad_x_twice, xlstm::InputGradient::add);
  const double tol = test_util::per_scalar<S>(1e-6, 1e-14);
  EXPECT_TRUE(test_util::Close(grads.weight(), (2 * once).eval(), tol));
  EXPECT_TRUE(test_util::Close(grad_x_twice, (2 * grad_x).eval(), tol));
  grads.zero();
  EXPECT_EQ(grads.weight().cwiseAbs().maxCoeff(), S(0));
  EXPECT_EQ(grads.bias().cwiseAbs().maxCoeff(), S(0));
}

TYPED_TEST_P(LayersBackwardTyped, RejectsMismatchedArguments) {
  using S = TypeParam;
  std::mt19937_64 rng(90);
  const xlstm::Linear<S> layer(6, 4, false), other(5, 4, false);
  xlstm::LinearGradients<S> grads(layer), other_grads(other);
  const Matrix<S> x = random_matrix<S>(3, 6, rng), grad_y = random_matrix<S>(3, 4, rng);
  Matrix<S> grad_x(3, 6), short_grad_x(2, 6);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(layer, x, grad_y.leftCols(3), grads, grad_x); },
                       {"'grad_y'", "3 x 4", "3 x 3"}));
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::backward(layer, x, grad_y, grads, short_grad_x); },
                               {"'grad_x'", "2 x 6"}));
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(layer, x, grad_y, other_grads, grad_x); }, "'grads'"));

  const auto norm = xlstm::make_layer_norm<S>(6);
  xlstm::GroupedNormGradients<S> norm_grads(norm);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::backward(norm, x, grad_y, norm_grads, grad_x); }, "'grad_y'"));

  const xlstm::GatedFeedForward<S> ffn(6, 5, xlstm::Activation::gelu, false);
  xlstm::GatedFeedForwardGradients<S> ffn_grads(ffn);
  xlstm::GatedFeedForwardTape<S> tape;
  const Matrix<S> ffn_grad_y = random_matrix<S>(3, 6, rng);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::backward(ffn, x, tape, ffn_grad_y, ffn_grads, grad_x); }, "'tape'"));

  const xlstm::CausalConv1d<S> conv(6, 3);
  xlstm::CausalConv1dGradients<S> conv_grads(conv);
  const auto seq = random_sequence<S>(2, 4, 6, rng);
  auto start = conv.initial_state(2), grad_state = conv.initial_state(3);
  Sequence<S> conv_grad_x;
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        xlstm::backward(conv, seq, Lengths{}, start, seq, grad_state, conv_grads, conv_grad_x);
      },
      "'state'"));
}

REGISTER_TYPED_TEST_SUITE_P(LayersBackwardTyped, HalfWeightsGiveTheGradientsOfTheDecodedWeights,
                            RecordingFeedForwardGivesTheSameOutput,
                            GradientsAreNamedLikeParametersAndAccumulate,
                            RejectsMismatchedArguments);
// The empty fourth argument: clang's -Wpedantic rejects a variadic macro
// called without one.
INSTANTIATE_TYPED_TEST_SUITE_P(Scalars, LayersBackwardTyped, test_util::Scalars, );

}  // namespace

}  // namespace xlstm_test_layers_backward
