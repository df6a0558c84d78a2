// Activations of math §1.1, vectorised over Eigen arrays for float and double.
//
// Each function returns an Eigen expression, so `y = silu(x.array())` fuses
// into one loop. Each one is written so that extreme arguments (±1e4, ±inf,
// denormals) give the mathematically right value or limit instead of NaN, and
// NaN stays NaN. Limits are taken with max/min against a constant, not with
// select(): Eigen 3.4 evaluates select() one scalar at a time, which made a
// SiLU over a 512 x 1536 prefill activation several times slower. max/min keep
// a NaN in their first operand (they follow std::max), so x comes first.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <iterator>
#include <limits>
#include <string>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>

#include "xlstm/core/error.hpp"

namespace xlstm {

/// sigmoid(x) = 1 / (1 + exp(-x)). exp(-x) overflowing to inf gives the right limit 0.
template <typename Derived>
auto sigmoid(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  return Scalar(1) / (Scalar(1) + (-x).exp());
}

namespace detail {

/// log1p(exp(-|x|)) in float (math §10.2): with e = exp(-|x|) in (0, 1] and
/// s = e / (2 + e) in [0, 1/3], log1p(e) = 2 atanh(s) = 2 s (1 + z/3 + z^2/5
/// + ... + z^7/15), z = s^2 <= 1/9, which leaves out less than 2^-26 of the
/// value. One division and a polynomial where Eigen's log1p takes a log and a
/// division: 7 against 18 ns per packet with Eigen's exp included (Intel
/// Xeon, AVX-512 and AVX2 alike), as accurate (64M arguments up to |x| = 120
/// against long double: at most 4.4 ulp, near exp's underflow, both ways;
/// mean 0.75 against 0.70 ulp). The sLSTM step at B = 8 went 5.1 -> 4.7 us
/// per row (one thread, native; README).
struct Log1pOfExpOfMinusAbs {
  /// 1/15, 1/13, ..., 1/3: the series' coefficients from the last, as Horner
  /// takes them (1/3 + z/5 + ... + z^6/15).
  static constexpr float kSeries[] = {1.0f / 15, 1.0f / 13, 1.0f / 11, 1.0f / 9,
                                      1.0f / 7,  1.0f / 5,  1.0f / 3};
  float operator()(float x) const {
    const float e = std::exp(-std::abs(x));
    const float s = e / (2.0f + e);
    const float z = s * s;
    float p = kSeries[0];
    for (std::size_t k = 1; k < std::size(kSeries); ++k) p = p * z + kSeries[k];
    return 2.0f * s + (2.0f * s * z) * p;
  }
  template <typename Packet>
  Packet packetOp(const Packet& x) const {
    namespace ei = Eigen::internal;
    const Packet e = ei::pexp(ei::pnegate(ei::pabs(x)));
    const Packet s = ei::pdiv(e, ei::padd(ei::pset1<Packet>(2.0f), e));
    const Packet z = ei::pmul(s, s);
    Packet p = ei::pset1<Packet>(kSeries[0]);
    for (std::size_t k = 1; k < std::size(kSeries); ++k) {
      p = ei::pmadd(p, z, ei::pset1<Packet>(kSeries[k]));
    }
    const Packet two_s = ei::padd(s, s);
    return ei::pmadd(ei::pmul(two_s, z), p, two_s);
  }
};

}  // namespace detail

/// Stable log-sigmoid (math §1.1 / §10.2): min(x, 0) - log1p(exp(-|x|)).
/// The naive log(sigmoid(x)) overflows for x << 0 and loses digits for x >> 0.
/// Float takes log1p(exp(-|x|)) from detail::Log1pOfExpOfMinusAbs, double
/// from Eigen's exp and log1p.
template <typename Derived>
auto log_sigmoid(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  if constexpr (std::is_same_v<Scalar, float>) {
    return x.min(0.0f) - x.unaryExpr(detail::Log1pOfExpOfMinusAbs{});
  } else {
    return x.min(Scalar(0)) - (-x.abs()).exp().log1p();
  }
}

/// SiLU / swish: x * sigmoid(x). At x = -inf the product would be -inf * 0;
/// raising -inf to the lowest finite value gives the limit (-0) instead.
template <typename Derived>
auto silu(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  const auto finite_x = x.max(std::numeric_limits<Scalar>::lowest());
  return finite_x * sigmoid(finite_x);
}

/// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) as PyTorch's default (math §10.12:
/// not the tanh approximation). The limit at -inf is 0.
template <typename Derived>
auto gelu(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  const Scalar inv_sqrt2 = Scalar(0.70710678118654752440);
  const auto finite_x = x.max(std::numeric_limits<Scalar>::lowest());  // -inf: limit -0
  return Scalar(0.5) * finite_x * (Scalar(1) + (finite_x * inv_sqrt2).erf());
}

/// Soft cap (math §1.1): c * tanh(x / c).
template <typename Derived>
auto soft_cap(const Eigen::ArrayBase<Derived>& x, typename Derived::Scalar cap) {
  return cap * (x / cap).tanh();
}

template <typename Derived>
auto relu(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  return x.max(Scalar(0));
}

/// relu(x)^2 (the FFN's "relu^2").
template <typename Derived>
auto relu_squared(const Eigen::ArrayBase<Derived>& x) {
  return relu(x).square();
}

/// SELU with PyTorch's constants: scale * (max(0, x) + min(0, alpha (exp(x) - 1))).
template <typename Derived>
auto selu(const Eigen::ArrayBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  const Scalar alpha = Scalar(1.6732632423543772848170429916717);
  const Scalar scale = Scalar(1.0507009873554804934193349852946);
  return scale * (x > Scalar(0)).select(x, alpha * x.expm1());
}

/// The feed-forward activations the official FeedForwardConfig registers.
enum class Activation { gelu, relu, relu_squared, swish, selu, sigmoid };

/// Official name ("gelu", "relu", "relu^2", "swish", "selu", "sigmoid").
inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::gelu: return "gelu";
    case Activation::relu: return "relu";
    case Activation::relu_squared: return "relu^2";
    case Activation::swish: return "swish";
    case Activation::selu: return "selu";
    case Activation::sigmoid: return "sigmoid";
  }
  return "?";
}

inline Activation parse_activation(const std::string& name, const char* field = "act_fn") {
  for (Activation a : {Activation::gelu, Activation::relu, Activation::relu_squared,
                       Activation::swish, Activation::selu, Activation::sigmoid}) {
    if (name == activation_name(a)) return a;
  }
  fail("config field '", field, "' must be one of gelu, relu, relu^2, swish, selu, sigmoid; got '",
       name, "'");
}

/// Applies `a` elementwise, in place.
template <typename Derived>
void apply_activation(Activation a, Eigen::ArrayBase<Derived>& x) {
  switch (a) {
    case Activation::gelu: x = gelu(x); return;
    case Activation::relu: x = relu(x); return;
    case Activation::relu_squared: x = relu_squared(x); return;
    case Activation::swish: x = silu(x); return;
    case Activation::selu: x = selu(x); return;
    case Activation::sigmoid: x = sigmoid(x); return;
  }
}

}  // namespace xlstm

namespace Eigen {
namespace internal {
/// Packet access where Eigen's float packets have exp and division (every
/// SIMD ISA it supports); else the scalar operator.
template <>
struct functor_traits<xlstm::detail::Log1pOfExpOfMinusAbs> {
  enum {
    Cost = 40 * NumTraits<float>::MulCost,
    PacketAccess = bool(packet_traits<float>::HasExp) && bool(packet_traits<float>::HasDiv)
  };
};
}  // namespace internal
}  // namespace Eigen
