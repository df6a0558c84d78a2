// Property tests of the sLSTM cell (math §2); the mLSTM cell's are in
// test_mlstm_cell.cpp.
//
// The golden tests pin the cell to the reference on a few fixed cases; these
// tests check the relations that must hold on any input: the cell computes
// the spec written out elementwise, a sequence can be split anywhere, the two
// weight layouts agree, copies are independent, rows can be reset
// independently, extreme and NaN inputs behave as documented, and bad
// arguments throw.
//
// Tolerances. A comparison "close(a, ref, tol)" means
//     max_i |a_i - ref_i| <= tol * max(1, max_i |ref_i|).
// The value of `tol`, Tol<S>::rounding, is test_util::CellTol in
// test_util.hpp, with its derivation.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "xlstm/cells/slstm.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_slstm_cell {

namespace {

using test_util::AllFinite;
using test_util::any_nan;
using test_util::at_time;
using test_util::batch_row;
using test_util::BitIdentical;
using test_util::Close;
using test_util::random_sequence;
using test_util::Scalars;
using test_util::slstm_cell_config;
using test_util::ThrowsMentioning;
using test_util::time_slice;
using xlstm::FirstStepRule;
using xlstm::Index;
using xlstm::Matrix;
using xlstm::Sequence;
using xlstm::SLstmCell;
using xlstm::SLstmCellConfig;
using xlstm::SLstmFunction;
using xlstm::SLstmState;
using xlstm::SLstmTrace;
using xlstm::Vector;

template <typename S>
using Tol = test_util::CellTol<S>;

// ---------------------------------------------------------------------------
// sLSTM helpers
// ---------------------------------------------------------------------------

// Backend-independent parameters of math §2.2: R_ext (NH, DH, 4, DH) and
// b_ext (NH, 4, DH), held in double but rounded to S.
struct SLstmExternal {
  Index nh = 0, dh = 0;
  std::vector<double> R, b;

  double& r(Index h, Index i, Index g, Index j) {
    return R[std::size_t(((h * dh + i) * 4 + g) * dh + j)];
  }
  double r(Index h, Index i, Index g, Index j) const {
    return R[std::size_t(((h * dh + i) * 4 + g) * dh + j)];
  }
  double& bias(Index h, Index g, Index j) { return b[std::size_t((h * 4 + g) * dh + j)]; }
  double bias(Index h, Index g, Index j) const { return b[std::size_t((h * 4 + g) * dh + j)]; }
};

// Recurrent weights ~ N(0, 1/DH) (so R y is O(1)), biases ~ N(0, 0.5) with the
// forget gate biased to +2 (remember by default).
template <typename S>
SLstmExternal random_external(Index nh, Index dh, std::mt19937& rng) {
  SLstmExternal e;
  e.nh = nh;
  e.dh = dh;
  e.R.resize(std::size_t(nh * dh * 4 * dh));
  e.b.resize(std::size_t(nh * 4 * dh));
  std::normal_distribution<double> n01(0.0, 1.0);
  const double r_scale = 1.0 / std::sqrt(double(dh));
  for (double& x : e.R) x = double(S(r_scale * n01(rng)));
  for (Index h = 0; h < nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j)
        e.bias(h, g, j) = double(S((g == 1 ? 2.0 : 0.0) + 0.5 * n01(rng)));
    }
  }
  return e;
}

// math §2.2 vanilla layout: Rv[h, g*DH + j, i] = R_ext[h, i, g, j],
// bv[g*H + h*DH + j] = b_ext[h, g, j].
template <typename S>
void set_vanilla(const SLstmExternal& e, SLstmCell<S>& cell) {
  const Index dh = e.dh, H = e.nh * e.dh;
  for (Index h = 0; h < e.nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j) {
        for (Index i = 0; i < dh; ++i) {
          cell.recurrent_kernel()(h * 4 * dh + g * dh + j, i) = S(e.r(h, i, g, j));
        }
        cell.bias()(g * H + h * dh + j) = S(e.bias(h, g, j));
      }
    }
  }
}

// math §2.2 CUDA layout: Rc[h, i, g*DH + j] = R_ext[h, i, g, j] flattened to
// (NH*DH) x 4DH, bc[h*4*DH + g*DH + j] = b_ext[h, g, j].
template <typename S>
void cuda_layout(const SLstmExternal& e, Matrix<S>& kernel, Vector<S>& bias) {
  const Index dh = e.dh;
  kernel.resize(e.nh * dh, 4 * dh);
  bias.resize(4 * e.nh * dh);
  for (Index h = 0; h < e.nh; ++h) {
    for (Index g = 0; g < 4; ++g) {
      for (Index j = 0; j < dh; ++j) {
        for (Index i = 0; i < dh; ++i) kernel(h * dh + i, g * dh + j) = S(e.r(h, i, g, j));
        bias(h * 4 * dh + g * dh + j) = S(e.bias(h, g, j));
      }
    }
  }
}

template <typename S>
SLstmCell<S> random_slstm(const SLstmCellConfig& cfg, std::mt19937& rng,
                          SLstmExternal* external = nullptr) {
  SLstmCell<S> cell(cfg);
  const auto e = random_external<S>(cfg.num_heads, cfg.head_dim(), rng);
  set_vanilla(e, cell);
  if (external) *external = e;
  return cell;
}

struct SLstmReference {
  Sequence<double> y, c, n, m;
};

// math §2.3 and §2.4 written out elementwise in double, from the zero state,
// straight from R_ext / b_ext (no layout involved). From the zero state the
// whole-batch and per-element first-step rules coincide.
template <typename S>
SLstmReference naive_slstm(const SLstmExternal& e, const Sequence<S>& x, SLstmFunction function) {
  const Index B = x.batch(), T = x.time(), dh = e.dh, H = e.nh * e.dh;
  SLstmReference out;
  for (Sequence<double>* s : {&out.y, &out.c, &out.n, &out.m}) s->resize(B, T, H);
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  auto logsig = [](double v) { return std::min(v, 0.0) - std::log1p(std::exp(-std::abs(v))); };
  for (Index b = 0; b < B; ++b) {
    std::vector<double> y(std::size_t(H), 0.0), c = y, n = y, m = y;
    for (Index t = 0; t < T; ++t) {
      std::vector<double> raw(std::size_t(4 * H));
      for (Index h = 0; h < e.nh; ++h) {
        for (Index g = 0; g < 4; ++g) {
          for (Index j = 0; j < dh; ++j) {
            double sum = double(x(b, t, g * H + h * dh + j)) + e.bias(h, g, j);
            for (Index i = 0; i < dh; ++i) sum += e.r(h, i, g, j) * y[std::size_t(h * dh + i)];
            raw[std::size_t(g * H + h * dh + j)] = sum;
          }
        }
      }
      for (Index u = 0; u < H; ++u) {
        const auto U = std::size_t(u);
        const double ri = raw[U], rf = raw[std::size_t(H) + U], rz = raw[std::size_t(2 * H) + U],
                     ro = raw[std::size_t(3 * H) + U];
        if (function == SLstmFunction::lstm) {
          c[U] = sig(rf) * c[U] + sig(ri) * std::tanh(rz);
          y[U] = sig(ro) * std::tanh(c[U]);
        } else {
          const double lfm = m[U] + logsig(rf);
          const double m_new = t == 0 ? ri : std::max(ri, lfm);
          const double ig = std::min(std::exp(ri - m_new), 1.0);
          const double fg = std::min(std::exp(lfm - m_new), 1.0);
          c[U] = fg * c[U] + ig * std::tanh(rz);
          n[U] = fg * n[U] + ig;
          m[U] = m_new;
          y[U] = sig(ro) * c[U] / n[U];
        }
        out.y(b, t, u) = y[U];
        out.c(b, t, u) = c[U];
        out.n(b, t, u) = n[U];
        out.m(b, t, u) = m[U];
      }
    }
  }
  return out;
}

template <typename S>
Sequence<S> run_slstm_steps(const SLstmCell<S>& cell, const Sequence<S>& x, SLstmState<S>& state) {
  Sequence<S> y(x.batch(), x.time(), cell.hidden_size());
  for (Index t = 0; t < x.time(); ++t) {
    cell.step(at_time(x, t), state);
    at_time(y, t) = state.y;
  }
  return y;
}

template <typename S>
Sequence<S> run_slstm(const SLstmCell<S>& cell, const Sequence<S>& x, SLstmState<S>& state,
                      SLstmTrace<S>* trace = nullptr) {
  Sequence<S> y;
  cell.forward(x, state, y, trace);
  return y;
}

template <typename S>
::testing::AssertionResult SStatesIdentical(const SLstmState<S>& a, const SLstmState<S>& b) {
  for (const auto& [name, pa, pb] : {std::tuple{"y", &a.y, &b.y}, std::tuple{"c", &a.c, &b.c},
                                     std::tuple{"n", &a.n, &b.n}, std::tuple{"m", &a.m, &b.m}}) {
    auto r = BitIdentical(*pa, *pb);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult SStatesClose(const SLstmState<S>& a, const SLstmState<S>& b,
                                        double tol) {
  for (const auto& [name, pa, pb] : {std::tuple{"y", &a.y, &b.y}, std::tuple{"c", &a.c, &b.c},
                                     std::tuple{"n", &a.n, &b.n}, std::tuple{"m", &a.m, &b.m}}) {
    auto r = Close(*pa, *pb, tol);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult SStateFinite(const SLstmState<S>& s) {
  for (const auto& [name, p] :
       {std::pair{"y", &s.y}, std::pair{"c", &s.c}, std::pair{"n", &s.n}, std::pair{"m", &s.m}}) {
    auto r = AllFinite(*p);
    if (!r) return r << " [" << name << "]";
  }
  return ::testing::AssertionSuccess();
}

const char* name_of(FirstStepRule r) {
  return r == FirstStepRule::whole_batch ? "whole_batch" : "per_element";
}
const char* name_of(SLstmFunction f) { return f == SLstmFunction::slstm ? "slstm" : "lstm"; }

// (hidden size, heads) for the tests of the pointwise update: units of a
// few lanes (the array expressions of slstm_pointwise.hpp), and heads of 56
// units, which the float update takes with AVX-512 in packets, two side by
// side and one alone, and a rest of 8 units by expressions (other builds:
// all by expressions).
const std::pair<Index, Index> kUnitSizes[] = {{12, 3}, {112, 2}};

template <typename S>
class SLstmCellTest : public ::testing::Test {};
TYPED_TEST_SUITE(SLstmCellTest, Scalars, ::testing::internal::DefaultNameGenerator);

// ---------------------------------------------------------------------------
// sLSTM
// ---------------------------------------------------------------------------

// The cell computes math §2.3-§2.4 (and §2.7 for function = lstm): compared
// with a direct elementwise transcription in double, outputs and the c, n, m
// traces agree to rounding. The recurrent map is a contraction here
// (sigmoids, tanh, |R y| = O(1)), so errors stay at the level of one step.
TYPED_TEST(SLstmCellTest, MatchesAnElementwiseTranscriptionOfTheSpec) {
  using S = TypeParam;
  const Index B = 2, T = 20;
  for (const auto& [H, NH] : kUnitSizes) {
    for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
      for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
        SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule) +
                     ", H = " + std::to_string(H));
        std::mt19937 rng(201);
        SLstmExternal e;
        const auto cell = random_slstm<S>(slstm_cell_config(H, NH, rule, function), rng, &e);
        const auto x = random_sequence<S>(B, T, 4 * H, rng);
        const auto ref = naive_slstm(e, x, function);
        auto state = cell.initial_state(B);
        SLstmTrace<S> trace;
        const auto y = run_slstm(cell, x, state, &trace);
        EXPECT_TRUE(Close(y.matrix(), ref.y.matrix(), Tol<S>::rounding));
        EXPECT_TRUE(Close(trace.c.matrix(), ref.c.matrix(), Tol<S>::rounding));
        if (function == SLstmFunction::slstm) {
          EXPECT_TRUE(Close(trace.n.matrix(), ref.n.matrix(), Tol<S>::rounding));
          EXPECT_TRUE(Close(trace.m.matrix(), ref.m.matrix(), Tol<S>::rounding));
        }
      }
    }
  }
}

// Batches above 32 rows and heads with 4*DH*DH*sizeof(Scalar) > 128 KiB: the
// recurrent product R y is then computed in panels (SLstmCell keeps Eigen's
// packing buffers on the stack that way). Same check as above, on sizes that
// cut it into 2 row panels and 2 (float) or 4 (double) column panels.
TYPED_TEST(SLstmCellTest, LargeBatchAndLargeHeadsMatchTheTranscription) {
  using S = TypeParam;
  const Index B = 40, T = 3, H = 256, NH = 2;  // DH = 128
  std::mt19937 rng(212);
  SLstmExternal e;
  const auto cell = random_slstm<S>(slstm_cell_config(H, NH), rng, &e);
  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  auto state = cell.initial_state(B);
  const auto y = run_slstm(cell, x, state);
  EXPECT_TRUE(
      Close(y.matrix(), naive_slstm(e, x, SLstmFunction::slstm).y.matrix(), Tol<S>::rounding));
}

// forward(prefix) then step(rest), or forward(prefix) then forward(rest),
// equals stepping through the whole sequence.
TYPED_TEST(SLstmCellTest, ForwardOnAPrefixThenStepEqualsSteppingAllTheWay) {
  using S = TypeParam;
  const Index B = 2, T = 30, prefix = 13, H = 16, NH = 4;
  for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
    for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
      SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule));
      std::mt19937 rng(202);
      const auto cell = random_slstm<S>(slstm_cell_config(H, NH, rule, function), rng);
      const auto x = random_sequence<S>(B, T, 4 * H, rng);
      const auto head = time_slice(x, 0, prefix), tail = time_slice(x, prefix, T - prefix);
      auto all_state = cell.initial_state(B);
      const auto y_all = run_slstm_steps(cell, x, all_state);

      auto state = cell.initial_state(B);
      const auto y_head = run_slstm(cell, head, state);
      auto state2 = state;
      const auto y_tail = run_slstm_steps(cell, tail, state);
      EXPECT_TRUE(Close(y_head.matrix(), time_slice(y_all, 0, prefix).matrix(), Tol<S>::rounding));
      EXPECT_TRUE(
          Close(y_tail.matrix(), time_slice(y_all, prefix, T - prefix).matrix(), Tol<S>::rounding));
      EXPECT_TRUE(SStatesClose(state, all_state, Tol<S>::rounding));

      const auto y_tail2 = run_slstm(cell, tail, state2);
      EXPECT_TRUE(Close(y_tail2.matrix(), y_tail.matrix(), Tol<S>::rounding));
      EXPECT_TRUE(SStatesClose(state2, all_state, Tol<S>::rounding));
    }
  }
}

// math §2.2: the CUDA layout is a permutation of the vanilla one, so
// get_cuda_layout -> set_from_cuda_layout restores the parameters exactly.
TYPED_TEST(SLstmCellTest, CudaLayoutRoundTripsExactly) {
  using S = TypeParam;
  std::mt19937 rng(203);
  const auto cfg = slstm_cell_config(24, 3);
  const auto cell = random_slstm<S>(cfg, rng);
  Matrix<S> kernel;
  Vector<S> bias;
  cell.get_cuda_layout(kernel, bias);
  EXPECT_EQ(kernel.rows(), 24);  // NH * DH
  EXPECT_EQ(kernel.cols(), 32);  // 4 * DH
  SLstmCell<S> copy(cfg);
  copy.set_from_cuda_layout(kernel, bias);
  EXPECT_TRUE(BitIdentical(copy.recurrent_kernel(), cell.recurrent_kernel()));
  EXPECT_TRUE(BitIdentical(copy.bias(), cell.bias()));
  Matrix<S> kernel2;
  Vector<S> bias2;
  copy.get_cuda_layout(kernel2, bias2);
  EXPECT_TRUE(BitIdentical(kernel2, kernel));
  EXPECT_TRUE(BitIdentical(bias2, bias));
}

// A CUDA-layout kernel and bias built by hand from math §2.2 (from the same
// R_ext, b_ext as a vanilla-layout cell) give the same outputs, and both
// match the elementwise transcription of the spec.
TYPED_TEST(SLstmCellTest, HandBuiltCudaLayoutGivesTheSameOutputsAsTheVanillaLayout) {
  using S = TypeParam;
  const Index B = 2, T = 15, H = 24, NH = 3;
  std::mt19937 rng(204);
  const auto cfg = slstm_cell_config(H, NH);
  SLstmExternal e;
  const auto vanilla = random_slstm<S>(cfg, rng, &e);
  Matrix<S> kernel;
  Vector<S> bias;
  cuda_layout<S>(e, kernel, bias);
  SLstmCell<S> cuda(cfg);
  cuda.set_from_cuda_layout(kernel, bias);
  EXPECT_TRUE(BitIdentical(cuda.recurrent_kernel(), vanilla.recurrent_kernel()));
  EXPECT_TRUE(BitIdentical(cuda.bias(), vanilla.bias()));

  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  auto s1 = vanilla.initial_state(B), s2 = cuda.initial_state(B);
  const auto y1 = run_slstm(vanilla, x, s1);
  const auto y2 = run_slstm(cuda, x, s2);
  EXPECT_TRUE(BitIdentical(y2.matrix(), y1.matrix()));
  EXPECT_TRUE(
      Close(y1.matrix(), naive_slstm(e, x, SLstmFunction::slstm).y.matrix(), Tol<S>::rounding));
  // The bias layouts differ (head-major vs gate-major): reading the CUDA bias
  // as if it were vanilla scrambles the gates and changes the outputs.
  SLstmCell<S> confused(cfg);
  confused.recurrent_kernel() = vanilla.recurrent_kernel();
  confused.bias() = bias;
  auto s3 = confused.initial_state(B);
  EXPECT_FALSE(Close(run_slstm(confused, x, s3).matrix(), y1.matrix(), 1e-3));
}

// ±1e4 and ±inf in every gate (i, f, z, o): outputs and states stay finite.
// i and f are clamped to ±1e30 (gates.hpp); tanh(z) and sigmoid(o) have finite
// limits at ±inf; n >= 1 after the first step, so y = o c / n is finite.
TYPED_TEST(SLstmCellTest, ExtremePreactivationsGiveFiniteOutputs) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  const std::vector<S> extremes = {S(1e4), S(-1e4), inf, -inf};
  const Index B = 2, T = 40;
  for (const auto& [H, NH] : {std::pair<Index, Index>{8, 2}, kUnitSizes[1]}) {
    for (const auto function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
      for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
        SCOPED_TRACE(std::string(name_of(function)) + " " + name_of(rule) +
                     ", H = " + std::to_string(H));
        std::mt19937 rng(205);
        const auto cell = random_slstm<S>(slstm_cell_config(H, NH, rule, function), rng);
        const auto base = random_sequence<S>(B, T, 4 * H, rng);
        std::vector<std::pair<std::string, Sequence<S>>> cases;
        for (Index g = 0; g < 4; ++g) {
          for (const S v : extremes) {
            auto x = base;
            for (Index r = 0; r < x.matrix().rows(); ++r) {
              x.matrix().row(r).segment(g * H, H).setConstant(v);
            }
            std::ostringstream name;
            name << "gate "
                 << "ifzo"[g] << " = " << v;
            cases.emplace_back(name.str(), x);
          }
        }
        auto mixed = base;
        std::uniform_int_distribution<int> pick(0, 5);
        for (Index i = 0; i < mixed.matrix().size(); ++i) {
          const int p = pick(rng);
          if (p < 4) mixed.matrix().data()[i] = extremes[std::size_t(p)];
        }
        cases.emplace_back("mixed", mixed);
        for (const auto& [name, x] : cases) {
          SCOPED_TRACE(name);
          auto state = cell.initial_state(B);
          SLstmTrace<S> trace;
          const auto y = run_slstm(cell, x, state, &trace);
          EXPECT_TRUE(AllFinite(y.matrix()));
          EXPECT_TRUE(AllFinite(trace.c.matrix()));
          EXPECT_TRUE(AllFinite(trace.n.matrix()));
          EXPECT_TRUE(AllFinite(trace.m.matrix()));
          EXPECT_TRUE(SStateFinite(state));
        }
      }
    }
  }
}

// Documented behaviour: NaN in the pre-activations of one batch row reaches
// that row only; the other row is bit for bit unchanged, with both rules.
//
// Why the whole-batch first-step rule does not leak here: the rule tests
// "n == 0 over the whole batch". From a zero state that is true at the first
// step in both runs (NaN in the *inputs* has not reached the state yet) and
// false from then on in both runs (the clean row has n >= 1; the NaN row has
// n >= 1 or NaN, and NaN == 0 is false). So row 1 takes the same branch at
// every step. The rule *can* couple rows through the state — see
// WholeBatchRuleLetsOtherRowsDecideTheFirstStepOfAResetRow below.
TYPED_TEST(SLstmCellTest, NaNInOneBatchRowStaysInThatRow) {
  using S = TypeParam;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const Index B = 2, T = 30;
  for (const auto& [H, NH] : {std::pair<Index, Index>{8, 2}, kUnitSizes[1]}) {
    for (const auto rule : {FirstStepRule::whole_batch, FirstStepRule::per_element}) {
      SCOPED_TRACE(std::string(name_of(rule)) + ", H = " + std::to_string(H));
      std::mt19937 rng(206);
      const auto cell = random_slstm<S>(slstm_cell_config(H, NH, rule), rng);
      const auto clean = random_sequence<S>(B, T, 4 * H, rng);
      auto dirty = clean;
      dirty(0, 0, 2 * H + 1) = nan;  // z of unit 1 at the very first step
      dirty(0, 12, 0) = nan;         // i of unit 0 at t = 12
      auto s_clean = cell.initial_state(B), s_dirty = cell.initial_state(B);
      SLstmTrace<S> t_clean, t_dirty;
      const auto y_clean = run_slstm(cell, clean, s_clean, &t_clean);
      const auto y_dirty = run_slstm(cell, dirty, s_dirty, &t_dirty);
      EXPECT_TRUE(BitIdentical(y_dirty.rows_of(1), y_clean.rows_of(1)));
      EXPECT_TRUE(BitIdentical(t_dirty.c.rows_of(1), t_clean.c.rows_of(1)));
      EXPECT_TRUE(BitIdentical(t_dirty.n.rows_of(1), t_clean.n.rows_of(1)));
      EXPECT_TRUE(BitIdentical(t_dirty.m.rows_of(1), t_clean.m.rows_of(1)));
      EXPECT_TRUE(BitIdentical(s_dirty.y.row(1), s_clean.y.row(1)));
      // The NaN does reach row 0 (through R y, the whole of head 0).
      EXPECT_TRUE(any_nan(y_dirty.at(0, 0)));
      EXPECT_TRUE(any_nan(s_dirty.y.row(0).segment(0, H / NH)));
    }
  }
}

// math §2.4: the whole-batch rule takes the first-step branch only if n is
// zero in *every* row. After reset_row(1) the other rows have n != 0 (finite
// or even NaN), so the reset row takes the ordinary branch: m = max(i, log f)
// instead of m = i. y is the same up to rounding (c is zero where n is zero,
// so only the scaling of c, n, m changes), but the state differs from a fresh
// start. The per-element rule does not have this coupling.
TYPED_TEST(SLstmCellTest, WholeBatchRuleLetsOtherRowsDecideTheFirstStepOfAResetRow) {
  using S = TypeParam;
  const Index B = 2, T = 12, H = 8, NH = 2;
  std::mt19937 rng(207);
  SLstmExternal e;
  const auto cell = random_slstm<S>(slstm_cell_config(H, NH, FirstStepRule::whole_batch), rng, &e);
  const auto x = random_sequence<S>(B, T, 4 * H, rng);
  const auto x1 = batch_row(x, 1);
  auto fresh = cell.initial_state(1);
  SLstmTrace<S> t_fresh;
  const auto y_fresh = run_slstm(cell, x1, fresh, &t_fresh);

  for (const bool nan_row0 : {false, true}) {
    SCOPED_TRACE(nan_row0 ? "row 0 state NaN" : "row 0 state finite");
    auto state = cell.initial_state(B);
    run_slstm(cell, x, state);
    state.reset_row(1);
    if (nan_row0) {
      for (Matrix<S>* s : {&state.y, &state.c, &state.n, &state.m}) {
        s->row(0).setConstant(std::numeric_limits<S>::quiet_NaN());
      }
    }
    SLstmTrace<S> trace;
    const auto y = run_slstm(cell, x, state, &trace);
    // Outputs of the reset row: as from a fresh start, and no NaN leaks in.
    EXPECT_TRUE(Close(y.rows_of(1), y_fresh.rows_of(0), Tol<S>::rounding));
    // Its stabiliser at the first step after the reset: not the fresh m = raw_i.
    EXPECT_FALSE(Close(trace.m.at(1, 0), t_fresh.m.at(0, 0), 1e-3));
  }
}

// reset_row with the per-element rule (the one to use when rows are reset
// independently, math §2.4): the reset row continues exactly like a fresh
// start (state included), the other rows continue bit for bit unchanged.
TYPED_TEST(SLstmCellTest, ResetRowWithThePerElementRuleRestartsOnlyThatRow) {
  using S = TypeParam;
  const Index B = 3;
  for (const auto& [H, NH] : {std::pair<Index, Index>{16, 4}, kUnitSizes[1]}) {
    SCOPED_TRACE("H = " + std::to_string(H));
    std::mt19937 rng(208);
    const auto cell = random_slstm<S>(slstm_cell_config(H, NH, FirstStepRule::per_element), rng);
    const auto first = random_sequence<S>(B, 10, 4 * H, rng);
    const auto rest = random_sequence<S>(B, 15, 4 * H, rng);
    auto start = cell.initial_state(B);
    run_slstm(cell, first, start);

    auto untouched = start;
    SLstmTrace<S> t_untouched;
    const auto y_untouched = run_slstm(cell, rest, untouched, &t_untouched);
    auto reset = start;
    reset.reset_row(1);
    SLstmTrace<S> t_reset;
    const auto y_reset = run_slstm(cell, rest, reset, &t_reset);
    auto fresh = cell.initial_state(1);
    SLstmTrace<S> t_fresh;
    const auto y_fresh = run_slstm(cell, batch_row(rest, 1), fresh, &t_fresh);

    for (const Index b : {Index(0), Index(2)}) {
      EXPECT_TRUE(BitIdentical(y_reset.rows_of(b), y_untouched.rows_of(b)));
      EXPECT_TRUE(BitIdentical(t_reset.c.rows_of(b), t_untouched.c.rows_of(b)));
      EXPECT_TRUE(BitIdentical(t_reset.n.rows_of(b), t_untouched.n.rows_of(b)));
      EXPECT_TRUE(BitIdentical(t_reset.m.rows_of(b), t_untouched.m.rows_of(b)));
    }
    EXPECT_TRUE(Close(y_reset.rows_of(1), y_fresh.rows_of(0), Tol<S>::rounding));
    EXPECT_TRUE(Close(t_reset.c.rows_of(1), t_fresh.c.rows_of(0), Tol<S>::rounding));
    EXPECT_TRUE(Close(t_reset.n.rows_of(1), t_fresh.n.rows_of(0), Tol<S>::rounding));
    EXPECT_TRUE(Close(t_reset.m.rows_of(1), t_fresh.m.rows_of(0), Tol<S>::rounding));
    EXPECT_FALSE(Close(y_reset.rows_of(1), y_untouched.rows_of(1), 1e-3));

    EXPECT_TRUE(ThrowsMentioning([&] { reset.reset_row(3); }, "'row'"));
    EXPECT_TRUE(ThrowsMentioning([&] { reset.reset_row(-1); }, "'row'"));
  }
}

TYPED_TEST(SLstmCellTest, CopiedStateEvolvesIndependently) {
  using S = TypeParam;
  const Index B = 2, H = 8, NH = 2;
  std::mt19937 rng(209);
  const auto cell = random_slstm<S>(slstm_cell_config(H, NH), rng);
  const auto first = random_sequence<S>(B, 10, 4 * H, rng);
  const auto rest = random_sequence<S>(B, 10, 4 * H, rng);
  const auto other = random_sequence<S>(B, 10, 4 * H, rng);

  auto reference = cell.initial_state(B);
  run_slstm(cell, first, reference);
  const auto y_reference = run_slstm(cell, rest, reference);

  auto original = cell.initial_state(B);
  run_slstm(cell, first, original);
  const auto snapshot = original;
  auto copy = original;
  const auto y_copy = run_slstm_steps(cell, other, copy);
  EXPECT_TRUE(SStatesIdentical(original, snapshot));
  EXPECT_FALSE(SStatesIdentical(copy, original));
  const auto y_original = run_slstm(cell, rest, original);
  EXPECT_TRUE(BitIdentical(y_original.matrix(), y_reference.matrix()));
  EXPECT_TRUE(SStatesIdentical(original, reference));
  EXPECT_FALSE(Close(y_copy.matrix(), y_original.matrix(), 1e-3));
}

// A forward on several library threads runs each head through the whole
// sequence on its own thread (no barrier per step) when the entering n lets
// it decide the whole-batch first-step test ahead (every element 0 or >= 1),
// else step by step. Either way the bits are those of one thread: outputs,
// trace, final state and tape, for both functions, every first-step rule, the
// TiRex numerics, ragged lengths, and entering states from zero, carried,
// with a reset row, and set by hand (n = 0.5: the step-by-step path).
// design §7.9: R y is computed by the same chain of sums whether the cell
// was prepared (R packed once), packs R for a forward, or packs it at every
// step, and for a row alone as in a batch of any size (register blocks of
// 8, 4, 2 and 1 rows): the outputs are the same bits in every case, in
// both numerics. Writable access to R drops the packed copy, so a changed R
// is never multiplied stale.
TYPED_TEST(SLstmCellTest, PreparedOrNotAndAloneOrInABatchGiveTheSameBits) {
  using S = TypeParam;
  const Index B = 15, T = 5, H = 80, NH = 2;  // DH = 40: 160 outputs, no multiple of a panel
  for (const auto numerics : {xlstm::SLstmNumerics::plain, xlstm::SLstmNumerics::tirex_official}) {
    SCOPED_TRACE(xlstm::numerics_name(numerics));
    std::mt19937 rng(251);
    SLstmCellConfig config = slstm_cell_config(H, NH, FirstStepRule::per_row);
    config.numerics = numerics;
    const auto cell = random_slstm<S>(config, rng);
    ASSERT_FALSE(cell.is_prepared());
    auto prepared = cell;
    prepared.prepare_kernels();
    ASSERT_TRUE(prepared.is_prepared());
    const auto x = random_sequence<S>(B, T, 4 * H, rng);
    auto run_forward = [&](const SLstmCell<S>& c, const Sequence<S>& input) {
      auto state = c.initial_state(input.batch());
      Sequence<S> y;
      c.forward(input, state, y);
      return y;
    };
    auto run_steps = [&](const SLstmCell<S>& c, const Sequence<S>& input) {
      auto state = c.initial_state(input.batch());
      Sequence<S> y(input.batch(), input.time(), H);
      for (Index t = 0; t < input.time(); ++t) {
        c.step(input.time_step(t), state);
        for (Index b = 0; b < input.batch(); ++b) y.at(b, t) = state.y.row(b);
      }
      return y;
    };
    const Sequence<S> expected = run_forward(prepared, x);
    EXPECT_TRUE(run_forward(cell, x).matrix() == expected.matrix());
    EXPECT_TRUE(run_steps(cell, x).matrix() == expected.matrix());
    EXPECT_TRUE(run_steps(prepared, x).matrix() == expected.matrix());
    for (const Index rows : {Index(1), Index(2), Index(3), Index(4), Index(8), Index(9)}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows");
      Sequence<S> part(rows, T, 4 * H);
      for (Index b = 0; b < rows; ++b) {
        for (Index t = 0; t < T; ++t) part.at(b, t) = x.at(B - rows + b, t);
      }
      const Sequence<S> y = run_steps(rows % 2 ? cell : prepared, part);
      for (Index b = 0; b < rows; ++b) {
        for (Index t = 0; t < T; ++t) {
          ASSERT_TRUE(y.at(b, t) == expected.at(B - rows + b, t)) << "row " << b << " step " << t;
        }
      }
    }
    // A changed R through each kind of writable access: the prepared cell
    // computes with the new R (as a cell that never was prepared does).
    for (int access = 0; access < 3; ++access) {
      SCOPED_TRACE(::testing::Message() << "writable access " << access);
      auto changed = prepared;
      if (access == 0) {
        changed.recurrent_kernel() *= S(0.5);
      } else if (access == 1) {
        changed.for_each_parameter([](const xlstm::ParameterRef<S>& p) {
          if (p.name == "_recurrent_kernel_") {
            for (std::size_t i = 0; i < p.size(); ++i) p.data[i] *= S(0.5);
          }
        });
      } else {
        Matrix<S> kernel;
        xlstm::Vector<S> bias;
        changed.get_cuda_layout(kernel, bias);
        kernel *= S(0.5);
        changed.set_from_cuda_layout(kernel, bias);
      }
      EXPECT_FALSE(changed.is_prepared());
      auto fresh = cell;
      fresh.recurrent_kernel() *= S(0.5);
      const Sequence<S> y = run_steps(changed, x);
      EXPECT_TRUE(y.matrix() == run_forward(fresh, x).matrix());
      EXPECT_FALSE(y.matrix() == expected.matrix());
    }
    // R written through a pointer, as an optimiser does, behind the copy's
    // back: a forward that records a tape (training) still uses the new R.
    if (numerics == xlstm::SLstmNumerics::plain) {
      auto behind = prepared;
      S* r = const_cast<S*>(std::as_const(behind).recurrent_kernel().data());
      for (Index i = 0; i < std::as_const(behind).recurrent_kernel().size(); ++i) r[i] *= S(0.5);
      ASSERT_TRUE(behind.is_prepared());
      auto fresh = cell;
      fresh.recurrent_kernel() *= S(0.5);
      auto state = behind.initial_state(B);
      Sequence<S> y;
      typename SLstmCell<S>::Tape tape;
      behind.forward(x, state, y, tape);
      EXPECT_TRUE(y.matrix() == run_forward(fresh, x).matrix());
    }
  }
}

TYPED_TEST(SLstmCellTest, ForwardGivesTheSameBitsOnAnyNumberOfThreads) {
  using S = TypeParam;
  if (xlstm::num_threads() < 2) GTEST_SKIP() << "one library thread (built without OpenMP)";
  const int saved_threads = xlstm::num_threads();
  const Index B = 3, T = 40, H = 64, NH = 4;  // 4H x DH x B x T above the threads' threshold
  struct Case {
    SLstmFunction function;
    FirstStepRule rule;
    xlstm::SLstmNumerics numerics;
  };
  const xlstm::SLstmNumerics plain = xlstm::SLstmNumerics::plain,
                             tirex = xlstm::SLstmNumerics::tirex_official;
  const Case cases[] = {{SLstmFunction::slstm, FirstStepRule::whole_batch, plain},
                        {SLstmFunction::slstm, FirstStepRule::per_element, plain},
                        {SLstmFunction::slstm, FirstStepRule::per_row, plain},
                        {SLstmFunction::lstm, FirstStepRule::whole_batch, plain},
                        {SLstmFunction::slstm, FirstStepRule::whole_batch, tirex},
                        {SLstmFunction::slstm, FirstStepRule::per_row, tirex}};
  const char* const entering[] = {"zero", "carried", "reset row", "set by hand"};
  for (const Case& c : cases) {
    std::mt19937 rng(241);
    SLstmCellConfig config = slstm_cell_config(H, NH, c.rule, c.function);
    config.numerics = c.numerics;
    const auto cell = random_slstm<S>(config, rng);
    const auto x = random_sequence<S>(B, T, 4 * H, rng);
    const xlstm::Lengths ragged = {T, 17, 0};
    for (const char* start : entering) {
      for (const bool with_lengths : {false, true}) {
        SCOPED_TRACE(::testing::Message() << name_of(c.function) << ", rule " << int(c.rule) << ", "
                                          << xlstm::numerics_name(c.numerics) << ", entering state "
                                          << start << (with_lengths ? ", ragged" : ""));
        auto initial = cell.initial_state(B);
        if (std::string(start) != "zero") {
          Sequence<S> ignored;
          cell.forward(x, initial, ignored);
        }
        if (std::string(start) == "reset row") initial.reset_row(1);
        if (std::string(start) == "set by hand") initial.n.row(2).setConstant(S(0.5));
        const xlstm::Lengths lengths = with_lengths ? ragged : xlstm::Lengths{};
        struct Result {
          SLstmState<S> state;
          Sequence<S> y;
          SLstmTrace<S> trace;
          typename SLstmCell<S>::Tape tape;
        };
        std::vector<Result> results;
        for (const int threads : {1, 2, 3}) {
          xlstm::set_num_threads(threads);
          Result r{initial, {}, {}, {}};
          cell.forward(x, lengths, r.state, r.y, &r.trace);
          if (c.numerics == plain) {
            SLstmState<S> taped = initial;
            Sequence<S> y_taped;
            cell.forward(x, lengths, taped, y_taped, r.tape);
            EXPECT_TRUE(BitIdentical(y_taped.matrix(), r.y.matrix()));
          }
          results.push_back(std::move(r));
        }
        xlstm::set_num_threads(saved_threads);
        for (std::size_t i = 1; i < results.size(); ++i) {
          SCOPED_TRACE(::testing::Message() << "threads " << i + 1 << " vs 1");
          const Result &a = results[i], &one = results[0];
          EXPECT_TRUE(SStatesIdentical(a.state, one.state));
          EXPECT_TRUE(BitIdentical(a.y.matrix(), one.y.matrix()));
          for (const auto& [got, want] :
               {std::pair{&a.trace.c, &one.trace.c}, std::pair{&a.trace.n, &one.trace.n},
                std::pair{&a.trace.m, &one.trace.m}}) {
            EXPECT_TRUE(BitIdentical(got->matrix(), want->matrix()));
          }
          for (const auto& [got, want] :
               {std::pair{&a.tape.raw, &one.tape.raw}, std::pair{&a.tape.y, &one.tape.y},
                std::pair{&a.tape.c, &one.tape.c}, std::pair{&a.tape.n, &one.tape.n},
                std::pair{&a.tape.m, &one.tape.m}}) {
            EXPECT_TRUE(BitIdentical(*got, *want));
          }
        }
      }
    }
  }
}

TYPED_TEST(SLstmCellTest, MismatchedShapesThrowNamingTheArgument) {
  using S = TypeParam;
  const Index B = 2, H = 8, NH = 2;
  std::mt19937 rng(210);
  const auto cell = random_slstm<S>(slstm_cell_config(H, NH), rng);
  auto state = cell.initial_state(B);
  Sequence<S> y;

  const Matrix<S> good = Matrix<S>::Zero(B, 4 * H);
  EXPECT_NO_THROW(cell.step(good, state));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B, 4 * H - 1), state); },
                               "'preactivations'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B + 1, 4 * H), state); },
                               "'preactivations'"));
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(B, H), state); }, "4*hidden_size"));
  EXPECT_TRUE(ThrowsMentioning([&] { run_slstm(cell, Sequence<S>::zeros(B, 3, H), state); },
                               "preactivations.features()"));
  EXPECT_TRUE(ThrowsMentioning([&] { run_slstm(cell, Sequence<S>::zeros(B + 1, 3, 4 * H), state); },
                               "preactivations.batch()"));
  auto wrong_state = SLstmState<S>(B, H + 2);
  EXPECT_TRUE(ThrowsMentioning([&] { cell.step(good, wrong_state); }, "'state'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { run_slstm(cell, Sequence<S>::zeros(B, 3, 4 * H), wrong_state); }, "'state'"));
  SLstmState<S> default_state;
  EXPECT_TRUE(
      ThrowsMentioning([&] { cell.step(Matrix<S>::Zero(0, 4 * H), default_state); }, "'state'"));

  SLstmCell<S> target(slstm_cell_config(H, NH));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { target.set_from_cuda_layout(Matrix<S>::Zero(4 * H / NH, H), Vector<S>::Zero(4 * H)); },
      "'kernel'"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] { target.set_from_cuda_layout(Matrix<S>::Zero(H, 4 * H / NH), Vector<S>::Zero(H)); },
      "bias"));
}

TEST(SLstmCellConfig, InvalidConfigsThrowNamingTheField) {
  EXPECT_NO_THROW(SLstmCell<float>(slstm_cell_config(12, 3)));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_cell_config(10, 3)); }, "divisible"));
  EXPECT_TRUE(
      ThrowsMentioning([] { SLstmCell<double>(slstm_cell_config(0, 1)); }, "'hidden_size'"));
  EXPECT_TRUE(
      ThrowsMentioning([] { SLstmCell<double>(slstm_cell_config(-4, 2)); }, "'hidden_size'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_cell_config(8, 0)); }, "'num_heads'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_cell_config(8, -2)); }, "'num_heads'"));
  EXPECT_TRUE(ThrowsMentioning([] { SLstmCell<float>(slstm_cell_config(8, 2)).initial_state(-1); },
                               "'batch'"));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::parse_slstm_function("gru"); }, "'function'"));
}

// 100000 steps in float: every output and every state stays finite.
TEST(SLstmCellLong, FloatOutputsAndStatesStayFiniteOver100000Steps) {
  const Index T = 100000, H = 16, NH = 2;
  std::mt19937 rng(211);
  const auto cell = random_slstm<float>(slstm_cell_config(H, NH), rng);
  const auto x = random_sequence<float>(1, T, 4 * H, rng);
  auto state = cell.initial_state(1);
  SLstmTrace<float> trace;
  const auto y = run_slstm(cell, x, state, &trace);
  EXPECT_TRUE(AllFinite(y.matrix()));
  EXPECT_TRUE(AllFinite(trace.c.matrix()));
  EXPECT_TRUE(AllFinite(trace.n.matrix()));
  EXPECT_TRUE(AllFinite(trace.m.matrix()));
  EXPECT_TRUE(SStateFinite(state));
  // n >= 1 after every step (math §2.4), even in floating point: m is the max
  // of raw_i and log f + m, so i' or f' is exp(0) = 1 exactly, and then
  // n = f' n + i' >= 1 (or >= n_prev >= 1) because rounding is monotone.
  EXPECT_GE(trace.n.matrix().minCoeff(), 1.0f);
}

}  // namespace

}  // namespace xlstm_test_slstm_cell
