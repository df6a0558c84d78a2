// Tests of the safetensors reader/writer and the dtype conversions.
//
// Corrupt files are built byte by byte here rather than with the writer, so
// each test states exactly which defect it presents to the reader.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/safetensors.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_safetensors {

namespace {

using xlstm::io::DType;
using xlstm::io::SafetensorsFile;
using xlstm::io::SafetensorsWriter;
using xlstm::io::TensorInfo;
using Bytes = std::vector<std::uint8_t>;

constexpr const char* kCorrupt = "corrupt.safetensors";

// Expects `statement` to throw xlstm::Error whose message contains every one
// of the given strings.
#define EXPECT_ERROR_CONTAINS(statement, ...)                                             \
  do {                                                                                    \
    try {                                                                                 \
      statement;                                                                          \
      ADD_FAILURE() << "expected xlstm::Error from: " #statement;                         \
    } catch (const xlstm::Error& error) {                                                 \
      const std::string message = error.what();                                           \
      for (const std::string& needle : std::initializer_list<std::string>{__VA_ARGS__}) { \
        EXPECT_NE(message.find(needle), std::string::npos)                                \
            << "message \"" << message << "\" lacks \"" << needle << "\"";                \
      }                                                                                   \
    }                                                                                     \
  } while (0)

// An 8-byte little-endian length followed by `header` and `data`.
Bytes file_with_length(std::uint64_t length, const std::string& header, const Bytes& data = {}) {
  // push_back rather than insert: GCC 12 at -O3 reports a false -Warray-bounds
  // for inserting into a vector that was just sized to 8.
  Bytes bytes;
  bytes.reserve(8 + header.size() + data.size());
  for (std::size_t i = 0; i < 8; ++i) bytes.push_back(static_cast<std::uint8_t>(length >> (8 * i)));
  for (char c : header) bytes.push_back(static_cast<std::uint8_t>(c));
  for (std::uint8_t b : data) bytes.push_back(b);
  return bytes;
}

Bytes make_file(const std::string& header, const Bytes& data = {}) {
  return file_with_length(header.size(), header, data);
}

SafetensorsFile parse(const std::string& header, const Bytes& data = {}) {
  return SafetensorsFile::from_bytes(make_file(header, data), kCorrupt);
}

// Expects the file made of `header` and `data` to be rejected with a message
// naming the file and containing `defect`.
#define EXPECT_CORRUPT(header, data, ...) \
  EXPECT_ERROR_CONTAINS(parse(header, data), kCorrupt, __VA_ARGS__)

float float_from_bits(std::uint32_t bits) {
  float value = 0;
  std::memcpy(&value, &bits, 4);
  return value;
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            (std::string("xlstm_st_") + test->name() + "_" +
             std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// ---------------------------------------------------------------- dtypes

TEST(DType, NamesSizesAndParsing) {
  for (DType dtype : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                      DType::U8, DType::I8}) {
    EXPECT_EQ(xlstm::io::parse_dtype(xlstm::io::dtype_name(dtype), "test"), dtype);
  }
  EXPECT_STREQ(xlstm::io::dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(xlstm::io::dtype_size(DType::F64), 8u);
  EXPECT_EQ(xlstm::io::dtype_size(DType::I32), 4u);
  EXPECT_EQ(xlstm::io::dtype_size(DType::BF16), 2u);
  EXPECT_EQ(xlstm::io::dtype_size(DType::U8), 1u);
  EXPECT_EQ(xlstm::io::dtype_size(DType::I8), 1u);
  EXPECT_ERROR_CONTAINS(xlstm::io::parse_dtype("F8_E4M3", "w.safetensors: tensor 'x'"),
                        "w.safetensors", "tensor 'x'", "F8_E4M3", "unknown dtype");
  static_assert(xlstm::io::dtype_of<float>() == DType::F32);
  static_assert(xlstm::io::dtype_of<double>() == DType::F64);
  static_assert(xlstm::io::dtype_of<std::int64_t>() == DType::I64);
  static_assert(xlstm::io::dtype_of<std::int32_t>() == DType::I32);
  static_assert(xlstm::io::dtype_of<std::uint8_t>() == DType::U8);
  static_assert(xlstm::io::dtype_of<std::int8_t>() == DType::I8);
  static_assert(!xlstm::io::has_dtype_v<bool>);
  static_assert(!xlstm::io::has_dtype_v<std::int16_t>);
}

TEST(DType, Bf16ToFloatKnownValues) {
  using xlstm::io::bf16_to_float;
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_float(0x477f), 65280.0f);
  EXPECT_EQ(bf16_to_float(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(bf16_to_float(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_float(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_float(0x7fc0)));
  EXPECT_TRUE(std::signbit(bf16_to_float(0x8000)));
}

TEST(DType, F16ToFloatKnownValues) {
  using xlstm::io::f16_to_float;
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc100), -2.5f);
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(f16_to_float(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_float(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(f16_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_float(0x7c01)));  // signalling NaN stays NaN
  EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
  EXPECT_EQ(f16_to_float(0x8000), 0.0f);
}

TEST(DType, FloatToBf16RoundsToNearestEven) {
  using xlstm::io::float_to_bf16;
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.5f), 0xc020);
  // bf16 keeps 7 fraction bits: its ulp at 1 is 2^-7.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
            0x3f81);  // above the tie
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)),
            0x3f80);  // below the tie
  EXPECT_EQ(float_to_bf16(-(1.0f + 3 * std::ldexp(1.0f, -8))), 0xbf82);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to infinity
  EXPECT_EQ(float_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(float_to_bf16(std::ldexp(1.0f, -133)), 0x0001);
  // A NaN whose payload sits only in the dropped low bits must stay NaN.
  const std::uint16_t nan = float_to_bf16(float_from_bits(0x7f800001u));
  EXPECT_TRUE(std::isnan(xlstm::io::bf16_to_float(nan)));
  EXPECT_TRUE(std::isnan(xlstm::io::bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST(DType, FloatToF16KnownValues) {
  using xlstm::io::float_to_f16;
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.5f), 0xc100);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);  // below the tie with 2^16
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);  // the tie goes to infinity (even)
  EXPECT_EQ(float_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(float_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);
  EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp tie -> 2
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(float_to_f16(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(float_to_f16(std::ldexp(1023.5f, -24)),
            0x0400);  // largest subnormal rounds up to a normal
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(xlstm::io::f16_to_float(float_to_f16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(xlstm::io::f16_to_float(float_to_f16(float_from_bits(0x7f800001u)))));
}

// Every non-NaN 16-bit pattern survives decode -> encode unchanged, and every
// NaN stays a NaN.
TEST(DType, SixteenBitRoundTripsAreExact) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto code = static_cast<std::uint16_t>(bits);
    const float half = xlstm::io::f16_to_float(code);
    if (std::isnan(half)) {
      EXPECT_TRUE(std::isnan(xlstm::io::f16_to_float(xlstm::io::float_to_f16(half)))) << bits;
    } else {
      EXPECT_EQ(xlstm::io::float_to_f16(half), code) << bits;
    }
    const float brain = xlstm::io::bf16_to_float(code);
    if (std::isnan(brain)) {
      EXPECT_TRUE(std::isnan(xlstm::io::bf16_to_float(xlstm::io::float_to_bf16(brain)))) << bits;
    } else {
      EXPECT_EQ(xlstm::io::float_to_bf16(brain), code) << bits;
    }
  }
}

// Independent reference: the nearest representable value by search over the
// codes, ties to the even code, beyond the largest finite code to infinity.
template <typename Decode>
std::uint16_t reference_round(float value, Decode decode, std::uint16_t largest_finite,
                              double next_power) {
  const double magnitude = std::fabs(static_cast<double>(value));
  const std::uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const std::uint16_t infinity = static_cast<std::uint16_t>(largest_finite + 1);
  std::uint32_t low = 0, high = largest_finite;  // largest code with decode(code) <= magnitude
  if (magnitude >= next_power) return sign | infinity;
  while (low < high) {
    const std::uint32_t mid = (low + high + 1) / 2;
    if (decode(static_cast<std::uint16_t>(mid)) <= magnitude) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  const double below = decode(static_cast<std::uint16_t>(low));
  const double above =
      low == largest_finite ? next_power : decode(static_cast<std::uint16_t>(low + 1));
  const double to_below = magnitude - below, to_above = above - magnitude;
  std::uint32_t code = low;
  if (to_above < to_below || (to_above == to_below && (low & 1u))) code = low + 1;
  return static_cast<std::uint16_t>(sign | code);
}

TEST(DType, FloatToSixteenBitMatchesReferenceRounding) {
  auto f16 = [](std::uint16_t code) { return static_cast<double>(xlstm::io::f16_to_float(code)); };
  auto bf16 = [](std::uint16_t code) {
    return static_cast<double>(xlstm::io::bf16_to_float(code));
  };
  // A stride coprime to 2 visits every exponent with varied low bits.
  for (std::uint64_t bits = 0; bits < 0x100000000ull; bits += 40499) {
    const float value = float_from_bits(static_cast<std::uint32_t>(bits));
    if (std::isnan(value)) continue;
    ASSERT_EQ(xlstm::io::float_to_f16(value), reference_round(value, f16, 0x7bff, 65536.0))
        << value;
    ASSERT_EQ(xlstm::io::float_to_bf16(value),
              reference_round(value, bf16, 0x7f7f, std::ldexp(1.0, 128)))
        << value;
  }
}

TEST(DType, DoubleToSixteenBitRoundsOnce) {
  // Rounding to float first would land exactly on the tie and round to even
  // (down); the true value is above the tie.
  const double above_bf16_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30);
  EXPECT_EQ(xlstm::io::float_to_bf16(static_cast<float>(above_bf16_tie)), 0x3f80);
  EXPECT_EQ(xlstm::io::double_to_bf16(above_bf16_tie), 0x3f81);
  const double above_f16_tie = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_EQ(xlstm::io::double_to_f16(above_f16_tie), 0x3c01);
  EXPECT_EQ(xlstm::io::double_to_f16(1.0 + std::ldexp(1.0, -11)), 0x3c00);
  EXPECT_EQ(xlstm::io::double_to_f16(1e300), 0x7c00);
  EXPECT_EQ(xlstm::io::double_to_bf16(-1e300), 0xff80);
  EXPECT_EQ(xlstm::io::double_to_f16(1e-300), 0x0000);
  EXPECT_EQ(xlstm::io::double_to_f16(-2.5), 0xc100);
  EXPECT_TRUE(std::isnan(xlstm::io::bf16_to_float(xlstm::io::double_to_bf16(std::nan("")))));
}

// ---------------------------------------------------------------- round trips

TEST(Safetensors, EveryDTypeRoundTrips) {
  const std::vector<double> f64 = {1.0, -2.5, 1e300, std::ldexp(1.0, -1074)};
  const std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 1e-40f, 7.0f, -0.0f};
  const std::vector<float> halves = {1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24)};
  const std::vector<std::int64_t> i64 = {0, -1, std::numeric_limits<std::int64_t>::min(),
                                         std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32 = {0, -7, std::numeric_limits<std::int32_t>::min(), 123456};
  const std::vector<std::uint8_t> u8 = {0, 1, 128, 255, 7};

  SafetensorsWriter writer;
  writer.add("f64", {2, 2}, f64.data());
  writer.add("f32", {2, 3}, f32.data());
  writer.add_as("f16", DType::F16, {4}, halves.data());
  writer.add_as("bf16", DType::BF16, {2, 2}, f32.data());
  writer.add("i64", {4}, i64.data());
  writer.add("i32", {1, 4}, i32.data());
  writer.add("u8", {5}, u8.data());
  const SafetensorsFile file =
      SafetensorsFile::from_bytes(writer.to_bytes(), "roundtrip.safetensors");

  EXPECT_EQ(file.names(),
            (std::vector<std::string>{"bf16", "f16", "f32", "f64", "i32", "i64", "u8"}));
  EXPECT_EQ(file.size(), 7u);
  EXPECT_EQ(file.read<double>("f64"), f64);
  EXPECT_EQ(file.read<float>("f32"), f32);
  EXPECT_EQ(file.read<float>("f16"), halves);
  EXPECT_EQ(file.read<float>("bf16"),
            (std::vector<float>{1.0f, -2.5f, 3.25f,
                                std::ldexp(1.0f, -133)}));  // 1e-40 -> nearest bf16 subnormal
  EXPECT_EQ(file.read<std::int64_t>("i64"), i64);
  EXPECT_EQ(file.read<std::int32_t>("i32"), i32);
  EXPECT_EQ(file.read<std::uint8_t>("u8"), u8);

  const TensorInfo& info = file.info("f32");
  EXPECT_EQ(info.name, "f32");
  EXPECT_EQ(info.dtype, DType::F32);
  EXPECT_EQ(info.shape, (xlstm::Shape{2, 3}));
  EXPECT_EQ(info.element_count(), 6u);
  EXPECT_EQ(info.byte_count(), 24u);
  EXPECT_EQ(info.end - info.begin, 24u);
  EXPECT_EQ(file.info("bf16").byte_count(), 8u);
  EXPECT_EQ(file.info("f64").dtype, DType::F64);
  EXPECT_EQ(file.info("i32").dtype, DType::I32);
}

TEST(Safetensors, ConvertingReads) {
  const std::vector<float> values = {
      1.0f,         -2.5f, 65504.0f, std::ldexp(1.0f, -24), std::numeric_limits<float>::infinity(),
      std::nanf("")};
  SafetensorsWriter writer;
  writer.add_as("f16", DType::F16, {6}, values.data());
  writer.add_as("bf16", DType::BF16, {6}, values.data());
  writer.add("f32", {6}, values.data());
  const std::vector<std::int64_t> integers = {-3, 0, 200, 1 << 20};
  writer.add("i64", {4}, integers.data());
  writer.add_as("i32", DType::I32, {4}, integers.data());
  const std::vector<double> huge = {1e300, -1e300, 0.1};
  writer.add("huge", {3}, huge.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_EQ(file.name(), "<memory>");

  const auto f16 = file.read<double>("f16");
  EXPECT_EQ(f16[0], 1.0);
  EXPECT_EQ(f16[1], -2.5);
  EXPECT_EQ(f16[2], 65504.0);
  EXPECT_EQ(f16[3], std::ldexp(1.0, -24));
  EXPECT_EQ(f16[4], std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(f16[5]));
  const auto f16_float = file.read<float>("f16");
  EXPECT_EQ(f16_float[3], std::ldexp(1.0f, -24));

  const auto bf16 = file.read<double>("bf16");
  EXPECT_EQ(bf16[0], 1.0);
  EXPECT_EQ(bf16[1], -2.5);
  EXPECT_EQ(bf16[2], 65536.0);  // 65504 needs more bits than bf16 has; nearest is 2^16
  EXPECT_EQ(bf16[3], std::ldexp(1.0, -24));
  EXPECT_EQ(bf16[4], std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(bf16[5]));
  const std::vector<float> bf16_float = file.read<float>("bf16");
  EXPECT_EQ(bf16_float[2], 65536.0f);

  EXPECT_EQ(file.read<double>("i64"), (std::vector<double>{-3, 0, 200, 1 << 20}));
  EXPECT_EQ(file.read<std::int32_t>("i64"), (std::vector<std::int32_t>{-3, 0, 200, 1 << 20}));
  EXPECT_EQ(file.read<std::int64_t>("i32"), integers);
  EXPECT_EQ(file.read<float>("huge"),
            (std::vector<float>{std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(), 0.1f}));
}

TEST(Safetensors, ConvertingReadsRejectUnrepresentableValues) {
  SafetensorsWriter writer;
  const std::vector<float> fraction = {1.0f, 2.5f};
  const std::vector<float> not_a_number = {std::nanf("")};
  const std::vector<std::int64_t> wide = {300};
  const std::vector<std::int32_t> negative = {-1};
  const std::vector<double> big = {1e19};
  writer.add("fraction", {2}, fraction.data());
  writer.add("nan", {1}, not_a_number.data());
  writer.add("wide", {1}, wide.data());
  writer.add("negative", {1}, negative.data());
  writer.add("big", {1}, big.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes(), "values.safetensors");
  EXPECT_ERROR_CONTAINS(file.read<std::int32_t>("fraction"), "values.safetensors", "'fraction'",
                        "element 1", "cannot be represented");
  EXPECT_ERROR_CONTAINS(file.read<std::int64_t>("nan"), "values.safetensors",
                        "cannot be represented");
  EXPECT_ERROR_CONTAINS(file.read<std::uint8_t>("wide"), "values.safetensors", "300",
                        "cannot be represented");
  EXPECT_ERROR_CONTAINS(file.read<std::uint8_t>("negative"), "cannot be represented");
  EXPECT_ERROR_CONTAINS(file.read<std::int64_t>("big"), "cannot be represented");
  EXPECT_EQ(file.read<double>("wide"), (std::vector<double>{300.0}));
}

TEST(Safetensors, ReadIntoChecksTheCount) {
  SafetensorsWriter writer;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  writer.add("w", {2, 3}, values.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes(), "count.safetensors");
  std::vector<double> dest(6);
  file.read_into("w", dest.data(), dest.size());
  EXPECT_EQ(dest, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  std::vector<double> small(5);
  EXPECT_ERROR_CONTAINS(file.read_into("w", small.data(), small.size()), "count.safetensors", "'w'",
                        "5", "[2, 3]");
  EXPECT_ERROR_CONTAINS(file.read_into("w", static_cast<float*>(nullptr), 6), "null");

  const xlstm::Matrix<double> matrix = file.read_matrix<double>("w");
  ASSERT_EQ(matrix.rows(), 2);
  ASSERT_EQ(matrix.cols(), 3);
  EXPECT_EQ(matrix(1, 0), 4.0);  // row-major, like the file
  writer.add("v", {6}, values.data());
  const SafetensorsFile with_vector =
      SafetensorsFile::from_bytes(writer.to_bytes(), "count.safetensors");
  EXPECT_ERROR_CONTAINS(with_vector.read_matrix<float>("v"), "count.safetensors", "2-D", "[6]");
}

TEST(Safetensors, MetadataRoundTrips) {
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata("kind", "mlstm_cell");
  writer.set_metadata("kind", "slstm_cell");  // a setter: the last value wins
  writer.set_metadata("unicode", "\xc3\xa9t\xc3\xa9");
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_EQ(file.metadata(),
            (std::map<std::string, std::string>{
                {"format", "pt"}, {"kind", "slstm_cell"}, {"unicode", "\xc3\xa9t\xc3\xa9"}}));
  EXPECT_TRUE(file.names().empty());
  EXPECT_FALSE(file.contains("__metadata__"));
  EXPECT_TRUE(SafetensorsFile::from_bytes(SafetensorsWriter().to_bytes()).metadata().empty());
}

TEST(Safetensors, WriterLayout) {
  SafetensorsWriter writer;
  const std::uint8_t one = 1;
  const std::vector<std::uint8_t> two = {2, 3};
  writer.add("z", {1}, &one);
  writer.add("a", {2}, two.data());
  const Bytes bytes = writer.to_bytes();
  std::uint64_t header_length = 0;
  for (std::size_t i = 0; i < 8; ++i)
    header_length |= static_cast<std::uint64_t>(bytes[i]) << (8 * i);
  EXPECT_EQ(header_length % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + header_length + 3);
  const std::string header(bytes.begin() + 8,
                           bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_length));
  EXPECT_EQ(header.find("{\"a\":"), 0u) << header;
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
  // Sorted by name: "a" first, then "z".
  EXPECT_EQ(bytes[8 + header_length], 2);
  EXPECT_EQ(bytes[8 + header_length + 1], 3);
  EXPECT_EQ(bytes[8 + header_length + 2], 1);
}

TEST(Safetensors, WriterKeepsEveryTensorAligned) {
  // By name alone, the 8-byte tensor would follow 3 bytes and 6 bytes.
  SafetensorsWriter writer;
  const std::vector<std::uint8_t> bytes = {1, 2, 3};
  const std::vector<float> halves = {1, 2, 3};
  const std::vector<float> floats = {4};
  const std::vector<double> doubles = {5};
  writer.add("a", {3}, bytes.data());
  writer.add_as("b", DType::F16, {3}, halves.data());
  writer.add("c", {1}, floats.data());
  writer.add("d", {1}, doubles.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_EQ(file.info("d").begin, 0u);
  EXPECT_EQ(file.info("c").begin, 8u);
  EXPECT_EQ(file.info("b").begin, 12u);
  EXPECT_EQ(file.info("a").begin, 18u);
  EXPECT_TRUE(file.can_view<double>("d"));
  EXPECT_TRUE(file.can_view<float>("c"));
  EXPECT_EQ(*file.view<double>("d"), 5.0);
}

TEST(Safetensors, ZeroElementAndScalarTensors) {
  SafetensorsWriter writer;
  const float scalar = 4.5f;
  writer.add("empty", {0, 3}, static_cast<const float*>(nullptr));
  writer.add("scalar", {}, &scalar);
  writer.add_raw("huge_but_empty", DType::F64, {0, std::size_t(1) << 60, 4}, nullptr, 0);
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_EQ(file.info("empty").element_count(), 0u);
  EXPECT_EQ(file.info("empty").begin, file.info("empty").end);
  EXPECT_TRUE(file.read<double>("empty").empty());
  EXPECT_EQ(file.info("scalar").shape, xlstm::Shape{});
  EXPECT_EQ(file.read<double>("scalar"), std::vector<double>{4.5});
  EXPECT_TRUE(file.read<float>("huge_but_empty").empty());
  EXPECT_ERROR_CONTAINS(file.read_matrix<float>("huge_but_empty"), "2-D");

  // Empty tensors may sit at a tensor boundary, including the very end.
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("f":{"dtype":"U8","shape":[0,2],"data_offsets":[0,0]}})";
  const SafetensorsFile by_hand = parse(header, {0, 0, 128, 63});
  EXPECT_EQ(by_hand.read<float>("a"), std::vector<float>{1.0f});
  EXPECT_TRUE(by_hand.read<float>("e").empty());
}

TEST(Safetensors, ZeroCopyViewOfAlignedTensors) {
  SafetensorsWriter writer;
  const std::vector<float> f32 = {1, 2, 3};
  const std::vector<double> f64 = {4, 5};
  writer.add("f32", {3}, f32.data());
  writer.add("f64", {2}, f64.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  ASSERT_TRUE(file.can_view<float>("f32"));
  ASSERT_TRUE(file.can_view<double>("f64"));
  const float* view32 = file.view<float>("f32");
  const double* view64 = file.view<double>("f64");
  EXPECT_EQ(static_cast<const void*>(view32), static_cast<const void*>(file.bytes("f32")));
  EXPECT_EQ(std::vector<float>(view32, view32 + 3), f32);
  EXPECT_EQ(std::vector<double>(view64, view64 + 2), f64);

  const SafetensorsFile copy = file;  // copies share the bytes
  EXPECT_EQ(copy.view<float>("f32"), view32);

  EXPECT_FALSE(file.can_view<double>("f32"));
  EXPECT_ERROR_CONTAINS(file.view<double>("f32"), "<memory>", "'f32'", "F32", "F64", "read()");
  EXPECT_ERROR_CONTAINS(file.view<float>("missing"), "no tensor 'missing'");
}

TEST(Safetensors, MisalignedTensorCannotBeViewedButCanBeRead) {
  // One byte of U8 first puts the F32 tensor at data offset 1.
  const std::string header = R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("w":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const SafetensorsFile file = parse(padded, {9, 0, 0, 128, 63});
  EXPECT_FALSE(file.can_view<float>("w"));
  EXPECT_ERROR_CONTAINS(file.view<float>("w"), kCorrupt, "'w'", "aligned", "read()");
  EXPECT_EQ(file.read<float>("w"), std::vector<float>{1.0f});
  EXPECT_TRUE(file.can_view<std::uint8_t>("b"));
  EXPECT_EQ(*file.view<std::uint8_t>("b"), 9);
}

TEST(Safetensors, SaveAndOpenRoundTripThroughAFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  SafetensorsWriter writer;
  const std::vector<float> weight = {0.5f, -0.25f, 8.0f, 1e-3f};
  const std::vector<std::int64_t> steps = {42};
  writer.set_metadata("kind", "test");
  writer.add("layer.weight", {2, 2}, weight.data());
  writer.add_as("layer.bias", DType::BF16, {4}, weight.data());
  writer.add("steps", {1}, steps.data());
  writer.save(path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.name(), path);
  EXPECT_EQ(file.metadata().at("kind"), "test");
  EXPECT_EQ(file.read<float>("layer.weight"), weight);
  EXPECT_EQ(
      std::vector<float>(file.view<float>("layer.weight"), file.view<float>("layer.weight") + 4),
      weight);
  EXPECT_EQ(file.read<std::int64_t>("steps"), steps);
  EXPECT_EQ(file.read<float>("layer.bias")[2], 8.0f);

  // Saving again replaces the file. Not on Windows while `file` still maps it:
  // Windows refuses to replace a mapped file (the writer's error says so), and
  // test_platform_io covers replacing a file that is not open.
#ifndef _WIN32
  SafetensorsWriter other;
  other.add("only", {1}, steps.data());
  other.save(path);
  EXPECT_EQ(SafetensorsFile::open(path).names(), std::vector<std::string>{"only"});
  EXPECT_EQ(file.read<float>("layer.weight"), weight);  // the old mapping stays readable
#endif
}

TEST(Safetensors, OpenAndSaveReportThePath) {
  TempDir dir;
  const std::string missing = dir.file("does_not_exist.safetensors");
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(missing), missing, "cannot open");
  const std::string in_missing_dir = dir.file("no_dir/out.safetensors");
  EXPECT_ERROR_CONTAINS(SafetensorsWriter().save(in_missing_dir), in_missing_dir);
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(dir.file("")), "directory");

  const std::string empty = dir.file("empty.safetensors");
  std::ofstream(empty, std::ios::binary).close();
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(empty), empty, "too short");

  const std::string truncated = dir.file("truncated.safetensors");
  SafetensorsWriter writer;
  const std::vector<double> values = {1, 2, 3};
  writer.add("x", {3}, values.data());
  Bytes bytes = writer.to_bytes();
  bytes.pop_back();
  std::ofstream(truncated, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(truncated), truncated, "beyond the data area");
}

TEST(Safetensors, ReadsTheGoldenFile) {
  const SafetensorsFile file = SafetensorsFile::open(
      std::string(XLSTM_TEST_DATA_DIR) + "/golden/mlstm_cell_b2_nh2_t32_dh8.f32.safetensors");
  EXPECT_EQ(file.metadata().at("kind"), "mlstm_cell");
  const TensorInfo& q = file.info("input.q");
  EXPECT_EQ(q.dtype, DType::F32);
  EXPECT_EQ(q.shape, (xlstm::Shape{2, 2, 32, 8}));
  const std::vector<float> values = file.read<float>("input.q");
  ASSERT_EQ(values.size(), 2u * 2 * 32 * 8);
  for (float value : values) EXPECT_TRUE(std::isfinite(value));
  EXPECT_TRUE(file.can_view<float>("input.q"));
}

// ---------------------------------------------------------------- corrupt files

TEST(SafetensorsCorrupt, FileShorterThanTheLengthField) {
  EXPECT_ERROR_CONTAINS(SafetensorsFile::from_bytes({1, 2, 3, 4, 5}, kCorrupt), kCorrupt,
                        "too short");
  EXPECT_ERROR_CONTAINS(SafetensorsFile::from_bytes({}, kCorrupt), kCorrupt, "too short");
}

TEST(SafetensorsCorrupt, HeaderLengthBeyondTheFile) {
  EXPECT_ERROR_CONTAINS(SafetensorsFile::from_bytes(file_with_length(1000, "{}"), kCorrupt),
                        kCorrupt, "header length 1000");
  EXPECT_ERROR_CONTAINS(
      SafetensorsFile::from_bytes(file_with_length(~std::uint64_t{0}, "{}"), kCorrupt), kCorrupt,
      "header length");
  EXPECT_ERROR_CONTAINS(SafetensorsFile::from_bytes(file_with_length(3, "{}"), kCorrupt), kCorrupt,
                        "header length");
}

TEST(SafetensorsCorrupt, HeaderIsNotJson) {
  EXPECT_CORRUPT(R"({"a": )", {}, "not valid JSON", "parse error");
  EXPECT_CORRUPT("", {}, "not valid JSON");
  EXPECT_CORRUPT(std::string("{\"a\x00\": 1}", 9), {}, "not valid JSON");
  EXPECT_CORRUPT("{\"\xff\": {}}", {}, "not valid JSON");  // not UTF-8
  EXPECT_CORRUPT("{} x", {}, "not valid JSON");            // trailing garbage
}

TEST(SafetensorsCorrupt, HeaderIsNotAnObject) {
  EXPECT_CORRUPT("[1, 2]", {}, "not an object");
  EXPECT_CORRUPT("\"text\"", {}, "not an object");
  EXPECT_CORRUPT("null", {}, "not an object");
}

TEST(SafetensorsCorrupt, MetadataIsNotAnObjectOfStrings) {
  EXPECT_CORRUPT(R"({"__metadata__": [1]})", {}, "__metadata__", "not an object");
  EXPECT_CORRUPT(R"({"__metadata__": {"k": 1}})", {}, "__metadata__", "'k'", "not a string");
  EXPECT_CORRUPT(R"({"__metadata__": {"k": {"x": "y"}}})", {}, "__metadata__", "not a string");
}

TEST(SafetensorsCorrupt, TensorEntryIsNotAnObject) {
  EXPECT_CORRUPT(R"({"a": 5})", {}, "tensor 'a'", "not an object");
  EXPECT_CORRUPT(R"({"a": [0, 4]})", {}, "tensor 'a'", "not an object");
}

TEST(SafetensorsCorrupt, TensorEntryMissesAField) {
  EXPECT_CORRUPT(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", Bytes(4), "tensor 'a'",
                 "missing", "dtype");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", Bytes(4), "tensor 'a'",
                 "missing", "shape");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1]}})", Bytes(4), "tensor 'a'", "missing",
                 "data_offsets");
}

TEST(SafetensorsCorrupt, TensorFieldsOfTheWrongJsonType) {
  const Bytes four = {0, 0, 0, 0};
  EXPECT_CORRUPT(R"({"a": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}})", four, "'dtype'",
                 "not a string");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})", four, "'shape'",
                 "not an array");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", four,
                 "'shape'", "non-negative integer");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", four,
                 "'shape'", "non-negative integer");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", four,
                 "'shape'", "non-negative integer");
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [100000000000000000000000], "data_offsets": [0, 4]}})",
      four, "'shape'", "non-negative integer");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", four,
                 "'data_offsets'", "2 unsigned integers");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", four,
                 "'data_offsets'", "2 unsigned integers");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": {"begin": 0}}})", four,
                 "'data_offsets'");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}})", four,
                 "'data_offsets'", "non-negative integer");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}})", four,
                 "'data_offsets'", "non-negative integer");
}

TEST(SafetensorsCorrupt, UnknownDType) {
  EXPECT_CORRUPT(R"({"a": {"dtype": "F8_E5M2", "shape": [4], "data_offsets": [0, 4]}})", Bytes(4),
                 "tensor 'a'", "unknown dtype", "F8_E5M2");
  EXPECT_CORRUPT(R"({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", Bytes(4),
                 "unknown dtype");
}

TEST(SafetensorsCorrupt, BeginAfterEnd) {
  EXPECT_CORRUPT(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [8, 4]}})", Bytes(8),
                 "tensor 'a'", "[8, 4]", "begin > end");
}

TEST(SafetensorsCorrupt, EndBeyondTheDataArea) {
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", Bytes(8),
                 "tensor 'a'", "beyond the data area");
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [18446744073709551615, 18446744073709551615]}})",
      Bytes(), "beyond the data area");
}

TEST(SafetensorsCorrupt, ByteCountDisagreesWithTheShape) {
  const std::string header =
      R"({"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}})";
  try {
    parse(header, Bytes(12));
    ADD_FAILURE() << "expected an error";
  } catch (const xlstm::Error& error) {
    EXPECT_STREQ(error.what(),
                 "corrupt.safetensors: tensor 'a.weight': data_offsets [0, 12] hold 12 bytes but "
                 "shape [2, 3] "
                 "of F32 needs 24");
  }
  EXPECT_CORRUPT(R"({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})", Bytes(8),
                 "needs 6");
}

TEST(SafetensorsCorrupt, ShapeProductOverflows) {
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}})",
      Bytes(), "tensor 'a'", "overflows");
  // The element count fits, the byte count does not.
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", Bytes(),
      "tensor 'a'", "overflows");
}

TEST(SafetensorsCorrupt, OverlappingTensors) {
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      Bytes(12), "'b'", "overlap", "'a'");
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      Bytes(8), "overlap");
  // An empty tensor inside another one is rejected too: tensors must tile.
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
      Bytes(8), "overlap");
}

TEST(SafetensorsCorrupt, GapBetweenTensors) {
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
      Bytes(12), "gap", "[4, 8)");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", Bytes(8),
                 "gap");
}

TEST(SafetensorsCorrupt, UnusedBytesAtTheEnd) {
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", Bytes(8),
                 "unused", "[4, 8)");
  EXPECT_CORRUPT("{}", Bytes(1), "unused");
}

TEST(SafetensorsCorrupt, DuplicateTensorNames) {
  EXPECT_CORRUPT(
      R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
      Bytes(8), "duplicate tensor name 'a'");
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "dtype": "F64", "shape": [1], "data_offsets": [0, 4]}})",
                 Bytes(4), "duplicate key 'dtype'");
  EXPECT_CORRUPT(R"({"__metadata__": {"k": "1", "k": "2"}})", Bytes(), "duplicate key 'k'");
  EXPECT_CORRUPT(R"({"__metadata__": {}, "__metadata__": {}})", Bytes(), "duplicate");
}

TEST(SafetensorsCorrupt, MetadataKeyIsNeverATensor) {
  // Shaped like a tensor entry, "__metadata__" is still read as metadata.
  EXPECT_CORRUPT(R"({"__metadata__": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                 Bytes(4), "__metadata__", "not a string");
  const SafetensorsFile file = parse(R"({"__metadata__": {"dtype": "F32"}})");
  EXPECT_FALSE(file.contains("__metadata__"));
  EXPECT_TRUE(file.names().empty());
  EXPECT_EQ(file.metadata().at("dtype"), "F32");
  EXPECT_ERROR_CONTAINS(file.info("__metadata__"), kCorrupt, "no tensor '__metadata__'");
  EXPECT_ERROR_CONTAINS(SafetensorsWriter().add_raw("__metadata__", DType::U8, {0}, nullptr, 0),
                        "reserved");
}

TEST(SafetensorsCorrupt, DeeplyNestedHeaderIsRejectedWithoutCrashing) {
  EXPECT_CORRUPT(R"({"a": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}})", Bytes(4),
                 "too deep");
  const std::string deep = "{\"a\": " + std::string(200000, '[') + std::string(200000, ']') + "}";
  EXPECT_CORRUPT(deep, Bytes(), "too deep");
  const std::string unbalanced = "{\"a\": " + std::string(200000, '[');
  EXPECT_CORRUPT(unbalanced, Bytes(), "not valid JSON");
}

TEST(SafetensorsCorrupt, HeaderPaddingAndWhitespaceAreAccepted) {
  const SafetensorsFile file = parse(
      "  {\"a\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [0, 2]}}     ", {7, 8});
  EXPECT_EQ(file.read<int>("a"), (std::vector<int>{7, 8}));
}

TEST(SafetensorsCorrupt, MissingTensorNamesTheFile) {
  const SafetensorsFile file = parse("{}");
  try {
    file.info("x");
    ADD_FAILURE() << "expected an error";
  } catch (const xlstm::Error& error) {
    EXPECT_STREQ(error.what(), "corrupt.safetensors: no tensor 'x'");
  }
  EXPECT_ERROR_CONTAINS(file.bytes("x"), "no tensor 'x'");
  EXPECT_ERROR_CONTAINS(file.read<float>("x"), "no tensor 'x'");
}

// Every single-bit flip and every truncation of a valid file either parses
// or throws xlstm::Error; whatever parses reads back without trouble.
TEST(SafetensorsCorrupt, BitFlipsAndTruncationsNeverCrash) {
  SafetensorsWriter writer;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  writer.set_metadata("k", "v");
  writer.add("a", {2, 3}, values.data());
  writer.add_as("b", DType::F16, {2}, values.data());
  writer.add("c", {0}, values.data());
  const Bytes valid = writer.to_bytes();
  auto try_parse = [](const Bytes& bytes) {
    try {
      const SafetensorsFile file = SafetensorsFile::from_bytes(bytes, kCorrupt);
      for (const std::string& name : file.names()) {
        try {
          (void)file.read<double>(name);
        } catch (const xlstm::Error&) {
          // A flipped dtype may make values unrepresentable; that is an Error too.
        }
      }
    } catch (const xlstm::Error& error) {
      EXPECT_NE(std::string(error.what()).find(kCorrupt), std::string::npos) << error.what();
    }
  };
  for (std::size_t byte = 0; byte < valid.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes flipped = valid;
      flipped[byte] = static_cast<std::uint8_t>(flipped[byte] ^ (1u << bit));
      try_parse(flipped);
    }
  }
  for (std::size_t length = 0; length < valid.size(); ++length) {
    try_parse(Bytes(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(length)));
  }
}

// ---------------------------------------------------------------- writer errors

TEST(SafetensorsWriter, RejectsBadTensors) {
  SafetensorsWriter writer;
  const std::vector<float> values = {1, 2, 3, 4};
  writer.add("w", {4}, values.data());
  EXPECT_ERROR_CONTAINS(writer.add("w", {4}, values.data()), "'w'", "duplicate");
  EXPECT_ERROR_CONTAINS(writer.add_raw("raw", DType::F32, {2, 3}, values.data(), 16), "'raw'", "16",
                        "needs 24");
  EXPECT_ERROR_CONTAINS(
      writer.add_raw("big", DType::U8, {std::size_t(1) << 40, std::size_t(1) << 40}, nullptr, 0),
      "'big'", "overflows");
  EXPECT_ERROR_CONTAINS(writer.add_as("big", DType::F64, {std::size_t(1) << 62}, values.data()),
                        "overflows");
  EXPECT_ERROR_CONTAINS(writer.add_raw("null", DType::F32, {1}, nullptr, 4), "null");
  EXPECT_ERROR_CONTAINS(writer.add("bad\xff", {1}, values.data()), "UTF-8");
  EXPECT_ERROR_CONTAINS(writer.set_metadata("k", "\xc3"), "UTF-8");
  const std::vector<float> fraction = {0.5f};
  EXPECT_ERROR_CONTAINS(writer.add_as("int", DType::I32, {1}, fraction.data()), "'int'",
                        "cannot be represented", "I32");
  const std::vector<std::int32_t> wide = {256};
  EXPECT_ERROR_CONTAINS(writer.add_as("byte", DType::U8, {1}, wide.data()), "cannot be represented",
                        "U8");
  // Failed additions leave no trace.
  EXPECT_EQ(SafetensorsFile::from_bytes(writer.to_bytes()).names(), std::vector<std::string>{"w"});
}

// add_streamed: the bytes come from the producer when the file is written
// (not when the tensor is added), in pieces, and give the same file as a
// copy; a producer that gives too few or too many bytes is an Error then,
// and save() leaves no file behind.
TEST(SafetensorsWriter, StreamedTensorsAreProducedWhenWritten) {
  std::vector<float> values = {1, 2, 3, 4, 5, 6};
  int calls = 0;
  auto produce = [&](const SafetensorsWriter::ByteSink& sink) {
    ++calls;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(values.data());
    sink(bytes, 8);  // two pieces
    sink(bytes + 8, values.size() * sizeof(float) - 8);
  };
  SafetensorsWriter streamed, copied;
  streamed.add_streamed("w", DType::F32, {2, 3}, produce);
  streamed.add("b", {2}, values.data());
  EXPECT_EQ(calls, 0);
  values[5] = 60;  // read when written
  copied.add("w", {2, 3}, values.data());
  copied.add("b", {2}, values.data());
  EXPECT_EQ(streamed.to_bytes(), copied.to_bytes());
  EXPECT_EQ(calls, 1);

  TempDir dir;
  for (const std::size_t give : {std::size_t(20), std::size_t(28)}) {
    SafetensorsWriter bad;
    bad.add_streamed("w", DType::F32, {2, 3}, [&](const SafetensorsWriter::ByteSink& sink) {
      std::vector<std::uint8_t> zeros(give);
      sink(zeros.data(), zeros.size());
    });
    EXPECT_ERROR_CONTAINS(bad.to_bytes(), "'w'", "producer", "24");
    const std::string path = dir.file("bad.safetensors");
    EXPECT_ERROR_CONTAINS(bad.save(path), "'w'", "producer");
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  }
  SafetensorsWriter empty;
  EXPECT_ERROR_CONTAINS(empty.add_streamed("w", DType::F32, {1}, nullptr), "'w'", "empty");
}

TEST(SafetensorsWriter, AddAsConvertsIntegersAndDoubles) {
  SafetensorsWriter writer;
  const std::vector<std::int32_t> small = {0, 255, 7};
  const std::vector<double> doubles = {0.1, -1e300,
                                       1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30)};
  writer.add_as("u8", DType::U8, {3}, small.data());
  writer.add_as("f32", DType::F32, {3}, doubles.data());
  writer.add_as("bf16", DType::BF16, {3}, doubles.data());
  writer.add_as("f64", DType::F64, {3}, small.data());
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_EQ(file.read<int>("u8"), (std::vector<int>{0, 255, 7}));
  EXPECT_EQ(file.read<float>("f32"),
            (std::vector<float>{0.1f, -std::numeric_limits<float>::infinity(),
                                static_cast<float>(doubles[2])}));
  const std::uint8_t* bf16 = file.bytes("bf16");
  EXPECT_EQ(bf16[4] | (bf16[5] << 8), 0x3f81);  // rounded once, correctly
  EXPECT_EQ(file.read<double>("f64"), (std::vector<double>{0, 255, 7}));
}

}  // namespace

}  // namespace xlstm_test_safetensors

#undef EXPECT_ERROR_CONTAINS
#undef EXPECT_CORRUPT
