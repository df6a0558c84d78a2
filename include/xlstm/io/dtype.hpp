// Element types of safetensors checkpoints and the conversions between them.
//
// Checkpoints come from PyTorch in whatever precision they were saved in
// (F32, BF16, F16, ...), while the model computes in float or double. This
// header names the stored types, counts and codes their little-endian bytes,
// converts the 16-bit floats bit-exactly, and converts between scalar types
// without undefined behaviour: a value that the destination cannot hold is
// reported instead of wrapped or truncated, because a silently mangled weight
// is far harder to find than an error.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "xlstm/core/error.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm::io {

/// Element types a safetensors tensor may have (the subset this library reads).
enum class DType { F64, F32, F16, BF16, I64, I32, U8, I8 };

/// Bytes per element.
inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::U8:
    case DType::I8:
      return 1;
  }
  fail("dtype_size: invalid DType value ", static_cast<int>(dtype));
}

/// The name safetensors uses for the type in its JSON header, e.g. "F32".
inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::U8:
      return "U8";
    case DType::I8:
      return "I8";
  }
  fail("dtype_name: invalid DType value ", static_cast<int>(dtype));
}

/// Parses a safetensors dtype name. `context` (e.g. "model.safetensors:
/// tensor 'w'") starts the error message for an unknown name.
inline DType parse_dtype(const std::string& name, const std::string& context) {
  static constexpr DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16,
                                  DType::I64, DType::I32, DType::U8,  DType::I8};
  for (DType dtype : all) {
    if (name == dtype_name(dtype)) return dtype;
  }
  fail(context, ": unknown dtype '", name, "' (supported: F64, F32, F16, BF16, I64, I32, U8, I8)");
}

// The 16-bit float conversions live in core/half.hpp (the half-precision
// weight products need them too); they are part of this namespace as well.
using xlstm::bf16_to_float;
using xlstm::f16_to_float;
using xlstm::float_to_bf16;
using xlstm::float_to_f16;

namespace detail {
using xlstm::detail::bit_cast;

/// Floating-point narrowing (double -> float, long double -> double). A plain
/// cast of a finite value beyond To's range is undefined behaviour; this gives
/// what IEEE round-to-nearest-even gives instead: the largest finite value up
/// to half an ulp above it, infinity from there on.
template <typename To, typename From>
To narrow_float(From value) {
  using limits = std::numeric_limits<To>;
  if (std::isfinite(value) && std::fabs(value) > static_cast<From>(limits::max())) {
    // Halfway between the largest finite To and 2^max_exponent. The largest
    // finite value has an odd significand, so the tie itself goes to infinity.
    const From overflow_threshold = std::ldexp(From(1), limits::max_exponent) -
                                    std::ldexp(From(1), limits::max_exponent - limits::digits - 1);
    const To magnitude =
        std::fabs(value) >= overflow_threshold ? limits::infinity() : limits::max();
    return value < 0 ? -magnitude : magnitude;
  }
  return static_cast<To>(value);
}

inline float narrow_to_float(double value) { return narrow_float<float>(value); }

/// double -> float rounding to odd: truncate, then set the last bit if
/// anything was dropped. Rounding that float again to a format with at most
/// 22 significant bits gives the correctly rounded result, which rounding
/// twice to nearest does not (the first rounding can create a false tie).
inline float narrow_to_float_round_to_odd(double value) {
  if (!std::isfinite(value)) return static_cast<float>(value);
  float rounded = narrow_to_float(value);
  if (std::isinf(rounded) || std::fabs(static_cast<double>(rounded)) > std::fabs(value)) {
    rounded = std::nextafter(rounded, 0.0f);  // now truncated toward zero
  }
  if (static_cast<double>(rounded) != value) {
    rounded = bit_cast<float>(bit_cast<std::uint32_t>(rounded) | 1u);
  }
  return rounded;
}

}  // namespace detail

/// double -> bfloat16 bits, correctly rounded (to nearest even).
inline std::uint16_t double_to_bf16(double value) {
  return float_to_bf16(detail::narrow_to_float_round_to_odd(value));
}

/// double -> IEEE binary16 bits, correctly rounded (to nearest even).
inline std::uint16_t double_to_f16(double value) {
  return float_to_f16(detail::narrow_to_float_round_to_odd(value));
}

/// Whether T is one of the plain integer types a dtype maps to: no bool and
/// no plain char, whose meaning is text, not a number.
template <typename T>
inline constexpr bool is_dtype_integer_v =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>;

namespace detail {

/// The DType storing T as is, as an int, or -1 if there is none.
template <typename T>
constexpr int native_dtype() {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<int>(DType::F32);
  } else if constexpr (std::is_same_v<T, double>) {
    return static_cast<int>(DType::F64);
  } else if constexpr (is_dtype_integer_v<T> && std::is_signed_v<T> && sizeof(T) == 8) {
    return static_cast<int>(DType::I64);
  } else if constexpr (is_dtype_integer_v<T> && std::is_signed_v<T> && sizeof(T) == 4) {
    return static_cast<int>(DType::I32);
  } else if constexpr (is_dtype_integer_v<T> && std::is_unsigned_v<T> && sizeof(T) == 1) {
    return static_cast<int>(DType::U8);
  } else if constexpr (is_dtype_integer_v<T> && std::is_signed_v<T> && sizeof(T) == 1) {
    return static_cast<int>(DType::I8);
  } else {
    return -1;
  }
}

}  // namespace detail

/// Whether some dtype stores T as is (so dtype_of<T>() compiles).
template <typename T>
inline constexpr bool has_dtype_v = detail::native_dtype<T>() >= 0;

/// The dtype that stores T as is: float -> F32, double -> F64, int64_t ->
/// I64, int32_t -> I32, uint8_t -> U8.
template <typename T>
constexpr DType dtype_of() {
  static_assert(has_dtype_v<T>, "dtype_of: no safetensors dtype stores this type");
  return static_cast<DType>(detail::native_dtype<T>());
}

namespace detail {

/// Whether From -> To loses range (float from double, double from long double).
template <typename To, typename From>
inline constexpr bool limits_narrower_v =
    std::numeric_limits<To>::max_exponent < std::numeric_limits<From>::max_exponent;

/// Scalars a converting read may produce or a converting write may consume.
template <typename T>
inline constexpr bool is_convertible_scalar_v =
    std::is_floating_point_v<T> || is_dtype_integer_v<T>;

/// Converts `value` to To. Returns false (leaving `out` unspecified) when To
/// cannot represent it: NaN, infinity, a fraction or an out-of-range number
/// going to an integer type, or an integer out of To's range. Floating-point
/// narrowing never fails; it rounds like IEEE (to infinity when too large).
template <typename To, typename From>
bool convert_scalar(From value, To& out) {
  static_assert(is_convertible_scalar_v<To> && is_convertible_scalar_v<From>,
                "convert_scalar: only floating-point and integer types");
  if constexpr (std::is_floating_point_v<To>) {
    if constexpr (std::is_floating_point_v<From> && limits_narrower_v<To, From>) {
      out = narrow_float<To>(value);
    } else {
      out = static_cast<To>(value);
    }
    return true;
  } else if constexpr (std::is_floating_point_v<From>) {
    if (!std::isfinite(value) || std::trunc(value) != value) return false;
    // [-2^digits, 2^digits) for signed, [0, 2^digits) for unsigned; powers of
    // two are exact in From, unlike the integer limits themselves.
    const From upper = std::ldexp(From(1), std::numeric_limits<To>::digits);
    const From lower = std::is_signed_v<To> ? -upper : From(0);
    if (!(value >= lower && value < upper)) return false;
    out = static_cast<To>(value);
    return true;
  } else {
    if constexpr (std::is_signed_v<From>) {
      if (value < 0) {
        if constexpr (std::is_signed_v<To>) {
          if (static_cast<std::intmax_t>(value) <
              static_cast<std::intmax_t>(std::numeric_limits<To>::min())) {
            return false;
          }
          out = static_cast<To>(value);
          return true;
        } else {
          return false;
        }
      }
    }
    if (static_cast<std::uintmax_t>(value) >
        static_cast<std::uintmax_t>(std::numeric_limits<To>::max())) {
      return false;
    }
    out = static_cast<To>(value);
    return true;
  }
}

/// Whether this machine stores numbers little-endian like safetensors does;
/// only then can stored bytes be used in place.
inline bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first_byte = 0;
  std::memcpy(&first_byte, &probe, 1);
  return first_byte == 1;
}

/// Reads an N-byte little-endian unsigned integer from possibly unaligned memory.
template <typename UInt>
UInt load_little_endian(const std::uint8_t* bytes) {
  UInt value = 0;
  for (std::size_t i = 0; i < sizeof(UInt); ++i)
    value |= static_cast<UInt>(static_cast<UInt>(bytes[i]) << (8 * i));
  return value;
}

/// Writes an N-byte unsigned integer little-endian to possibly unaligned memory.
template <typename UInt>
void store_little_endian(UInt value, std::uint8_t* bytes) {
  for (std::size_t i = 0; i < sizeof(UInt); ++i)
    bytes[i] = static_cast<std::uint8_t>(value >> (8 * i));
}

/// a * b, or false if it does not fit in std::size_t.
inline bool checked_multiply(std::size_t a, std::size_t b, std::size_t& product) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return false;
  product = a * b;
  return true;
}

/// Number of elements of `shape`, or false if the product of its non-zero
/// dimensions overflows. Zero dimensions are skipped in the overflow test so
/// the answer does not depend on the order of the dimensions, and so any
/// partial product a caller forms from the dimensions also fits.
inline bool checked_element_count(const Shape& shape, std::size_t& count) {
  std::size_t product = 1;
  bool has_zero = false;
  for (std::size_t dim : shape) {
    if (dim == 0) {
      has_zero = true;
    } else if (!checked_multiply(product, dim, product)) {
      return false;
    }
  }
  count = has_zero ? 0 : product;
  return true;
}

/// Bytes of `shape` elements of `dtype`, or false on overflow.
inline bool checked_byte_count(const Shape& shape, DType dtype, std::size_t& bytes) {
  std::size_t count = 0;
  return checked_element_count(shape, count) && checked_multiply(count, dtype_size(dtype), bytes);
}
/// Decodes `count` stored elements of `dtype` into Scalar. `where` starts
/// error messages for values Scalar cannot hold.
template <typename Scalar>
void decode_elements(DType dtype, const std::uint8_t* source, Scalar* dest, std::size_t count,
                     const std::string& where) {
  static_assert(is_convertible_scalar_v<Scalar>,
                "read: Scalar must be a floating-point or integer type");
  if (count == 0) return;
  if constexpr (has_dtype_v<Scalar>) {
    if (dtype == dtype_of<Scalar>() && host_is_little_endian()) {
      std::memcpy(dest, source, count * sizeof(Scalar));
      return;
    }
  }
  const std::size_t stride = dtype_size(dtype);
  auto convert_all = [&](auto load) {
    for (std::size_t i = 0; i < count; ++i) {
      const auto value = load(source + i * stride);
      if (!convert_scalar(value, dest[i])) {
        fail(where, ": element ", i, " (", +value, ") of ", dtype_name(dtype),
             " cannot be represented as the ", "requested ",
             std::is_floating_point_v<Scalar> ? "floating-point" : "integer", " type of ",
             sizeof(Scalar), " bytes");
      }
    }
  };
  switch (dtype) {
    case DType::F64:
      convert_all([](const std::uint8_t* p) {
        return bit_cast<double>(load_little_endian<std::uint64_t>(p));
      });
      return;
    case DType::F32:
      convert_all([](const std::uint8_t* p) {
        return bit_cast<float>(load_little_endian<std::uint32_t>(p));
      });
      return;
    case DType::F16:
      convert_all(
          [](const std::uint8_t* p) { return f16_to_float(load_little_endian<std::uint16_t>(p)); });
      return;
    case DType::BF16:
      convert_all([](const std::uint8_t* p) {
        return bf16_to_float(load_little_endian<std::uint16_t>(p));
      });
      return;
    case DType::I64:
      convert_all([](const std::uint8_t* p) {
        return static_cast<std::int64_t>(load_little_endian<std::uint64_t>(p));
      });
      return;
    case DType::I32:
      convert_all([](const std::uint8_t* p) {
        return static_cast<std::int32_t>(load_little_endian<std::uint32_t>(p));
      });
      return;
    case DType::U8:
      convert_all([](const std::uint8_t* p) { return *p; });
      return;
    case DType::I8:
      convert_all([](const std::uint8_t* p) { return static_cast<std::int8_t>(*p); });
      return;
  }
  fail(where, ": invalid DType value ", static_cast<int>(dtype));
}

/// Encodes `count` Scalar values as little-endian `dtype` elements.
template <typename Scalar>
void encode_elements(const Scalar* source, DType dtype, std::uint8_t* dest, std::size_t count,
                     const std::string& where) {
  static_assert(is_convertible_scalar_v<Scalar>,
                "add_as: Scalar must be a floating-point or integer type");
  const std::size_t stride = dtype_size(dtype);
  auto convert_all = [&](auto target_zero, auto store) {
    using Target = decltype(target_zero);
    for (std::size_t i = 0; i < count; ++i) {
      Target converted{};
      if (!convert_scalar(source[i], converted)) {
        fail(where, ": element ", i, " (", +source[i], ") cannot be represented as ",
             dtype_name(dtype));
      }
      store(converted, dest + i * stride);
    }
  };
  switch (dtype) {
    case DType::F64:
      convert_all(0.0, [](double v, std::uint8_t* p) {
        store_little_endian(bit_cast<std::uint64_t>(v), p);
      });
      return;
    case DType::F32:
      convert_all(0.0f, [](float v, std::uint8_t* p) {
        store_little_endian(bit_cast<std::uint32_t>(v), p);
      });
      return;
    case DType::F16:
    case DType::BF16: {
      // Through double: for a double source this rounds once, correctly
      // (double_to_* avoid the double rounding of going through float).
      const bool brain = dtype == DType::BF16;
      convert_all(0.0, [brain](double v, std::uint8_t* p) {
        store_little_endian(brain ? double_to_bf16(v) : double_to_f16(v), p);
      });
      return;
    }
    case DType::I64:
      convert_all(std::int64_t{0}, [](std::int64_t v, std::uint8_t* p) {
        store_little_endian(static_cast<std::uint64_t>(v), p);
      });
      return;
    case DType::I32:
      convert_all(std::int32_t{0}, [](std::int32_t v, std::uint8_t* p) {
        store_little_endian(static_cast<std::uint32_t>(v), p);
      });
      return;
    case DType::U8:
      convert_all(std::uint8_t{0}, [](std::uint8_t v, std::uint8_t* p) { *p = v; });
      return;
    case DType::I8:
      convert_all(std::int8_t{0},
                  [](std::int8_t v, std::uint8_t* p) { *p = static_cast<std::uint8_t>(v); });
      return;
  }
  fail(where, ": invalid DType value ", static_cast<int>(dtype));
}

}  // namespace detail
}  // namespace xlstm::io
