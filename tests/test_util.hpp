// Helpers shared by the test programs in tests/: matrix comparisons that
// explain a failure, tolerances per scalar type, the check that a call throws
// xlstm::Error naming what is wrong, random inputs and parameters, the configs
// of the small modules and models the tests build, temporary files, and the
// detection of sanitizer builds. A helper lives here once it is needed by two
// test files; one test file's own helpers stay in that file.
//
// Everything is a template or `inline` (one definition across the test
// program's translation units, no warning where a helper is unused). A file
// takes what it uses with using-declarations: `using test_util::Close;`.
//
// The config factories set the sizes a test passes and leave every other
// field at the library's default; a test that needs more sets it on the
// returned config. They pull in the model headers (about a second of compile
// time for a test file that would not need them otherwise).
//
// test_no_alloc.cpp defines EIGEN_RUNTIME_NO_MALLOC and eigen_assert before
// its first include of Eigen; this header must come after those definitions.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/random.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

// XLSTM_TEST_UNDER_ASAN / XLSTM_TEST_UNDER_TSAN: defined when this program is
// built with AddressSanitizer / ThreadSanitizer (GCC defines the
// __SANITIZE_*__ macros, Clang answers __has_feature), so that long tests can
// do less work in those much slower builds.
#if defined(__SANITIZE_ADDRESS__)
#define XLSTM_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XLSTM_TEST_UNDER_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define XLSTM_TEST_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define XLSTM_TEST_UNDER_TSAN 1
#endif
#endif

namespace test_util {

using xlstm::Index;
using xlstm::Tokens;

// The scalar types every typed test runs with.
using Scalars = ::testing::Types<float, double>;

// ---------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------

// |actual - expected| <= tol * max(floor, max|expected|) elementwise; NaN in
// either argument fails.
template <typename A, typename B>
::testing::AssertionResult Close(const Eigen::DenseBase<A>& actual,
                                 const Eigen::DenseBase<B>& expected, double tol,
                                 double floor = 1.0) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    return ::testing::AssertionFailure() << "shape " << actual.rows() << "x" << actual.cols()
                                         << " vs " << expected.rows() << "x" << expected.cols();
  }
  double scale = floor;
  for (Index i = 0; i < expected.rows(); ++i) {
    for (Index j = 0; j < expected.cols(); ++j) {
      scale = std::max(scale, std::abs(double(expected(i, j))));
    }
  }
  double worst = 0;
  Index wi = 0, wj = 0;
  for (Index i = 0; i < actual.rows(); ++i) {
    for (Index j = 0; j < actual.cols(); ++j) {
      const double d = std::abs(double(actual(i, j)) - double(expected(i, j)));
      if (std::isnan(d)) {
        return ::testing::AssertionFailure() << "NaN at (" << i << ", " << j << "): actual "
                                             << actual(i, j) << ", expected " << expected(i, j);
      }
      if (d > worst) {
        worst = d;
        wi = i;
        wj = j;
      }
    }
  }
  if (worst <= tol * scale) {
    return ::testing::AssertionSuccess() << "max |diff| " << worst << " <= " << tol * scale;
  }
  return ::testing::AssertionFailure()
         << "max |diff| " << worst << " at (" << wi << ", " << wj << "): actual " << actual(wi, wj)
         << ", expected " << expected(wi, wj) << "; allowed " << tol << " * " << scale << " = "
         << tol * scale << " (ratio " << worst / (tol * scale) << ")";
}

// Equal values, element by element (operator==: -0 equals 0, NaN equals
// nothing); the first difference in the message.
template <typename A, typename B>
::testing::AssertionResult Identical(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return ::testing::AssertionFailure() << "shape";
  for (Index i = 0; i < a.rows(); ++i) {
    for (Index j = 0; j < a.cols(); ++j) {
      if (!(a(i, j) == b(i, j))) {
        return ::testing::AssertionFailure()
               << "differs at (" << i << ", " << j << "): " << a(i, j) << " vs " << b(i, j);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// Bit for bit the same (same shape, same bytes per element; NaN == NaN, and
// -0 differs from 0).
template <typename A, typename B>
::testing::AssertionResult BitIdentical(const Eigen::DenseBase<A>& actual,
                                        const Eigen::DenseBase<B>& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    return ::testing::AssertionFailure() << "shape differs";
  }
  for (Index i = 0; i < actual.rows(); ++i) {
    for (Index j = 0; j < actual.cols(); ++j) {
      const auto a = actual(i, j);
      const auto b = expected(i, j);
      if (std::memcmp(&a, &b, sizeof a) != 0) {
        return ::testing::AssertionFailure()
               << "differs at (" << i << ", " << j << "): " << a << " vs " << b;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// No NaN and no infinity; the first offending element in the message.
template <typename D>
::testing::AssertionResult AllFinite(const Eigen::DenseBase<D>& x) {
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      if (!std::isfinite(x(i, j))) {
        return ::testing::AssertionFailure() << "element (" << i << ", " << j << ") is " << x(i, j);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// max |a - b| over all elements, computed in the widest of double and the
// two scalar types; a shape mismatch fails the test and gives infinity.
template <typename A, typename B>
auto max_abs_diff(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  using T = std::common_type_t<double, typename A::Scalar, typename B::Scalar>;
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<T>::infinity();
  if (a.size() == 0) return T(0);
  return T((a.derived().template cast<T>() - b.derived().template cast<T>()).cwiseAbs().maxCoeff());
}

// Whether any element is NaN.
template <typename D>
bool any_nan(const Eigen::DenseBase<D>& x) {
  return x.derived().array().isNaN().any();
}

// ---------------------------------------------------------------------------
// Tolerances
// ---------------------------------------------------------------------------

// `if_float` when S is float, `if_double` when S is double: a tolerance (or
// its label) for the precision a typed test runs in.
template <typename S, typename T>
constexpr T per_scalar(T if_float, T if_double) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "S: float or double");
  return std::is_same_v<S, float> ? if_float : if_double;
}

// Tolerance of the cell tests (test_slstm_cell.cpp, test_mlstm_cell.cpp) for
// two computations of the same function in different orders (chunkwise vs
// recurrent, split vs whole sequence, two conventions), relative to the
// reference's scale as their file comments define it.
//
// Each output is a ratio of two sums of at most T_eff terms, where T_eff ~ 20
// is the memory length of forget gates ~ N(3, 1.5) (log f ~ -0.05 per step).
// Every term carries a few roundings (exp, products, the scale). The absolute
// error of a sum is about u * (number of terms) * (largest term), and the
// terms are at most of the output's scale, so the error bound is roughly
// 4 * T_eff * u ~ 80 u relative to max(1, |h|): 5e-6 in float (u = 6e-8),
// 1.8e-14 in double (u = 1.1e-16). The largest errors measured on these
// tests are 2.7e-6 (float, T = 100000) and 2e-15 (double) relative to that
// scale. Allowed: float 2e-5 (4x the estimate; math §10 asks atol 1e-5
// between forms for h of order 1, and h here reaches 20 to 80), double 1e-12
// (math §10: "all three forms agree to ~1e-12" in float64; 50x the estimate,
// room for other compilers, FMA contraction and vectorisation orders).
template <typename S>
struct CellTol {
  static constexpr double rounding = per_scalar<S>(2e-5, 1e-12);
};

// Comparisons where one side ran the mLSTM parallel form (the forward pass
// from a zero state with T <= parallel_max_length; test_model.cpp,
// test_ragged.cpp). Its outputs differ from the recurrent and chunkwise forms
// by the eps term of math §4.5: every head's h at every step is scaled by a
// factor within 1 +- eps = 1 +- 1e-6, which propagates through the following
// blocks and steps. That is far above double rounding: 1e-5 in double (10x
// the per-layer bound; measured 1.3e-8). In float, rounding dominates: 1e-4.
template <typename S>
inline constexpr double kWithParallelTol = per_scalar<S>(1e-4, 1e-5);

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

// `fn` throws xlstm::Error (nothing else) whose message holds every needle
// (frugally-deep style: messages carry the names and shapes involved).
template <typename Fn>
::testing::AssertionResult ThrowsMentioning(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const xlstm::Error& e) {
    const std::string message = e.what();
    for (const auto& needle : needles) {
      if (message.find(needle) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message \"" << message << "\" lacks \"" << needle << "\"";
      }
    }
    return ::testing::AssertionSuccess() << message;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-xlstm exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// The same with one needle.
template <typename Fn>
::testing::AssertionResult ThrowsMentioning(Fn&& fn, const std::string& needle) {
  return ThrowsMentioning(std::forward<Fn>(fn), {needle});
}

// ---------------------------------------------------------------------------
// Inputs: random values, pieces of sequences
// ---------------------------------------------------------------------------

// Every element of m drawn from N(mean, stddev^2). The random test data of
// this file comes from xlstm's own distributions (core/random.hpp), not
// std::'s, so that a test sees the same numbers with libstdc++, libc++ and
// MSVC's library.
template <typename Derived, typename Engine>
void fill_normal(Eigen::PlainObjectBase<Derived>& m, Engine& rng, double mean = 0.0,
                 double stddev = 1.0) {
  if constexpr (std::is_same_v<Engine, std::mt19937_64>) {
    xlstm::NormalDistribution dist(mean, stddev);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = typename Derived::Scalar(dist(rng));
  } else {  // other engines (std::mt19937 in a few tests): std::'s distribution
    std::normal_distribution<double> dist(mean, stddev);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = typename Derived::Scalar(dist(rng));
  }
}

// A rows x cols matrix of N(mean, stddev^2) values.
template <typename S, typename Engine>
xlstm::Matrix<S> random_matrix(Index rows, Index cols, Engine& rng, double mean = 0.0,
                               double stddev = 1.0) {
  xlstm::Matrix<S> m(rows, cols);
  fill_normal(m, rng, mean, stddev);
  return m;
}

// A B x T x F sequence of N(mean, stddev^2) values.
template <typename S, typename Engine>
xlstm::Sequence<S> random_sequence(Index batch, Index time, Index features, Engine& rng,
                                   double mean = 0.0, double stddev = 1.0) {
  xlstm::Sequence<S> s(batch, time, features);
  fill_normal(s.matrix(), rng, mean, stddev);
  return s;
}

// Steps [t0, t0 + len) of every batch row.
template <typename S>
xlstm::Sequence<S> time_slice(const xlstm::Sequence<S>& s, Index t0, Index len) {
  xlstm::Sequence<S> out(s.batch(), len, s.features());
  for (Index b = 0; b < s.batch(); ++b) out.rows_of(b) = s.rows_of(b).middleRows(t0, len);
  return out;
}

// Batch row b only, as a batch of one.
template <typename S>
xlstm::Sequence<S> batch_row(const xlstm::Sequence<S>& s, Index b) {
  xlstm::Sequence<S> out(1, s.time(), s.features());
  out.rows_of(0) = s.rows_of(b);
  return out;
}

// The B x F matrix of time step t, as a strided view (rows t, T + t, ...).
template <typename S>
using ConstStepView = Eigen::Map<const xlstm::Matrix<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using StepView = Eigen::Map<xlstm::Matrix<S>, 0, Eigen::OuterStride<>>;

template <typename S>
ConstStepView<S> at_time(const xlstm::Sequence<S>& s, Index t) {
  return ConstStepView<S>(s.matrix().data() + t * s.features(), s.batch(), s.features(),
                          Eigen::OuterStride<>(s.time() * s.features()));
}
template <typename S>
StepView<S> at_time(xlstm::Sequence<S>& s, Index t) {
  return StepView<S>(s.matrix().data() + t * s.features(), s.batch(), s.features(),
                     Eigen::OuterStride<>(s.time() * s.features()));
}

// B x T token ids, uniform in [0, vocab).
inline Tokens random_tokens(Index batch, Index time, Index vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> dist(0, vocab - 1);
  Tokens t(batch, time);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = dist(rng);
  return t;
}

// The same from a fresh generator seeded with `seed`.
inline Tokens random_tokens(Index batch, Index time, Index vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return random_tokens(batch, time, vocab, rng);
}

// ---------------------------------------------------------------------------
// Finite differences (backward passes, design §7)
// ---------------------------------------------------------------------------

// sum(a * b) over all elements (dense storage), in long double: a loss of
// cotangent form whose differences lose fewer digits.
template <typename A, typename B>
long double dot(const A& a, const B& b) {
  long double sum = 0;
  for (Index i = 0; i < a.size(); ++i) sum += (long double)a.data()[i] * b.data()[i];
  return sum;
}

// A float64 tensor a loss reads (perturbed in place by the check) and its
// analytic gradient.
struct GradientTarget {
  std::string name;
  double* data;
  Index size;
  const double* grad;
};

// One target per parameter of `module`, its gradient the tensor of the same
// name in `grads` (a gradient object listing the same names and shapes).
template <typename Module, typename Grads>
std::vector<GradientTarget> parameter_targets(Module& module, const Grads& grads) {
  const auto params = xlstm::parameter_list(module);
  const auto grad_list = xlstm::parameter_list(grads);
  EXPECT_EQ(params.size(), grad_list.size());
  std::vector<GradientTarget> out;
  for (std::size_t i = 0; i < std::min(params.size(), grad_list.size()); ++i) {
    EXPECT_EQ(params[i].name, grad_list[i].name);
    EXPECT_EQ(params[i].shape, grad_list[i].shape) << params[i].name;
    out.push_back({params[i].name, params[i].data, Index(params[i].size()), grad_list[i].data});
  }
  return out;
}

// Every target against float64 central differences of `loss` (a callable
// returning long double) along `directions` random unit directions, with one
// Richardson step (error O(h^4)). The error is relative to the directional
// derivative, floored at 1e-6 of the loss's scale. EXPECTs each error <=
// `tol` and returns the worst.
template <typename Loss>
double expect_gradients_match_differences(Loss&& loss, const std::vector<GradientTarget>& targets,
                                          std::uint64_t seed, double tol = 1e-6, int directions = 2,
                                          double step = 1e-3) {
  std::mt19937_64 rng(seed);
  xlstm::NormalDistribution normal;
  const double floor = 1e-6 * double(std::abs(loss())) + 1e-12;
  double worst = 0;
  for (const auto& target : targets) {
    for (int trial = 0; trial < directions; ++trial) {
      std::vector<double> u(std::size_t(target.size));
      double norm = 0;
      for (double& v : u) {
        v = normal(rng);
        norm += v * v;
      }
      double exact = 0;
      for (std::size_t i = 0; i < u.size(); ++i) {
        u[i] /= std::sqrt(norm);
        exact += target.grad[i] * u[i];
      }
      const std::vector<double> saved(target.data, target.data + target.size);
      auto central = [&](double h) {
        auto at = [&](double shift) {
          for (std::size_t i = 0; i < u.size(); ++i) target.data[i] = saved[i] + shift * u[i];
          return loss();
        };
        const long double difference = at(h) - at(-h);
        std::copy(saved.begin(), saved.end(), target.data);
        return double(difference / (2 * h));
      };
      const double numeric = (4 * central(step / 2) - central(step)) / 3;
      const double error = std::abs(exact - numeric) / std::max(std::abs(numeric), floor);
      worst = std::max(worst, error);
      EXPECT_LE(error, tol) << target.name << ": backward " << exact << ", differences " << numeric;
    }
  }
  return worst;
}

// ---------------------------------------------------------------------------
// Random parameters
// ---------------------------------------------------------------------------

// N(0, stddev^2) added to every parameter of `module`.
template <typename Module>
void add_noise(Module& module, std::mt19937_64& rng, double stddev) {
  xlstm::ParameterList<typename Module::Scalar> params;
  params = xlstm::parameter_list(module, "");
  xlstm::NormalDistribution dist(0.0, stddev);
  for (const auto& p : params) {
    for (std::size_t i = 0; i < xlstm::shape_product(p.shape); ++i) {
      p.data[i] += typename Module::Scalar(dist(rng));
    }
  }
}

// The official initialisation, then N(0, noise^2) on every parameter (same
// generator), so that nothing is trivially zero or one (recurrent kernels,
// gate weights, norm weights, learnable skip) and every code path carries a
// signal.
template <typename Module>
void randomize(Module& module, std::uint64_t seed, double noise = 0.1) {
  xlstm::Rng rng(seed);
  module.initialize(rng);
  add_noise(module, rng.engine(), noise);
}

// ---------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------

// An mLSTM cell: `num_heads` heads of query/key size `qk_head_dim` and value
// size `v_head_dim`; convention and chunk size as given, else the defaults.
inline xlstm::MLstmCellConfig mlstm_cell_config(
    Index num_heads, Index qk_head_dim, Index v_head_dim,
    xlstm::MLstmStateConvention convention = xlstm::MLstmStateConvention::scaled_keys,
    Index chunk_size = xlstm::MLstmCellConfig{}.chunk_size) {
  xlstm::MLstmCellConfig c;
  c.num_heads = num_heads;
  c.qk_head_dim = qk_head_dim;
  c.v_head_dim = v_head_dim;
  c.convention = convention;
  c.chunk_size = chunk_size;
  return c;
}

// An sLSTM cell: `hidden_size` units in `num_heads` heads; first-step rule and
// function as given, else the defaults.
inline xlstm::SLstmCellConfig slstm_cell_config(
    Index hidden_size, Index num_heads,
    xlstm::FirstStepRule rule = xlstm::FirstStepRule::whole_batch,
    xlstm::SLstmFunction function = xlstm::SLstmFunction::slstm) {
  xlstm::SLstmCellConfig c;
  c.hidden_size = hidden_size;
  c.num_heads = num_heads;
  c.first_step_rule = rule;
  c.function = function;
  return c;
}

// An mLSTM block of width `embedding_dim` with `num_heads` heads and the
// given context length (-1, the default, leaves it unset).
inline xlstm::MLstmBlockConfig mlstm_block_config(Index embedding_dim, Index num_heads = 4,
                                                  Index context_length = -1) {
  xlstm::MLstmBlockConfig c;
  c.mlstm.embedding_dim = embedding_dim;
  c.mlstm.num_heads = num_heads;
  c.mlstm.context_length = context_length;
  return c;
}

// An sLSTM block of width `embedding_dim` with `num_heads` heads.
inline xlstm::SLstmBlockConfig slstm_block_config(Index embedding_dim, Index num_heads = 4) {
  xlstm::SLstmBlockConfig c;
  c.slstm.embedding_dim = embedding_dim;
  c.slstm.num_heads = num_heads;
  return c;
}

// A mixed stack (BlockStackConfig or LanguageModelConfig): `num_blocks`
// blocks of width `embedding_dim`, sLSTM blocks at `slstm_at` and mLSTM
// blocks elsewhere, every cell with `num_heads` heads; the rest (context
// length, vocabulary, ...) as the config's defaults, for the caller to set.
template <typename Config>
Config mixed_stack_config(Index embedding_dim, Index num_blocks, std::vector<Index> slstm_at,
                          Index num_heads = 4) {
  Config c;
  c.mlstm_block.emplace();
  c.mlstm_block->mlstm.num_heads = num_heads;
  c.slstm_block.emplace();
  c.slstm_block->slstm.num_heads = num_heads;
  c.num_blocks = num_blocks;
  c.embedding_dim = embedding_dim;
  c.slstm_at = std::move(slstm_at);
  return c;
}

// A language model over the mixed stack above, with a vocabulary of
// `vocab_size` and the given context length (-1, the default, leaves it unset).
inline xlstm::LanguageModelConfig lm_config(Index embedding_dim, Index num_blocks,
                                            std::vector<Index> slstm_at, Index vocab_size,
                                            Index context_length = -1, Index num_heads = 4) {
  auto c = mixed_stack_config<xlstm::LanguageModelConfig>(embedding_dim, num_blocks,
                                                          std::move(slstm_at), num_heads);
  c.context_length = context_length;
  c.vocab_size = vocab_size;
  return c;
}

// An xLSTM-Large model: `num_blocks` blocks of width `embedding_dim` with
// `num_heads` heads and a vocabulary of `vocab_size`.
inline xlstm::LargeModelConfig large_config(Index embedding_dim, Index num_heads, Index num_blocks,
                                            Index vocab_size) {
  xlstm::LargeModelConfig c;
  c.embedding_dim = embedding_dim;
  c.num_heads = num_heads;
  c.num_blocks = num_blocks;
  c.vocab_size = vocab_size;
  return c;
}

// ---------------------------------------------------------------------------
// Temporary files
// ---------------------------------------------------------------------------

// A file name under the temporary directory, unique per test (and random),
// removed (with the checkpoint writer's ".tmp" sibling) when it goes out of
// scope.
class TempPath {
 public:
  explicit TempPath(const std::string& tag) {
    std::string name = "xlstm_test_" + std::to_string(std::random_device{}()) + "_";
    if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
      name += std::string(info->test_suite_name()) + "_" + info->name() + "_";
    }
    name += tag + ".safetensors";
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = (std::filesystem::temp_directory_path() / name).string();
  }
  ~TempPath() {
    std::remove(path_.c_str());
    std::remove((path_ + ".tmp").c_str());
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

}  // namespace test_util
