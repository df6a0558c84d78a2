// The distributions of core/random.hpp (math §8.6): the numbers of
// libstdc++'s std::normal_distribution and std::uniform_real_distribution,
// with every standard library.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "xlstm/core/init.hpp"
#include "xlstm/core/random.hpp"

namespace xlstm_test_random {
namespace {

// The first values from seed 2024, printed with %.17g by a program built with
// g++ 12 and libstdc++ (std::normal_distribution<double>(0.5, 2.0), then
// std::uniform_real_distribution<double>(-3.0, 5.0) on the same engine): the
// reference that a build with another standard library must reproduce.
TEST(PortableRandom, FirstValuesAreLibstdcxxs) {
  std::mt19937_64 engine(2024);
  xlstm::NormalDistribution normal(0.5, 2.0);
  const double normals[] = {3.0350505249614259, 1.4692753407899342, -1.2205950772294198,
                            -1.9333271639743188};
  for (const double expected : normals) EXPECT_DOUBLE_EQ(normal(engine), expected);
  const double uniforms[] = {-2.9504455953465438, -1.8783477400678146, 4.4916059230825649};
  for (const double expected : uniforms) {
    EXPECT_DOUBLE_EQ(xlstm::uniform_real(engine, -3.0, 5.0), expected);
  }
}

#if defined(__GLIBCXX__)
// With libstdc++ itself: bit-identical to std:: over a long stream.
TEST(PortableRandom, EqualsLibstdcxxBitForBit) {
  std::mt19937_64 ours(7), theirs(7);
  xlstm::NormalDistribution normal(-1.0, 0.25);
  std::normal_distribution<double> std_normal(-1.0, 0.25);
  std::uniform_real_distribution<double> std_uniform(0.0, 3.0);
  for (int i = 0; i < 100000; ++i) {
    ASSERT_EQ(normal(ours), std_normal(theirs)) << "normal draw " << i;
    ASSERT_EQ(xlstm::uniform_real(ours, 0.0, 3.0), std_uniform(theirs)) << "uniform draw " << i;
  }
}
#endif

// The moments, with any standard library: mean and variance within five
// standard errors; uniform values inside [low, high).
TEST(PortableRandom, MomentsAndRange) {
  std::mt19937_64 engine(11);
  xlstm::NormalDistribution normal(2.0, 3.0);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double v = normal(engine);
    sum += v;
    sum_sq += v * v;
  }
  const double mean = sum / n, variance = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 2.0, 5 * 3.0 / std::sqrt(double(n)));
  EXPECT_NEAR(variance, 9.0, 5 * 9.0 * std::sqrt(2.0 / n));

  double uniform_sum = 0;
  for (int i = 0; i < n; ++i) {
    const double u = xlstm::uniform_real(engine, -1.0, 4.0);
    ASSERT_GE(u, -1.0);
    ASSERT_LT(u, 4.0);
    uniform_sum += u;
  }
  EXPECT_NEAR(uniform_sum / n, 1.5, 5 * (5.0 / std::sqrt(12.0)) / std::sqrt(double(n)));
}

// The initialisers draw from these distributions: Rng::normal and
// Rng::uniform give the same values as the distributions on the same seed.
TEST(PortableRandom, InitialisersUseThem) {
  xlstm::Rng rng(5);
  Eigen::MatrixXd w(3, 4), b(2, 5);
  rng.normal(w, 0.0, 0.5);
  rng.uniform(b, -0.2, 0.2);
  std::mt19937_64 engine(5);
  xlstm::NormalDistribution normal(0.0, 0.5);
  for (Eigen::Index i = 0; i < w.size(); ++i) EXPECT_EQ(w.data()[i], normal(engine));
  for (Eigen::Index i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b.data()[i], xlstm::uniform_real(engine, -0.2, 0.2));
  }
}

}  // namespace
}  // namespace xlstm_test_random
