// Numerical robustness of the blocks (issue "Reliability"):
//  - one million recurrent steps of an sLSTM block and an mLSTM block in
//    float with random inputs (including bursts 30x larger): every output
//    and state stays finite, and the stabiliser keeps the states inside the
//    bounds math §2.4 and §4.3 imply, checked at every step;
//  - extreme gate pre-activations (±1e30, ±inf through the gate biases) give
//    finite outputs, and forward and step still agree;
//  - a NaN in one batch row stays in that row, and leaves the shared model
//    and every other row exactly as they would have been.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/model/block_stack.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_robustness {

namespace {

using test_util::BitIdentical;
using test_util::mlstm_block_config;
using test_util::randomize;
using test_util::slstm_block_config;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::MLstmBlock;
using xlstm::Sequence;
using xlstm::SLstmBlock;

// One million steps; a tenth of that under AddressSanitizer, whose checks
// make every step about ten times slower (the release run does the million).
#ifdef XLSTM_TEST_UNDER_ASAN
constexpr long kSteps = 100000;
#else
constexpr long kSteps = 1000000;
#endif
constexpr Index kBatch = 2;
constexpr Index kEmbedding = 16;

// A pool of random input rows, drawn from by a cheap generator so that a
// million steps do not spend their time in the normal distribution. One row
// in 64 is scaled by 30 (bursts far outside what the layer norms see in
// training).
class InputPool {
 public:
  explicit InputPool(std::uint64_t seed) : rows_(kPoolRows, kEmbedding) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (Index r = 0; r < kPoolRows; ++r) {
      const float scale = r % 64 == 0 ? 30.0f : 1.0f;
      for (Index c = 0; c < kEmbedding; ++c) rows_(r, c) = scale * dist(rng);
    }
  }
  void fill(Matrix<float>& x) {
    for (Index b = 0; b < x.rows(); ++b) {
      state_ ^= state_ << 13;
      state_ ^= state_ >> 7;
      state_ ^= state_ << 17;
      x.row(b) = rows_.row(Index(state_ % std::uint64_t(kPoolRows)));
    }
  }

 private:
  static constexpr Index kPoolRows = 1 << 14;
  Matrix<float> rows_;
  std::uint64_t state_ = 0x9E3779B97F4A7C15ull;
};

double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::abs(x))); }

// ---------------------------------------------------------------------------
// sLSTM block, 1M steps. math §2.4 after the first step: one of i', f' is 1,
// so n >= 1; |c| <= n since |tanh z| <= 1 and c, n share the weights; hence
// |y| = |o c / n| <= 1. And m_t = max(raw_i, log f + m_{t-1}) lies in
// [raw_i_t, max_s raw_i_s]; with |y| <= 1, |raw_i| <= |x_i| + ||R_i row||_1
// + |b_i|, observed through the block's gate pre-activation workspace.
// ---------------------------------------------------------------------------

TEST(Robustness, SLstmBlockMillionStepsStayFiniteAndBounded) {
  SLstmBlock<float> block(slstm_block_config(kEmbedding, 4));
  randomize(block, 21);
  const Index e = kEmbedding, dh = e / 4;
  const auto& cell = block.cell();
  // Per unit u = head * dh + j: the input gate's recurrent row and bias
  // (math §2.2: kernel rows head * 4 dh + gate * dh + j, bias gate-major).
  std::vector<double> recurrent_l1(std::size_t(e), 0.0), bias_i(std::size_t(e), 0.0);
  for (Index u = 0; u < e; ++u) {
    const Index head = u / dh, j = u % dh;
    recurrent_l1[std::size_t(u)] =
        double(cell.recurrent_kernel().row(head * 4 * dh + j).cwiseAbs().sum());
    bias_i[std::size_t(u)] = double(cell.bias()(u));
  }

  auto state = block.initial_state(kBatch);
  InputPool pool(22);
  Matrix<float> x(kBatch, e), y(kBatch, e);
  std::vector<double> raw_i_bound(std::size_t(kBatch * e), 0.0);
  long failures = 0;
  double max_n = 0, max_abs_m = 0;
  for (long t = 0; t < kSteps && failures < 10; ++t) {
    pool.fill(x);
    block.step(x, state, y);
    const auto& s = state.cell;
    if (!y.allFinite() || !s.c.allFinite() || !s.n.allFinite() || !s.m.allFinite()) {
      ADD_FAILURE() << "non-finite output or state at step " << t;
      ++failures;
      continue;
    }
    for (Index b = 0; b < kBatch; ++b) {
      for (Index u = 0; u < e; ++u) {
        // The input gate's pre-activation before the recurrent part.
        const double x_i = double(state.scratch.get().preact(b, u));
        double& bound = raw_i_bound[std::size_t(b * e + u)];
        bound = std::max(
            bound, std::abs(x_i) + recurrent_l1[std::size_t(u)] + std::abs(bias_i[std::size_t(u)]));
        const double n = s.n(b, u), c = s.c(b, u), m = s.m(b, u), h = s.y(b, u);
        const bool ok = n >= 1.0 && std::abs(c) <= n * (1 + 1e-5) && std::abs(h) <= 1.0 + 1e-5 &&
                        std::abs(m) <= bound * (1 + 1e-5) + 1e-5;
        if (!ok) {
          ADD_FAILURE() << "step " << t << " row " << b << " unit " << u << ": n " << n << " c "
                        << c << " y " << h << " m " << m << " (|m| bound " << bound << ")";
          ++failures;
        }
        max_n = std::max(max_n, n);
        max_abs_m = std::max(max_abs_m, std::abs(m));
      }
    }
  }
  EXPECT_EQ(failures, 0);
  RecordProperty("max_n", std::to_string(max_n));
  RecordProperty("max_abs_m", std::to_string(max_abs_m));
}

// ---------------------------------------------------------------------------
// mLSTM block, 1M steps. math §4.3 (NeurIPS convention: keys scaled by
// 1/sqrt(DH) inside C and n): m_t = max(log f_t + m_{t-1}, i_t), so
// i_t <= m_t <= max(m_{t-1}, i_t) exactly (log f <= 0). The stabilised
// weights f' = exp(log f + m_{t-1} - m_t) and i' = exp(i - m_t) are <= 1, and
// C, n are sums of k v^T / sqrt(DH) and k / sqrt(DH) with the weights whose
// running total S_t = f' S_{t-1} + i' the test tracks itself:
//   |n_j| <= S max|k_j| / sqrt(DH),  |C_ab| <= S max|k_a| max|v_b| / sqrt(DH).
// S stays finite: each weight is <= exp(2 max|i|) f_max^(t-s), so
// S <= exp(2 max|i|) / (1 - f_max), f_max = sigmoid(max f).
// ---------------------------------------------------------------------------

TEST(Robustness, MLstmBlockMillionStepsStayFiniteAndBounded) {
  MLstmBlock<float> block(mlstm_block_config(kEmbedding, 2, 16));
  randomize(block, 23);
  const Index inner = block.inner_dim(), nh = 2, dh = inner / nh;
  const double inv_sqrt_dh = 1.0 / std::sqrt(double(dh));

  auto state = block.initial_state(kBatch);
  InputPool pool(24);
  Matrix<float> x(kBatch, kEmbedding), y(kBatch, kEmbedding);
  // Per (row, head): S, previous m, running maxima of |i|, f, |k_j|, |v_b|.
  const Index rh = kBatch * nh;
  std::vector<double> total(std::size_t(rh), 0.0), m_prev(std::size_t(rh), 0.0),
      max_abs_i(std::size_t(rh), 0.0),
      max_f(std::size_t(rh), -std::numeric_limits<double>::infinity());
  Matrix<double> max_k = Matrix<double>::Zero(rh, dh), max_v = Matrix<double>::Zero(rh, dh);
  long failures = 0;
  double max_total = 0;
  for (long t = 0; t < kSteps && failures < 10; ++t) {
    pool.fill(x);
    block.step(x, state, y);
    const auto& s = state.cell;
    if (!y.allFinite() || !s.C.allFinite() || !s.n.allFinite() || !s.m.allFinite()) {
      ADD_FAILURE() << "non-finite output or state at step " << t;
      ++failures;
      continue;
    }
    for (Index b = 0; b < kBatch; ++b) {
      for (Index h = 0; h < nh; ++h) {
        const std::size_t i_rh = std::size_t(b * nh + h);
        const double ig = state.scratch.get().gates_i(b, h), fg = state.scratch.get().gates_f(b, h);
        const double m = s.m(b * nh + h);
        const double lf = log_sigmoid(fg);
        max_abs_i[i_rh] = std::max(max_abs_i[i_rh], std::abs(ig));
        max_f[i_rh] = std::max(max_f[i_rh], fg);
        for (Index j = 0; j < dh; ++j) {
          max_k(b * nh + h, j) =
              std::max(max_k(b * nh + h, j),
                       std::abs(double(state.scratch.get().qkv(b, inner + h * dh + j))));
          max_v(b * nh + h, j) =
              std::max(max_v(b * nh + h, j),
                       std::abs(double(state.scratch.get().qkv(b, 2 * inner + h * dh + j))));
        }
        total[i_rh] = std::exp(lf + m_prev[i_rh] - m) * total[i_rh] + std::exp(ig - m);
        const double f_max = 1.0 / (1.0 + std::exp(-max_f[i_rh]));
        const double total_bound = std::exp(2 * max_abs_i[i_rh]) / (1.0 - f_max);
        bool ok = m >= ig && m <= std::max(m_prev[i_rh], ig) && total[i_rh] <= total_bound;
        const double slack = 1 + 1e-3;
        for (Index a = 0; a < dh && ok; ++a) {
          const double k_bound = total[i_rh] * max_k(b * nh + h, a) * inv_sqrt_dh;
          ok = std::abs(double(s.n(b * nh + h, a))) <= k_bound * slack + 1e-30;
          for (Index c = 0; c < dh && ok; ++c) {
            ok = std::abs(double(s.C_of(b, h)(a, c))) <=
                 k_bound * max_v(b * nh + h, c) * slack + 1e-30;
          }
        }
        if (!ok) {
          ADD_FAILURE() << "step " << t << " row " << b << " head " << h << ": m " << m
                        << " (previous " << m_prev[i_rh] << ", i " << ig << "), S " << total[i_rh]
                        << " (bound " << total_bound << ")";
          ++failures;
        }
        max_total = std::max(max_total, total[i_rh]);
        m_prev[i_rh] = m;
      }
    }
  }
  EXPECT_EQ(failures, 0);
  RecordProperty("max_S", std::to_string(max_total));
}

// ---------------------------------------------------------------------------
// Extreme gate pre-activations through the gate biases: every output finite,
// forward and step agree (the clamp to ±1e30 in cells/gates.hpp gives ±inf
// the limits of very large values: see the cell tests for their meaning).
// ---------------------------------------------------------------------------

template <typename Block>
void expect_finite_and_consistent(const Block& block, Index time) {
  std::mt19937_64 rng(31);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Sequence<float> x(kBatch, time, kEmbedding), y;
  for (Index i = 0; i < x.matrix().size(); ++i) x.matrix().data()[i] = dist(rng);
  auto state = block.initial_state(kBatch);
  block.forward(x, state, y);
  ASSERT_TRUE(y.matrix().allFinite());
  auto stepped = block.initial_state(kBatch);
  Matrix<float> y_t(kBatch, kEmbedding);
  for (Index t = 0; t < time; ++t) {
    Matrix<float> x_t(kBatch, kEmbedding);
    for (Index b = 0; b < kBatch; ++b) x_t.row(b) = x.at(b, t);
    block.step(x_t, stepped, y_t);
    ASSERT_TRUE(y_t.allFinite()) << "step " << t;
    for (Index b = 0; b < kBatch; ++b) {
      const double scale = std::max(1.0, double(y_t.row(b).cwiseAbs().maxCoeff()));
      EXPECT_LE(double((y_t.row(b) - y.at(b, t)).cwiseAbs().maxCoeff()), 1e-3 * scale)
          << "row " << b << " step " << t;
    }
  }
}

const float kExtremes[] = {1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity()};

TEST(Robustness, MLstmBlockExtremeGatesGiveFiniteOutputs) {
  for (const bool input_gate : {true, false}) {
    for (const float value : kExtremes) {
      SCOPED_TRACE(::testing::Message() << (input_gate ? "igate" : "fgate") << " bias " << value);
      MLstmBlock<float> block(mlstm_block_config(kEmbedding, 2, 32));
      randomize(block, 25);
      xlstm::ParameterList<float> params;
      params = xlstm::parameter_list(block, "");
      const std::string name =
          input_gate ? "xlstm.mlstm_cell.igate.bias" : "xlstm.mlstm_cell.fgate.bias";
      bool found = false;
      for (const auto& p : params) {
        if (p.name != name) continue;
        found = true;
        // Head 0 extreme, head 1 ordinary: both must stay finite.
        p.data[0] = value;
      }
      ASSERT_TRUE(found) << name;
      expect_finite_and_consistent(block, 40);  // > context: chunkwise forward
    }
  }
}

TEST(Robustness, SLstmBlockExtremeGatesGiveFiniteOutputs) {
  for (const bool input_gate : {true, false}) {
    for (const float value : kExtremes) {
      SCOPED_TRACE(::testing::Message()
                   << (input_gate ? "input" : "forget") << " gate bias " << value);
      SLstmBlock<float> block(slstm_block_config(kEmbedding, 4));
      randomize(block, 26);
      // Bias layout gate-major (math §2.2): i, f, z, o; units 0..3 of head 0.
      auto& bias = block.cell().bias();
      const Index gate = input_gate ? 0 : 1;
      for (Index u = 0; u < 4; ++u) bias(gate * kEmbedding + u) = value;
      expect_finite_and_consistent(block, 40);
    }
  }
}

// ---------------------------------------------------------------------------
// NaN in one batch row: the other rows are bit-identical to a run without
// the NaN, the model's parameters are untouched, and the same model then
// gives bit-identical results again. Within the row: step() is causal (the
// outputs before the NaN are exactly the clean ones, the NaN shows from its
// step on); a forward call may also turn that row's earlier outputs in the
// same chunk into NaN, because the parallel and chunkwise mLSTM forms
// multiply masked future entries by zero and 0 x NaN = NaN (README,
// "Numerical robustness"). reset_row() brings the row back.
// ---------------------------------------------------------------------------

template <typename Module>
std::vector<float> parameter_snapshot(Module& module) {
  xlstm::ParameterList<float> params;
  params = xlstm::parameter_list(module, "");
  std::vector<float> all;
  for (const auto& p : params) {
    all.insert(all.end(), p.data, p.data + xlstm::shape_product(p.shape));
  }
  return all;
}

TEST(Robustness, NaNInOneRowStaysInThatRowAndDoesNotPoisonTheModel) {
  // mLSTM (2 heads), sLSTM (4 heads), mLSTM.
  auto cfg = test_util::mixed_stack_config<xlstm::BlockStackConfig>(kEmbedding, 3, {1}, 4);
  cfg.mlstm_block->mlstm.num_heads = 2;
  cfg.context_length = 32;
  xlstm::BlockStack<float> stack(cfg);
  randomize(stack, 27);
  const std::vector<float> params_before = parameter_snapshot(stack);

  constexpr Index kRows = 3, kTime = 40, kPoisoned = 1, kNaNAt = 5;
  std::mt19937_64 rng(28);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Sequence<float> clean(kRows, kTime, kEmbedding);
  for (Index i = 0; i < clean.matrix().size(); ++i) clean.matrix().data()[i] = dist(rng);
  Sequence<float> dirty = clean;
  dirty.at(kPoisoned, kNaNAt)(3) = std::numeric_limits<float>::quiet_NaN();

  auto forward = [&](const Sequence<float>& x, Sequence<float>& y) {
    auto state = stack.initial_state(kRows);
    stack.forward(x, state, y);
  };
  // Steps only; after the last step, row kPoisoned is reset and the clean
  // inputs are stepped again for that row (the others continue).
  auto steps = [&](const Sequence<float>& x, Matrix<float>& out, Matrix<float>& after_reset) {
    auto state = stack.initial_state(kRows);
    Matrix<float> x_t(kRows, kEmbedding), y_t(kRows, kEmbedding);
    out.resize(kRows * kTime, kEmbedding);
    for (Index t = 0; t < kTime; ++t) {
      for (Index b = 0; b < kRows; ++b) x_t.row(b) = x.at(b, t);
      stack.step(x_t, state, y_t);
      for (Index b = 0; b < kRows; ++b) out.row(b * kTime + t) = y_t.row(b);
    }
    state.reset_row(kPoisoned);
    after_reset.resize(kTime, kEmbedding);
    for (Index t = 0; t < kTime; ++t) {
      for (Index b = 0; b < kRows; ++b) x_t.row(b) = clean.at(b, t);
      stack.step(x_t, state, y_t);
      after_reset.row(t) = y_t.row(kPoisoned);
    }
  };
  Sequence<float> y_clean, y_dirty, y_again;
  Matrix<float> s_clean, s_dirty, s_again, r_clean, r_dirty, r_again;
  forward(clean, y_clean);
  steps(clean, s_clean, r_clean);
  forward(dirty, y_dirty);
  steps(dirty, s_dirty, r_dirty);
  for (Index b = 0; b < kRows; ++b) {
    SCOPED_TRACE(::testing::Message() << "row " << b);
    const auto stepped_dirty = s_dirty.middleRows(b * kTime, kTime);
    const auto stepped_clean = s_clean.middleRows(b * kTime, kTime);
    if (b == kPoisoned) {
      EXPECT_TRUE(y_dirty.at(b, kNaNAt).hasNaN());
      EXPECT_TRUE(BitIdentical(stepped_dirty.topRows(kNaNAt), stepped_clean.topRows(kNaNAt)));
      EXPECT_TRUE(stepped_dirty.row(kNaNAt).hasNaN());
      EXPECT_TRUE(stepped_dirty.bottomRows(1).hasNaN());  // the state carried it on
    } else {
      EXPECT_TRUE(BitIdentical(y_dirty.rows_of(b), y_clean.rows_of(b)));
      EXPECT_TRUE(BitIdentical(stepped_dirty, stepped_clean));
    }
  }
  // After reset_row the poisoned row runs exactly as the clean run's row
  // after the same reset.
  EXPECT_TRUE(r_dirty.allFinite());
  EXPECT_TRUE(BitIdentical(r_dirty, r_clean));
  // The model is untouched and gives the same results again.
  EXPECT_TRUE(parameter_snapshot(stack) == params_before);
  forward(clean, y_again);
  steps(clean, s_again, r_again);
  EXPECT_TRUE(BitIdentical(y_again.matrix(), y_clean.matrix()));
  EXPECT_TRUE(BitIdentical(s_again, s_clean));
}

}  // namespace

}  // namespace xlstm_test_robustness
