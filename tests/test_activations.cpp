// Activations against closed forms in double, including extreme arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "xlstm/cells/gates.hpp"
#include "xlstm/core/activations.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_activations {

namespace {

template <typename T>
class Activations : public ::testing::Test {};
using test_util::Scalars;
TYPED_TEST_SUITE(Activations, Scalars, ::testing::internal::DefaultNameGenerator);

template <typename T>
using Array = Eigen::Array<T, Eigen::Dynamic, 1>;

template <typename T>
Array<T> ordinary_arguments() {
  return Array<T>::LinSpaced(401, T(-20), T(20));
}

template <typename T>
Array<T> extreme_arguments() {
  const T inf = std::numeric_limits<T>::infinity();
  const T denorm = std::numeric_limits<T>::denorm_min();
  Array<T> x(8);
  x << T(-1e4), T(1e4), -inf, inf, denorm, -denorm, T(0), T(-0.0);
  return x;
}

template <typename T>
T tolerance() {
  return T(test_util::per_scalar<T>(2e-6, 1e-14));
}

// Relative-or-absolute closeness against a double reference.
template <typename T, typename Fn, typename Ref>
void expect_matches(const Array<T>& x, Fn fn, Ref ref) {
  const Array<T> y = fn(x);
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    const double expected = ref(static_cast<double>(x(i)));
    const double got = static_cast<double>(y(i));
    if (std::isinf(expected)) {
      EXPECT_EQ(got, expected) << "x = " << x(i);
    } else {
      EXPECT_NEAR(got, expected, tolerance<T>() * (1.0 + std::abs(expected))) << "x = " << x(i);
    }
  }
}

double sigmoid_ref(double x) {
  return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x));
}
double log_sigmoid_ref(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::abs(x))); }
double silu_ref(double x) { return std::isinf(x) ? (x > 0 ? x : 0.0) : x * sigmoid_ref(x); }
double gelu_ref(double x) {
  return std::isinf(x) ? (x > 0 ? x : 0.0) : 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}
double selu_ref(double x) {
  return 1.0507009873554804934 * (x > 0 ? x : 1.6732632423543772848 * std::expm1(x));
}

TYPED_TEST(Activations, SigmoidMatchesClosedFormAndLimits) {
  using T = TypeParam;
  auto fn = [](const Array<T>& a) -> Array<T> { return xlstm::sigmoid(a); };
  expect_matches<T>(ordinary_arguments<T>(), fn, sigmoid_ref);
  expect_matches<T>(extreme_arguments<T>(), fn, sigmoid_ref);
}

TYPED_TEST(Activations, LogSigmoidIsStableAtExtremes) {
  using T = TypeParam;
  auto fn = [](const Array<T>& a) -> Array<T> { return xlstm::log_sigmoid(a); };
  expect_matches<T>(ordinary_arguments<T>(), fn, log_sigmoid_ref);
  expect_matches<T>(extreme_arguments<T>(), fn, log_sigmoid_ref);
  // The naive form gives -inf here; the stable one the exact -1e4.
  Array<T> big(1);
  big << T(-1e4);
  EXPECT_EQ(xlstm::log_sigmoid(big).eval()(0), T(-1e4));
}

// Float's log1p(exp(-|x|)) is the library's own series (math §10.2): within
// a few ulp of the exact value everywhere, through the packet path and the
// scalar one (4001 arguments: a tail that is not a whole packet). The budget:
// Eigen's exp (about 2 ulp), s = e / (2 + e) (two roundings), the series'
// sums (one each, on terms of at most a ninth of the leading one) and the
// final subtraction: 6 ulp. Values below FLT_MIN (x > 87) are zero or a
// subnormal in every form.
TEST(LogSigmoidFloat, IsWithinAFewUlpOfTheExactValue) {
  const Array<float> x = Array<float>::LinSpaced(4001, -100.0f, 100.0f);
  const Array<float> y = xlstm::log_sigmoid(x);
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    const double exact = log_sigmoid_ref(double(x(i)));
    const float rounded = float(exact);
    const double ulp = double(std::nextafter(std::abs(rounded), INFINITY) - std::abs(rounded));
    const double allowed = std::abs(exact) < std::numeric_limits<float>::min()
                               ? double(std::numeric_limits<float>::min())
                               : 6 * ulp;
    EXPECT_LE(std::abs(double(y(i)) - exact), allowed) << "x = " << x(i);
  }
}

TYPED_TEST(Activations, SiluMatchesClosedFormAndLimits) {
  using T = TypeParam;
  auto fn = [](const Array<T>& a) -> Array<T> { return xlstm::silu(a); };
  expect_matches<T>(ordinary_arguments<T>(), fn, silu_ref);
  expect_matches<T>(extreme_arguments<T>(), fn, silu_ref);
}

TYPED_TEST(Activations, GeluIsTheExactErfForm) {
  using T = TypeParam;
  auto fn = [](const Array<T>& a) -> Array<T> { return xlstm::gelu(a); };
  // Eigen's float erf is a polynomial fit: allow a few ulp more near the cancellation.
  const Array<T> x = Array<T>::LinSpaced(401, T(-5), T(5));
  const Array<T> y = fn(x);
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(double(y(i)), gelu_ref(double(x(i))), 4 * tolerance<T>()) << x(i);
  }
  expect_matches<T>(extreme_arguments<T>(), fn, gelu_ref);
  // The tanh approximation differs from the exact form by ~4.7e-4 near x = -2.7 (math §10.12).
  Array<T> at(1);
  at << T(-2.7);
  EXPECT_NEAR(double(xlstm::gelu(at).eval()(0)), gelu_ref(-2.7), 1e-6);
}

TYPED_TEST(Activations, SoftCapBoundsAndIsNearIdentityForSmallValues) {
  using T = TypeParam;
  Array<T> x(5);
  const T inf = std::numeric_limits<T>::infinity();
  x << T(-1e4), T(0.01), T(1), inf, -inf;
  const Array<T> y = xlstm::soft_cap(x, T(15));
  EXPECT_NEAR(double(y(0)), -15.0, 1e-6);
  EXPECT_NEAR(double(y(1)), 15 * std::tanh(0.01 / 15), 1e-7);
  EXPECT_NEAR(double(y(2)), 15 * std::tanh(1.0 / 15), 1e-6);
  EXPECT_EQ(y(3), T(15));
  EXPECT_EQ(y(4), T(-15));
}

TYPED_TEST(Activations, ReluFamilyAndSelu) {
  using T = TypeParam;
  auto relu_fn = [](const Array<T>& a) -> Array<T> { return xlstm::relu(a); };
  auto relu2_fn = [](const Array<T>& a) -> Array<T> { return xlstm::relu_squared(a); };
  auto selu_fn = [](const Array<T>& a) -> Array<T> { return xlstm::selu(a); };
  for (const Array<T>& x : {ordinary_arguments<T>(), extreme_arguments<T>()}) {
    expect_matches<T>(x, relu_fn, [](double v) { return v > 0 ? v : 0.0; });
    expect_matches<T>(x, relu2_fn, [](double v) { return v > 0 ? v * v : 0.0; });
    expect_matches<T>(x, selu_fn, selu_ref);
  }
}

TYPED_TEST(Activations, NaNStaysNaN) {
  using T = TypeParam;
  Array<T> x(1);
  x << std::numeric_limits<T>::quiet_NaN();
  EXPECT_TRUE(std::isnan(xlstm::sigmoid(x).eval()(0)));
  EXPECT_TRUE(std::isnan(xlstm::log_sigmoid(x).eval()(0)));
  EXPECT_TRUE(std::isnan(xlstm::silu(x).eval()(0)));
  EXPECT_TRUE(std::isnan(xlstm::gelu(x).eval()(0)));
  EXPECT_TRUE(std::isnan(xlstm::relu(x).eval()(0)));  // as torch.relu
}

// The limits are taken with max/min so that the expressions vectorise; check
// them on whole SIMD packets too, not only on the scalar tail: NaN, +-inf and
// the largest finite values at every position of a 37-element array.
TYPED_TEST(Activations, LimitsHoldInsideSimdPackets) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T specials[] = {nan, inf, -inf, std::numeric_limits<T>::max(),
                        std::numeric_limits<T>::lowest()};
  for (int pos = 0; pos < 37; ++pos) {
    for (T special : specials) {
      Array<T> x = Array<T>::Constant(37, T(0.5));
      x(pos) = special;
      const Array<T> silu = xlstm::silu(x), gelu = xlstm::gelu(x), relu = xlstm::relu(x);
      const Array<T> log_sig = xlstm::log_sigmoid(x), clamped = xlstm::clamp_gates(x);
      SCOPED_TRACE(testing::Message() << "position " << pos << ", value " << special);
      if (std::isnan(special)) {
        for (const Array<T>* y : {&silu, &gelu, &relu, &log_sig, &clamped}) {
          EXPECT_TRUE(std::isnan((*y)(pos)));
        }
      } else if (special == -inf) {
        EXPECT_EQ(silu(pos), T(0));
        EXPECT_EQ(gelu(pos), T(0));
        EXPECT_EQ(relu(pos), T(0));
        EXPECT_EQ(log_sig(pos), -inf);
        EXPECT_EQ(clamped(pos), -xlstm::gate_limit<T>());
      } else if (special == inf) {
        EXPECT_EQ(silu(pos), inf);
        EXPECT_EQ(gelu(pos), inf);
        EXPECT_EQ(relu(pos), inf);
        EXPECT_NEAR(double(log_sig(pos)), 0.0, 1e-30);  // SIMD exp(-inf) may be ~1e-39
        EXPECT_EQ(clamped(pos), xlstm::gate_limit<T>());
      } else if (special > 0) {
        EXPECT_EQ(silu(pos), special);
        EXPECT_EQ(relu(pos), special);
        EXPECT_NEAR(double(log_sig(pos)), 0.0, 1e-30);
      } else {
        EXPECT_EQ(silu(pos), T(0));  // -0: sigmoid underflows
        EXPECT_EQ(relu(pos), T(0));
        EXPECT_EQ(log_sig(pos), special);
      }
      // Every other entry is the ordinary value, untouched by its neighbour.
      for (int i = 0; i < 37; ++i) {
        if (i == pos) continue;
        EXPECT_NEAR(double(silu(i)), silu_ref(0.5), 1e-6);
        EXPECT_EQ(relu(i), T(0.5));
        EXPECT_EQ(clamped(i), T(0.5));
      }
    }
  }
}

TEST(ActivationNames, ParseOfficialNamesAndRejectUnknown) {
  EXPECT_EQ(xlstm::parse_activation("relu^2"), xlstm::Activation::relu_squared);
  EXPECT_EQ(xlstm::parse_activation("swish"), xlstm::Activation::swish);
  EXPECT_THROW(xlstm::parse_activation("gelu_tanh"), xlstm::Error);
  for (auto a : {xlstm::Activation::gelu, xlstm::Activation::relu, xlstm::Activation::selu,
                 xlstm::Activation::sigmoid}) {
    EXPECT_EQ(xlstm::parse_activation(xlstm::activation_name(a)), a);
  }
}

TEST(ActivationNames, ApplyActivationInPlaceMatchesFunction) {
  Eigen::ArrayXXf x = Eigen::ArrayXXf::Random(3, 5) * 4;
  Eigen::ArrayXXf y = x;
  xlstm::apply_activation(xlstm::Activation::gelu, y);
  EXPECT_TRUE(y.isApprox(xlstm::gelu(x).eval()));
}

}  // namespace

}  // namespace xlstm_test_activations
