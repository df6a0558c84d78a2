// SLstmCell::step and MLstmCell::step perform no heap allocation once the
// state exists (their documented contract: the state holds the workspace).
//
// Two independent counters, because Eigen allocates with malloc, not new:
//  1. Every replaceable global operator new / new[] (plain, nothrow, aligned,
//     aligned nothrow) is replaced below by a counting version.
//  2. Eigen is built with EIGEN_RUNTIME_NO_MALLOC: every Eigen heap allocation
//     (aligned_malloc, conditional_aligned_malloc; also the heap fallback of
//     its stack temporaries above EIGEN_STACK_ALLOCATION_LIMIT) then calls
//     eigen_assert(is_malloc_allowed()). Release builds define NDEBUG, which
//     would turn eigen_assert into a no-op, so this file defines eigen_assert
//     itself: a failed assertion increments a counter instead of aborting.
//     (Any other failed Eigen assertion would be counted too — also a bug.)
// Both definitions must come before the first include of Eigen.
#define EIGEN_RUNTIME_NO_MALLOC

#include <atomic>

inline std::atomic<int> g_eigen_assert_failures{0};
#define eigen_assert(x)                                                          \
  do {                                                                           \
    if (!(x)) ::g_eigen_assert_failures.fetch_add(1, std::memory_order_relaxed); \
  } while (false)

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/parallel.hpp"

// ---------------------------------------------------------------------------
// Counting global operator new / delete
// ---------------------------------------------------------------------------

inline std::atomic<long> g_new_calls{0};

namespace {

void* counted_alloc(std::size_t size) {
  g_new_calls.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size == 0 ? 1 : size);
}

void* counted_aligned_alloc(std::size_t size, std::align_val_t alignment) {
  g_new_calls.fetch_add(1, std::memory_order_relaxed);
  const auto align = static_cast<std::size_t>(alignment);
  const std::size_t rounded = (size == 0 ? align : (size + align - 1) / align * align);
#ifdef _WIN32
  return _aligned_malloc(rounded, align);
#else
  return std::aligned_alloc(align, rounded);
#endif
}

// Out of line on purpose: when GCC inlines a replaced operator delete into a
// caller of operator new, it otherwise sees `free` on a pointer from `new`
// and warns (-Wmismatched-new-delete), not knowing both are replaced here.
#if defined(__GNUC__)
#define XLSTM_TEST_NOINLINE __attribute__((noinline))
#else
#define XLSTM_TEST_NOINLINE
#endif

XLSTM_TEST_NOINLINE void release(void* p) noexcept { std::free(p); }

XLSTM_TEST_NOINLINE void aligned_release(void* p) noexcept {
#ifdef _WIN32
  _aligned_free(p);
#else
  std::free(p);
#endif
}

}  // namespace

void* operator new(std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return counted_alloc(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return counted_alloc(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  if (void* p = counted_aligned_alloc(size, alignment)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  if (void* p = counted_aligned_alloc(size, alignment)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, alignment);
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, alignment);
}

void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { aligned_release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { aligned_release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { aligned_release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { aligned_release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  aligned_release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  aligned_release(p);
}

namespace {

using xlstm::Index;
using xlstm::Matrix;

// Allocations counted while `fn` runs with Eigen heap allocation forbidden.
struct Allocations {
  long news = 0;
  int eigen = 0;
};

template <typename Fn>
Allocations count_allocations(Fn&& fn) {
  const long news_before = g_new_calls.load();
  const int eigen_before = g_eigen_assert_failures.load();
  Eigen::internal::set_is_malloc_allowed(false);
  fn();
  Eigen::internal::set_is_malloc_allowed(true);
  return {g_new_calls.load() - news_before, g_eigen_assert_failures.load() - eigen_before};
}

template <typename S>
Matrix<S> random_matrix(Index rows, Index cols, std::mt19937& rng, double mean = 0.0,
                        double stddev = 1.0) {
  std::normal_distribution<double> dist(mean, stddev);
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(dist(rng));
  return m;
}

constexpr int kSteps = 100;
constexpr int kInputs = 7;

// The counters work: both kinds of allocation are seen inside the measured
// region, and nothing is counted for code that does not allocate.
TEST(NoAllocControl, CountersSeeOperatorNewAndEigenHeapAllocations) {
  const auto by_new = count_allocations([] {
    int* volatile p = new int(7);  // volatile: the allocation cannot be elided
    delete p;
  });
  EXPECT_GE(by_new.news, 1);

  const auto by_eigen = count_allocations([] {
    Eigen::MatrixXd m(40, 40);  // dynamic size: heap
    m.setOnes();
    volatile double sink = m.sum();
    (void)sink;
  });
  EXPECT_GE(by_eigen.eigen, 1);

  // A product big enough that Eigen's GEMM needs a packing buffer larger than
  // EIGEN_STACK_ALLOCATION_LIMIT: counted too (heap fallback of the stack
  // temporaries).
  Eigen::MatrixXf a = Eigen::MatrixXf::Ones(512, 512), b = a, c(512, 512);
  const auto by_gemm = count_allocations([&] { c.noalias() = a * b; });
  EXPECT_GE(by_gemm.eigen, 1);
  EXPECT_EQ(c(0, 0), 512.0f);

  Eigen::Matrix4d fixed = Eigen::Matrix4d::Identity();
  const auto none = count_allocations([&] { fixed = fixed * fixed; });
  EXPECT_EQ(none.news, 0);
  EXPECT_EQ(none.eigen, 0);
}

template <typename S>
class NoAllocTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(NoAllocTest, Scalars);

struct SLstmSize {
  Index batch, hidden_size, num_heads;
};

// Small (lazy coefficient-based product), B = 1 (GEMV), medium (blocked GEMM,
// packing buffers on the stack), and three sizes on which a plain Eigen GEMM
// per head allocates (measured with the cell before its panelled product):
//  - B 16, H 512, NH 4: DH = 128, the packed 4DH x DH kernel block is 256 KiB
//    (float) > EIGEN_STACK_ALLOCATION_LIMIT (128 KiB): heap, any thread count;
//  - B 64, H 128, NH 4: small kernel, so the cell loops over heads serially,
//    and Eigen splits each head's product over the OpenMP threads, taking its
//    packing buffers from the heap (threads > 1 only);
//  - B 4100, H 8, NH 1: the same with a large batch.
const std::vector<SLstmSize> kSLstmSizes = {{1, 8, 2},    {1, 512, 4},  {3, 64, 4},
                                            {64, 128, 4}, {16, 512, 4}, {4100, 8, 1}};

// With OpenMP (XLSTM_USE_OPENMP) the cells and Eigen may use threads; measure
// single-threaded and with the default thread count (without OpenMP, or with
// one thread, that is one run).
std::vector<int> thread_counts() {
  const int threads = xlstm::num_threads();
  return threads > 1 ? std::vector<int>{1, threads} : std::vector<int>{1};
}

// Restores the thread count on scope exit.
struct ThreadCountGuard {
  int saved = xlstm::num_threads();
  ~ThreadCountGuard() { xlstm::set_num_threads(saved); }
};

TYPED_TEST(NoAllocTest, SLstmStepDoesNotAllocate) {
  using S = TypeParam;
  using Rule = xlstm::FirstStepRule;
  using Function = xlstm::SLstmFunction;
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : kSLstmSizes) {
      // The rule and the function only change the elementwise part; try all
      // four on the sizes where that is cheap, the default on the large ones.
      const bool cheap = size.batch * size.hidden_size <= 4096;
      for (const auto rule : {Rule::whole_batch, Rule::per_element}) {
        for (const auto function : {Function::slstm, Function::lstm}) {
          if (!cheap && (rule != Rule::whole_batch || function != Function::slstm)) continue;
          SCOPED_TRACE(::testing::Message()
                       << "threads " << threads << " B " << size.batch << " H " << size.hidden_size
                       << " NH " << size.num_heads << " rule " << int(rule) << " function "
                       << int(function));
          std::mt19937 rng(301);
          xlstm::SLstmCellConfig cfg;
          cfg.hidden_size = size.hidden_size;
          cfg.num_heads = size.num_heads;
          cfg.first_step_rule = rule;
          cfg.function = function;
          xlstm::SLstmCell<S> cell(cfg);
          cell.recurrent_kernel() = random_matrix<S>(cell.recurrent_kernel().rows(),
                                                     cell.recurrent_kernel().cols(), rng, 0.0, 0.1);
          cell.bias() = random_matrix<S>(4 * size.hidden_size, 1, rng);
          auto state = cell.initial_state(size.batch);
          std::vector<Matrix<S>> x;  // a few inputs, cycled (the large batch is big)
          for (int t = 0; t < kInputs; ++t) {
            x.push_back(random_matrix<S>(size.batch, 4 * size.hidden_size, rng));
          }
          cell.step(x[0], state);  // warm-up
          const auto counted = count_allocations([&] {
            for (int t = 1; t <= kSteps; ++t) cell.step(x[std::size_t(t % kInputs)], state);
          });
          EXPECT_EQ(counted.news, 0);
          EXPECT_EQ(counted.eigen, 0);
          EXPECT_TRUE(state.y.allFinite());
        }
      }
    }
  }
}

struct MLstmSize {
  Index batch, num_heads, qk_head_dim, v_head_dim;
};

// Includes the xLSTM-7B head shape (NH 8, DHQK 256, DHV 512).
const std::vector<MLstmSize> kMLstmSizes = {
    {1, 1, 8, 8}, {2, 2, 8, 12}, {4, 4, 64, 128}, {1, 8, 256, 512}};

TYPED_TEST(NoAllocTest, MLstmStepDoesNotAllocate) {
  using S = TypeParam;
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : kMLstmSizes) {
      for (const auto convention :
           {xlstm::MLstmStateConvention::scaled_keys, xlstm::MLstmStateConvention::unscaled_keys}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads " << threads << " B " << size.batch << " NH " << size.num_heads
                     << " DHQK " << size.qk_head_dim << " DHV " << size.v_head_dim << " convention "
                     << int(convention));
        std::mt19937 rng(302);
        xlstm::MLstmCellConfig cfg;
        cfg.num_heads = size.num_heads;
        cfg.qk_head_dim = size.qk_head_dim;
        cfg.v_head_dim = size.v_head_dim;
        cfg.convention = convention;
        const xlstm::MLstmCell<S> cell(cfg);
        auto state = cell.initial_state(size.batch);
        const Index B = size.batch, nh = size.num_heads;
        struct StepInputs {
          Matrix<S> q, k, v, igate, fgate;
        };
        std::vector<StepInputs> in;
        for (int t = 0; t < kInputs; ++t) {
          in.push_back({random_matrix<S>(B, nh * size.qk_head_dim, rng),
                        random_matrix<S>(B, nh * size.qk_head_dim, rng),
                        random_matrix<S>(B, nh * size.v_head_dim, rng),
                        random_matrix<S>(B, nh, rng), random_matrix<S>(B, nh, rng, 3.0, 1.5)});
        }
        Matrix<S> h(B, nh * size.v_head_dim);
        auto step = [&](const StepInputs& x) {
          cell.step(x.q, x.k, x.v, x.igate, x.fgate, state, h);
        };
        step(in[0]);  // warm-up
        const auto counted = count_allocations([&] {
          for (int t = 1; t <= kSteps; ++t) step(in[std::size_t(t % kInputs)]);
        });
        EXPECT_EQ(counted.news, 0);
        EXPECT_EQ(counted.eigen, 0);
        EXPECT_TRUE(h.allFinite());
      }
    }
  }
}

}  // namespace
