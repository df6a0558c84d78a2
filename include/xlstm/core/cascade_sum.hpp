// torch_cascade_sum: a float sum in the order of PyTorch's CPU reduction of a contiguous row
// (ATen's cascade sum, as `sum` and `nansum` run it on x86 without AVX-512; math §13.5), so that
// a port reproduces the reference's sums to the bit where they feed a rounding-sensitive path.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

namespace detail {

/// The sum of `size` values `value(i)` in the order of ATen's `row_sum`
/// (math §13.5): four interleaved accumulators (element 4r + k goes to
/// accumulator k), each a cascade of four levels that flushes every
/// 2^p rows (p = max(4, ceil(log2 rows) / 4)); the leftover elements go to
/// accumulator 0, then the accumulators are added in order.
template <typename Scalar, typename Value>
Scalar cascade_row_sum(Index size, const Value& value) {
  constexpr int kInterleave = 4, kLevels = 4;
  const Index rows = size / kInterleave;
  int ceil_log2 = 0;
  while ((Index(1) << ceil_log2) < rows) ++ceil_log2;
  const int level_power = std::max(4, ceil_log2 / kLevels);
  const Index level_step = Index(1) << level_power, level_mask = level_step - 1;
  Scalar acc[kLevels][kInterleave] = {};
  Index r = 0;
  while (r + level_step <= rows) {
    for (Index j = 0; j < level_step; ++j, ++r) {
      for (int k = 0; k < kInterleave; ++k) acc[0][k] += value(r * kInterleave + k);
    }
    for (int level = 1; level < kLevels; ++level) {
      for (int k = 0; k < kInterleave; ++k) {
        acc[level][k] += acc[level - 1][k];
        acc[level - 1][k] = Scalar(0);
      }
      if ((r & (level_mask << (level * level_power))) != 0) break;
    }
  }
  for (; r < rows; ++r) {
    for (int k = 0; k < kInterleave; ++k) acc[0][k] += value(r * kInterleave + k);
  }
  for (int level = 1; level < kLevels; ++level) {
    for (int k = 0; k < kInterleave; ++k) acc[0][k] += acc[level][k];
  }
  for (Index i = rows * kInterleave; i < size; ++i) acc[0][0] += value(i);
  for (int k = 1; k < kInterleave; ++k) acc[0][0] += acc[0][k];
  return acc[0][0];
}

}  // namespace detail

/// The sum of the `size` values at `x`, NaN counted as 0 when `ignore_nan`
/// (torch.nansum), in the order of PyTorch's CPU reduction over a contiguous
/// row with 32-byte vectors (math §13.5): lane l of the vectors (8 floats or
/// 4 doubles) sums elements l, l + 8, ... by the cascade of
/// detail::cascade_row_sum; then the tail that fills no vector is added in
/// order, then the lanes. Rows shorter than a vector are one scalar cascade.
/// Nearly as accurate as pairwise summation; not vectorised here.
template <typename Scalar>
Scalar torch_cascade_sum(const Scalar* x, Index size, bool ignore_nan) {
  check(size >= 0, "torch_cascade_sum: argument 'size' must be >= 0, got ", size);
  auto load = [&](Index i) { return ignore_nan && std::isnan(x[i]) ? Scalar(0) : x[i]; };
  constexpr Index kLanes = Index(32 / sizeof(Scalar));
  if (size < kLanes) return detail::cascade_row_sum<Scalar>(size, load);
  const Index vectors = size / kLanes;
  std::array<Scalar, kLanes> lanes;
  for (Index l = 0; l < kLanes; ++l) {
    lanes[std::size_t(l)] =
        detail::cascade_row_sum<Scalar>(vectors, [&](Index v) { return load(v * kLanes + l); });
  }
  Scalar total(0);
  for (Index i = vectors * kLanes; i < size; ++i) total += load(i);
  for (Index l = 0; l < kLanes; ++l) total += lanes[std::size_t(l)];
  return total;
}

}  // namespace xlstm
