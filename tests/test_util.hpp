// Helpers shared by the test programs in tests/: matrix comparisons that
// explain a failure, the check that a call throws xlstm::Error naming what is
// wrong, random inputs and parameters, temporary files, and the detection of
// sanitizer builds. A helper lives here once it is needed by two test files;
// one test file's own helpers stay in that file.
//
// Everything is a template or `inline` (one definition across the test
// program's translation units, no warning where a helper is unused). A file
// takes what it uses with using-declarations: `using test_util::Close;`.
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
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

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

// xlstm::Tokens (model/language_model.hpp), spelled out so that this header
// does not pull the model headers into the cell and component tests.
using TokenMatrix = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

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
// Random inputs
// ---------------------------------------------------------------------------

// Every element of m drawn from N(mean, stddev^2).
template <typename Derived, typename Engine>
void fill_normal(Eigen::PlainObjectBase<Derived>& m, Engine& rng, double mean = 0.0,
                 double stddev = 1.0) {
  std::normal_distribution<double> dist(mean, stddev);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = typename Derived::Scalar(dist(rng));
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

// B x T token ids, uniform in [0, vocab).
inline TokenMatrix random_tokens(Index batch, Index time, Index vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> dist(0, vocab - 1);
  TokenMatrix t(batch, time);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = dist(rng);
  return t;
}

// The same from a fresh generator seeded with `seed`.
inline TokenMatrix random_tokens(Index batch, Index time, Index vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return random_tokens(batch, time, vocab, rng);
}

// ---------------------------------------------------------------------------
// Random parameters
// ---------------------------------------------------------------------------

// N(0, stddev^2) added to every parameter of `module`.
template <typename Module>
void add_noise(Module& module, std::mt19937_64& rng, double stddev) {
  xlstm::ParameterList<typename Module::Scalar> params;
  params = xlstm::parameter_list(module, "");
  std::normal_distribution<double> dist(0.0, stddev);
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
// Model configurations
// ---------------------------------------------------------------------------

// A mixed stack (BlockStackConfig or LanguageModelConfig): `num_blocks`
// blocks of width `embedding_dim`, sLSTM blocks at `slstm_at` and mLSTM
// blocks elsewhere, every cell with 4 heads; the rest (context length,
// vocabulary, ...) as the config's defaults, for the caller to set.
template <typename Config>
Config mixed_stack_config(Index embedding_dim, Index num_blocks, std::vector<Index> slstm_at) {
  Config c;
  c.mlstm_block.emplace();
  c.mlstm_block->mlstm.num_heads = 4;
  c.slstm_block.emplace();
  c.slstm_block->slstm.num_heads = 4;
  c.num_blocks = num_blocks;
  c.embedding_dim = embedding_dim;
  c.slstm_at = std::move(slstm_at);
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
