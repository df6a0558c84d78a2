// The two "round up to a multiple" helpers of the official code (math §1.6).
// They differ for non-integer products, so each model uses its own.
#pragma once

#include <cmath>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// NeurIPS UpProjConfigMixin: int(ceil(proj_factor * E / r) * r) in double,
/// in that order (floor instead of ceil when round_up is false).
inline Index up_projection_dim(double proj_factor, Index embedding_dim, Index multiple_of,
                               bool round_up = true) {
  check_positive(multiple_of, "up_projection_dim", "round_proj_up_to_multiple_of");
  const double ratio = proj_factor * double(embedding_dim) / double(multiple_of);
  const double dim = (round_up ? std::ceil(ratio) : std::floor(ratio)) * double(multiple_of);
  // Converting a NaN or out-of-range double to Index is undefined behaviour.
  check(std::isfinite(dim) && std::abs(dim) <= double(kMaxElements),
        "up_projection_dim: 'proj_factor' (", proj_factor, ") x 'embedding_dim' (", embedding_dim,
        ") must be a finite width of at most ", kMaxElements, ", got ", dim);
  return Index(dim);
}

/// xLSTM-Large round_up_to_next_multiple_of: int(((x + m - 1) // m) * m) with
/// float floor division, i.e. m * ceil(floor(x) / m) for x >= 0.
inline Index round_up_to_next_multiple_of(double x, Index multiple_of) {
  check_positive(multiple_of, "round_up_to_next_multiple_of", "multiple_of");
  const double m = double(multiple_of);
  const double rounded = std::floor((x + m - 1) / m) * m;
  // Converting a NaN or out-of-range double to Index is undefined behaviour.
  check(std::isfinite(rounded) && std::abs(rounded) <= double(kMaxElements),
        "round_up_to_next_multiple_of: ", x, " rounded up to a multiple of ", multiple_of,
        " must be a finite width of at most ", kMaxElements, ", got ", rounded);
  return Index(rounded);
}

}  // namespace xlstm
