// Parameter initialisers of the official code (math §8), from a user seed.
//
// Random streams cannot match PyTorch's; what matches is the distribution of
// every tensor and every deterministic value (math §8 preamble).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <random>

#include "xlstm/core/random.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The random source of all initialisers: a seeded 64-bit Mersenne twister.
/// Passed to a model's constructor to leave its weights at zero, for code that
/// fills every parameter right away (loaders, benchmarks). Without it, a model
/// is constructed with the official initialisation from kDefaultSeed, so a
/// module is never silently all-zero.
struct Uninitialized {};
inline constexpr Uninitialized uninitialized{};

/// The seed a model's constructor initialises with.
inline constexpr std::uint64_t kDefaultSeed = 0;

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  // The distributions of core/random.hpp, not std::'s: the same seed gives
  // the same weights with every standard library (math §8.6).
  template <typename Derived>
  void normal(Eigen::PlainObjectBase<Derived>& x, double mean, double std) {
    NormalDistribution dist(mean, std);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = typename Derived::Scalar(dist(engine_));
  }

  template <typename Derived>
  void uniform(Eigen::PlainObjectBase<Derived>& x, double low, double high) {
    for (Index i = 0; i < x.size(); ++i) {
      x.data()[i] = typename Derived::Scalar(uniform_real(engine_, low, high));
    }
  }

  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};

/// small_init: N(0, sqrt(2 / (5 dim))) (math §8).
template <typename Derived>
void small_init(Eigen::PlainObjectBase<Derived>& w, Index dim, Rng& rng) {
  rng.normal(w, 0.0, std::sqrt(2.0 / (5.0 * double(dim))));
}

/// wang_init: N(0, 2 / num_blocks / sqrt(dim)) (math §8).
template <typename Derived>
void wang_init(Eigen::PlainObjectBase<Derived>& w, Index dim, Index num_blocks, Rng& rng) {
  rng.normal(w, 0.0, 2.0 / double(num_blocks) / std::sqrt(double(dim)));
}

/// PyTorch's default nn.Linear / nn.Conv1d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
template <typename Derived>
void default_linear_init(Eigen::PlainObjectBase<Derived>& w, Index fan_in, Rng& rng) {
  const double bound = 1.0 / std::sqrt(double(fan_in));
  rng.uniform(w, -bound, bound);
}

/// linspace(start, end, n) as torch.linspace (n = 1 gives [start]).
template <typename Derived>
void linspace_init(Eigen::PlainObjectBase<Derived>& b, double start, double end) {
  const Index n = b.size();
  for (Index i = 0; i < n; ++i) {
    b.data()[i] = typename Derived::Scalar(n == 1 ? start : start + (end - start) * double(i) / double(n - 1));
  }
}

}  // namespace xlstm
