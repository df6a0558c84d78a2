// The product kernels of core/matmul.hpp and WeightMatrix: every workload,
// batch size and weight storage gives x W^T (and accumulates when asked),
// against a plain double-precision reference.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/blocked_product.hpp"
#include "xlstm/core/kernels/column_panels.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/matmul.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/weight_matrix.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_matmul {

namespace {

using xlstm::Index;
using xlstm::Matrix;
using xlstm::WeightMatrix;
using xlstm::WeightStorage;
using xlstm::Workload;

Matrix<double> reference(const Matrix<float>& x, const Matrix<float>& w) {
  return x.cast<double>() * w.cast<double>().transpose();
}

// Largest |a - ref| relative to the size of the dot products' terms. Each
// output sums `in` products in 16 SIMD lanes, so the float rounding bound is
// about (in / 16 + 16) * 6e-8 times sum |x||w|: 1e-5 for the widest shape
// here (in = 2500). A wrong or missing term is of order 1 on this scale.
double worst_error(const Matrix<float>& y, const Matrix<double>& ref, const Matrix<float>& x,
                   const Matrix<float>& w) {
  const Matrix<double> scale =
      x.cast<double>().cwiseAbs() * w.cast<double>().cwiseAbs().transpose();
  double worst = 0;
  for (Index i = 0; i < y.size(); ++i) {
    worst = std::max(
        worst, std::abs(double(y.data()[i]) - ref.data()[i]) / std::max(scale.data()[i], 1e-30));
  }
  return worst;
}

constexpr double kTol = 1e-5;

Matrix<float> random(Index rows, Index cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Matrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
  return m;
}

struct ThreadCountGuard {
  int saved = xlstm::num_threads();
  ~ThreadCountGuard() { xlstm::set_num_threads(saved); }
};

// Shapes: odd widths (SIMD tails), one wider than the 2048-entry decode
// piece, and one above the size at which the rows of W are split over threads.
struct Shape {
  Index out, in;
};
const std::vector<Shape> kShapes = {{5, 3}, {37, 61}, {16, 2500}, {600, 512}};

// simd::store_bf16 (the bf16 mLSTM state's rounding, math §4.8) gives the
// bits of float_to_bf16 lane by lane: ties both ways, carries into the
// exponent and to infinity, subnormals, signed zeros, NaNs whose payload would
// round to infinity or wrap, random values. test_core runs it without SIMD,
// test_matmul_native and the avx2-check preset with AVX-512 and AVX2.
TEST(MatmulTest, StoreBf16RoundsAsFloatToBf16) {
  std::vector<std::uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,
      0x3fffffffu, 0x7f7fffffu, 0xff7fffffu, 0x7f800000u, 0xff800000u, 0x00000001u,
      0x00008000u, 0x00018000u, 0x807fffffu, 0x7f800001u, 0x7fffffffu, 0xffffffffu,
      0x7fc00000u, 0xffc00000u, 0x7fbfffffu, 0x00ffffffu};
  std::mt19937 rng(9);
  while (bits.size() % std::size_t(xlstm::simd::kLanes<float>) != 0 || bits.size() < 4096) {
    bits.push_back(std::uint32_t(rng()));
  }
  std::vector<float> values(bits.size());
  std::memcpy(values.data(), bits.data(), bits.size() * sizeof(float));
  std::vector<std::uint16_t> stored(bits.size());
  const Index lanes = xlstm::simd::kLanes<float>;
  for (std::size_t i = 0; i < values.size(); i += std::size_t(lanes)) {
    xlstm::simd::store_bf16(stored.data() + i, xlstm::simd::load(values.data() + i));
  }
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(stored[i], xlstm::float_to_bf16(values[i])) << std::hex << "float bits 0x" << bits[i];
  }
}

TEST(MatmulTest, EveryWorkloadAndBatchGivesTheProduct) {
  const ThreadCountGuard guard;
  std::mt19937 rng(5);
  for (const int threads : {1, 2}) {
    xlstm::set_num_threads(threads);
    for (const auto& shape : kShapes) {
      const Matrix<float> w = random(shape.out, shape.in, rng);
      for (const Index batch : {0, 1, 2, 3, 4, 5, 8, 9, 17}) {
        const Matrix<float> x = random(batch, shape.in, rng);
        const Matrix<double> ref = reference(x, w);
        for (const auto workload : {Workload::sequence, Workload::step}) {
          SCOPED_TRACE(::testing::Message()
                       << "threads " << threads << " W " << shape.out << "x" << shape.in << " B "
                       << batch << " workload " << int(workload));
          Matrix<float> y(batch, shape.out);
          xlstm::matmul_transposed<float>(x, w, y, false, workload);
          EXPECT_LE(worst_error(y, ref, x, w), kTol);
          // Accumulate: y = x W^T + x W^T.
          xlstm::matmul_transposed<float>(x, w, y, true, workload);
          EXPECT_LE(worst_error(y, 2.0 * ref, x, w), 2 * kTol);
        }
      }
    }
  }
}

// simd::reduce_each sums kLanes packets at once (a tree of shuffles in the
// AVX2 and AVX-512 builds: test_matmul_native, the avx2-check preset); it
// must give the bits of reduce, packet by packet, for whole groups, partial
// last groups and counts below one group. Lanes of mixed signs and
// magnitudes 1e-8..1e8, so any other pairing of the lanes rounds differently.
template <int N>
void expect_reduce_each_matches_reduce(std::mt19937& rng) {
  using Packet = xlstm::simd::Packet<float>;
  constexpr Index kLanes = xlstm::simd::kLanes<float>;
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-8, 8);
  for (int trial = 0; trial < 50; ++trial) {
    Packet packets[N];
    float want[N], got[N];
    for (int e = 0; e < N; ++e) {
      float lanes[kLanes];
      for (Index i = 0; i < kLanes; ++i) lanes[i] = mantissa(rng) * std::pow(10.0f, exponent(rng));
      packets[e] = xlstm::simd::load<float>(lanes);
      want[e] = xlstm::simd::reduce(packets[e]);
    }
    xlstm::simd::reduce_each<float>(packets, got);
    for (int e = 0; e < N; ++e) {
      ASSERT_EQ(std::memcmp(&got[e], &want[e], sizeof(float)), 0)
          << N << " packets, packet " << e << ": " << got[e] << " vs " << want[e];
    }
  }
}

TEST(MatmulTest, ReduceEachGivesTheBitsOfReduce) {
  std::mt19937 rng(13);
  expect_reduce_each_matches_reduce<1>(rng);
  expect_reduce_each_matches_reduce<4>(rng);
  expect_reduce_each_matches_reduce<8>(rng);
  expect_reduce_each_matches_reduce<12>(rng);
  expect_reduce_each_matches_reduce<16>(rng);
  expect_reduce_each_matches_reduce<19>(rng);
  expect_reduce_each_matches_reduce<24>(rng);
  expect_reduce_each_matches_reduce<32>(rng);
}

// simd::transpose_rows (the GEMM's packing of an operand stored by rows):
// every value lands at its transposed place, for every count of rows and
// columns around the 8 x 8 and 4 x 4 blocks, and nothing outside the written
// rows of each column changes.
TEST(MatmulTest, TransposeRowsMovesEveryValueAndNothingElse) {
  std::mt19937 rng(19);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  constexpr float kUntouched = -7.0f;
  for (Index rows = 0; rows <= 19; ++rows) {
    for (Index cols = 0; cols <= 21; ++cols) {
      SCOPED_TRACE(::testing::Message() << rows << " rows x " << cols << " columns");
      const Index src_stride = cols + 3, dst_step = rows + 5;
      std::vector<float> src(std::size_t(rows * src_stride));
      for (float& v : src) v = value(rng);
      std::vector<float> dst(std::size_t(cols * dst_step), kUntouched);
      xlstm::simd::transpose_rows(src.data(), src_stride, rows, cols, dst.data(), dst_step);
      int misplaced = 0, touched = 0;
      for (Index k = 0; k < cols; ++k) {
        for (Index r = 0; r < rows; ++r) {
          misplaced += dst[std::size_t(k * dst_step + r)] != src[std::size_t(r * src_stride + k)];
        }
        for (Index r = rows; r < dst_step; ++r)
          touched += dst[std::size_t(k * dst_step + r)] != kUntouched;
      }
      EXPECT_EQ(misplaced, 0);
      EXPECT_EQ(touched, 0);
    }
  }
}

// kernels::panel_product (the sLSTM recurrent product, design §7.9): W packed
// as column panels ahead (ColumnPanels) or panel by panel on the stack
// (panel_product_packing, depths over its 128-deep pieces included) gives x
// W^T within the rounding bound of one chain of `in` sums (in * 2^-24 of
// sum |x||w|, a wrong or missing term is of order 1), and the same bits
// both ways, for a row alone as in any batch (every register block: 8, 4,
// 2, 1 rows), with W rounded to bf16 or not. Widths that are no multiple of a
// panel (the last panel's columns through a buffer) and a depth of zero.
TEST(MatmulTest, PanelProductIsTheProductWithEachRowsOwnBitsPackedAheadOrNot) {
  std::mt19937 rng(19);
  const std::vector<Shape> shapes = {{5, 3},     {37, 61},  {1, 1},   {33, 128},
                                     {512, 128}, {70, 300}, {200, 17}};
  for (const Shape shape : shapes) {
    for (const bool to_bf16 : {false, true}) {
      const Matrix<float> w = random(shape.out, shape.in, rng);
      Matrix<float> w_used = w;
      if (to_bf16) w_used = w.unaryExpr([](float v) { return xlstm::round_to_bf16(v); });
      xlstm::kernels::ColumnPanels<float> panels;
      panels.pack(w, to_bf16);
      ASSERT_EQ(panels.out(), shape.out);
      ASSERT_EQ(panels.depth(), shape.in);
      const Matrix<float> x_all = random(19, shape.in, rng);
      // Row b alone, the reference for its bits in every batch below.
      Matrix<float> alone(x_all.rows(), shape.out);
      for (Index b = 0; b < x_all.rows(); ++b) {
        Eigen::Ref<const Matrix<float>> x_row = x_all.middleRows(b, 1);
        Eigen::Ref<Matrix<float>> y_row = alone.middleRows(b, 1);
        xlstm::kernels::panel_product(panels, x_row, y_row);
      }
      const double bound = double(shape.in) * 0x1p-24;
      EXPECT_LE(worst_error(alone, reference(x_all, w_used), x_all, w_used), bound);
      for (const Index batch :
           {Index(2), Index(3), Index(4), Index(7), Index(8), Index(15), Index(19)}) {
        SCOPED_TRACE(::testing::Message() << "W " << shape.out << "x" << shape.in << " B " << batch
                                          << (to_bf16 ? " bf16" : ""));
        const Matrix<float> x = x_all.topRows(batch);
        Matrix<float> ahead(batch, shape.out), packing(batch, shape.out);
        xlstm::kernels::panel_product(panels, x, ahead);
        xlstm::kernels::panel_product_packing<float>(x, w, to_bf16, packing);
        ASSERT_TRUE(ahead == alone.topRows(batch));
        ASSERT_TRUE(packing == alone.topRows(batch));
      }
    }
  }
  // No depth: x W^T is zero.
  xlstm::kernels::ColumnPanels<float> empty;
  empty.pack(Matrix<float>(6, 0), false);
  const Matrix<float> x(3, 0);
  Matrix<float> y = Matrix<float>::Constant(3, 6, 1.0f);
  xlstm::kernels::panel_product(empty, x, y);
  EXPECT_TRUE(y.isZero(0));
}

// kernels::parallel_product, which every sequence product and the layers'
// backward products use: out (+)= a b^T with either operand stored either
// way (the backward passes a transposed gradient), edge tiles of every kind,
// depths over one packed block, narrow outputs of every width up to 8 (dot
// products in register blocks of rows when both are stored by rows), tasks
// split into row bands (few column blocks) or not, column blocks whose count
// follows the thread count, against the double reference, and the same bits
// with 1, 2 and 3 threads.
TEST(MatmulTest, ParallelProductIsTheProductWithTheSameBitsOnAnyThreadCount) {
  const ThreadCountGuard guard;
  std::mt19937 rng(7);
  struct Case {
    Index rows, cols, depth;
  };
  for (const Case c : {Case{1, 1, 1}, Case{7, 5, 3}, Case{33, 97, 129}, Case{100, 1000, 64},
                       Case{130, 70, 300}, Case{517, 301, 257}, Case{300, 40, 1000}, Case{12, 9, 0},
                       Case{1000, 4, 3000}, Case{40, 300, 800}, Case{2000, 200, 500},
                       // 11 column blocks on one thread, 12 of near-equal width on two
                       // and three (with AVX-512 63 panels, the last of one packet)
                       Case{50, 2000, 40},
                       // every narrow width, rows past the register blocks
                       Case{131, 1, 40}, Case{67, 2, 33}, Case{66, 3, 50}, Case{5, 5, 200},
                       Case{70, 6, 17}, Case{129, 7, 100}, Case{130, 8, 65}}) {
    const Matrix<float> x = random(c.rows, c.depth, rng), w = random(c.cols, c.depth, rng);
    const Matrix<float> x_t = x.transpose(), w_t = w.transpose();  // stored the other way
    const Matrix<double> ref = reference(x, w);
    const Matrix<float> start = random(c.rows, c.cols, rng);
    const Matrix<double> scale =
        x.cast<double>().cwiseAbs() * w.cast<double>().cwiseAbs().transpose();
    for (const bool accumulate : {false, true}) {
      const Matrix<double> expected =
          accumulate ? Matrix<double>(ref + start.cast<double>()) : Matrix<double>(ref);
      std::vector<Matrix<float>> by_threads;
      for (const int threads : {1, 2, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << c.rows << " x " << c.cols << " x " << c.depth << " accumulate "
                     << accumulate << " threads " << threads);
        xlstm::set_num_threads(threads);
        Matrix<float> plain = start, transposed = start;
        xlstm::kernels::parallel_product(x, w, plain, accumulate);
        xlstm::kernels::parallel_product(x_t.transpose(), w_t.transpose(), transposed, accumulate);
        // Error on the scale of the terms (worst_error), plus |start| <= 1 when accumulating.
        for (const Matrix<float>* y : {&plain, &transposed}) {
          const Matrix<double> error = (y->cast<double>() - expected).cwiseAbs();
          EXPECT_TRUE((error.array() <= kTol * (scale.array() + (accumulate ? 1.0 : 0.0))).all());
        }
        by_threads.push_back(plain);
      }
      for (std::size_t i = 1; i < by_threads.size(); ++i) {
        EXPECT_TRUE((by_threads[i].array() == by_threads[0].array()).all())
            << "bits differ between 1 and " << i + 1 << " threads";
      }
    }
  }
}

// 16-bit weights: the fused step kernel and the tiled sequence path compute
// with exactly the decoded values, so they match a float product of the
// decoded matrix to float rounding.
TEST(MatmulTest, SixteenBitWeightsMatchTheDecodedProduct) {
  const ThreadCountGuard guard;
  std::mt19937 rng(6);
  for (const int threads : {1, 2}) {
    xlstm::set_num_threads(threads);
    for (const auto storage : {WeightStorage::bf16, WeightStorage::f16}) {
      for (const auto& shape : kShapes) {
        const Matrix<float> original = random(shape.out, shape.in, rng);
        std::vector<std::uint16_t> bits(std::size_t(original.size()));
        Matrix<float> decoded(shape.out, shape.in);
        for (Index i = 0; i < original.size(); ++i) {
          const float v = original.data()[i];
          bits[std::size_t(i)] =
              storage == WeightStorage::bf16 ? xlstm::float_to_bf16(v) : xlstm::float_to_f16(v);
          decoded.data()[i] = storage == WeightStorage::bf16
                                  ? xlstm::bf16_to_float(bits[std::size_t(i)])
                                  : xlstm::f16_to_float(bits[std::size_t(i)]);
        }
        const auto w =
            WeightMatrix<float>::half_owned(storage, std::move(bits), shape.out, shape.in);
        for (const Index batch : {Index(0), Index(1), Index(3), Index(8), Index(9), Index(20)}) {
          const Matrix<float> x = random(batch, shape.in, rng);
          const Matrix<double> ref = reference(x, decoded);
          for (const auto workload : {Workload::sequence, Workload::step}) {
            SCOPED_TRACE(::testing::Message()
                         << "threads " << threads << " storage " << int(storage) << " W "
                         << shape.out << "x" << shape.in << " B " << batch << " workload "
                         << int(workload));
            Matrix<float> y(batch, shape.out);
            w.multiply_transposed(x, y, false, workload);
            EXPECT_LE(worst_error(y, ref, x, decoded), kTol);
            w.multiply_transposed(x, y, true, workload);
            EXPECT_LE(worst_error(y, 2.0 * ref, x, decoded), 2 * kTol);
          }
        }
      }
    }
  }
}

// Largest |a - ref| relative to the largest |ref|.
double worst_relative(const Matrix<float>& a, const Matrix<double>& ref) {
  const double scale = std::max(ref.cwiseAbs().maxCoeff(), 1e-30);
  return (a.cast<double>() - ref).cwiseAbs().maxCoeff() / scale;
}

// Small heads (HeadwiseLinear, kernels/headwise.hpp): in float, square heads
// of 4, 8 and 16 run side by side in the SIMD registers (AVX2 and AVX-512
// builds: test_matmul_native, the avx2-check preset) and the heads past the
// last full packet in the scalar kernel. Forward, input gradient (replace,
// add, in place) and weight gradient (new and accumulated) against the
// loops in double, on head counts that leave such a remainder, and the same
// bits at one and two threads. kTol of the largest value: float rounding of
// sums of at most 16 terms of size one, and of the weight gradient's 700
// rows; a wrong or missing term is of order one.
TEST(MatmulTest, SmallHeadsMatchTheLoopsWithTheSameBitsOnAnyThreadCount) {
  ThreadCountGuard guard;
  for (const auto& [in, heads, out] : {std::tuple<Index, Index, Index>{52, 13, 52},
                                       {128, 32, 128},
                                       {40, 5, 40},
                                       {48, 3, 48},
                                       {8, 2, 8},
                                       {24, 6, 12}}) {
    SCOPED_TRACE(std::to_string(heads) + " heads, " + std::to_string(in) + " -> " +
                 std::to_string(out));
    const Index head_in = in / heads, head_out = out / heads, rows = 700;
    std::mt19937 rng(41);
    xlstm::HeadwiseLinear<float> layer(in, heads, false, out);
    layer.weight() = random(out, head_in, rng);
    const Matrix<float> x = random(rows, in, rng);
    const Matrix<float> grad_y = random(rows, out, rng);
    const Matrix<float> before = random(rows, in, rng);
    Matrix<double> want_y = Matrix<double>::Zero(rows, out);
    Matrix<double> want_x = before.cast<double>();
    Matrix<double> want_w = Matrix<double>::Zero(out, head_in);
    for (Index h = 0; h < heads; ++h) {
      for (Index n = 0; n < rows; ++n) {
        for (Index o = 0; o < head_out; ++o) {
          for (Index i = 0; i < head_in; ++i) {
            const double w = layer.weight()(h * head_out + o, i);
            const double g = grad_y(n, h * head_out + o);
            want_y(n, h * head_out + o) += w * x(n, h * head_in + i);
            want_x(n, h * head_in + i) += w * g;
            want_w(h * head_out + o, i) += g * x(n, h * head_in + i);
          }
        }
      }
    }
    const Matrix<double> replaced = want_x - before.cast<double>();
    std::vector<Matrix<float>> ys, grad_xs, grad_ws;
    for (const int threads : {1, 2}) {
      xlstm::set_num_threads(threads);
      Matrix<float> y(rows, out);
      layer.forward(x, y);
      EXPECT_LE(worst_relative(y, want_y), kTol);
      xlstm::HeadwiseLinearGradients<float> grads(layer);
      Matrix<float> grad_x = before;
      xlstm::backward(layer, x, grad_y, grads, grad_x, xlstm::InputGradient::add);
      EXPECT_LE(worst_relative(grad_x, want_x), kTol);
      EXPECT_LE(worst_relative(grads.weight(), want_w), kTol);
      ys.push_back(y);
      grad_xs.push_back(grad_x);
      grad_ws.push_back(grads.weight());
      xlstm::backward(layer, x, grad_y, grads, grad_x);
      EXPECT_LE(worst_relative(grad_x, replaced), kTol);
      EXPECT_LE(worst_relative(grads.weight(), 2 * want_w), kTol);
      if (head_in == head_out) {
        // grad_x may be x itself: the weight gradient still sees the input.
        xlstm::HeadwiseLinearGradients<float> in_place(layer);
        Matrix<float> x_then_grad = x;
        xlstm::backward(layer, x_then_grad, grad_y, in_place, x_then_grad);
        EXPECT_LE(worst_relative(x_then_grad, replaced), kTol);
        EXPECT_LE(worst_relative(in_place.weight(), want_w), kTol);
      }
    }
    EXPECT_TRUE(ys[0] == ys[1]);
    EXPECT_TRUE(grad_xs[0] == grad_xs[1]);
    EXPECT_TRUE(grad_ws[0] == grad_ws[1]);
  }
}

}  // namespace

}  // namespace xlstm_test_matmul
