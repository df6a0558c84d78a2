// IEEE half (F16) and bfloat16 (BF16) conversions, bit-exact, round to
// nearest even. Checkpoints store weights in these types; the half-precision
// weight products (core/weight_matrix.hpp) decode them on the fly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace xlstm {

namespace detail {

template <typename To, typename From>
To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace detail

/// bfloat16 bits -> float. Exact: bfloat16 is the upper half of a float.
inline float bf16_to_float(std::uint16_t bits) {
  return detail::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// float -> bfloat16 bits, rounding to nearest, ties to even (as PyTorch
/// does). Overflow gives infinity; NaN stays NaN.
inline std::uint16_t float_to_bf16(float value) {
  const std::uint32_t bits = detail::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // Plain truncation could drop every set payload bit and turn the NaN
    // into an infinity; forcing the quiet bit keeps it a NaN.
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding just under half an ulp of the result, plus one if the kept part is
  // odd, makes the truncation below round to nearest even; a carry out of the
  // mantissa correctly bumps the exponent (up to infinity).
  const std::uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

/// A float rounded to the nearest bfloat16 (ties to even) and held as a float
/// again: what PyTorch's `.to(torch.bfloat16)` keeps of a value. Exact for
/// values that are bfloat16 already (rounding twice changes nothing).
inline float round_to_bf16(float value) { return bf16_to_float(float_to_bf16(value)); }

/// The same for a double, through the nearest float (the computations that
/// round to bfloat16 are float32 ones).
inline double round_to_bf16(double value) {
  return double(round_to_bf16(static_cast<float>(value)));
}

/// IEEE binary16 bits -> float. Exact, including subnormals, infinities and
/// NaN payloads.
inline float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) {
    return detail::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  return detail::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

/// float -> IEEE binary16 bits, rounding to nearest, ties to even. Values too
/// large become infinity, values too small become (signed) zero or a
/// subnormal; NaN stays NaN.
inline std::uint16_t float_to_f16(float value) {
  const std::uint32_t bits = detail::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {
    // Keep the top payload bits and force the quiet bit so it stays a NaN.
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  // 65520 lies halfway between the largest half, 65504 (odd mantissa), and
  // 2^16; ties to even send it, and everything above, to infinity.
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (magnitude >= 0x38800000u) {
    // Normal half (>= 2^-14): rebias the exponent, keep 10 mantissa bits and
    // round on the 13 dropped ones. A carry into the exponent is correct.
    std::uint32_t half = (((magnitude >> 23) - 127 + 15) << 10) | ((magnitude >> 13) & 0x3ffu);
    const std::uint32_t dropped = magnitude & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  // Subnormal half: the result is round(value * 2^24). With value =
  // significand * 2^(exponent - 150), that is significand >> (126 - exponent),
  // rounded. Rounding up to 0x400 yields the smallest normal, as it should.
  const std::uint32_t exponent = magnitude >> 23;
  if (exponent < 102) return sign;  // below 2^-25: rounds to zero
  const std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126 - exponent;  // 14..24
  std::uint32_t half = significand >> shift;
  const std::uint32_t dropped = significand & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1);
  if (dropped > halfway || (dropped == halfway && (half & 1u))) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

}  // namespace xlstm
