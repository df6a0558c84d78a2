// Random TiRex weights for tests, benchmarks and the example without a checkpoint: the kind of
// values a trained model has (matrices scaled by their fan-in, RMSNorm weights near 1), so the
// activations stay in range through 12 blocks. Not a forecaster.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "xlstm/core/parameters.hpp"
#include "xlstm/core/random.hpp"
#include "xlstm/tirex/model.hpp"

namespace xlstm::tirex {

/// Fills every parameter of `model` from a seeded normal stream: matrices
/// N(0, 1) / sqrt(fan-in), the RMSNorm weights 1 + 0.1 N(0, 1), every other
/// vector (biases, group-norm weights) 0.1 N(0, 1); then model.prepare().
template <typename Scalar>
void randomize_weights(TiRexModel<Scalar>& model, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  NormalDistribution normal(0.0, 1.0);  // the same on every platform (math §8.6)
  model.for_each_parameter([&](const ParameterRef<Scalar>& p) {
    const bool vector = p.shape.size() == 1;
    const bool rms_weight = vector && p.name.find("group_norm") == std::string::npos &&
                            p.name.find("norm") != std::string::npos;
    const double fan_in = vector ? 1.0 : double(p.shape.back());
    for (std::size_t i = 0; i < p.size(); ++i) {
      const double v = normal(rng);
      p.data[i] = Scalar(rms_weight ? 1.0 + 0.1 * v : vector ? 0.1 * v : v / std::sqrt(fan_in));
    }
  });
  model.prepare();
}

}  // namespace xlstm::tirex
