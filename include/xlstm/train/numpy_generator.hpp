// numpy's `numpy.random.default_rng(seed)` (numpy ≥ 1.17, math §15.2): the
// PCG64 bit generator (128-bit LCG, XSL-RR output) seeded through
// SeedSequence, and `Generator.integers(low, high)` with numpy's bounded
// integer algorithm (Lemire's multiply-shift with rejection; a range that fits
// 32 bits takes 32-bit draws, two per 64-bit output, the half left over kept
// for the next call). The official formal-language tasks draw every token
// with this, so the C++ datasets are the official ones sample for sample.
//
//   xlstm::NumpyGenerator rng(seed);
//   const auto bits = rng.integers(1, 3, 39);   // rng.integers(1, 3, size=39)
#pragma once

#include <cstdint>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/train/numpy_seed_sequence.hpp"

namespace xlstm {

namespace detail {

/// The full 128-bit product of two 64-bit numbers (portable: no __int128).
inline void multiply_64x64(std::uint64_t a, std::uint64_t b, std::uint64_t& high,
                           std::uint64_t& low) {
  const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
  const std::uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo;
  const std::uint64_t lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const std::uint64_t middle = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + (lo_hi & 0xffffffffu);
  low = (middle << 32) | (lo_lo & 0xffffffffu);
  high = hi_hi + (hi_lo >> 32) + (lo_hi >> 32) + (middle >> 32);
}

}  // namespace detail

class NumpyGenerator {
 public:
  /// `default_rng(seed)` for a non-negative integer seed.
  explicit NumpyGenerator(std::uint64_t seed) {
    const std::vector<std::uint64_t> words = NumpySeedSequence(seed).generate_state_uint64(4);
    // pcg64_set_seed: state = (words[0] << 64) | words[1], sequence likewise
    // from words[2..3]; then PCG's srandom: inc = 2·seq + 1, step, add the
    // initial state, step.
    inc_hi_ = (words[2] << 1) | (words[3] >> 63);
    inc_lo_ = (words[3] << 1) | 1u;
    state_hi_ = 0;
    state_lo_ = 0;
    step();
    add(state_hi_, state_lo_, words[0], words[1]);
    step();
  }

  /// The next 64-bit output (`pcg64_next64`): advance, then XSL-RR of the new
  /// state. Does not touch the buffered 32-bit half.
  std::uint64_t next_uint64() {
    step();
    const std::uint64_t folded = state_hi_ ^ state_lo_;
    const unsigned rotation = unsigned(state_hi_ >> 58);
    return (folded >> rotation) | (folded << ((64 - rotation) & 63));
  }

  /// The next 32-bit output (`pcg64_next32`): the low half of a fresh 64-bit
  /// output, the high half on the following call.
  std::uint32_t next_uint32() {
    if (has_half_) {
      has_half_ = false;
      return half_;
    }
    const std::uint64_t next = next_uint64();
    has_half_ = true;
    half_ = std::uint32_t(next >> 32);
    return std::uint32_t(next & 0xffffffffu);
  }

  /// `integers(low, high, size=count)` with the default `endpoint=False`:
  /// `count` values uniform on [low, high), drawn in order.
  std::vector<std::int64_t> integers(std::int64_t low, std::int64_t high, std::size_t count) {
    check(low < high, "NumpyGenerator::integers: 'high' must be > 'low' (", low, "), got ", high);
    const std::uint64_t range = std::uint64_t(high - 1) - std::uint64_t(low);
    std::vector<std::int64_t> out(count);
    for (auto& value : out) value = std::int64_t(std::uint64_t(low) + bounded(range));
    return out;
  }

  /// `integers(low, high)` with no size: one value.
  std::int64_t integer(std::int64_t low, std::int64_t high) { return integers(low, high, 1)[0]; }

 private:
  // numpy's random_bounded_uint64_fill for one value on [0, range].
  std::uint64_t bounded(std::uint64_t range) {
    if (range == 0) return 0;  // no draw at all
    if (range <= 0xffffffffu) {
      if (range == 0xffffffffu) return next_uint32();
      const std::uint32_t range_excl = std::uint32_t(range) + 1;
      std::uint64_t m = std::uint64_t(next_uint32()) * range_excl;
      std::uint32_t leftover = std::uint32_t(m & 0xffffffffu);
      if (leftover < range_excl) {
        const std::uint32_t threshold = (0xffffffffu - std::uint32_t(range)) % range_excl;
        while (leftover < threshold) {
          m = std::uint64_t(next_uint32()) * range_excl;
          leftover = std::uint32_t(m & 0xffffffffu);
        }
      }
      return m >> 32;
    }
    if (range == ~std::uint64_t(0)) return next_uint64();
    const std::uint64_t range_excl = range + 1;
    std::uint64_t high = 0, leftover = 0;
    detail::multiply_64x64(next_uint64(), range_excl, high, leftover);
    if (leftover < range_excl) {
      const std::uint64_t threshold = (~std::uint64_t(0) - range) % range_excl;
      while (leftover < threshold)
        detail::multiply_64x64(next_uint64(), range_excl, high, leftover);
    }
    return high;
  }

  static void add(std::uint64_t& hi, std::uint64_t& lo, std::uint64_t add_hi,
                  std::uint64_t add_lo) {
    const std::uint64_t sum_lo = lo + add_lo;
    hi = hi + add_hi + (sum_lo < lo ? 1u : 0u);
    lo = sum_lo;
  }

  // state ← state · M + inc (mod 2^128), M = PCG's default 128-bit multiplier.
  void step() {
    constexpr std::uint64_t kMulHi = 0x2360ed051fc65da4ull, kMulLo = 0x4385df649fccf645ull;
    std::uint64_t hi = 0, lo = 0;
    detail::multiply_64x64(state_lo_, kMulLo, hi, lo);
    hi += state_hi_ * kMulLo + state_lo_ * kMulHi;
    state_hi_ = hi;
    state_lo_ = lo;
    add(state_hi_, state_lo_, inc_hi_, inc_lo_);
  }

  std::uint64_t state_hi_ = 0, state_lo_ = 0;
  std::uint64_t inc_hi_ = 0, inc_lo_ = 0;
  bool has_half_ = false;
  std::uint32_t half_ = 0;
};

}  // namespace xlstm
