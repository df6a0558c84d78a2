// Random numbers that are the same with every standard library.
//
// std::mt19937_64 is specified to the bit, but std::normal_distribution and
// std::uniform_real_distribution are not: libstdc++, libc++ and MSVC's library
// turn the same engine output into different numbers. A model initialised
// from a seed, a sampled generation or a random test model would then differ
// between Linux, macOS and Windows. These distributions are written out here
// (math §8.6), with the algorithms of libstdc++, so that the numbers of the
// GCC builds are unchanged and every other toolchain gets the same ones.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

namespace xlstm {

/// A double in [0, 1) from one 64-bit engine output: the output rounded to a
/// double, divided by 2^64, and kept below 1 (std::generate_canonical<double,
/// 53> of libstdc++).
inline double uniform_canonical(std::mt19937_64& engine) {
  const double two_to_64 = 18446744073709551616.0;
  const double u = double(engine()) / two_to_64;
  return u < 1.0 ? u : std::nextafter(1.0, 0.0);
}

/// A double in [low, high): uniform_canonical scaled and shifted.
inline double uniform_real(std::mt19937_64& engine, double low, double high) {
  return uniform_canonical(engine) * (high - low) + low;
}

/// N(mean, stddev) by Marsaglia's polar method: each accepted pair of
/// uniforms gives two values, the second kept for the next call (as
/// std::normal_distribution in libstdc++).
class NormalDistribution {
 public:
  explicit NormalDistribution(double mean = 0.0, double stddev = 1.0)
      : mean_(mean), stddev_(stddev) {}

  double operator()(std::mt19937_64& engine) {
    double value;
    if (saved_available_) {
      saved_available_ = false;
      value = saved_;
    } else {
      double x, y, r2;
      do {
        x = 2.0 * uniform_canonical(engine) - 1.0;
        y = 2.0 * uniform_canonical(engine) - 1.0;
        r2 = x * x + y * y;
      } while (r2 > 1.0 || r2 == 0.0);
      const double mult = std::sqrt(-2.0 * std::log(r2) / r2);
      saved_ = x * mult;
      saved_available_ = true;
      value = y * mult;
    }
    return value * stddev_ + mean_;
  }

 private:
  double mean_;
  double stddev_;
  double saved_ = 0.0;
  bool saved_available_ = false;
};

}  // namespace xlstm
