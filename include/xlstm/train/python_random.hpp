// CPython's `random.Random` (math §15.1): the Mersenne Twister MT19937 seeded
// from a non-negative integer through `init_by_array`, with `getrandbits` and
// `randint` drawing exactly the numbers Python draws. The official
// formal-language datasets take their per-split seeds from
// `random.Random(seed).randint(0, 1 << 32)`, so this stream has to be the
// same number for number, not merely as good.
//
//   xlstm::PythonRandom rng(1);
//   const std::uint64_t train_seed = rng.randint(0, std::int64_t(1) << 32);
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "xlstm/core/error.hpp"

namespace xlstm {

class PythonRandom {
 public:
  /// `random.Random(seed)` for an integer seed; Python uses |seed|, split
  /// into 32-bit words from the least significant one (at least one word).
  explicit PythonRandom(std::int64_t seed) {
    const std::uint64_t magnitude =
        seed < 0 ? std::uint64_t(0) - std::uint64_t(seed) : std::uint64_t(seed);
    std::vector<std::uint32_t> key{std::uint32_t(magnitude & 0xffffffffu)};
    if (magnitude >> 32) key.push_back(std::uint32_t(magnitude >> 32));
    seed_by_array(key);
  }

  /// The next 32-bit output of MT19937 (`genrand_uint32`).
  std::uint32_t next_uint32() {
    if (index_ >= kN) twist();
    std::uint32_t y = state_[index_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
  }

  /// `getrandbits(k)` for 0 < k <= 64: whole 32-bit words fill the result
  /// from its least significant end; the last, partial word keeps the top
  /// bits of its draw (CPython's `_random_Random_getrandbits_impl`).
  std::uint64_t getrandbits(int bits) {
    check(bits > 0 && bits <= 64, "PythonRandom::getrandbits: 'bits' must be in [1, 64], got ",
          bits);
    if (bits <= 32) return next_uint32() >> (32 - bits);
    const std::uint64_t low = next_uint32();
    const std::uint64_t high = next_uint32() >> (64 - bits);
    return low | (high << 32);
  }

  /// `randint(a, b)`: uniform on [a, b] by rejection, `a + randbelow(b - a + 1)`
  /// where `randbelow(n)` draws `n.bit_length()` bits until the value is < n.
  std::int64_t randint(std::int64_t a, std::int64_t b) {
    check(a <= b, "PythonRandom::randint: 'b' must be >= 'a' (", a, "), got ", b);
    const std::uint64_t width = std::uint64_t(b) - std::uint64_t(a) + 1;
    check(width != 0, "PythonRandom::randint: the range [", a, ", ", b,
          "] must hold fewer than 2^64 values");
    int bits = 0;
    while (bits < 64 && (width >> bits) != 0) ++bits;
    std::uint64_t r = getrandbits(bits);
    while (r >= width) r = getrandbits(bits);
    return std::int64_t(std::uint64_t(a) + r);
  }

 private:
  static constexpr int kN = 624;
  static constexpr int kM = 397;

  // MT19937's reference `init_genrand` followed by `init_by_array`, as
  // CPython's `init_by_array` does them.
  void seed_by_array(const std::vector<std::uint32_t>& key) {
    state_[0] = 19650218u;
    for (int i = 1; i < kN; ++i) {
      state_[i] = 1812433253u * (state_[i - 1] ^ (state_[i - 1] >> 30)) + std::uint32_t(i);
    }
    const int key_length = int(key.size());
    int i = 1, j = 0;
    for (int k = kN > key_length ? kN : key_length; k > 0; --k) {
      state_[i] = (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1664525u)) +
                  key[std::size_t(j)] + std::uint32_t(j);
      ++i;
      ++j;
      if (i >= kN) {
        state_[0] = state_[kN - 1];
        i = 1;
      }
      if (j >= key_length) j = 0;
    }
    for (int k = kN - 1; k > 0; --k) {
      state_[i] =
          (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1566083941u)) - std::uint32_t(i);
      ++i;
      if (i >= kN) {
        state_[0] = state_[kN - 1];
        i = 1;
      }
    }
    state_[0] = 0x80000000u;
    index_ = kN;
  }

  void twist() {
    for (int i = 0; i < kN; ++i) {
      const std::uint32_t y = (state_[i] & 0x80000000u) | (state_[(i + 1) % kN] & 0x7fffffffu);
      state_[i] = state_[(i + kM) % kN] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }

  std::array<std::uint32_t, kN> state_{};
  int index_ = kN;
};

}  // namespace xlstm
