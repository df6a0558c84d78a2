// Ragged batches and per-row state control at every level: the sLSTM and
// mLSTM cells, the causal conv, both blocks, a mixed block stack, the
// language model and xLSTM-Large.
//
// What is promised (core/tensor.hpp and the `forward(x, lengths, state, y)`
// overloads): in a batch whose rows have their own lengths, every row's
// outputs and final state equal running that row alone; outputs past a row's
// length are zero; padded inputs (NaN, infinities, huge values, out-of-range
// token ids) have no effect at all. States can be reset, set, gathered and
// scattered row by row, and a forward pass can start from any state.
//
// Every property is one generic function over a "level": a small adapter that
// gives each module the same interface (random input streams, forward, step,
// the state of one row as a list of matrices). Each test runs its property
// over all levels, so a failure message names the level (SCOPED_TRACE).
//
// Tolerances, relative to the largest |value| of the reference block:
// * same_arithmetic (1e-5 float, 1e-13 double): a row alone and the same row
//   in a batch go through the same operations on the same numbers. They are
//   not always bit-identical because Eigen picks a product kernel by shape
//   (GEMV for one row, packed GEMM for several, a coefficient loop for tiny
//   products) and its vectorised reductions peel by the data's alignment, so
//   the summation order of a dot product can differ in the last bits; 13
//   recurrent steps and a few layers amplify that a little. The report printed
//   at the end ("[observed]") gives the measured worst case and how many
//   comparisons were bit-identical.
// * rounding (1e-4 float, 1e-11 double): the same function evaluated in a
//   different order (a forward pass split in two vs in one piece; chunkwise
//   chunk borders move), as in test_model.cpp.
// * with_parallel (1e-4 float, 1e-5 double): one side ran the mLSTM parallel
//   form, whose outputs differ from the other forms by the eps term of SPEC
//   §4.5 (a relative 1e-6 per head and step).
// A real defect (a state taken at the wrong step, padding read into a state,
// a row leaking into another) shows up as a difference of order 1e-2 or more,
// or as NaN.
//
// The sLSTM first-step rule (math §2.4). The default rule, `whole_batch`,
// tests n == 0 over the whole batch: a row whose state is zero while other
// rows' are not (a reset row, a row of length 0, a fresh row next to warm
// ones) takes m = max(raw_i, log f) instead of m = raw_i. That leaves its y
// unchanged (up to rounding) but scales its (c, n, m) differently than running
// it alone. The `per_element` rule tests each unit on its own, so a row's
// state is exactly that of the row alone; use it when rows are reset or mixed
// independently. Levels with the whole-batch rule (the raw cell with that
// rule, and every sLSTM block, which always uses it) therefore compare the
// representation-independent part of an sLSTM state: y and c / n.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_ragged {

namespace {

using test_util::add_noise;
using test_util::AllFinite;
using test_util::fill_normal;
using test_util::Identical;
using test_util::random_tokens;
using test_util::randomize;
using test_util::Scalars;
using test_util::ThrowsMentioning;
using xlstm::BlockStack;
using xlstm::BlockStackConfig;
using xlstm::CausalConv1d;
using xlstm::FirstStepRule;
using xlstm::Index;
using xlstm::LanguageModel;
using xlstm::LanguageModelConfig;
using xlstm::LargeModel;
using xlstm::LargeModelConfig;
using xlstm::Lengths;
using xlstm::Matrix;
using xlstm::MLstmBlock;
using xlstm::MLstmBlockConfig;
using xlstm::MLstmCell;
using xlstm::MLstmCellConfig;
using xlstm::MLstmForm;
using xlstm::MLstmStateConvention;
using xlstm::Rng;
using xlstm::Sequence;
using xlstm::SLstmBlock;
using xlstm::SLstmBlockConfig;
using xlstm::SLstmCell;
using xlstm::SLstmCellConfig;
using xlstm::SLstmFunction;
using xlstm::Tokens;

// ---------------------------------------------------------------------------
// Tolerances and comparisons
// ---------------------------------------------------------------------------

struct Tolerance {
  double value;
  const char* name;
};

template <typename S>
struct Tol {
  static constexpr Tolerance same_arithmetic{
      test_util::per_scalar<S>(1e-5, 1e-13),
      test_util::per_scalar<S>("float same_arithmetic", "double same_arithmetic")};
  static constexpr Tolerance rounding{
      test_util::per_scalar<S>(1e-4, 1e-11),
      test_util::per_scalar<S>("float rounding", "double rounding")};
  static constexpr Tolerance with_parallel{
      test_util::kWithParallelTol<S>,
      test_util::per_scalar<S>("float with_parallel", "double with_parallel")};
};

// Worst relative differences seen per tolerance class, printed at the end.
struct Observed {
  double worst = 0;
  long compared = 0, identical = 0;
};
std::map<std::string, Observed>& observed() {
  static std::map<std::string, Observed> table;
  return table;
}

class ReportObserved : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, o] : observed()) {
      std::printf(
          "[observed] %-24s worst relative difference %.2e; %ld of %ld comparisons "
          "bit-identical\n",
          name.c_str(), o.worst, o.identical, o.compared);
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kReport =
    ::testing::AddGlobalTestEnvironment(new ReportObserved);

// max |actual - expected| <= tol * max |expected|; non-finite values fail.
template <typename A, typename B>
::testing::AssertionResult Near(const Eigen::DenseBase<A>& actual,
                                const Eigen::DenseBase<B>& expected, Tolerance tol) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    return ::testing::AssertionFailure() << "shape " << actual.rows() << "x" << actual.cols()
                                         << " vs " << expected.rows() << "x" << expected.cols();
  }
  double scale = 0, worst = 0;
  for (Index i = 0; i < actual.rows(); ++i) {
    for (Index j = 0; j < actual.cols(); ++j) {
      const double a = double(actual(i, j)), e = double(expected(i, j));
      if (!std::isfinite(a) || !std::isfinite(e)) {
        return ::testing::AssertionFailure()
               << "non-finite at (" << i << ", " << j << "): " << a << " vs " << e;
      }
      scale = std::max(scale, std::abs(e));
      worst = std::max(worst, std::abs(a - e));
    }
  }
  Observed& o = observed()[tol.name];
  ++o.compared;
  if (worst == 0) ++o.identical;
  if (scale > 0) o.worst = std::max(o.worst, worst / scale);
  if (worst <= tol.value * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| " << worst << " > " << tol.value << " * "
                                       << scale << " (" << tol.name << ")";
}

template <typename A>
::testing::AssertionResult AllZero(const Eigen::DenseBase<A>& a) {
  for (Index i = 0; i < a.rows(); ++i) {
    for (Index j = 0; j < a.cols(); ++j) {
      if (!(a(i, j) == 0)) {
        return ::testing::AssertionFailure() << "(" << i << ", " << j << ") is " << a(i, j);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// The state of one batch row as a list of matrices.
template <typename S>
using Parts = std::vector<Matrix<S>>;

template <typename S>
::testing::AssertionResult PartsNear(const Parts<S>& actual, const Parts<S>& expected,
                                     Tolerance tol) {
  if (actual.size() != expected.size()) return ::testing::AssertionFailure() << "part count";
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const auto result = Near(actual[i], expected[i], tol);
    if (!result)
      return ::testing::AssertionFailure() << "state part " << i << ": " << result.message();
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult PartsIdentical(const Parts<S>& actual, const Parts<S>& expected) {
  if (actual.size() != expected.size()) return ::testing::AssertionFailure() << "part count";
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const auto result = Identical(actual[i], expected[i]);
    if (!result)
      return ::testing::AssertionFailure() << "state part " << i << ": " << result.message();
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
::testing::AssertionResult PartsFinite(const Parts<S>& parts) {
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].allFinite()) return ::testing::AssertionFailure() << "state part " << i;
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------
// One row of every state type
// ---------------------------------------------------------------------------

// `exact`: all of (y, c, n, m); otherwise y and c / n, which do not depend on
// how the stabiliser m scaled c and n (see the file comment).
template <typename S>
void append_parts(Parts<S>& parts, const xlstm::SLstmState<S>& s, Index b, bool exact) {
  parts.emplace_back(s.y.row(b));
  if (exact) {
    parts.emplace_back(s.c.row(b));
    parts.emplace_back(s.n.row(b));
    parts.emplace_back(s.m.row(b));
  } else {
    const auto n = s.n.row(b).array();
    parts.emplace_back((n == S(0)).select(S(0), s.c.row(b).array() / n).matrix());
  }
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::MLstmState<S>& s, Index b) {
  const Index nh = s.num_heads;
  parts.emplace_back(s.C.middleRows(b * nh * s.qk_head_dim, nh * s.qk_head_dim));
  parts.emplace_back(s.n.middleRows(b * nh, nh));
  parts.emplace_back(s.m.segment(b * nh, nh));
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::CausalConv1dState<S>& s, Index b) {
  if (s.kernel_size > 0) parts.emplace_back(s.window.middleRows(b * s.kernel_size, s.kernel_size));
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::MLstmBlockState<S>& s, Index b) {
  append_parts(parts, s.conv, b);
  append_parts(parts, s.cell, b);
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::SLstmBlockState<S>& s, Index b) {
  append_parts(parts, s.conv, b);
  append_parts(parts, s.cell, b, /*exact=*/false);  // blocks use the whole-batch rule
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::BlockStackState<S>& s, Index b) {
  for (const auto& block : s.blocks)
    std::visit([&](const auto& x) { append_parts(parts, x, b); }, block);
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::LanguageModelState<S>& s, Index b) {
  append_parts(parts, s.stack, b);
}

template <typename S>
void append_parts(Parts<S>& parts, const xlstm::LargeModelState<S>& s, Index b) {
  for (const auto& block : s.blocks) append_parts(parts, block.cell, b);
}

// ---------------------------------------------------------------------------
// Inputs: random streams, windows of them, garbage padding
// ---------------------------------------------------------------------------

template <typename S>
Sequence<S> blank_like(const Sequence<S>& x, Index batch, Index time) {
  return Sequence<S>(batch, time, x.features());
}
Tokens blank_like(const Tokens&, Index batch, Index time) { return Tokens(batch, time); }

template <typename S>
void copy_steps(const Sequence<S>& src, Index src_row, Index start, Index len, Sequence<S>& dst,
                Index dst_row) {
  dst.rows_of(dst_row).topRows(len) = src.rows_of(src_row).middleRows(start, len);
}
void copy_steps(const Tokens& src, Index src_row, Index start, Index len, Tokens& dst,
                Index dst_row) {
  dst.row(dst_row).head(len) = src.row(src_row).segment(start, len);
}

// Padding that would poison any state it reached.
template <typename S>
void fill_garbage(Sequence<S>& x, Index b, Index from) {
  using L = std::numeric_limits<S>;
  const S values[] = {L::quiet_NaN(), L::infinity(), -L::max(), S(1e30), -L::infinity(), L::max()};
  for (Index t = from; t < x.time(); ++t) {
    for (Index d = 0; d < x.features(); ++d) x(b, t, d) = values[(t * x.features() + d) % 6];
  }
}
void fill_garbage(Tokens& x, Index b, Index from) {
  using L = std::numeric_limits<std::int64_t>;
  const std::int64_t values[] = {-1, 1000000007, L::min(), L::max(), -50};
  for (Index t = from; t < x.cols(); ++t) x(b, t) = values[t % 5];
}

// A batch of `time` steps whose row i holds steps [starts[i], starts[i] +
// lengths[i]) of stream row rows[i], then garbage.
template <typename In>
In window(const In& streams, const std::vector<Index>& rows, const std::vector<Index>& starts,
          const Lengths& lengths, Index time) {
  In out = blank_like(streams, Index(rows.size()), time);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    copy_steps(streams, rows[i], starts[i], lengths[i], out, Index(i));
    fill_garbage(out, Index(i), lengths[i]);
  }
  return out;
}

std::vector<Index> first_rows(Index n) {
  std::vector<Index> rows(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) rows[std::size_t(i)] = i;
  return rows;
}

// ---------------------------------------------------------------------------
// Levels: one adapter per module
// ---------------------------------------------------------------------------

constexpr Index kChunk = 5;  // divides none of the lengths used below
constexpr Index kEmbedding = 16;
constexpr Index kVocab = 50;

// The mLSTM cells of the blocks get several chunks per sequence.
template <typename S>
void use_small_chunks(MLstmBlock<S>& block) {
  MLstmCellConfig config = block.cell().config();
  config.chunk_size = kChunk;
  block.cell() = MLstmCell<S>(config);
}
template <typename S>
void use_small_chunks(BlockStack<S>& stack) {
  for (auto& block : stack.blocks()) {
    if (auto* m = std::get_if<MLstmBlock<S>>(&block)) use_small_chunks(*m);
  }
}

// Common part of the adapters over Sequence inputs.
template <typename S, typename StateT>
struct SequenceLevel {
  using Scalar = S;
  using Input = Sequence<S>;
  using State = StateT;
  std::string name;
  Index in_features = 0, out_features = 0;
  bool warm_forward = true;  ///< forward may start from a non-zero state
  Tolerance whole_vs_split = Tol<S>::rounding;

  Input streams(Index batch, Index time, std::mt19937_64& rng) const {
    Input x(batch, time, in_features);
    fill_normal(x.matrix(), rng, 0.0, 1.5);
    return x;
  }
};

template <typename S>
struct SLstmCellLevel : SequenceLevel<S, xlstm::SLstmState<S>> {
  SLstmCell<S> cell;
  bool exact;

  SLstmCellLevel(FirstStepRule rule, SLstmFunction function)
      : cell(config(rule, function)), exact(rule == FirstStepRule::per_element) {
    this->name = std::string("SLstmCell ") + (function == SLstmFunction::slstm ? "slstm" : "lstm") +
                 (exact ? " per_element" : " whole_batch");
    this->in_features = 4 * cell.hidden_size();
    this->out_features = cell.hidden_size();
    std::mt19937_64 rng(11);
    fill_normal(cell.recurrent_kernel(), rng, 0.0, 0.5);
    fill_normal(cell.bias(), rng, 0.0, 1.0);
  }
  static SLstmCellConfig config(FirstStepRule rule, SLstmFunction function) {
    return test_util::slstm_cell_config(8, 2, rule, function);
  }
  xlstm::SLstmState<S> init(Index batch) const { return cell.initial_state(batch); }
  void forward(const Sequence<S>& x, const Lengths& lengths, xlstm::SLstmState<S>& state,
               Sequence<S>& y) const {
    cell.forward(x, lengths, state, y);
  }
  void step(const Sequence<S>& x_t, xlstm::SLstmState<S>& state, Matrix<S>& y_t) const {
    cell.step(x_t.matrix(), state);
    y_t = state.y;
  }
  Parts<S> parts(const xlstm::SLstmState<S>& state, Index b) const {
    Parts<S> p;
    append_parts(p, state, b, exact);
    return p;
  }
};

template <typename S>
struct MLstmCellLevel : SequenceLevel<S, xlstm::MLstmState<S>> {
  MLstmCell<S> cell;
  MLstmForm form;
  Index qk, v, nh;  // widths of q (and k), v and each gate

  MLstmCellLevel(MLstmForm form_, MLstmStateConvention convention, Index parallel_max_length = 256)
      : cell(config(convention, parallel_max_length)), form(form_) {
    static const char* const forms[] = {"automatic", "parallel", "chunkwise", "recurrent"};
    this->name = std::string("MLstmCell ") + forms[int(form)] +
                 (convention == MLstmStateConvention::scaled_keys ? " scaled" : " unscaled");
    nh = cell.num_heads();
    qk = nh * cell.qk_head_dim();
    v = nh * cell.v_head_dim();
    this->in_features = 2 * qk + v + 2 * nh;
    this->out_features = v;
    this->warm_forward = form != MLstmForm::parallel;  // parallel: zero state only
    // From a zero state `automatic` is the parallel form; the reference run in
    // one piece then differs from the split run by the eps term.
    if (form == MLstmForm::automatic) this->whole_vs_split = Tol<S>::with_parallel;
  }
  static MLstmCellConfig config(MLstmStateConvention convention, Index parallel_max_length) {
    MLstmCellConfig c = test_util::mlstm_cell_config(2, 4, 6, convention, kChunk);
    c.parallel_max_length = parallel_max_length;
    return c;
  }
  static Sequence<S> columns(const Sequence<S>& x, Index first, Index count) {
    Sequence<S> out(x.batch(), x.time(), count);
    out.matrix() = x.matrix().middleCols(first, count);
    return out;
  }
  xlstm::MLstmState<S> init(Index batch) const { return cell.initial_state(batch); }
  void forward(const Sequence<S>& x, const Lengths& lengths, xlstm::MLstmState<S>& state,
               Sequence<S>& h) const {
    cell.forward(columns(x, 0, qk), columns(x, qk, qk), columns(x, 2 * qk, v),
                 columns(x, 2 * qk + v, nh), columns(x, 2 * qk + v + nh, nh), lengths, state, h,
                 form);
  }
  void step(const Sequence<S>& x_t, xlstm::MLstmState<S>& state, Matrix<S>& h_t) const {
    const auto& m = x_t.matrix();
    cell.step(m.middleCols(0, qk), m.middleCols(qk, qk), m.middleCols(2 * qk, v),
              m.middleCols(2 * qk + v, nh), m.middleCols(2 * qk + v + nh, nh), state, h_t);
  }
  Parts<S> parts(const xlstm::MLstmState<S>& state, Index b) const {
    Parts<S> p;
    append_parts(p, state, b);
    return p;
  }
};

template <typename S>
struct CausalConvLevel : SequenceLevel<S, xlstm::CausalConv1dState<S>> {
  CausalConv1d<S> conv;

  explicit CausalConvLevel(Index kernel_size) : conv(5, kernel_size) {
    this->name = "CausalConv1d K=" + std::to_string(kernel_size);
    this->in_features = this->out_features = conv.features();
    std::mt19937_64 rng(12);
    add_noise(conv, rng, 0.5);
  }
  xlstm::CausalConv1dState<S> init(Index batch) const { return conv.initial_state(batch); }
  void forward(const Sequence<S>& x, const Lengths& lengths, xlstm::CausalConv1dState<S>& state,
               Sequence<S>& y) const {
    conv.forward(x, lengths, state, y);
  }
  void step(const Sequence<S>& x_t, xlstm::CausalConv1dState<S>& state, Matrix<S>& y_t) const {
    conv.step(x_t.matrix(), state, y_t);
  }
  Parts<S> parts(const xlstm::CausalConv1dState<S>& state, Index b) const {
    Parts<S> p;
    append_parts(p, state, b);
    return p;
  }
};

// Blocks and the stack: forward(x, lengths, state, y) and step(x_t, state, y_t).
template <typename Module>
struct ModuleLevel : SequenceLevel<typename Module::Scalar, typename Module::State> {
  using S = typename Module::Scalar;
  Module module;

  ModuleLevel(std::string name, Module module_) : module(std::move(module_)) {
    this->name = std::move(name);
    this->in_features = this->out_features = module.embedding_dim();
  }
  typename Module::State init(Index batch) const { return module.initial_state(batch); }
  void forward(const Sequence<S>& x, const Lengths& lengths, typename Module::State& state,
               Sequence<S>& y) const {
    module.forward(x, lengths, state, y);
  }
  void step(const Sequence<S>& x_t, typename Module::State& state, Matrix<S>& y_t) const {
    module.step(x_t.matrix(), state, y_t);
  }
  Parts<S> parts(const typename Module::State& state, Index b) const {
    Parts<S> p;
    append_parts(p, state, b);
    return p;
  }
};

// MLstmBlock with a fixed form of its cell.
template <typename S>
struct MLstmBlockLevel : ModuleLevel<MLstmBlock<S>> {
  MLstmForm form;

  explicit MLstmBlockLevel(MLstmForm form_)
      : ModuleLevel<MLstmBlock<S>>("", MLstmBlock<S>(config())), form(form_) {
    static const char* const forms[] = {"automatic", "parallel", "chunkwise", "recurrent"};
    this->name = std::string("MLstmBlock ") + forms[int(form)];
    randomize(this->module, 21);
    use_small_chunks(this->module);
    this->warm_forward = form != MLstmForm::parallel;
    if (form == MLstmForm::automatic) this->whole_vs_split = Tol<S>::with_parallel;
  }
  static MLstmBlockConfig config() { return test_util::mlstm_block_config(kEmbedding); }
  void forward(const Sequence<S>& x, const Lengths& lengths, xlstm::MLstmBlockState<S>& state,
               Sequence<S>& y) const {
    this->module.forward(x, lengths, state, y, form);
  }
};

SLstmBlockConfig slstm_block_config(bool feedforward, Index conv_kernel, const char* function) {
  SLstmBlockConfig c = test_util::slstm_block_config(kEmbedding);
  c.slstm.conv1d_kernel_size = conv_kernel;
  c.slstm.function = function;
  c.slstm.recurrent_weight_init = "standard";
  if (!feedforward) c.feedforward.reset();
  return c;
}

template <typename S>
ModuleLevel<SLstmBlock<S>> slstm_block_level(bool feedforward, Index conv_kernel,
                                             const char* function) {
  SLstmBlock<S> block(slstm_block_config(feedforward, conv_kernel, function));
  randomize(block, 22);
  return ModuleLevel<SLstmBlock<S>>(std::string("SLstmBlock ") + function + " conv " +
                                        std::to_string(conv_kernel) + (feedforward ? " +ffn" : ""),
                                    std::move(block));
}

// The mixed stack: 4 blocks, sLSTM at 1 and 3.
template <typename Config = BlockStackConfig>
Config mixed_stack_config(std::vector<Index> slstm_at = {1, 3}, Index num_blocks = 4) {
  return test_util::mixed_stack_config<Config>(kEmbedding, num_blocks, std::move(slstm_at));
}

template <typename S>
ModuleLevel<BlockStack<S>> stack_level() {
  BlockStack<S> stack(mixed_stack_config());
  randomize(stack, 23);
  use_small_chunks(stack);
  ModuleLevel<BlockStack<S>> level("BlockStack m,s,m,s", std::move(stack));
  level.whole_vs_split = Tol<S>::with_parallel;  // automatic form: parallel from zero
  return level;
}

LanguageModelConfig lm_config() { return test_util::lm_config(kEmbedding, 4, {1, 3}, kVocab); }

LargeModelConfig large_config(Index num_blocks = 2, Index num_heads = 2) {
  LargeModelConfig c = test_util::large_config(32, num_heads, num_blocks, kVocab);
  c.chunk_size = kChunk;
  return c;
}

// LanguageModel and LargeModel: token inputs, logits out.
template <typename Model>
struct TokenLevel {
  using Scalar = typename Model::Scalar;
  using S = Scalar;
  using Input = Tokens;
  using State = typename Model::State;
  std::string name;
  Model model;
  Index out_features;
  bool warm_forward = true;
  Tolerance whole_vs_split;

  TokenLevel(std::string name_, Model model_, Tolerance whole_vs_split_)
      : name(std::move(name_)),
        model(std::move(model_)),
        out_features(model.vocab_size()),
        whole_vs_split(whole_vs_split_) {}

  Tokens streams(Index batch, Index time, std::mt19937_64& rng) const {
    return random_tokens(batch, time, model.vocab_size(), rng);
  }
  State init(Index batch) const { return model.initial_state(batch); }
  void forward(const Tokens& x, const Lengths& lengths, State& state, Sequence<S>& logits) const {
    model.forward(x, lengths, state, logits);
  }
  void step(const Tokens& x_t, State& state, Matrix<S>& logits) const {
    std::vector<std::int64_t> ids(static_cast<std::size_t>(x_t.rows()));
    for (Index b = 0; b < x_t.rows(); ++b) ids[std::size_t(b)] = x_t(b, 0);
    model.step(ids, state, logits);
  }
  Parts<S> parts(const State& state, Index b) const {
    Parts<S> p;
    append_parts(p, state, b);
    return p;
  }
};

template <typename S>
TokenLevel<LanguageModel<S>> language_model_level() {
  LanguageModel<S> model(lm_config());
  randomize(model, 24);
  use_small_chunks(model.stack());
  return TokenLevel<LanguageModel<S>>("LanguageModel", std::move(model), Tol<S>::with_parallel);
}

template <typename S>
TokenLevel<LargeModel<S>> large_model_level() {
  LargeModel<S> model(large_config());
  Rng rng(25);
  model.initialize(rng, 0.5);
  return TokenLevel<LargeModel<S>>("LargeModel", std::move(model), Tol<S>::rounding);
}

// Calls fn(level) for every level, each under a SCOPED_TRACE with its name.
template <typename S, typename Fn>
void for_each_level(Fn&& fn) {
  auto run = [&](const auto& level) {
    SCOPED_TRACE(level.name);
    fn(level);
  };
  for (FirstStepRule rule : {FirstStepRule::per_element, FirstStepRule::whole_batch}) {
    for (SLstmFunction function : {SLstmFunction::slstm, SLstmFunction::lstm}) {
      run(SLstmCellLevel<S>(rule, function));
    }
  }
  for (MLstmForm form :
       {MLstmForm::automatic, MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    for (MLstmStateConvention convention :
         {MLstmStateConvention::scaled_keys, MLstmStateConvention::unscaled_keys}) {
      run(MLstmCellLevel<S>(form, convention));
    }
  }
  for (Index kernel_size : {0, 1, 4, 6}) run(CausalConvLevel<S>(kernel_size));
  for (MLstmForm form :
       {MLstmForm::automatic, MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    run(MLstmBlockLevel<S>(form));
  }
  run(slstm_block_level<S>(true, 4, "slstm"));
  run(slstm_block_level<S>(false, 0, "lstm"));
  run(stack_level<S>());
  run(language_model_level<S>());
  run(large_model_level<S>());
}

// ---------------------------------------------------------------------------
// The properties, generic over levels
// ---------------------------------------------------------------------------

// Forward over steps [start, start + len) of one stream row, alone (batch 1),
// from `state`; no call when len == 0.
template <typename Level>
Sequence<typename Level::Scalar> forward_alone(const Level& level,
                                               const typename Level::Input& streams, Index row,
                                               Index start, Index len,
                                               typename Level::State& state) {
  Sequence<typename Level::Scalar> y;
  if (len > 0) level.forward(window(streams, {row}, {start}, {len}, len), Lengths{}, state, y);
  return y;
}

// `count` steps of a batch whose row i reads stream row rows[i] from step
// positions[i] on. Returns B x count x out.
template <typename Level>
Sequence<typename Level::Scalar> step_rows(const Level& level, const typename Level::Input& streams,
                                           const std::vector<Index>& rows,
                                           std::vector<Index> positions, Index count,
                                           typename Level::State& state) {
  using S = typename Level::Scalar;
  const Index batch = Index(rows.size());
  Sequence<S> out(batch, count, level.out_features);
  Matrix<S> y_t(batch, level.out_features);
  const Lengths one(rows.size(), 1);
  for (Index j = 0; j < count; ++j) {
    level.step(window(streams, rows, positions, one, 1), state, y_t);
    for (Index i = 0; i < batch; ++i) {
      out.at(i, j) = y_t.row(i);
      ++positions[std::size_t(i)];
    }
  }
  return out;
}

// Property 1: a ragged forward with garbage padding gives each row the
// outputs and final state of that row run alone, and zeros past its length.
template <typename Level>
void expect_rows_match_alone(const Level& level, const Lengths& lengths, Index time) {
  using S = typename Level::Scalar;
  SCOPED_TRACE(::testing::Message() << "lengths {" << lengths[0] << ", " << lengths[1] << ", "
                                    << lengths[2] << "} of " << time);
  std::mt19937_64 rng(31);
  const Index batch = Index(lengths.size());
  const auto streams = level.streams(batch, time, rng);
  auto state = level.init(batch);
  Sequence<S> y;
  level.forward(window(streams, first_rows(batch), Lengths(lengths.size(), 0), lengths, time),
                lengths, state, y);
  ASSERT_EQ(y.batch(), batch);
  ASSERT_EQ(y.time(), time);
  ASSERT_EQ(y.features(), level.out_features);
  EXPECT_TRUE(AllFinite(y.matrix()));
  for (Index b = 0; b < batch; ++b) {
    SCOPED_TRACE(::testing::Message() << "row " << b);
    const Index len = lengths[std::size_t(b)];
    EXPECT_TRUE(AllZero(y.rows_of(b).bottomRows(time - len)));
    auto alone = level.init(1);
    const Sequence<S> y_alone = forward_alone(level, streams, b, 0, len, alone);
    if (len > 0) {
      EXPECT_TRUE(Near(y.rows_of(b).topRows(len), y_alone.matrix(), Tol<S>::same_arithmetic));
    }
    const Parts<S> got = level.parts(state, b);
    EXPECT_TRUE(PartsFinite(got));
    if (len == 0) {
      EXPECT_TRUE(PartsIdentical(got, level.parts(alone, 0)));  // untouched
    } else {
      EXPECT_TRUE(PartsNear(got, level.parts(alone, 0), Tol<S>::same_arithmetic));
    }
  }
}

// Property 2: after a ragged forward each row continues with step from its
// own position, as the row alone does.
template <typename Level>
void expect_step_continues_each_row(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(32);
  const Lengths lengths{7, 0, 13};
  const Index time = 13, steps = 6;
  const auto streams = level.streams(3, time + steps, rng);
  auto state = level.init(3);
  Sequence<S> y;
  level.forward(window(streams, first_rows(3), {0, 0, 0}, lengths, time), lengths, state, y);
  const Sequence<S> next = step_rows(level, streams, first_rows(3), lengths, steps, state);
  EXPECT_TRUE(AllFinite(next.matrix()));
  for (Index b = 0; b < 3; ++b) {
    SCOPED_TRACE(::testing::Message() << "row " << b);
    const Index len = lengths[std::size_t(b)];
    auto alone = level.init(1);
    forward_alone(level, streams, b, 0, len, alone);
    const Sequence<S> next_alone = step_rows(level, streams, {b}, {len}, steps, alone);
    EXPECT_TRUE(Near(next.rows_of(b), next_alone.matrix(), Tol<S>::same_arithmetic));
    EXPECT_TRUE(PartsNear(level.parts(state, b), level.parts(alone, 0), Tol<S>::same_arithmetic));
  }
}

// Property 3a: reset_row(1) starts row 1 over (as a fresh state) and leaves
// the other rows exactly as they were.
template <typename Level>
void expect_reset_row_restarts_one_row(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(33);
  const Lengths lengths{9, 5, 9};
  const Index steps = 6;
  const auto streams = level.streams(3, 30, rng);
  auto state = level.init(3);
  Sequence<S> y;
  level.forward(window(streams, first_rows(3), {0, 0, 0}, lengths, 9), lengths, state, y);
  const Parts<S> row0 = level.parts(state, 0), row2 = level.parts(state, 2);
  state.reset_row(1);
  EXPECT_TRUE(PartsIdentical(level.parts(state, 0), row0));
  EXPECT_TRUE(PartsIdentical(level.parts(state, 2), row2));
  EXPECT_TRUE(PartsIdentical(level.parts(state, 1), level.parts(level.init(1), 0)));

  // Row 1 now serves a new sequence: stream 1 from step 20.
  const Sequence<S> next = step_rows(level, streams, first_rows(3), {9, 20, 9}, steps, state);
  auto fresh = level.init(1);
  const Sequence<S> fresh_next = step_rows(level, streams, {1}, {20}, steps, fresh);
  EXPECT_TRUE(Near(next.rows_of(1), fresh_next.matrix(), Tol<S>::same_arithmetic));
  EXPECT_TRUE(PartsNear(level.parts(state, 1), level.parts(fresh, 0), Tol<S>::same_arithmetic));
  for (Index b : {0, 2}) {
    SCOPED_TRACE(::testing::Message() << "row " << b);
    auto alone = level.init(1);
    forward_alone(level, streams, b, 0, 9, alone);
    const Sequence<S> next_alone = step_rows(level, streams, {b}, {9}, steps, alone);
    EXPECT_TRUE(Near(next.rows_of(b), next_alone.matrix(), Tol<S>::same_arithmetic));
    EXPECT_TRUE(PartsNear(level.parts(state, b), level.parts(alone, 0), Tol<S>::same_arithmetic));
  }
}

// Property 3b: copy_row_from sets a row to a given state (here the state of
// another sequence run alone), which then continues as that sequence.
template <typename Level>
void expect_copy_row_sets_a_row(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(34);
  const Lengths lengths{9, 5, 9};
  const Index steps = 6;
  const auto streams = level.streams(3, 40, rng);
  auto state = level.init(3);
  Sequence<S> y;
  level.forward(window(streams, first_rows(3), {0, 0, 0}, lengths, 9), lengths, state, y);
  // The donor: stream 0, steps [22, 28), alone.
  auto donor = level.init(1);
  forward_alone(level, streams, 0, 22, 6, donor);
  const Parts<S> row0 = level.parts(state, 0), row2 = level.parts(state, 2);
  state.copy_row_from(donor, 0, 1);
  EXPECT_TRUE(PartsIdentical(level.parts(state, 1), level.parts(donor, 0)));
  EXPECT_TRUE(PartsIdentical(level.parts(state, 0), row0));
  EXPECT_TRUE(PartsIdentical(level.parts(state, 2), row2));

  const Sequence<S> next = step_rows(level, streams, {0, 0, 2}, {9, 28, 9}, steps, state);
  const Sequence<S> donor_next = step_rows(level, streams, {0}, {28}, steps, donor);
  EXPECT_TRUE(Near(next.rows_of(1), donor_next.matrix(), Tol<S>::same_arithmetic));
  EXPECT_TRUE(PartsNear(level.parts(state, 1), level.parts(donor, 0), Tol<S>::same_arithmetic));
  auto alone = level.init(1);
  forward_alone(level, streams, 2, 0, 9, alone);
  const Sequence<S> next_alone = step_rows(level, streams, {2}, {9}, steps, alone);
  EXPECT_TRUE(Near(next.rows_of(2), next_alone.matrix(), Tol<S>::same_arithmetic));
}

// Property 3c: rows gathered from a batch-4 state into a batch-2 state, and
// scattered back into another batch-4 state, continue as the original rows.
template <typename Level>
void expect_gather_scatter_continue(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(35);
  const Lengths lengths{9, 13, 4, 11};
  const auto streams = level.streams(4, 30, rng);
  auto big = level.init(4);
  Sequence<S> y;
  level.forward(window(streams, first_rows(4), {0, 0, 0, 0}, lengths, 13), lengths, big, y);

  // Gather rows 3 and 1; step the pair and the original batch 5 times.
  auto pair = level.init(2);
  pair.copy_row_from(big, 3, 0);
  pair.copy_row_from(big, 1, 1);
  const Sequence<S> pair_next = step_rows(level, streams, {3, 1}, {11, 13}, 5, pair);
  const Sequence<S> big_next = step_rows(level, streams, first_rows(4), lengths, 5, big);
  EXPECT_TRUE(Near(pair_next.rows_of(0), big_next.rows_of(3), Tol<S>::same_arithmetic));
  EXPECT_TRUE(Near(pair_next.rows_of(1), big_next.rows_of(1), Tol<S>::same_arithmetic));
  EXPECT_TRUE(PartsNear(level.parts(pair, 0), level.parts(big, 3), Tol<S>::same_arithmetic));
  EXPECT_TRUE(PartsNear(level.parts(pair, 1), level.parts(big, 1), Tol<S>::same_arithmetic));

  // Scatter: a fresh batch-4 state holding the original rows 1, 0, 3, 2 (the
  // pair's rows go to slots 0 and 2), stepped 4 more times.
  auto shuffled = level.init(4);
  shuffled.copy_row_from(pair, 1, 0);
  shuffled.copy_row_from(big, 0, 1);
  shuffled.copy_row_from(pair, 0, 2);
  shuffled.copy_row_from(big, 2, 3);
  const std::vector<Index> order{1, 0, 3, 2};
  std::vector<Index> positions(4);
  for (std::size_t i = 0; i < 4; ++i) positions[i] = lengths[std::size_t(order[i])] + 5;
  const Sequence<S> shuffled_next = step_rows(level, streams, order, positions, 4, shuffled);
  const Sequence<S> big_after =
      step_rows(level, streams, first_rows(4),
                {lengths[0] + 5, lengths[1] + 5, lengths[2] + 5, lengths[3] + 5}, 4, big);
  for (Index i = 0; i < 4; ++i) {
    SCOPED_TRACE(::testing::Message() << "slot " << i);
    const Index original = order[std::size_t(i)];
    EXPECT_TRUE(
        Near(shuffled_next.rows_of(i), big_after.rows_of(original), Tol<S>::same_arithmetic));
    EXPECT_TRUE(
        PartsNear(level.parts(shuffled, i), level.parts(big, original), Tol<S>::same_arithmetic));
  }
}

// Property 3d: a forward from a non-zero ("warm") state, ragged, equals
// running prefix and rest in one forward pass (and, to the last bits, the
// same split run alone). Row 1 has no prefix (its initial state is zero next
// to warm rows) and row 2 no rest (its state must stay as the prefix left it).
template <typename Level>
void expect_warm_start_equals_prefix_plus_rest(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(36);
  const Lengths prefix{6, 0, 4}, rest{5, 7, 0};
  const auto streams = level.streams(3, 13, rng);
  auto state = level.init(3);
  Sequence<S> y;
  level.forward(window(streams, first_rows(3), {0, 0, 0}, prefix, 6), prefix, state, y);
  level.forward(window(streams, first_rows(3), prefix, rest, 7), rest, state, y);
  EXPECT_TRUE(AllFinite(y.matrix()));
  for (Index b = 0; b < 3; ++b) {
    SCOPED_TRACE(::testing::Message() << "row " << b);
    const Index p = prefix[std::size_t(b)], r = rest[std::size_t(b)];
    EXPECT_TRUE(AllZero(y.rows_of(b).bottomRows(7 - r)));
    // The same split, alone.
    auto split = level.init(1);
    forward_alone(level, streams, b, 0, p, split);
    const Sequence<S> y_split = forward_alone(level, streams, b, p, r, split);
    if (r > 0) {
      EXPECT_TRUE(Near(y.rows_of(b).topRows(r), y_split.matrix(), Tol<S>::same_arithmetic));
    }
    EXPECT_TRUE(PartsNear(level.parts(state, b), level.parts(split, 0), Tol<S>::same_arithmetic));
    // Prefix and rest in one piece, alone.
    auto whole = level.init(1);
    const Sequence<S> y_whole = forward_alone(level, streams, b, 0, p + r, whole);
    if (r > 0) {
      EXPECT_TRUE(
          Near(y.rows_of(b).topRows(r), y_whole.matrix().bottomRows(r), level.whole_vs_split));
    }
    EXPECT_TRUE(PartsNear(level.parts(state, b), level.parts(whole, 0), level.whole_vs_split));
  }
}

// Property 4a: bad lengths throw an Error naming 'lengths' and change nothing.
template <typename Level>
void expect_bad_lengths_rejected(const Level& level) {
  using S = typename Level::Scalar;
  std::mt19937_64 rng(37);
  const auto x = level.streams(3, 5, rng);
  auto state = level.init(3);
  Sequence<S> y;
  for (const Lengths& bad :
       {Lengths{5, 5}, Lengths{5, 5, 5, 5}, Lengths{2, -1, 5}, Lengths{2, 6, 5}}) {
    EXPECT_TRUE(ThrowsMentioning([&] { level.forward(x, bad, state, y); }, "lengths"));
  }
  const auto zero = level.init(1);
  for (Index b = 0; b < 3; ++b)
    EXPECT_TRUE(PartsIdentical(level.parts(state, b), level.parts(zero, 0)));
}

// Property 4b: copy_row_from and reset_row reject rows out of range.
template <typename Level>
void expect_bad_rows_rejected(const Level& level) {
  auto big = level.init(4), pair = level.init(2);
  EXPECT_NO_THROW(pair.copy_row_from(big, 3, 1));
  EXPECT_NO_THROW(big.copy_row_from(pair, 1, 3));
  EXPECT_NO_THROW(pair.reset_row(1));
  for (const auto& rows : std::vector<std::pair<Index, Index>>{{4, 0}, {-1, 0}, {0, 2}, {0, -1}}) {
    // Named copies: a lambda cannot capture structured bindings before C++20.
    const Index src = rows.first, dst = rows.second;
    SCOPED_TRACE(::testing::Message() << "rows " << src << " -> " << dst);
    EXPECT_TRUE(ThrowsMentioning([&] { pair.copy_row_from(big, src, dst); }, "copy_row_from"));
  }
  EXPECT_THROW(pair.reset_row(2), xlstm::Error);
  EXPECT_THROW(pair.reset_row(-1), xlstm::Error);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

template <typename S>
class Ragged : public ::testing::Test {};
TYPED_TEST_SUITE(Ragged, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(Ragged, EachRowEqualsRunningItAloneWithPaddingIgnored) {
  for_each_level<TypeParam>([](const auto& level) {
    for (const Lengths& lengths :
         {Lengths{7, 0, 13}, Lengths{13, 13, 13}, Lengths{2, 13, 1}, Lengths{0, 0, 0}}) {
      expect_rows_match_alone(level, lengths, 13);
    }
  });
}

// With every row full, the ragged call is the plain call: no lengths at all
// gives bit-identical outputs and states.
TYPED_TEST(Ragged, FullLengthsAreTheSameAsNoLengths) {
  using S = TypeParam;
  for_each_level<S>([](const auto& level) {
    std::mt19937_64 rng(38);
    const auto x = level.streams(3, 13, rng);
    auto with = level.init(3), without = level.init(3);
    Sequence<S> y_with, y_without;
    level.forward(x, Lengths{13, 13, 13}, with, y_with);
    level.forward(x, Lengths{}, without, y_without);
    EXPECT_TRUE(Identical(y_with.matrix(), y_without.matrix()));
    for (Index b = 0; b < 3; ++b) {
      EXPECT_TRUE(PartsIdentical(level.parts(with, b), level.parts(without, b)));
    }
  });
}

TYPED_TEST(Ragged, StepContinuesEachRowFromItsOwnLength) {
  for_each_level<TypeParam>([](const auto& level) { expect_step_continues_each_row(level); });
}

TYPED_TEST(Ragged, ResetRowRestartsThatRowAndLeavesTheOthers) {
  for_each_level<TypeParam>([](const auto& level) { expect_reset_row_restarts_one_row(level); });
}

TYPED_TEST(Ragged, CopyRowFromSetsARowToAGivenState) {
  for_each_level<TypeParam>([](const auto& level) { expect_copy_row_sets_a_row(level); });
}

TYPED_TEST(Ragged, GatheredAndScatteredRowsContinueAsTheOriginals) {
  for_each_level<TypeParam>([](const auto& level) { expect_gather_scatter_continue(level); });
}

TYPED_TEST(Ragged, WarmStartEqualsRunningPrefixAndRestTogether) {
  for_each_level<TypeParam>([](const auto& level) {
    if (level.warm_forward) expect_warm_start_equals_prefix_plus_rest(level);
  });
}

TYPED_TEST(Ragged, BadLengthsThrowNamingLengths) {
  for_each_level<TypeParam>([](const auto& level) { expect_bad_lengths_rejected(level); });
}

TYPED_TEST(Ragged, RowControlRejectsRowsOutOfRange) {
  for_each_level<TypeParam>([](const auto& level) { expect_bad_rows_rejected(level); });
}

// The parallel form starts from the zero state only; a warm state is refused.
TYPED_TEST(Ragged, ParallelFormRefusesAWarmState) {
  using S = TypeParam;
  const MLstmCellLevel<S> level(MLstmForm::parallel, MLstmStateConvention::scaled_keys);
  std::mt19937_64 rng(39);
  const auto x = level.streams(2, 4, rng);
  auto state = level.init(2);
  Sequence<S> y;
  level.forward(x, Lengths{4, 0}, state, y);
  EXPECT_TRUE(ThrowsMentioning([&] { level.forward(x, Lengths{2, 4}, state, y); }, "parallel"));
}

// `automatic` picks the form per row, from the row's own length and state, so
// a fresh row next to a warm one, or a short row in a long batch, runs the
// parallel form as it does alone. The input gates are very negative here,
// which makes the parallel and chunkwise outputs differ visibly (by the eps
// term of math §4.5, about 1e-7 relative) so that a wrong choice shows in
// double.
TYPED_TEST(Ragged, AutomaticFormIsChosenPerRow) {
  using S = TypeParam;
  const auto scaled = MLstmStateConvention::scaled_keys;
  const MLstmCellLevel<S> automatic(MLstmForm::automatic, scaled, 8),
      parallel(MLstmForm::parallel, scaled, 8), chunkwise(MLstmForm::chunkwise, scaled, 8);
  std::mt19937_64 rng(40);
  auto streams = automatic.streams(2, 16, rng);
  const Index gates = 2 * automatic.qk + automatic.v;
  streams.matrix().middleCols(gates, automatic.nh).array() -= S(8);                 // input
  streams.matrix().middleCols(gates + automatic.nh, automatic.nh).array() += S(2);  // forget
  for (Index len : {6, 10}) {
    SCOPED_TRACE(::testing::Message() << "row 1 has " << len << " steps");
    auto state = automatic.init(2);
    Sequence<S> y;
    automatic.forward(window(streams, {0, 1}, {0, 0}, {4, 0}, 4), {4, 0}, state, y);  // row 0 warm
    automatic.forward(window(streams, {0, 1}, {4, 0}, {12, len}, 12), {12, len}, state, y);
    // Alone, row 1 starts from zero: parallel up to 8 steps, chunkwise beyond.
    const auto& alone_level = len <= 8 ? parallel : chunkwise;
    auto alone = alone_level.init(1);
    const Sequence<S> y_alone = forward_alone(alone_level, streams, 1, 0, len, alone);
    EXPECT_TRUE(Near(y.rows_of(1).topRows(len), y_alone.matrix(), Tol<S>::same_arithmetic));
    if constexpr (std::is_same_v<S, double>) {
      // The test can tell the forms apart.
      const auto& other_level = len <= 8 ? chunkwise : parallel;
      auto other = other_level.init(1);
      const Sequence<S> y_other = forward_alone(other_level, streams, 1, 0, len, other);
      const double scale = double(y_alone.matrix().cwiseAbs().maxCoeff());
      EXPECT_GT(double((y_other.matrix() - y_alone.matrix()).cwiseAbs().maxCoeff()),
                100 * Tol<S>::same_arithmetic.value * scale);
    }
  }
}

TYPED_TEST(Ragged, CopyRowFromRejectsStatesOfAnotherShape) {
  using S = TypeParam;
  auto rejects = [](auto& to, const auto& from) {
    EXPECT_TRUE(ThrowsMentioning([&] { to.copy_row_from(from, 0, 0); }, "copy_row_from"));
  };
  {
    xlstm::SLstmState<S> a(2, 8), b(2, 12);
    rejects(a, b);
  }
  {
    using xlstm::MLstmState;
    const auto scaled = MLstmStateConvention::scaled_keys;
    MLstmState<S> a(2, 2, 4, 6, scaled);
    for (const MLstmState<S>& b :
         {MLstmState<S>(2, 3, 4, 6, scaled), MLstmState<S>(2, 2, 5, 6, scaled),
          MLstmState<S>(2, 2, 4, 7, scaled),
          MLstmState<S>(2, 2, 4, 6, MLstmStateConvention::unscaled_keys)}) {
      rejects(a, b);
    }
  }
  {
    xlstm::CausalConv1dState<S> a(2, 4, 5), b(2, 3, 5), c(2, 4, 6);
    rejects(a, b);
    rejects(a, c);
  }
  {
    MLstmBlockConfig other_config = MLstmBlockLevel<S>::config();
    other_config.mlstm.embedding_dim = 4 * kEmbedding;  // inner 128 instead of 64
    const MLstmBlock<S> block(MLstmBlockLevel<S>::config()), other(other_config);
    auto a = block.initial_state(2);
    rejects(a, other.initial_state(2));
  }
  {
    const SLstmBlock<S> block(slstm_block_config(true, 4, "slstm")),
        other(slstm_block_config(true, 2, "slstm"));
    auto a = block.initial_state(2);
    rejects(a, other.initial_state(2));
  }
  {
    const BlockStack<S> stack(mixed_stack_config()), swapped(mixed_stack_config({0, 2})),
        shorter(mixed_stack_config({1}, 3));
    auto a = stack.initial_state(2);
    rejects(a, swapped.initial_state(2));
    rejects(a, shorter.initial_state(2));
  }
  {
    auto other_config = lm_config();
    other_config.slstm_at = {0, 2};
    const LanguageModel<S> model(lm_config()), other(other_config);
    auto a = model.initial_state(2);
    rejects(a, other.initial_state(2));
  }
  {
    const LargeModel<S> model(large_config()), deeper(large_config(3)),
        more_heads(large_config(2, 4));
    auto a = model.initial_state(2);
    rejects(a, deeper.initial_state(2));
    rejects(a, more_heads.initial_state(2));
  }
}

}  // namespace

}  // namespace xlstm_test_ragged
