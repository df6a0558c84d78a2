// Component tests (math §1): Linear, HeadwiseLinear, LayerNorm,
// MultiHeadLayerNorm, CausalConv1d, GatedFeedForward and the two rounding
// helpers, each against a naive loop over the formula of the SPEC.
//
// Tolerances. The naive references are evaluated in long double from the
// very same Scalar inputs, so their own rounding error is negligible (64-bit
// mantissa vs 24/53) and the whole difference is the library's rounding.
// For a sum of n products computed in Scalar the classic bound is
//     |fl(sum) - sum| <= gamma_n * sum_i |term_i|,  gamma_n = n u / (1 - n u),
// u = epsilon/2 the unit roundoff. Every comparison below uses such a bound,
// computed per element from the actual terms (the "magnitude"), with a factor
// 2 of margin; the derivation for each component is at its test. These
// bounds are tight enough that any formula error (wrong tap order, eps
// outside the root, unbiased variance, swapped gate halves, ...) exceeds them
// by orders of magnitude; the LayerNorm tests assert that explicitly.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "xlstm/core/activations.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/residual_mlp.hpp"
#include "xlstm/core/rounding.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_components {

namespace {

using test_util::fill_normal;
using test_util::max_abs_diff;
using test_util::random_sequence;
using test_util::ThrowsMentioning;
using test_util::time_slice;
using xlstm::Activation;
using xlstm::CausalConv1d;
using xlstm::GatedFeedForward;
using xlstm::HeadwiseLinear;
using xlstm::Index;
using xlstm::Linear;
using xlstm::Matrix;
using xlstm::ParameterList;
using xlstm::Sequence;
using xlstm::Vector;

using test_util::Scalars;
using Real = long double;  // the naive references
using RealMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename S>
constexpr double unit_roundoff() {
  return std::numeric_limits<S>::epsilon() / 2;
}

// |actual - reference| <= bound elementwise (same shapes); NaN fails.
template <typename A>
::testing::AssertionResult WithinBound(const Eigen::DenseBase<A>& actual,
                                       const RealMatrix& reference, const RealMatrix& bound) {
  if (actual.rows() != reference.rows() || actual.cols() != reference.cols()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.rows() << "x" << actual.cols() << " vs reference "
           << reference.rows() << "x" << reference.cols();
  }
  double worst_ratio = 0;
  for (Index i = 0; i < reference.rows(); ++i) {
    for (Index j = 0; j < reference.cols(); ++j) {
      const Real diff = std::abs(Real(actual(i, j)) - reference(i, j));
      if (!(diff <= bound(i, j))) {
        return ::testing::AssertionFailure()
               << "at (" << i << ", " << j << "): actual " << double(actual(i, j)) << ", reference "
               << double(reference(i, j)) << ", |diff| " << double(diff) << " > bound "
               << double(bound(i, j));
      }
      if (bound(i, j) > 0) worst_ratio = std::max(worst_ratio, double(diff / bound(i, j)));
    }
  }
  return ::testing::AssertionSuccess() << "worst |diff|/bound " << worst_ratio;
}

template <typename S, typename D>
RealMatrix to_real(const Eigen::DenseBase<D>& m) {
  return m.derived().template cast<Real>();
}

// ---------------------------------------------------------------------------
// Linear and HeadwiseLinear (math §1.4)
// ---------------------------------------------------------------------------

template <typename S>
class LinearTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearTest, Scalars, ::testing::internal::DefaultNameGenerator);

// y[n, o] = b[o] + sum_i x[n, i] W[o, i]: n_in + 1 terms, so the error is at
// most gamma_{n_in+1} * sum |terms|; we allow twice that.
TYPED_TEST(LinearTest, LinearMatchesNaiveLoop) {
  using S = TypeParam;
  std::mt19937_64 rng(11);
  for (bool bias : {true, false}) {
    const Index in = 37, out = 13, rows = 9;
    Linear<S> linear(in, out, bias);
    fill_normal(linear.weight(), rng);
    if (bias) fill_normal(linear.bias(), rng);
    Matrix<S> x(rows, in);
    fill_normal(x, rng);
    const Matrix<S> y = linear(x);

    RealMatrix ref(rows, out), bound(rows, out);
    for (Index n = 0; n < rows; ++n) {
      for (Index o = 0; o < out; ++o) {
        Real sum = bias ? Real(linear.bias()(o)) : 0, magnitude = std::abs(sum);
        for (Index i = 0; i < in; ++i) {
          const Real term = Real(x(n, i)) * Real(linear.weight()(o, i));
          sum += term;
          magnitude += std::abs(term);
        }
        ref(n, o) = sum;
        bound(n, o) = 2 * (in + 1) * unit_roundoff<S>() * magnitude;
      }
    }
    EXPECT_TRUE(WithinBound(y, ref, bound)) << "bias " << bias;

    ParameterList<S> params;
    params = xlstm::parameter_list(linear, "lin.");
    ASSERT_EQ(params.size(), bias ? 2u : 1u);
    EXPECT_EQ(params[0].name, "lin.weight");
    EXPECT_EQ(params[0].shape, (xlstm::Shape{std::size_t(out), std::size_t(in)}));
  }
}

// ResidualMlp (math §13.4): y = (b2 + W2 relu(b1 + W1 x)) + (b3 + W3 x). The
// hidden values carry at most gamma_{in+1} * their magnitude m_j each; an
// output then errs by at most gamma_{ff+in+3} * (sum of the output terms'
// magnitudes + sum_j |W2[o, j]| m_j), allowed twice.
TYPED_TEST(LinearTest, ResidualMlpMatchesNaiveFormula) {
  using S = TypeParam;
  std::mt19937_64 rng(12);
  const Index in = 11, ff = 17, out = 5, rows = 6;
  xlstm::ResidualMlp<S> mlp(in, ff, out);
  for (xlstm::Linear<S>* l : {&mlp.hidden_layer(), &mlp.output_layer(), &mlp.residual_layer()}) {
    fill_normal(l->weight(), rng);
    fill_normal(l->bias(), rng);
  }
  Matrix<S> x(rows, in), y(rows, out);
  fill_normal(x, rng);
  xlstm::ResidualMlpScratch<S> scratch;
  mlp.forward(x, y, scratch);

  const auto& w1 = mlp.hidden_layer().weight();
  const auto& w2 = mlp.output_layer().weight();
  const auto& w3 = mlp.residual_layer().weight();
  RealMatrix ref(rows, out), bound(rows, out);
  for (Index n = 0; n < rows; ++n) {
    std::vector<Real> hidden(static_cast<std::size_t>(ff)),
        hidden_magnitude(static_cast<std::size_t>(ff));
    for (Index j = 0; j < ff; ++j) {
      Real sum = Real(mlp.hidden_layer().bias()(j)), magnitude = std::abs(sum);
      for (Index i = 0; i < in; ++i) {
        sum += Real(x(n, i)) * Real(w1(j, i));
        magnitude += std::abs(Real(x(n, i)) * Real(w1(j, i)));
      }
      hidden[std::size_t(j)] = sum > 0 ? sum : 0;
      hidden_magnitude[std::size_t(j)] = magnitude;
    }
    for (Index o = 0; o < out; ++o) {
      Real sum = Real(mlp.output_layer().bias()(o)) + Real(mlp.residual_layer().bias()(o));
      Real magnitude = std::abs(Real(mlp.output_layer().bias()(o))) +
                       std::abs(Real(mlp.residual_layer().bias()(o)));
      for (Index j = 0; j < ff; ++j) {
        sum += hidden[std::size_t(j)] * Real(w2(o, j));
        magnitude += std::abs(Real(w2(o, j))) *
                     (std::abs(hidden[std::size_t(j)]) + hidden_magnitude[std::size_t(j)]);
      }
      for (Index i = 0; i < in; ++i) {
        sum += Real(x(n, i)) * Real(w3(o, i));
        magnitude += std::abs(Real(x(n, i)) * Real(w3(o, i)));
      }
      ref(n, o) = sum;
      bound(n, o) = 2 * (ff + in + 3) * unit_roundoff<S>() * magnitude;
    }
  }
  EXPECT_TRUE(WithinBound(y, ref, bound));

  ParameterList<S> params;
  params = xlstm::parameter_list(mlp, "emb.");
  ASSERT_EQ(params.size(), 6u);
  EXPECT_EQ(params[0].name, "emb.hidden_layer.weight");
  EXPECT_EQ(params[0].shape, (xlstm::Shape{std::size_t(ff), std::size_t(in)}));
  EXPECT_EQ(params[3].name, "emb.output_layer.bias");
  EXPECT_EQ(params[4].name, "emb.residual_layer.weight");
  EXPECT_EQ(params[4].shape, (xlstm::Shape{std::size_t(out), std::size_t(in)}));
}

// y[n, h*O + o] = b[h*O + o] + sum_d x[n, h*I + d] W[h, o, d] (math §1.4), with
// W stored (NH, O, I) row-major; I + 1 terms per output.
TYPED_TEST(LinearTest, HeadwiseLinearMatchesNaiveBlockDiagonalLoop) {
  using S = TypeParam;
  std::mt19937_64 rng(12);
  struct Case {
    Index in, heads, out;
    bool bias;
  };
  // Heads of at most 16 x 16 take the direct small-head path (templated for
  // 4, 8 and 16 outputs per head, generic otherwise), larger ones one product
  // per head; 600 rows split over the threads.
  for (const Case c : {Case{12, 3, -1, true}, Case{12, 3, 6, false}, Case{16, 4, 32, true},
                       Case{8, 8, -1, true}, Case{64, 4, -1, false}, Case{96, 2, 40, true}}) {
    for (const Index rows : {Index(1), Index(5), Index(600)}) {
      for (const auto workload : {xlstm::Workload::sequence, xlstm::Workload::step}) {
        HeadwiseLinear<S> linear(c.in, c.heads, c.bias, c.out);
        const Index out = c.out < 0 ? c.in : c.out, hi = c.in / c.heads, ho = out / c.heads;
        ASSERT_EQ(linear.out_features(), out);
        fill_normal(linear.weight(), rng);
        if (c.bias) fill_normal(linear.bias(), rng);
        Matrix<S> x(rows, c.in), y(rows, out);
        fill_normal(x, rng);
        linear.forward(x, y, workload);

        ParameterList<S> params;
        params = xlstm::parameter_list(linear, "");
        ASSERT_EQ(params[0].shape,
                  (xlstm::Shape{std::size_t(c.heads), std::size_t(ho), std::size_t(hi)}));
        const S* w = params[0].data;  // (NH, O, I) row-major, the checkpoint layout
        RealMatrix ref(rows, out), bound(rows, out);
        for (Index n = 0; n < rows; ++n) {
          for (Index h = 0; h < c.heads; ++h) {
            for (Index o = 0; o < ho; ++o) {
              Real sum = c.bias ? Real(linear.bias()(h * ho + o)) : 0, magnitude = std::abs(sum);
              for (Index d = 0; d < hi; ++d) {
                const Real term = Real(x(n, h * hi + d)) * Real(w[(h * ho + o) * hi + d]);
                sum += term;
                magnitude += std::abs(term);
              }
              ref(n, h * ho + o) = sum;
              bound(n, h * ho + o) = 2 * (hi + 1) * unit_roundoff<S>() * magnitude;
            }
          }
        }
        EXPECT_TRUE(WithinBound(y, ref, bound))
            << "in " << c.in << " heads " << c.heads << " out " << out << " rows " << rows
            << (workload == xlstm::Workload::step ? " (step)" : " (sequence)");
      }
    }
  }
}

TYPED_TEST(LinearTest, HeadwiseLinearRejectsIndivisibleSizes) {
  using S = TypeParam;
  EXPECT_TRUE(ThrowsMentioning([] { HeadwiseLinear<S>(10, 4, false); }, "num_heads"));
  EXPECT_TRUE(ThrowsMentioning([] { HeadwiseLinear<S>(12, 4, false, 10); }, "num_heads"));
}

// ---------------------------------------------------------------------------
// LayerNorm (math §1.2) and MultiHeadLayerNorm (math §1.3)
// ---------------------------------------------------------------------------

// The naive per-group normalisation: mean and biased variance over each group
// of `group` features, eps = 1e-5 inside the root, then the offset weight
// (1 + w) per channel. `unbiased` and `eps_outside` give the two wrong
// variants the tests must be able to tell apart.
struct NormVariant {
  bool unbiased = false;
  bool eps_outside = false;
};

template <typename S>
RealMatrix naive_group_norm(const Matrix<S>& x, const Vector<S>* weight, Index group,
                            NormVariant variant = {}, RealMatrix* bound = nullptr) {
  const Real eps = 1e-5L;
  RealMatrix y(x.rows(), x.cols());
  if (bound) bound->resize(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    for (Index g0 = 0; g0 < x.cols(); g0 += group) {
      Real mean = 0, max_abs = 0;
      for (Index d = 0; d < group; ++d) {
        mean += Real(x(r, g0 + d));
        max_abs = std::max(max_abs, std::abs(Real(x(r, g0 + d))));
      }
      mean /= group;
      Real ss = 0;
      for (Index d = 0; d < group; ++d)
        ss += (Real(x(r, g0 + d)) - mean) * (Real(x(r, g0 + d)) - mean);
      const Real var = ss / (variant.unbiased ? group - 1 : group);
      const Real denom = variant.eps_outside ? std::sqrt(var) + eps : std::sqrt(var + eps);
      for (Index d = 0; d < group; ++d) {
        const Real scale = weight ? 1 + Real((*weight)(g0 + d)) : Real(1);
        y(r, g0 + d) = (Real(x(r, g0 + d)) - mean) / denom * scale;
        // Error of the Scalar computation: the mean carries at most
        // gamma_n * max|x| absolute error, which enters every deviation
        // x - mean; the variance (a mean of n squares) and the root add a
        // relative n u + a few u. Relative to the result's natural scale
        // max|x| / sqrt(var + eps) this is at most about (2n + 6) u; we allow
        // 4 (n + 4) u, times |1 + w| for the affine step.
        if (bound) {
          (*bound)(r, g0 + d) =
              4 * (group + 4) * unit_roundoff<S>() * (max_abs / denom + 1) * std::abs(scale);
        }
      }
    }
  }
  return y;
}

template <typename S>
class NormTest : public ::testing::Test {};
TYPED_TEST_SUITE(NormTest, Scalars, ::testing::internal::DefaultNameGenerator);

// Rows with a large mean (tests the centring), a tiny variance ~1e-6 (where eps
// = 1e-5 dominates, so "eps inside the root" is visible) and an ordinary one.
template <typename S>
Matrix<S> norm_inputs(Index rows, Index features, std::mt19937_64& rng) {
  Matrix<S> x(rows, features);
  fill_normal(x, rng);
  for (Index c = 0; c < features; ++c) {
    x(0, c) = S(3.0 + double(x(0, c)));   // mean 3, std 1
    x(1, c) = S(1e-3 * double(x(1, c)));  // var ~1e-6 << eps
  }
  return x;
}

TYPED_TEST(NormTest, LayerNormMatchesNaiveFormulaWithOffsetWeight) {
  using S = TypeParam;
  std::mt19937_64 rng(21);
  const Index e = 24;
  auto norm = xlstm::make_layer_norm<S>(e);
  EXPECT_TRUE((norm.weight().array() == S(0)).all()) << "offset weight starts at 0 (scale 1)";
  fill_normal(norm.weight(), rng, 0.0, 0.5);
  const Matrix<S> x = norm_inputs<S>(5, e, rng);
  Matrix<S> y(x.rows(), e);
  norm.forward(x, y);

  RealMatrix bound;
  const RealMatrix ref = naive_group_norm(x, &norm.weight(), e, {}, &bound);
  EXPECT_TRUE(WithinBound(y, ref, bound));

  // The test can tell the wrong formulas apart: each differs from the right one
  // by far more than the allowed rounding.
  const Real allowed = bound.maxCoeff();
  EXPECT_GT(max_abs_diff(naive_group_norm(x, &norm.weight(), e, {true, false}), ref), 100 * allowed)
      << "unbiased variance";
  EXPECT_GT(max_abs_diff(naive_group_norm(x, &norm.weight(), e, {false, true}), ref), 100 * allowed)
      << "eps outside the root";
  const Vector<S> direct = norm.weight().array() - S(1);  // 1 + (w - 1) = w
  EXPECT_GT(max_abs_diff(naive_group_norm(x, &direct, e), ref), 100 * allowed)
      << "weight used directly instead of 1 + w";

  // In place (y aliasing x) gives the same.
  Matrix<S> inplace = x;
  norm.forward(inplace, inplace);
  EXPECT_TRUE(WithinBound(inplace, ref, bound));
}

TYPED_TEST(NormTest, MultiHeadLayerNormUsesPerHeadStatisticsAndPerChannelWeight) {
  using S = TypeParam;
  std::mt19937_64 rng(22);
  const Index heads = 4, dh = 6, e = heads * dh;
  auto norm = xlstm::make_multi_head_layer_norm<S>(e, heads);
  fill_normal(norm.weight(), rng, 0.0, 0.5);
  Matrix<S> x = norm_inputs<S>(4, e, rng);
  // Heads with very different statistics within one row.
  for (Index r = 0; r < x.rows(); ++r) {
    x.row(r).segment(0, dh).array() += S(5);
    x.row(r).segment(dh, dh) *= S(0.01);
    x.row(r).segment(2 * dh, dh) *= S(7);
  }
  Matrix<S> y(x.rows(), e);
  norm.forward(x, y);

  RealMatrix bound;
  const RealMatrix ref = naive_group_norm(x, &norm.weight(), dh, {}, &bound);
  EXPECT_TRUE(WithinBound(y, ref, bound));
  const Real allowed = bound.maxCoeff();
  EXPECT_GT(max_abs_diff(naive_group_norm(x, &norm.weight(), e), ref), 100 * allowed)
      << "statistics over the whole row instead of per head";
  // A per-head scalar weight (the head's first channel) is not what §1.3 says.
  Vector<S> per_head = norm.weight();
  for (Index h = 0; h < heads; ++h) per_head.segment(h * dh, dh).setConstant(norm.weight()(h * dh));
  EXPECT_GT(max_abs_diff(naive_group_norm(x, &per_head, dh), ref), 100 * allowed)
      << "per-head scalar weight";

  ParameterList<S> params;
  params = xlstm::parameter_list(norm, "outnorm.");
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0].name, "outnorm.weight");
  EXPECT_EQ(params[0].shape, xlstm::Shape{std::size_t(e)});
}

TYPED_TEST(NormTest, MultiHeadLayerNormWithoutWeightOnlyNormalises) {
  using S = TypeParam;
  std::mt19937_64 rng(23);
  const Index heads = 3, dh = 5, e = heads * dh;
  auto norm = xlstm::make_multi_head_layer_norm<S>(e, heads, /*weight=*/false);
  ParameterList<S> params;
  params = xlstm::parameter_list(norm, "");
  EXPECT_TRUE(params.empty()) << "group_norm_weight=False has no parameter";
  const Matrix<S> x = norm_inputs<S>(3, e, rng);
  Matrix<S> y(x.rows(), e);
  norm.forward(x, y);
  RealMatrix bound;
  const RealMatrix ref = naive_group_norm<S>(x, nullptr, dh, {}, &bound);
  EXPECT_TRUE(WithinBound(y, ref, bound));
}

// ---------------------------------------------------------------------------
// CausalConv1d (math §1.5)
// ---------------------------------------------------------------------------

// y[t, c] = bias[c] + sum_j w[c, j] x[t - (K-1) + j, c], x[u] = 0 for u < 0:
// K + 1 terms, error <= gamma_{K+1} * sum |terms|. `magnitude` receives that
// sum of absolute terms.
template <typename S>
RealMatrix naive_conv(const Sequence<S>& x, const Matrix<S>& w, const Vector<S>& bias,
                      RealMatrix& magnitude) {
  const Index k = w.cols(), f = x.features(), time = x.time();
  RealMatrix y(x.matrix().rows(), f);
  magnitude.resize(y.rows(), f);
  for (Index b = 0; b < x.batch(); ++b) {
    for (Index t = 0; t < time; ++t) {
      for (Index c = 0; c < f; ++c) {
        Real sum = bias.size() ? Real(bias(c)) : 0, mag = std::abs(sum);
        for (Index j = 0; j < k; ++j) {
          const Index u = t - (k - 1) + j;
          if (u < 0) continue;
          const Real term = Real(w(c, j)) * Real(x(b, u, c));
          sum += term;
          mag += std::abs(term);
        }
        y(b * time + t, c) = sum;
        magnitude(b * time + t, c) = mag;
      }
    }
  }
  return y;
}

template <typename S>
RealMatrix conv_bound(const RealMatrix& magnitude, Index kernel_size) {
  return 2 * (kernel_size + 1) * unit_roundoff<S>() * magnitude;
}

// Steps every time step of x through `conv` from a fresh state; B x T x F.
template <typename S>
Sequence<S> conv_steps(const CausalConv1d<S>& conv, const Sequence<S>& x,
                       typename CausalConv1d<S>::State& state) {
  Sequence<S> y(x.batch(), x.time(), x.features());
  Matrix<S> x_t(x.batch(), x.features()), y_t(x.batch(), x.features());
  for (Index t = 0; t < x.time(); ++t) {
    for (Index b = 0; b < x.batch(); ++b) x_t.row(b) = x.at(b, t);
    conv.step(x_t, state, y_t);
    for (Index b = 0; b < x.batch(); ++b) y.at(b, t) = y_t.row(b);
  }
  return y;
}

template <typename S>
CausalConv1d<S> random_conv(Index features, Index kernel_size, std::mt19937_64& rng) {
  CausalConv1d<S> conv(features, kernel_size);
  fill_normal(conv.weight(), rng);
  if (kernel_size > 0) fill_normal(conv.bias(), rng);
  return conv;
}

template <typename S>
class CausalConvTest : public ::testing::Test {};
TYPED_TEST_SUITE(CausalConvTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(CausalConvTest, ForwardMatchesNaiveFormulaAndKeepsLastKInputs) {
  using S = TypeParam;
  std::mt19937_64 rng(31);
  const Index f = 5, k = 4;
  const auto conv = random_conv<S>(f, k, rng);
  for (Index time : {1, 2, 3, 4, 9}) {
    const Sequence<S> x = random_sequence<S>(2, time, f, rng);
    auto state = conv.initial_state(2);
    Sequence<S> y;
    conv.forward(x, state, y);
    RealMatrix magnitude;
    const RealMatrix ref = naive_conv(x, conv.weight(), conv.bias(), magnitude);
    EXPECT_TRUE(WithinBound(y.matrix(), ref, conv_bound<S>(magnitude, k))) << "T = " << time;
    // The window is the official step state (B, K, F): the last K inputs,
    // oldest first, zero rows while fewer than K have been seen.
    for (Index b = 0; b < 2; ++b) {
      for (Index j = 0; j < k; ++j) {
        const Index u = time - k + j;
        for (Index c = 0; c < f; ++c) {
          const S expected = u >= 0 ? x(b, u, c) : S(0);
          EXPECT_EQ(state.window(b * k + j, c), expected)
              << "T " << time << " b " << b << " j " << j;
        }
      }
    }
  }
}

TYPED_TEST(CausalConvTest, ForwardOnPrefixThenStepEqualsStepAllTheWay) {
  using S = TypeParam;
  std::mt19937_64 rng(32);
  const Index f = 6, k = 4, time = 11;
  const auto conv = random_conv<S>(f, k, rng);
  const Sequence<S> x = random_sequence<S>(3, time, f, rng);
  RealMatrix magnitude;
  naive_conv(x, conv.weight(), conv.bias(), magnitude);
  // Both paths have error <= gamma_{K+1} * magnitude, so they differ by at most twice that.
  const RealMatrix bound = 2 * conv_bound<S>(magnitude, k);

  auto all_state = conv.initial_state(3);
  const Sequence<S> all = conv_steps(conv, x, all_state);
  for (Index prefix : {1, 2, 3, 4, 7}) {  // shorter than, equal to and longer than K - 1
    auto state = conv.initial_state(3);
    Sequence<S> y_prefix;
    conv.forward(time_slice(x, 0, prefix), state, y_prefix);
    const Sequence<S> y_rest = conv_steps(conv, time_slice(x, prefix, time - prefix), state);
    Sequence<S> combined(3, time, f);
    for (Index b = 0; b < 3; ++b) {
      combined.rows_of(b).topRows(prefix) = y_prefix.rows_of(b);
      combined.rows_of(b).bottomRows(time - prefix) = y_rest.rows_of(b);
    }
    EXPECT_TRUE(WithinBound(combined.matrix(), to_real<S>(all.matrix()), bound))
        << "prefix " << prefix;
    EXPECT_EQ(state.window, all_state.window) << "prefix " << prefix;
  }
}

TYPED_TEST(CausalConvTest, ForwardInTwoPiecesEqualsOneForward) {
  using S = TypeParam;
  std::mt19937_64 rng(33);
  const Index f = 4, k = 4, time = 10;
  const auto conv = random_conv<S>(f, k, rng);
  const Sequence<S> x = random_sequence<S>(2, time, f, rng);
  auto whole_state = conv.initial_state(2);
  Sequence<S> whole;
  conv.forward(x, whole_state, whole);
  RealMatrix magnitude;
  naive_conv(x, conv.weight(), conv.bias(), magnitude);
  const RealMatrix bound = 2 * conv_bound<S>(magnitude, k);
  for (Index split : {1, 2, 3, 4, 5, 9}) {
    auto state = conv.initial_state(2);
    Sequence<S> first, second;
    conv.forward(time_slice(x, 0, split), state, first);
    conv.forward(time_slice(x, split, time - split), state, second);
    Sequence<S> combined(2, time, f);
    for (Index b = 0; b < 2; ++b) {
      combined.rows_of(b).topRows(split) = first.rows_of(b);
      combined.rows_of(b).bottomRows(time - split) = second.rows_of(b);
    }
    EXPECT_TRUE(WithinBound(combined.matrix(), to_real<S>(whole.matrix()), bound))
        << "split " << split;
    EXPECT_EQ(state.window, whole_state.window) << "split " << split;
  }
}

// Long ragged sequences, enough work for the threads: the forward splits
// each row's steps into pieces over the threads (B = 1 too), each piece
// reading the window as it was before the call. Every output is the formula,
// zero past its row's length; the same bits and windows on 1, 2 and 3 threads.
TYPED_TEST(CausalConvTest, LongRaggedForwardIsTheFormulaWithTheSameBitsOnAnyThreadCount) {
  using S = TypeParam;
  std::mt19937_64 rng(35);
  const Index f = 64, k = 4, time = 300;
  const auto conv = random_conv<S>(f, k, rng);
  const int threads_before = xlstm::num_threads();
  for (const xlstm::Lengths& lengths :
       {xlstm::Lengths{}, xlstm::Lengths{300, 130, 2}, xlstm::Lengths{65}}) {
    const Index batch = lengths.empty() ? 2 : Index(lengths.size());
    const Sequence<S> x = random_sequence<S>(batch, time, f, rng);
    auto start = conv.initial_state(batch);
    fill_normal(start.window, rng);  // a window from earlier steps
    Sequence<S> first_y;
    Matrix<S> first_window;
    for (const int threads : {1, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << "batch " << batch << " threads " << threads);
      xlstm::set_num_threads(threads);
      auto state = start;
      Sequence<S> y;
      conv.forward(x, lengths, state, y);
      if (threads == 1) {
        first_y = y;
        first_window = state.window;
        // The formula over [earlier window | x], zero past the length.
        for (Index b = 0; b < batch; ++b) {
          const Index len = lengths.empty() ? time : lengths[std::size_t(b)];
          for (Index t = 0; t < time; ++t) {
            for (Index c = 0; c < f; ++c) {
              Real sum = Real(conv.bias()(c)), mag = std::abs(sum);
              for (Index j = 0; j < k; ++j) {
                const Index u = t - (k - 1) + j;
                const Real in = u >= 0 ? Real(x(b, u, c)) : Real(start.window(b * k + k + u, c));
                sum += Real(conv.weight()(c, j)) * in;
                mag += std::abs(Real(conv.weight()(c, j)) * in);
              }
              if (t >= len) {
                EXPECT_EQ(y(b, t, c), S(0));
              } else {
                EXPECT_LE(std::abs(Real(y(b, t, c)) - sum), 2 * (k + 1) * unit_roundoff<S>() * mag);
              }
            }
          }
          // The window: the last k valid inputs.
          for (Index j = 0; j < k; ++j) {
            const Index u = len - k + j;
            for (Index c = 0; c < f; ++c) {
              ASSERT_EQ(state.window(b * k + j, c),
                        u >= 0 ? x(b, u, c) : start.window(b * k + k + u, c));
            }
          }
        }
      } else {
        EXPECT_TRUE((y.matrix().array() == first_y.matrix().array()).all());
        EXPECT_TRUE((state.window.array() == first_window.array()).all());
      }
    }
  }
  xlstm::set_num_threads(threads_before);
}

// math §1.5 edge case: the reference returns nothing for K = 1; we support it
// as a pointwise scale plus bias (2 terms: one rounding of the product and one
// of the sum, both within gamma_2).
TYPED_TEST(CausalConvTest, KernelSizeOneIsPointwiseScalePlusBias) {
  using S = TypeParam;
  std::mt19937_64 rng(34);
  const Index f = 5, time = 6;
  const auto conv = random_conv<S>(f, 1, rng);
  const Sequence<S> x = random_sequence<S>(2, time, f, rng);
  RealMatrix ref(x.matrix().rows(), f), magnitude(x.matrix().rows(), f);
  for (Index r = 0; r < ref.rows(); ++r) {
    for (Index c = 0; c < f; ++c) {
      const Real term = Real(conv.weight()(c, 0)) * Real(x.matrix()(r, c));
      ref(r, c) = term + Real(conv.bias()(c));
      magnitude(r, c) = std::abs(term) + std::abs(Real(conv.bias()(c)));
    }
  }
  const RealMatrix bound = conv_bound<S>(magnitude, 1);
  auto state = conv.initial_state(2);
  Sequence<S> y;
  conv.forward(x, state, y);
  EXPECT_TRUE(WithinBound(y.matrix(), ref, bound));
  auto step_state = conv.initial_state(2);
  EXPECT_TRUE(WithinBound(conv_steps(conv, x, step_state).matrix(), ref, bound));

  ParameterList<S> params;
  auto mutable_conv = conv;
  params = xlstm::parameter_list(mutable_conv, "conv1d.");
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name, "conv1d.conv.weight");
  EXPECT_EQ(params[0].shape, (xlstm::Shape{std::size_t(f), 1, 1}));
}

TYPED_TEST(CausalConvTest, KernelSizeZeroIsIdentityWithoutParameters) {
  using S = TypeParam;
  std::mt19937_64 rng(35);
  CausalConv1d<S> conv(5, 0);
  EXPECT_TRUE(conv.is_identity());
  ParameterList<S> params;
  params = xlstm::parameter_list(conv, "");
  EXPECT_TRUE(params.empty());
  const Sequence<S> x = random_sequence<S>(2, 4, 5, rng);
  auto state = conv.initial_state(2);
  Sequence<S> y;
  conv.forward(x, state, y);
  EXPECT_EQ(y.matrix(), x.matrix());
  auto step_state = conv.initial_state(2);
  EXPECT_EQ(conv_steps(conv, x, step_state).matrix(), x.matrix());
}

TYPED_TEST(CausalConvTest, RejectsWrongWidthAndBatch) {
  using S = TypeParam;
  std::mt19937_64 rng(36);
  const auto conv = random_conv<S>(5, 3, rng);
  auto state = conv.initial_state(2);
  Sequence<S> y;
  EXPECT_TRUE(ThrowsMentioning([&] { conv.forward(random_sequence<S>(2, 3, 4, rng), state, y); },
                               "x.features()"));
  EXPECT_TRUE(
      ThrowsMentioning([&] { conv.forward(random_sequence<S>(3, 3, 5, rng), state, y); }, "state"));
}

// ---------------------------------------------------------------------------
// GatedFeedForward (math §1.7) with every registered activation (math §1.1)
// ---------------------------------------------------------------------------

Real naive_activation(Activation a, Real x) {
  switch (a) {
    case Activation::gelu:
      return 0.5L * x * (1 + std::erf(x / std::sqrt(2.0L)));
    case Activation::relu:
      return x > 0 ? x : 0;
    case Activation::relu_squared:
      return x > 0 ? x * x : 0;
    case Activation::swish:
      return x / (1 + std::exp(-x));
    case Activation::selu: {
      const Real alpha = 1.6732632423543772848170429916717L;
      const Real scale = 1.0507009873554804934193349852946L;
      return scale * (x > 0 ? x : alpha * std::expm1(x));
    }
    case Activation::sigmoid:
      return 1 / (1 + std::exp(-x));
  }
  return 0;
}

// A bound on |act'(x)| near x for all six: gelu' <= 1.13, swish' <= 1.1,
// selu' <= 1.76, sigmoid' <= 0.25, relu' <= 1, (relu^2)' = 2 relu(x).
Real activation_slope_bound(Real x) { return 2 + 2 * std::abs(x); }

template <typename S>
class FeedForwardTest : public ::testing::Test {};
TYPED_TEST_SUITE(FeedForwardTest, Scalars, ::testing::internal::DefaultNameGenerator);

// Error propagation (per output, computed from the actual values):
//   up_k = x . Wu_k + bu_k          err <= gamma_{E+1} S_k,  S_k = sum |x_i Wu_ki| + |bu_k|
//   a_k = act(g_k)                  err <= L(g_k) err(g_k) + 8 u |a_k|   (erf/exp/expm1: a few ulp)
//   p_k = a_k u_k                   err <= |u_k| err(a_k) + |a_k| err(u_k) + u |p_k|
//   y_o = sum_k Wd_ok p_k + bd_o    err <= sum_k |Wd_ok| err(p_k) + gamma_{U+1} (sum_k |Wd_ok p_k|
//   + |bd_o|)
// and we allow twice the total.
TYPED_TEST(FeedForwardTest, EveryActivationMatchesNaiveFormula) {
  using S = TypeParam;
  const double u = unit_roundoff<S>();
  std::mt19937_64 rng(41);
  const Index e = 12, up_dim = 16, rows = 7;
  for (Activation act : {Activation::gelu, Activation::relu, Activation::relu_squared,
                         Activation::swish, Activation::selu, Activation::sigmoid}) {
    for (bool bias : {false, true}) {
      GatedFeedForward<S> ffn(e, up_dim, act, bias);
      EXPECT_EQ(ffn.proj_up().out_features(), 2 * up_dim);
      fill_normal(ffn.proj_up().weight(), rng, 0.0, 0.6);
      fill_normal(ffn.proj_down().weight(), rng, 0.0, 0.6);
      if (bias) {
        fill_normal(ffn.proj_up().bias(), rng);
        fill_normal(ffn.proj_down().bias(), rng);
      }
      Matrix<S> x(rows, e), y(rows, e), workspace;
      fill_normal(x, rng);
      ffn.forward(x, y, workspace);

      const auto& wu = ffn.proj_up().weight();
      const auto& wd = ffn.proj_down().weight();
      RealMatrix ref(rows, e), bound(rows, e);
      for (Index n = 0; n < rows; ++n) {
        std::vector<Real> up(2 * up_dim), up_err(2 * up_dim);
        for (Index k = 0; k < 2 * up_dim; ++k) {
          Real sum = bias ? Real(ffn.proj_up().bias()(k)) : 0, mag = std::abs(sum);
          for (Index i = 0; i < e; ++i) {
            sum += Real(x(n, i)) * Real(wu(k, i));
            mag += std::abs(Real(x(n, i)) * Real(wu(k, i)));
          }
          up[k] = sum;
          up_err[k] = (e + 1) * u * mag;
        }
        // The first U outputs are the gate, the second U the up branch (§1.7).
        std::vector<Real> product(up_dim), product_err(up_dim);
        for (Index k = 0; k < up_dim; ++k) {
          const Real g = up[k], v = up[up_dim + k], a = naive_activation(act, g);
          const Real a_err = activation_slope_bound(g) * up_err[k] + 8 * u * std::abs(a);
          product[k] = a * v;
          product_err[k] =
              std::abs(v) * a_err + std::abs(a) * up_err[up_dim + k] + u * std::abs(a * v);
        }
        for (Index o = 0; o < e; ++o) {
          Real sum = bias ? Real(ffn.proj_down().bias()(o)) : 0, mag = std::abs(sum), err = 0;
          for (Index k = 0; k < up_dim; ++k) {
            sum += Real(wd(o, k)) * product[k];
            mag += std::abs(Real(wd(o, k)) * product[k]);
            err += std::abs(Real(wd(o, k))) * product_err[k];
          }
          ref(n, o) = sum;
          bound(n, o) = 2 * (err + (up_dim + 1) * u * mag);
        }
      }
      EXPECT_TRUE(WithinBound(y, ref, bound))
          << xlstm::activation_name(act) << (bias ? " with bias" : "");
    }
  }
}

TYPED_TEST(FeedForwardTest, ParameterNamesAndShapesAreOfficial) {
  using S = TypeParam;
  GatedFeedForward<S> ffn(8, 64, Activation::gelu, true);
  ParameterList<S> params;
  params = xlstm::parameter_list(ffn, "ffn.");
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].name, "ffn.proj_up.weight");
  EXPECT_EQ(params[0].shape, (xlstm::Shape{128, 8}));
  EXPECT_EQ(params[1].name, "ffn.proj_up.bias");
  EXPECT_EQ(params[2].name, "ffn.proj_down.weight");
  EXPECT_EQ(params[2].shape, (xlstm::Shape{8, 64}));
  EXPECT_EQ(params[3].name, "ffn.proj_down.bias");
}

TEST(ActivationNames, ParseTheOfficialNamesAndRejectOthers) {
  for (Activation a : {Activation::gelu, Activation::relu, Activation::relu_squared,
                       Activation::swish, Activation::selu, Activation::sigmoid}) {
    EXPECT_EQ(xlstm::parse_activation(xlstm::activation_name(a)), a);
  }
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::parse_activation("tanh"); }, "act_fn"));
}

// ---------------------------------------------------------------------------
// Rounding helpers (math §1.6)
// ---------------------------------------------------------------------------

TEST(Rounding, UpProjectionDimMatchesSpecExamples) {
  EXPECT_EQ(xlstm::up_projection_dim(1.3, 128, 64), 192);  // 166.4 -> 192
  EXPECT_EQ(xlstm::up_projection_dim(1.3, 1024, 64), 1344);
  EXPECT_EQ(xlstm::up_projection_dim(2.0, 768, 64), 1536);
  EXPECT_EQ(xlstm::up_projection_dim(2.0, 32, 64), 64);
  EXPECT_EQ(xlstm::up_projection_dim(1.3, 128, 64, /*round_up=*/false), 128);
  EXPECT_EQ(xlstm::up_projection_dim(4.0 / 3.0, 96, 64), 128);
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::up_projection_dim(1.3, 128, 0); },
                               "round_proj_up_to_multiple_of"));
}

TEST(Rounding, RoundUpToNextMultipleOfFloorsBeforeRounding) {
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1024.5, 64), 1024);  // not 1088
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1025.0, 64), 1088);
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(4096 * 2.6667, 64), 10944);  // 10922.8
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(4096 * 2.667, 64), 10944);   // 10924.03
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1024.0, 64), 1024);
}

}  // namespace

}  // namespace xlstm_test_components
