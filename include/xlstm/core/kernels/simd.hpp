// The SIMD vocabulary of the product kernels, and the one file of the library
// that knows about instruction sets: every ISA test (#if on a target macro)
// and every intrinsic lives here, so a port to another compiler or ISA
// touches this file only.
//
// A Packet<Scalar> is Eigen's widest vector of Scalar for the build (a plain
// Scalar when Eigen does not vectorise), and the arithmetic below is Eigen's
// packet arithmetic, so the kernels keep Eigen's lane order and summation
// order. Only widening 16-bit floats to float needs intrinsics: AVX2 and
// AVX-512 builds widen bfloat16 inside the registers, and IEEE half too when
// F16C is available; elsewhere the widening helpers fall back to scalar
// conversions and the constants kWidenBf16 / kWidenF16 say so, letting a
// kernel choose another strategy.
//
// Only standard C++ and the intrinsics of <immintrin.h> are used (no
// statement expressions, attributes or builtins; cmake/check_portability.cmake
// keeps it so). MSVC defines no __F16C__: its /arch:AVX2 and /arch:AVX512
// imply F16C, which the feature test below spells out.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "xlstm/core/half.hpp"
#include "xlstm/core/tensor.hpp"

// Which instructions the kernels may use: Eigen's own choice for its packets
// (a widened packet must be exactly Eigen's Packet<float>), and F16C for the
// IEEE half conversion.
#if defined(EIGEN_VECTORIZE_AVX512)
#define XLSTM_SIMD_AVX512 1
#elif defined(EIGEN_VECTORIZE_AVX2)
#define XLSTM_SIMD_AVX2 1
#endif
#if (defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)) && \
    (defined(__F16C__) || (defined(_MSC_VER) && !defined(__clang__)))
#define XLSTM_SIMD_F16C 1
#endif

#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
#include <immintrin.h>
#endif

namespace xlstm {
namespace simd {

/// Eigen's vector of Scalar for this build, and its number of lanes.
template <typename Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
template <typename Scalar>
inline constexpr Index kLanes = Eigen::internal::packet_traits<Scalar>::size;

/// Vector registers of the ISA: 32 with AVX-512, else 16. Register blocks
/// that need more than 16 accumulators plus operands pay off only with 32.
#if defined(XLSTM_SIMD_AVX512)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

/// Whether load_bf16 / load_f16 widen inside the registers (else lane by lane).
#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
inline constexpr bool kWidenBf16 = true;
#else
inline constexpr bool kWidenBf16 = false;
#endif
#if defined(XLSTM_SIMD_F16C)
inline constexpr bool kWidenF16 = true;
#else
inline constexpr bool kWidenF16 = false;
#endif

/// All lanes zero.
template <typename Scalar>
inline Packet<Scalar> zero() {
  return Eigen::internal::pset1<Packet<Scalar>>(Scalar(0));
}

/// kLanes<Scalar> values from `p` (no alignment needed).
template <typename Scalar>
inline Packet<Scalar> load(const Scalar* p) {
  return Eigen::internal::ploadu<Packet<Scalar>>(p);
}

/// kLanes<Scalar> values to `p` (no alignment needed).
template <typename Scalar>
inline void store(Scalar* p, const Packet<Scalar>& v) {
  Eigen::internal::pstoreu(p, v);
}

/// Asks the CPU to bring the cache line holding `address` into the cache
/// ahead of its use (a hint: never faults, changes no value). The decode
/// kernels read each row of W as a stream of its own, and rows of a few KiB
/// end before the hardware prefetcher has ramped up on them: requesting the
/// rows of the next panel while this one is multiplied keeps the memory busy
/// (kernels/dense.hpp, dot_block). `address` must lie within an object. GCC
/// deletes the call where it is not inlined early into a loop that has other
/// effects (a function of nothing but prefetches looks free of effects to
/// it), so kernels call this straight from their loops.
inline void prefetch(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address);
#elif defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
  _mm_prefetch(static_cast<const char*>(address), _MM_HINT_T0);
#else
  (void)address;
#endif
}

/// `x` in every lane.
template <typename Scalar>
inline Packet<Scalar> broadcast(Scalar x) {
  return Eigen::internal::pset1<Packet<Scalar>>(x);
}

/// a * b + c, lane by lane (fused where the ISA has it, as in Eigen).
template <typename P>
inline P fma(const P& a, const P& b, const P& c) {
  return Eigen::internal::pmadd(a, b, c);
}

/// The sum of the lanes, in Eigen's order.
template <typename P>
inline typename Eigen::internal::unpacket_traits<P>::type reduce(const P& p) {
  return Eigen::internal::predux(p);
}

namespace detail {

#if defined(XLSTM_SIMD_AVX512)
// The levels of reduce_each: a and b each hold groups of `width` lanes, one
// output's partial sums per group; the result holds groups of width / 2, each
// the lower half of a group plus its upper half (lane i + lane i + width / 2,
// as Eigen's predux pairs them), a's and b's groups side by side.
inline __m512 add_halves16(__m512 a, __m512 b) {  // [a | b]
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
inline __m512 add_halves8(__m512 a, __m512 b) {  // [a0 a1 b0 b1]
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
inline __m512 add_halves4(__m512 a, __m512 b) {  // per 128 bits: [a b]
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
}
inline __m512 add_halves2(__m512 a, __m512 b) {  // per 128 bits: [a0 a1 b0 b1]
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
}
#elif defined(XLSTM_SIMD_AVX2)
inline __m256 add_halves8(__m256 a, __m256 b) {  // [a | b]
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
inline __m256 add_halves4(__m256 a, __m256 b) {  // per 128 bits: [a b]
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x44), _mm256_shuffle_ps(a, b, 0xEE));
}
inline __m256 add_halves2(__m256 a, __m256 b) {  // per 128 bits: [a0 a1 b0 b1]
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
}
#endif

}  // namespace detail

/// Whether transpose_rows moves 8 x 8 and 4 x 4 blocks inside the registers
/// (else value by value).
#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
inline constexpr bool kTransposeInRegisters = true;
#else
inline constexpr bool kTransposeInRegisters = false;
#endif

/// dst[k * dst_step + r] = src[r * src_stride + k] for r < rows, k < cols:
/// rows of a row-major float matrix written out by columns (the packing of
/// a GEMM operand stored by rows, design §7.8). Value by value this costs a
/// few cycles per value, as much as a tenth of a prefill's products; here
/// 8 x 8 blocks (then 4 x 4) are loaded as rows, transposed by shuffles and
/// stored as columns. A pure copy: the values' bits are unchanged.
inline void transpose_rows(const float* src, Index src_stride, Index rows, Index cols, float* dst,
                           Index dst_step) {
  Index r = 0;
#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
  const Index body8 = cols / 8 * 8, body4 = cols / 4 * 4;
  for (; r + 8 <= rows; r += 8) {
    for (Index k = 0; k < body8; k += 8) {
      __m256 v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r + i) * src_stride + k);
      // Interleave pairs of rows, then pairs of pairs: each 128-bit half of
      // t[i] then holds 4 values of one column; the halves are swapped last.
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        v[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (k + i) * dst_step + r,
                         _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
        _mm256_storeu_ps(dst + (k + i + 4) * dst_step + r,
                         _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
      }
    }
  }
  for (; r + 4 <= rows; r += 4) {
    for (Index k = 0; k < body4; k += 4) {
      __m128 v0 = _mm_loadu_ps(src + r * src_stride + k);
      __m128 v1 = _mm_loadu_ps(src + (r + 1) * src_stride + k);
      __m128 v2 = _mm_loadu_ps(src + (r + 2) * src_stride + k);
      __m128 v3 = _mm_loadu_ps(src + (r + 3) * src_stride + k);
      _MM_TRANSPOSE4_PS(v0, v1, v2, v3);
      _mm_storeu_ps(dst + k * dst_step + r, v0);
      _mm_storeu_ps(dst + (k + 1) * dst_step + r, v1);
      _mm_storeu_ps(dst + (k + 2) * dst_step + r, v2);
      _mm_storeu_ps(dst + (k + 3) * dst_step + r, v3);
    }
  }
  // The columns past the blocks, for the rows done so far.
  for (Index i = 0; i < r; ++i) {
    for (Index k = i < rows / 8 * 8 ? body8 : body4; k < cols; ++k) {
      dst[k * dst_step + i] = src[i * src_stride + k];
    }
  }
#endif
  for (; r < rows; ++r) {
    for (Index k = 0; k < cols; ++k) dst[k * dst_step + r] = src[r * src_stride + k];
  }
}

/// Whether reduce_each sums kLanes packets at once inside the registers
/// (else packet by packet). Eigen's AVX-512 predux halves the packet (lane i
/// plus lane i + 8, then + 4, + 2, + 1) only with AVX512DQ; its AVX2 one
/// always does.
#if (defined(XLSTM_SIMD_AVX512) && defined(EIGEN_VECTORIZE_AVX512DQ)) || defined(XLSTM_SIMD_AVX2)
inline constexpr bool kReduceInRegisters = true;
#else
inline constexpr bool kReduceInRegisters = false;
#endif

/// out[e] = reduce(v[e]) for e < N, with the same bits. A dot-product kernel
/// over a short depth ends with as many lane sums as it has accumulators;
/// one at a time they cost about as much as the multiply-adds (the sLSTM
/// step's 128-long dot products). Here kLanes packets are summed together, a
/// tree of shuffles and adds that pairs the lanes exactly as predux does, so
/// each output lane holds one packet's sum: about 3 instructions per packet
/// instead of 9.
template <typename Scalar, int N>
inline void reduce_each(const Packet<Scalar> (&v)[N], Scalar* out) {
  if constexpr (std::is_same_v<Scalar, float> && kReduceInRegisters) {
#if (defined(XLSTM_SIMD_AVX512) && defined(EIGEN_VECTORIZE_AVX512DQ)) || defined(XLSTM_SIMD_AVX2)
    constexpr int kL = int(kLanes<float>);
    for (int g = 0; g < N; g += kL) {
      // A last, partial group repeats its first packet in the lanes not used.
      Packet<float> t[kL];
      for (int i = 0; i < kL; ++i) t[i] = v[g + i < N ? g + i : g];
#if defined(XLSTM_SIMD_AVX512)
      Packet<float> u[8], w[4], x[2];
      for (int i = 0; i < 8; ++i) u[i] = detail::add_halves16(t[2 * i], t[2 * i + 1]);
      for (int i = 0; i < 4; ++i) w[i] = detail::add_halves8(u[2 * i], u[2 * i + 1]);
      for (int i = 0; i < 2; ++i) x[i] = detail::add_halves4(w[2 * i], w[2 * i + 1]);
      // Lane 4q + j now holds packet 4j + q: put packet e in lane e.
      const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
      const Packet<float> sums = _mm512_permutexvar_ps(order, detail::add_halves2(x[0], x[1]));
#else
      Packet<float> u[4], w[2];
      for (int i = 0; i < 4; ++i) u[i] = detail::add_halves8(t[2 * i], t[2 * i + 1]);
      for (int i = 0; i < 2; ++i) w[i] = detail::add_halves4(u[2 * i], u[2 * i + 1]);
      // Lane p now holds packet 2p (p < 4) or 2(p - 4) + 1: put packet e in lane e.
      const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      const Packet<float> sums = _mm256_permutevar8x32_ps(detail::add_halves2(w[0], w[1]), order);
#endif
      if (N - g >= kL) {
        store(out + g, sums);
      } else {
        float lanes[kL];
        store(lanes, sums);
        const int count = N - g < kL ? N - g : kL;
        for (int i = 0; i < count; ++i) out[g + i] = lanes[i];
      }
    }
    return;
#endif
  }
  for (int e = 0; e < N; ++e) out[e] = reduce(v[e]);
}

namespace detail {

/// Scalar fallback of the widening loads: one lane at a time.
template <typename Decode>
inline Packet<float> widen_lanes(const std::uint16_t* p, Decode decode) {
  float lanes[kLanes<float>];
  for (Index i = 0; i < kLanes<float>; ++i) lanes[i] = decode(p[i]);
  return load<float>(lanes);
}

}  // namespace detail

/// kLanes<float> bfloat16 values from `p`, widened to float. A bfloat16 is
/// the upper half of a float: zero-extend and shift.
inline Packet<float> load_bf16(const std::uint16_t* p) {
#if defined(XLSTM_SIMD_AVX512)
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
#elif defined(XLSTM_SIMD_AVX2)
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
#else
  return detail::widen_lanes(p, bf16_to_float);
#endif
}

/// Stores a packet of floats at `p` as kLanes<float> bfloat16 values, each
/// rounded as float_to_bf16 rounds it (nearest, ties to even; NaN stays a
/// quiet NaN; subnormals kept): the same bits lane by lane.
inline void store_bf16(std::uint16_t* p, const Packet<float>& v) {
#if defined(XLSTM_SIMD_AVX512)
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x00400000));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
#elif defined(XLSTM_SIMD_AVX2)
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
  const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256i kept =
      _mm256_srli_epi32(_mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                                                             _mm256_castsi256_ps(quiet), nan)),
                        16);
  // The upper halves are zero: the unsigned saturation packs them exactly.
  _mm_storeu_si128(
      reinterpret_cast<__m128i*>(p),
      _mm_packus_epi32(_mm256_castsi256_si128(kept), _mm256_extracti128_si256(kept, 1)));
#else
  float lanes[kLanes<float>];
  store<float>(lanes, v);
  for (Index i = 0; i < kLanes<float>; ++i) p[i] = float_to_bf16(lanes[i]);
#endif
}

/// kLanes<float> IEEE half values from `p`, widened to float (F16C).
inline Packet<float> load_f16(const std::uint16_t* p) {
#if defined(XLSTM_SIMD_F16C) && defined(XLSTM_SIMD_AVX512)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(XLSTM_SIMD_F16C)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  return detail::widen_lanes(p, f16_to_float);
#endif
}

/// Whether load_i8 widens inside the registers (else lane by lane).
#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
inline constexpr bool kWidenQuantized = true;
#else
inline constexpr bool kWidenQuantized = false;
#endif

/// kLanes<float> int8 values from `p`, widened to float (sign-extend, then
/// convert): reads exactly kLanes<float> bytes.
inline Packet<float> load_i8(const std::int8_t* p) {
#if defined(XLSTM_SIMD_AVX512)
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
#elif defined(XLSTM_SIMD_AVX2)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
#else
  float lanes[kLanes<float>];
  for (Index i = 0; i < kLanes<float>; ++i) lanes[i] = float(p[i]);
  return load<float>(lanes);
#endif
}

/// The 4-bit value q (-8..7, stored as q + 8) of `column` in its byte (math
/// §16.2: the low nibble is the even column).
inline int q4_nibble(std::uint8_t byte, Index column) {
  return ((column % 2 == 0 ? byte : byte >> 4) & 15) - 8;
}

/// Whether select_lanes runs inside the registers (one permute); elsewhere a
/// kernel should keep its scalar path.
#if defined(XLSTM_SIMD_AVX512) || defined(XLSTM_SIMD_AVX2)
inline constexpr bool kSelectLanes = true;
#else
inline constexpr bool kSelectLanes = false;
#endif

/// Which lane of a float packet each lane of select_lanes' result takes.
struct LaneSelection {
#if defined(XLSTM_SIMD_AVX512)
  __m512i source;
#elif defined(XLSTM_SIMD_AVX2)
  __m256i source;
#else
  int source[kLanes<float>];
#endif
};

/// The selection that gives every lane of each group of `group` lanes
/// (group divides kLanes<float>) the group's lane k: lane l takes lane
/// (l / group) * group + k. Used to hand each small head its k-th input.
inline LaneSelection lanes_of_group(Index group, Index k) {
  alignas(64) std::int32_t source[kLanes<float>];
  for (Index l = 0; l < kLanes<float>; ++l) source[l] = std::int32_t(l / group * group + k);
  LaneSelection selection;
#if defined(XLSTM_SIMD_AVX512)
  selection.source = _mm512_load_si512(source);
#elif defined(XLSTM_SIMD_AVX2)
  selection.source = _mm256_load_si256(reinterpret_cast<const __m256i*>(source));
#else
  for (Index l = 0; l < kLanes<float>; ++l) selection.source[l] = source[l];
#endif
  return selection;
}

/// Lane l of the result is lane selection.source[l] of p.
inline Packet<float> select_lanes(const Packet<float>& p, const LaneSelection& selection) {
#if defined(XLSTM_SIMD_AVX512)
  return _mm512_permutexvar_ps(selection.source, p);
#elif defined(XLSTM_SIMD_AVX2)
  return _mm256_permutevar8x32_ps(p, selection.source);
#else
  float in[kLanes<float>], out[kLanes<float>];
  store<float>(in, p);
  for (Index l = 0; l < kLanes<float>; ++l) out[l] = in[selection.source[l]];
  return load<float>(out);
#endif
}

/// p * s, lane by lane (s broadcast).
inline Packet<float> scale(const Packet<float>& p, float s) {
  return Eigen::internal::pmul(p, Eigen::internal::pset1<Packet<float>>(s));
}

// --- q4_g32 weights times x rounded to 8 bits (kernels/q4_integer.hpp) ------
//
// A chunk is kQ4DotGroups groups of 32 columns: 16 bytes of weights per group,
// whose low nibbles are the even columns and high nibbles the odd ones (math
// §16.2). The integer lane l of a chunk covers the weights' bytes 4l..4l+3,
// so lanes 4g..4g+3 belong to group g. A nibble holds q + 8 (0..15), which
// the byte products take as unsigned; the caller's per-lane correction
// -8 * (sum of the lane's eight x values) takes the 8 off again.

/// Whether the q4_g32 x int8 dot products run in the registers: AVX-512 with
/// its byte instructions (BW; VNNI's vpdpbusd when present), or AVX2.
#if defined(XLSTM_SIMD_AVX512) && defined(__AVX512BW__)
#define XLSTM_SIMD_Q4_DOT 1
inline constexpr bool kQ4IntegerDot = true;
using IntPacket = __m512i;
#elif defined(XLSTM_SIMD_AVX2)
#define XLSTM_SIMD_Q4_DOT 1
inline constexpr bool kQ4IntegerDot = true;
using IntPacket = __m256i;
#else
inline constexpr bool kQ4IntegerDot = false;
#endif

/// Groups of 32 columns per chunk: a float packet's lanes, four per group.
inline constexpr Index kQ4DotGroups = kLanes<float> >= 4 ? kLanes<float> / 4 : 1;

#if defined(XLSTM_SIMD_Q4_DOT)
/// The excess-8 nibbles of one chunk: `low` the even columns, `high` the odd.
struct Q4Excess8 {
  IntPacket low, high;
};

/// The first `groups` (1..kQ4DotGroups) groups' 16 bytes each at `w`, as
/// nibbles (q + 8, math §16.2); bytes past them read as zero (and not at
/// all). Stored as q + 8 rather than as q's two's complement, the nibbles
/// need no XOR to become unsigned.
inline Q4Excess8 load_q4_excess8(const std::uint8_t* w, Index groups) {
#if defined(XLSTM_SIMD_AVX512)
  const __m512i bytes =
      groups == kQ4DotGroups
          ? _mm512_loadu_si512(w)
          : _mm512_maskz_loadu_epi8(_cvtu64_mask64((std::uint64_t(1) << (16 * groups)) - 1), w);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  return {_mm512_and_si512(bytes, low4), _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4)};
#else
  const __m256i bytes =
      groups == kQ4DotGroups
          ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))
          : _mm256_inserti128_si256(_mm256_setzero_si256(),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(w)), 0);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(bytes, low4), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4)};
#endif
}

/// A T from `p`, which need not be aligned for T.
template <typename T>
T load_unaligned(const void* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

/// The first `groups` bfloat16 scales at `s` (their bits), as floats each
/// in its group's four lanes; lanes past them are zero (and the scales past
/// them not read). A bfloat16 is a float's upper half: the byte shuffle
/// puts scale g's two bytes at the top of lanes 4g..4g+3 and zeros below.
inline Packet<float> q4_group_scales(const std::uint16_t* s, Index groups) {
#if defined(XLSTM_SIMD_AVX512)
  const __m512i all = groups == kQ4DotGroups
                          ? _mm512_set1_epi64(load_unaligned<std::int64_t>(s))
                          : _mm512_broadcastq_epi64(_mm512_castsi512_si128(_mm512_maskz_loadu_epi16(
                                __mmask32((1u << groups) - 1), s)));  // the rest zero
  // In each 128-bit lane the eight bytes appear twice; -1 writes a zero.
  const __m512i spread = _mm512_set_epi8(7, 6, -1, -1, 7, 6, -1, -1, 7, 6, -1, -1, 7, 6, -1, -1,  //
                                         5, 4, -1, -1, 5, 4, -1, -1, 5, 4, -1, -1, 5, 4, -1, -1,  //
                                         3, 2, -1, -1, 3, 2, -1, -1, 3, 2, -1, -1, 3, 2, -1, -1,  //
                                         1, 0, -1, -1, 1, 0, -1, -1, 1, 0, -1, -1, 1, 0, -1, -1);
  return _mm512_castsi512_ps(_mm512_shuffle_epi8(all, spread));
#else
  const std::int32_t both = groups == kQ4DotGroups
                                ? load_unaligned<std::int32_t>(s)
                                : std::int32_t(load_unaligned<std::uint16_t>(s));  // the rest zero
  const __m256i all = _mm256_set1_epi32(both);
  const __m256i spread =
      _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 0, 1, -1, -1, 0, 1, -1, -1, 0, 1,  //
                       -1, -1, 2, 3, -1, -1, 2, 3, -1, -1, 2, 3, -1, -1, 2, 3);
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(all, spread));
#endif
}

/// Per lane: `start` plus the lane's eight products of excess-8 nibbles
/// and int8 x values (`even` / `odd`: the chunk's x values at the low / high
/// nibbles' columns, in the weights' byte order). Exact in int32.
inline IntPacket dot_q4_int8(const Q4Excess8& w, const std::int8_t* even, const std::int8_t* odd,
                             const std::int32_t* start) {
#if defined(XLSTM_SIMD_AVX512)
  const __m512i x_even = _mm512_loadu_si512(even), x_odd = _mm512_loadu_si512(odd);
  const __m512i acc = _mm512_loadu_si512(start);
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, w.low, x_even), w.high, x_odd);
#else
  // Pairs of products as int16 (at most 2 * 15 * 127 each, two pairs added:
  // 7620, no saturation), then pairs of those as int32.
  const __m512i pairs =
      _mm512_add_epi16(_mm512_maddubs_epi16(w.low, x_even), _mm512_maddubs_epi16(w.high, x_odd));
  return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
#endif
#else
  const __m256i x_even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even));
  const __m256i x_odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd));
  const __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start));
  const __m256i pairs =
      _mm256_add_epi16(_mm256_maddubs_epi16(w.low, x_even), _mm256_maddubs_epi16(w.high, x_odd));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

/// acc + float(sums) * scales, lane by lane (the int32 sums convert exactly:
/// at most 32 * 15 * 127 in magnitude).
inline Packet<float> add_scaled_sums(const IntPacket& sums, const Packet<float>& scales,
                                     const Packet<float>& acc) {
#if defined(XLSTM_SIMD_AVX512)
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales, acc);
#else
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc);
#endif
}
#endif  // XLSTM_SIMD_Q4_DOT

}  // namespace simd
}  // namespace xlstm
