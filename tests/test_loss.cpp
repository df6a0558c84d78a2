// The cross-entropy loss of the official trainers (math §6.5): the value
// against the golden lm_model_grad files' logits and loss, the gradient
// against central finite differences, ignored targets, and bad targets.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "test_util.hpp"
#include "xlstm/io/safetensors_reader.hpp"
#include "xlstm/model/cross_entropy.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_loss {

namespace {

using test_util::ThrowsMentioning;
using xlstm::Index;
using xlstm::Sequence;
using xlstm::Tokens;

template <typename S>
class LossTyped : public ::testing::Test {};
TYPED_TEST_SUITE(LossTyped, test_util::Scalars, ::testing::internal::DefaultNameGenerator);

// The golden files hold the official logits, targets (some -1) and loss.
TYPED_TEST(LossTyped, MatchesTheOfficialLossOnTheGoldenLogits) {
  using S = TypeParam;
  const std::string name = std::string(XLSTM_TEST_DATA_DIR) +
                           "/golden/lm_model_grad_v50_d32_nb3_t16." +
                           (std::is_same_v<S, float> ? "f32" : "f64") + ".safetensors";
  const auto file = xlstm::io::SafetensorsFile::open(name);
  const auto shape = file.info("output.logits").shape;
  ASSERT_EQ(shape.size(), 3u);
  const Index B = Index(shape[0]), T = Index(shape[1]), V = Index(shape[2]);
  Sequence<S> logits(B, T, V);
  const auto values = file.read<S>("output.logits");
  std::copy(values.begin(), values.end(), logits.matrix().data());
  const auto target_values = file.read<std::int64_t>("input.targets");
  Tokens targets(B, T);
  std::copy(target_values.begin(), target_values.end(), targets.data());
  ASSERT_GT(xlstm::counted_targets(targets), 0);
  const double golden = file.read<double>("output.loss")[0];
  const auto tolerances = nlohmann::json::parse(file.metadata().at("tolerances"));
  const double atol = tolerances.at("output.loss")[0], rtol = tolerances.at("output.loss")[1];
  const S loss = xlstm::cross_entropy(logits, targets);
  EXPECT_LE(std::abs(double(loss) - golden), atol + rtol * std::abs(golden))
      << "loss " << loss << ", golden " << golden;
}

TEST(Loss, GradientMatchesFiniteDifferences) {
  std::mt19937 rng(7);
  const Index B = 2, T = 3, V = 5;
  auto logits = test_util::random_sequence<double>(B, T, V, rng, 0.0, 2.0);
  Tokens targets(B, T);
  targets << 1, -1, 4, 0, 3, -1;
  Sequence<double> grad;
  xlstm::cross_entropy(logits, targets, &grad);
  const double h = 1e-5;
  for (Index r = 0; r < B * T; ++r) {
    for (Index v = 0; v < V; ++v) {
      auto plus = logits, minus = logits;
      plus.matrix()(r, v) += h;
      minus.matrix()(r, v) -= h;
      const double fd =
          (xlstm::cross_entropy(plus, targets) - xlstm::cross_entropy(minus, targets)) / (2 * h);
      EXPECT_NEAR(grad.matrix()(r, v), fd, 1e-9) << "row " << r << " class " << v;
    }
  }
  EXPECT_EQ(grad.at(0, 1).norm(), 0.0);  // ignored rows get nothing
  EXPECT_NEAR(grad.matrix().sum(), 0.0, 1e-15);
}

TEST(Loss, ValueByHandAndStableForHugeLogits) {
  Sequence<double> logits(1, 2, 2);
  logits.matrix() << 0.0, 0.0, 1000.0, 0.0;
  Tokens targets(1, 2);
  targets << 0, 1;
  // (log 2 + (1000 + log(1 + e^-1000))) / 2
  EXPECT_NEAR(xlstm::cross_entropy(logits, targets), (std::log(2.0) + 1000.0) / 2, 1e-12);
}

TEST(Loss, NothingCountedGivesZeroNotNaN) {
  Sequence<float> logits(1, 2, 3), grad;
  logits.matrix().setRandom();
  Tokens targets = Tokens::Constant(1, 2, -1);
  EXPECT_EQ(xlstm::cross_entropy(logits, targets, &grad), 0.0f);
  EXPECT_EQ(grad.matrix().norm(), 0.0f);
}

TEST(Loss, BadTargetsThrowNamingThePosition) {
  Sequence<float> logits(2, 3, 4);
  logits.matrix().setZero();
  Tokens targets = Tokens::Zero(2, 3);
  targets(1, 2) = 4;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::cross_entropy(logits, targets); },
                               {"targets", "[1, 2]", "[0, 4)", "got 4"}));
  targets(1, 2) = -2;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::cross_entropy(logits, targets); }, {"got -2"}));
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::cross_entropy(logits, Tokens::Zero(3, 2)); },
                               {"targets", "2 x 3", "3 x 2"}));
}

}  // namespace

}  // namespace xlstm_test_loss
