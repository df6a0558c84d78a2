// numpy's `SeedSequence` (numpy ≥ 1.17, math §15.2): how
// `numpy.random.default_rng(seed)` turns an integer seed into the state words
// of its bit generator. The entropy (the seed's 32-bit words, least
// significant first) is hashed into a pool of four words, and the pool is
// hashed again into as many output words as the bit generator asks for.
// All arithmetic is modulo 2^32, as numpy does it in uint32.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace xlstm {

class NumpySeedSequence {
 public:
  /// `SeedSequence(entropy)` for a non-negative integer (a Python int or a
  /// numpy integer: both become the same words) and no spawn key.
  explicit NumpySeedSequence(std::uint64_t entropy) {
    std::vector<std::uint32_t> words{std::uint32_t(entropy & 0xffffffffu)};
    if (entropy >> 32) words.push_back(std::uint32_t(entropy >> 32));
    mix_entropy(words);
  }

  /// `generate_state(n_words, np.uint64)`: 2·n uint32 words, paired little
  /// endian (the even word is the low half).
  std::vector<std::uint64_t> generate_state_uint64(std::size_t n_words) const {
    std::uint32_t hash_const = kInitB;
    std::vector<std::uint64_t> out(n_words, 0);
    for (std::size_t i = 0; i < 2 * n_words; ++i) {
      std::uint32_t value = pool_[i % kPoolSize];
      value ^= hash_const;
      hash_const *= kMultB;
      value *= hash_const;
      value ^= value >> kXShift;
      out[i / 2] |= std::uint64_t(value) << (32 * (i % 2));
    }
    return out;
  }

  const std::array<std::uint32_t, 4>& pool() const { return pool_; }

 private:
  static constexpr std::size_t kPoolSize = 4;
  static constexpr std::uint32_t kInitA = 0x43b0d7e5u;
  static constexpr std::uint32_t kMultA = 0x931e8875u;
  static constexpr std::uint32_t kInitB = 0x8b51f9ddu;
  static constexpr std::uint32_t kMultB = 0x58f38dedu;
  static constexpr std::uint32_t kMixMultL = 0xca01f9ddu;
  static constexpr std::uint32_t kMixMultR = 0x4973f715u;
  static constexpr int kXShift = 16;

  // The running hash of numpy's `hashmix`: its constant advances with every
  // use, so the order of the calls below is part of the result.
  static std::uint32_t hashmix(std::uint32_t value, std::uint32_t& hash_const) {
    value ^= hash_const;
    hash_const *= kMultA;
    value *= hash_const;
    value ^= value >> kXShift;
    return value;
  }

  static std::uint32_t mix(std::uint32_t x, std::uint32_t y) {
    std::uint32_t result = kMixMultL * x - kMixMultR * y;
    result ^= result >> kXShift;
    return result;
  }

  void mix_entropy(const std::vector<std::uint32_t>& entropy) {
    std::uint32_t hash_const = kInitA;
    for (std::size_t i = 0; i < kPoolSize; ++i) {
      pool_[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
    }
    for (std::size_t src = 0; src < kPoolSize; ++src) {
      for (std::size_t dst = 0; dst < kPoolSize; ++dst) {
        if (src != dst) pool_[dst] = mix(pool_[dst], hashmix(pool_[src], hash_const));
      }
    }
    for (std::size_t src = kPoolSize; src < entropy.size(); ++src) {
      for (std::size_t dst = 0; dst < kPoolSize; ++dst) {
        pool_[dst] = mix(pool_[dst], hashmix(entropy[src], hash_const));
      }
    }
  }

  std::array<std::uint32_t, 4> pool_{};
};

}  // namespace xlstm
