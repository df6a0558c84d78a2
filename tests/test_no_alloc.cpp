// step() performs no heap allocation and takes no lock once the state exists,
// at every level: SLstmCell, MLstmCell, MLstmBlock, SLstmBlock, BlockStack,
// LanguageModel and LargeModel (float and 16-bit weights), the int8 and 4-bit
// weight products; float and double; one thread and the default thread count
// (design §3: the state holds the workspace). A recorded forward and its backward allocate nothing
// after a warm-up of the same shapes (design §7.6): SLstmCell, MLstmCell (all forms), SLstmBlock,
// MLstmBlock.
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
//
// Locks: pthread_mutex_lock (what std::mutex, std::call_once fallbacks and
// most library locks end in) is interposed below and counted; the count must
// stay zero at one thread. With several threads the OpenMP fork/join of a
// parallel region is the only synchronisation (libgomp's futex barrier, not a
// mutex); real-time callers set one thread (README, "Allocation and
// real-time safety").
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
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <utility>
#include <vector>

// The lock counter interposes pthread_mutex_lock, which needs ELF symbol
// interposition and dlsym(RTLD_NEXT): Linux and the other ELF systems. Where
// it is unavailable (Windows, where MinGW links winpthreads statically;
// macOS's two-level namespace), allocations are still counted and the lock
// checks are skipped (the control test says so).
#if defined(__unix__) && !defined(__APPLE__)
#define XLSTM_TEST_COUNTS_LOCKS 1
#include <dlfcn.h>
#include <pthread.h>
#else
#define XLSTM_TEST_COUNTS_LOCKS 0
#endif

#include <mutex>

#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/mlstm_block_backward.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/blocks/slstm_block_backward.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/kernels/q4_integer.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/weight_matrix.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/block_stack_backward.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/language_model_backward.hpp"
#include "xlstm/model/large_model.hpp"
#include "xlstm/tirex/tirex.hpp"

// After EIGEN_RUNTIME_NO_MALLOC and eigen_assert above, like every include of Eigen.
#include "test_util.hpp"
#include "tirex_test_model.hpp"

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

// ---------------------------------------------------------------------------
// Counting pthread_mutex_lock (interposed: the executable's definition wins
// over libc's for every caller that links dynamically)
// ---------------------------------------------------------------------------

inline std::atomic<long> g_mutex_locks{0};

#if XLSTM_TEST_COUNTS_LOCKS
// libc's pthread_mutex_lock, looked up on the first call. Not a function-local
// static: libc++abi guards those with pthread_mutex_lock itself, which would
// recurse into this function.
using MutexLock = int (*)(pthread_mutex_t*);
inline std::atomic<MutexLock> g_real_mutex_lock{nullptr};

extern "C" int pthread_mutex_lock(pthread_mutex_t* mutex) {
  MutexLock real = g_real_mutex_lock.load(std::memory_order_acquire);
  if (real == nullptr) {
    real = reinterpret_cast<MutexLock>(dlsym(RTLD_NEXT, "pthread_mutex_lock"));
    g_real_mutex_lock.store(real, std::memory_order_release);
  }
  g_mutex_locks.fetch_add(1, std::memory_order_relaxed);
  return real(mutex);
}
#endif

namespace {

using test_util::mlstm_block_config;
using test_util::random_matrix;
using test_util::randomize;
using test_util::slstm_block_config;
using xlstm::Index;
using xlstm::Matrix;

// Allocations and locks counted while `fn` runs with Eigen heap allocation
// forbidden.
struct Allocations {
  long news = 0;
  int eigen = 0;
  long locks = 0;
};

template <typename Fn>
Allocations count_allocations(Fn&& fn) {
  const long news_before = g_new_calls.load();
  const int eigen_before = g_eigen_assert_failures.load();
  const long locks_before = g_mutex_locks.load();
  Eigen::internal::set_is_malloc_allowed(false);
  fn();
  Eigen::internal::set_is_malloc_allowed(true);
  return {g_new_calls.load() - news_before, g_eigen_assert_failures.load() - eigen_before,
          g_mutex_locks.load() - locks_before};
}

// Steps counted after the warm-up. Every step runs the same code, so a few
// are enough to see any allocation; AddressSanitizer makes each one slow.
#ifdef XLSTM_TEST_UNDER_ASAN
constexpr int kSteps = 10;
#else
constexpr int kSteps = 100;
#endif
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

  std::mutex mutex;
  const auto by_lock = count_allocations([&] { const std::lock_guard<std::mutex> lock(mutex); });
  if (XLSTM_TEST_COUNTS_LOCKS) {
    EXPECT_GE(by_lock.locks, 1);
  } else {
    std::printf("  locks are not counted on this system (no pthread_mutex_lock interposition)\n");
  }

  Eigen::Matrix4d fixed = Eigen::Matrix4d::Identity();
  const auto none = count_allocations([&] { fixed = fixed * fixed; });
  EXPECT_EQ(none.news, 0);
  EXPECT_EQ(none.eigen, 0);
  EXPECT_EQ(none.locks, 0);
}

template <typename S>
class NoAllocTest : public ::testing::Test {};
using test_util::Scalars;
// The empty third argument: clang's -Wpedantic rejects a variadic macro
// called without one (-Wgnu-zero-variadic-macro-arguments).
TYPED_TEST_SUITE(NoAllocTest, Scalars, ::testing::internal::DefaultNameGenerator);

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
  using Numerics = xlstm::SLstmNumerics;
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : kSLstmSizes) {
      // The rule and the function only change the elementwise part; try all
      // four on the sizes where that is cheap, the default on the large ones.
      // The TiRex numerics (math §12) have their own recurrent product: every
      // size, with the rule and function they require.
      const bool cheap = size.batch * size.hidden_size <= 4096;
      for (const auto rule : {Rule::whole_batch, Rule::per_element}) {
        for (const auto function : {Function::slstm, Function::lstm}) {
          for (const auto numerics : {Numerics::plain, Numerics::tirex_official}) {
            const bool defaults = rule == Rule::whole_batch && function == Function::slstm;
            if (!cheap && !defaults) continue;
            if (numerics == Numerics::tirex_official && !defaults) continue;
            SCOPED_TRACE(::testing::Message()
                         << "threads " << threads << " B " << size.batch << " H "
                         << size.hidden_size << " NH " << size.num_heads << " rule " << int(rule)
                         << " function " << int(function) << " numerics "
                         << xlstm::numerics_name(numerics));
            std::mt19937 rng(301);
            auto config =
                test_util::slstm_cell_config(size.hidden_size, size.num_heads, rule, function);
            config.numerics = numerics;
            xlstm::SLstmCell<S> cell(config);
            cell.recurrent_kernel() = random_matrix<S>(
                cell.recurrent_kernel().rows(), cell.recurrent_kernel().cols(), rng, 0.0, 0.1);
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
}

// Forward with a tape, then backward, repeated on the same shapes: the tape,
// the outputs and the gradients are sized by the warm-up. Sizes: tiny; a
// 4DH x DH kernel block above EIGEN_STACK_ALLOCATION_LIMIT (H 512, NH 4); a
// batch on which Eigen would split a product over threads; and T*B = 2560
// rows, so that dR = sum_t dg^T y is summed over the depth in pieces.
TYPED_TEST(NoAllocTest, SLstmForwardBackwardDoesNotAllocate) {
  using S = TypeParam;
  struct Size {
    Index batch, time, hidden_size, num_heads;
  };
  const std::vector<Size> sizes = {{1, 3, 8, 2}, {16, 3, 512, 4}, {64, 2, 128, 4}, {64, 40, 8, 1}};
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : sizes) {
      for (const auto function : {xlstm::SLstmFunction::slstm, xlstm::SLstmFunction::lstm}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads " << threads << " B " << size.batch << " T " << size.time << " H "
                     << size.hidden_size << " function " << int(function));
        std::mt19937 rng(304);
        xlstm::SLstmCell<S> cell(test_util::slstm_cell_config(
            size.hidden_size, size.num_heads, xlstm::FirstStepRule::whole_batch, function));
        cell.recurrent_kernel() = random_matrix<S>(cell.recurrent_kernel().rows(),
                                                   cell.recurrent_kernel().cols(), rng, 0.0, 0.1);
        const auto x =
            test_util::random_sequence<S>(size.batch, size.time, 4 * size.hidden_size, rng);
        const auto grad_y =
            test_util::random_sequence<S>(size.batch, size.time, size.hidden_size, rng);
        auto state = cell.initial_state(size.batch), grad_state = cell.initial_state(size.batch);
        xlstm::SLstmTape<S> tape;
        xlstm::SLstmCellGradients<S> grads(cell);
        xlstm::Sequence<S> y, grad_x;
        auto forward_backward = [&] {
          state.reset();
          grad_state.reset();
          cell.forward(x, state, y, tape);
          xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);
        };
        forward_backward();  // warm-up
        const auto counted = count_allocations([&] {
          for (int i = 0; i < 3; ++i) forward_backward();
        });
        EXPECT_EQ(counted.news, 0);
        EXPECT_EQ(counted.eigen, 0);
        EXPECT_TRUE(grads.recurrent_kernel().allFinite());
      }
    }
  }
}

// A block's recorded forward and its backward, repeated on the same shapes
// after a warm-up (ragged rows and a non-zero state cotangent included): no
// allocation. The layers' products, forward and backward, go through
// kernels/blocked_product.hpp (buffers kept per thread); the cells' through
// kernels/panelled.hpp.
template <typename Tape, typename Grads, typename Block, typename SetCotangent, typename... Form>
void expect_block_forward_backward_allocates_nothing(const Block& block, Index batch, Index time,
                                                     const xlstm::Lengths& lengths,
                                                     const SetCotangent& set_cotangent,
                                                     Form... form) {
  using S = typename Block::Scalar;
  std::mt19937 rng(305);
  const Index e = block.embedding_dim();
  const auto x = test_util::random_sequence<S>(batch, time, e, rng);
  const auto grad_y = test_util::random_sequence<S>(batch, time, e, rng);
  auto state = block.initial_state(batch), grad_state = block.initial_state(batch);
  Tape tape;
  Grads grads(block);
  xlstm::Sequence<S> y, grad_x;
  auto forward_backward = [&] {
    state.reset();
    grad_state.reset();
    set_cotangent(grad_state);
    block.forward(x, lengths, state, y, tape, form...);
    xlstm::backward(block, tape, grad_y, grad_state, grads, grad_x);
  };
  forward_backward();  // warm-up
  const auto counted = count_allocations([&] {
    for (int i = 0; i < 3; ++i) forward_backward();
  });
  EXPECT_EQ(counted.news, 0);
  EXPECT_EQ(counted.eigen, 0);
  EXPECT_TRUE(grad_x.matrix().allFinite());
}

// The sLSTM block (layers, cell, conv, norms, feed-forward).
TYPED_TEST(NoAllocTest, SLstmBlockForwardBackwardDoesNotAllocate) {
  using S = TypeParam;
  struct Size {
    Index embedding_dim, num_heads, kernel_size, batch, time;
    bool feedforward;
    xlstm::Lengths lengths;
  };
  const std::vector<Size> sizes = {{32, 4, 4, 2, 6, true, {}},
                                   {16, 1, 0, 3, 1, true, {1, 0, 1}},
                                   {24, 3, 2, 3, 5, false, {5, 2, 4}}};
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : sizes) {
      SCOPED_TRACE(::testing::Message() << "threads " << threads << " E " << size.embedding_dim
                                        << " B " << size.batch << " T " << size.time);
      auto config = slstm_block_config(size.embedding_dim, size.num_heads);
      config.slstm.conv1d_kernel_size = size.kernel_size;
      if (!size.feedforward) config.feedforward.reset();
      xlstm::SLstmBlock<S> block(config);
      randomize(block, 15);
      expect_block_forward_backward_allocates_nothing<xlstm::SLstmBlockTape<S>,
                                                      xlstm::SLstmBlockGradients<S>>(
          block, size.batch, size.time, size.lengths,
          [](auto& grad_state) { grad_state.cell.c.setConstant(S(0.5)); });
    }
  }
}

// The mLSTM block (math §5.5) in every form of its cell: from the zero state
// (parallel up to the chunk size), chunkwise beyond a chunk and ragged,
// recurrent.
TYPED_TEST(NoAllocTest, MLstmBlockForwardBackwardDoesNotAllocate) {
  using S = TypeParam;
  struct Size {
    Index embedding_dim, num_heads, chunk_size, batch, time;
    xlstm::Lengths lengths;
  };
  const std::vector<Size> sizes = {
      {16, 4, 64, 2, 6, {}}, {8, 2, 64, 3, 1, {1, 0, 1}}, {16, 2, 4, 3, 10, {10, 3, 7}}};
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : sizes) {
      for (const auto form : {xlstm::MLstmForm::automatic, xlstm::MLstmForm::recurrent}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads " << threads << " E " << size.embedding_dim << " B " << size.batch
                     << " T " << size.time << " form " << xlstm::form_name(form));
        xlstm::MLstmBlock<S> block(mlstm_block_config(size.embedding_dim, size.num_heads));
        randomize(block, 16);
        auto cell_config = block.cell().config();
        cell_config.chunk_size = size.chunk_size;
        cell_config.parallel_max_length = size.chunk_size;
        block.cell() = xlstm::MLstmCell<S>(cell_config);
        expect_block_forward_backward_allocates_nothing<xlstm::MLstmBlockTape<S>,
                                                        xlstm::MLstmBlockGradients<S>>(
            block, size.batch, size.time, size.lengths,
            [](auto& grad_state) {
              grad_state.cell.C.setConstant(S(0.5));
              grad_state.conv.window.setConstant(S(0.25));
            },
            form);
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
      // Both conventions; the unscaled one also with C stored in bfloat16 (math §4.8).
      for (const auto& [convention, storage] :
           {std::pair{xlstm::MLstmStateConvention::scaled_keys, xlstm::MLstmStateStorage::full},
            std::pair{xlstm::MLstmStateConvention::unscaled_keys, xlstm::MLstmStateStorage::full},
            std::pair{xlstm::MLstmStateConvention::unscaled_keys,
                      xlstm::MLstmStateStorage::bf16}}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads " << threads << " B " << size.batch << " NH " << size.num_heads
                     << " DHQK " << size.qk_head_dim << " DHV " << size.v_head_dim << " convention "
                     << int(convention) << " storage " << int(storage));
        std::mt19937 rng(302);
        const xlstm::MLstmCell<S> cell(test_util::mlstm_cell_config(
            size.num_heads, size.qk_head_dim, size.v_head_dim, convention));
        auto state = cell.initial_state(size.batch);
        state.set_storage(storage);
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

// The mLSTM cell's recorded forward and backward (math §4.7), repeated on the
// same shapes: the tape holds the per-thread buffers. Sizes: a single chunk;
// a partial last chunk (T 10, chunk 4) and ragged rows, whose smaller chunks
// reuse the larger buffers; chunks of 16 with DH 32; chunks of 64 with heads of
// 256, whose products would take Eigen's heap buffers without the panels.
TYPED_TEST(NoAllocTest, MLstmForwardBackwardDoesNotAllocate) {
  using S = TypeParam;
  struct Size {
    Index batch, time, num_heads, qk_head_dim, v_head_dim, chunk_size;
    xlstm::Lengths lengths;
  };
  const std::vector<Size> sizes = {{1, 3, 1, 8, 8, 4, {}},
                                   {2, 10, 2, 8, 12, 4, {10, 7}},
                                   {3, 40, 2, 32, 32, 16, {}},
                                   {1, 70, 1, 256, 256, 64, {}}};
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const auto& size : sizes) {
      for (const auto form : {xlstm::MLstmForm::parallel, xlstm::MLstmForm::chunkwise,
                              xlstm::MLstmForm::recurrent, xlstm::MLstmForm::automatic}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads " << threads << " B " << size.batch << " T " << size.time << " DH "
                     << size.qk_head_dim << " form " << int(form));
        std::mt19937 rng(305);
        const Index B = size.batch, T = size.time, nh = size.num_heads;
        const xlstm::MLstmCell<S> cell(test_util::mlstm_cell_config(
            nh, size.qk_head_dim, size.v_head_dim, xlstm::MLstmStateConvention::scaled_keys,
            size.chunk_size));
        const auto q = test_util::random_sequence<S>(B, T, nh * size.qk_head_dim, rng);
        const auto k = test_util::random_sequence<S>(B, T, nh * size.qk_head_dim, rng);
        const auto v = test_util::random_sequence<S>(B, T, nh * size.v_head_dim, rng);
        const auto igate = test_util::random_sequence<S>(B, T, nh, rng);
        const auto fgate = test_util::random_sequence<S>(B, T, nh, rng, 3.0, 1.5);
        const auto grad_h = test_util::random_sequence<S>(B, T, nh * size.v_head_dim, rng);
        auto state = cell.initial_state(B), grad_state = cell.initial_state(B);
        xlstm::MLstmTape<S> tape;
        xlstm::MLstmInputGradients<S> grads;
        xlstm::Sequence<S> h;
        auto forward_backward = [&] {
          state.reset();
          grad_state.reset();
          cell.forward(q, k, v, igate, fgate, size.lengths, state, h, tape, form);
          xlstm::backward(cell, tape, grad_h, grad_state, grads);
        };
        forward_backward();  // warm-up
        const auto counted = count_allocations([&] {
          for (int i = 0; i < 3; ++i) forward_backward();
        });
        EXPECT_EQ(counted.news, 0);
        EXPECT_EQ(counted.eigen, 0);
        EXPECT_TRUE(grads.q.matrix().allFinite());
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Blocks, stack and models
// ---------------------------------------------------------------------------

// Runs `step` kSteps times after one warm-up step and checks the counters. At
// one thread no mutex may be locked either.
template <typename Step>
void expect_step_allocates_nothing(int threads, Step&& step) {
  step(0);  // warm-up: OpenMP creates its thread team on first use
  const auto counted = count_allocations([&] {
    for (int t = 1; t <= kSteps; ++t) step(t);
  });
  EXPECT_EQ(counted.news, 0);
  EXPECT_EQ(counted.eigen, 0);
  if (threads == 1) {
    EXPECT_EQ(counted.locks, 0);
  }
}

// Batch sizes: one row (decode), a few rows (the dot kernel in groups of 4
// and single rows), and more rows than the sequence path keeps on that
// kernel (Eigen's GEMM there would take its packing buffers from the heap).
const std::vector<Index> kBatches = {1, 3, 16};

template <typename Block>
void check_block(const Block& block, Index embedding_dim) {
  using S = typename Block::Scalar;
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const Index batch : kBatches) {
      SCOPED_TRACE(::testing::Message() << "threads " << threads << " B " << batch);
      std::mt19937 rng(303);
      std::vector<Matrix<S>> x;
      for (int t = 0; t < kInputs; ++t) x.push_back(random_matrix<S>(batch, embedding_dim, rng));
      auto state = block.initial_state(batch);
      Matrix<S> y(batch, embedding_dim);
      expect_step_allocates_nothing(
          threads, [&](int t) { block.step(x[std::size_t(t % kInputs)], state, y); });
      EXPECT_TRUE(y.allFinite());
    }
  }
}

TYPED_TEST(NoAllocTest, MLstmBlockStepDoesNotAllocate) {
  using S = TypeParam;
  // E 32 (tiny), E 256 (inner 512: head blocks and projections whose Eigen
  // GEMM packing exceeds EIGEN_STACK_ALLOCATION_LIMIT at B 16).
  for (const Index e : {Index(32), Index(256)}) {
    SCOPED_TRACE(::testing::Message() << "E " << e);
    xlstm::MLstmBlock<S> block(mlstm_block_config(e, 4, 16));
    randomize(block, 11);
    check_block(block, e);
  }
}

TYPED_TEST(NoAllocTest, SLstmBlockStepDoesNotAllocate) {
  using S = TypeParam;
  for (const Index e : {Index(32), Index(256)}) {
    SCOPED_TRACE(::testing::Message() << "E " << e);
    xlstm::SLstmBlock<S> block(slstm_block_config(e));
    randomize(block, 12);
    check_block(block, e);
  }
}

xlstm::LanguageModelConfig small_lm_config(Index embedding_dim, Index vocab, bool tie) {
  auto c = test_util::lm_config(embedding_dim, 3, {1}, vocab, 16);
  c.tie_weights = tie;
  return c;
}

TYPED_TEST(NoAllocTest, BlockStackStepDoesNotAllocate) {
  using S = TypeParam;
  const auto cfg = small_lm_config(64, 10, false);
  xlstm::BlockStack<S> stack(static_cast<const xlstm::BlockStackConfig&>(cfg));
  randomize(stack, 13);
  check_block(stack, 64);
}

// A training example of the language model (math §6.6): the recorded
// forward, the cross-entropy and the backward through head, stack (mLSTM and
// sLSTM blocks) and embedding, repeated on the same shapes after a warm-up;
// ragged rows with ignored targets, tied and untied heads, zeroing the
// gradients included. The larger size has products far beyond Eigen's stack
// limit, split over the threads in bands of rows (140 rows: two bands;
// kernels/blocked_product.hpp, design §7.6), a chunkwise mLSTM row (70 steps:
// a full chunk and a partial one) and a parallel-form one (43 steps).
TYPED_TEST(NoAllocTest, LanguageModelLossAndBackwardDoesNotAllocate) {
  using S = TypeParam;
  struct Size {
    Index embedding_dim, vocab, time;
    xlstm::Lengths lengths;
  };
  const ThreadCountGuard guard;
  for (const Size& size : {Size{32, 50, 10, {10, 6}}, Size{96, 300, 70, {70, 43}}}) {
    for (const bool tie : {false, true}) {
      xlstm::LanguageModel<S> model(small_lm_config(size.embedding_dim, size.vocab, tie));
      randomize(model, 16);
      xlstm::LanguageModelGradients<S> grads(model);
      xlstm::LanguageModelLossWorkspace<S> work;
      std::mt19937_64 rng(17);
      const Index batch = Index(size.lengths.size());
      const xlstm::Tokens tokens = test_util::random_tokens(batch, size.time, size.vocab, rng);
      xlstm::Tokens targets = test_util::random_tokens(batch, size.time, size.vocab, rng);
      for (Index b = 0; b < batch; ++b) {
        for (Index t = size.lengths[std::size_t(b)]; t < size.time; ++t) targets(b, t) = -1;
      }
      targets(0, 3) = -1;
      for (const int threads : thread_counts()) {
        xlstm::set_num_threads(threads);
        SCOPED_TRACE(::testing::Message() << "E " << size.embedding_dim << " T " << size.time
                                          << " tie " << tie << " threads " << threads);
        S loss = 0;
        auto example = [&] {
          grads.zero();
          loss = xlstm::loss_and_backward(model, tokens, targets, size.lengths, grads, work);
        };
        example();  // warm-up
        const auto counted = count_allocations([&] {
          for (int i = 0; i < 3; ++i) example();
        });
        EXPECT_EQ(counted.news, 0);
        EXPECT_EQ(counted.eigen, 0);
        EXPECT_TRUE(std::isfinite(double(loss)));
        EXPECT_TRUE(grads.embedding().weight().allFinite());
      }
    }
  }
}

TYPED_TEST(NoAllocTest, LanguageModelStepDoesNotAllocate) {
  using S = TypeParam;
  const ThreadCountGuard guard;
  // Vocabulary 3000 x E 64: the head is 192k weights, as big as a block.
  for (const bool tie : {false, true}) {
    xlstm::LanguageModel<S> model(small_lm_config(64, 3000, tie));
    randomize(model, 14);
    for (const int threads : thread_counts()) {
      xlstm::set_num_threads(threads);
      for (const Index batch : kBatches) {
        SCOPED_TRACE(::testing::Message()
                     << "tie " << tie << " threads " << threads << " B " << batch);
        std::vector<std::int64_t> tokens(std::size_t(batch), 0);
        auto state = model.initial_state(batch);
        Matrix<S> logits(batch, model.vocab_size());
        expect_step_allocates_nothing(threads, [&](int t) {
          for (std::size_t b = 0; b < tokens.size(); ++b)
            tokens[b] = (7 * t + 13 * Index(b)) % 3000;
          model.step(tokens, state, logits);
        });
        EXPECT_TRUE(logits.allFinite());
      }
    }
  }
}

xlstm::LargeModelConfig small_large_config() {
  xlstm::LargeModelConfig c = test_util::large_config(128, 2, 2, 1000);
  c.mode = "inference";
  c.return_last_states = true;
  return c;
}

template <typename S>
void check_large_model(const xlstm::LargeModel<S>& model,
                       xlstm::MLstmStateStorage storage = xlstm::MLstmStateStorage::full) {
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    for (const Index batch : kBatches) {
      SCOPED_TRACE(::testing::Message() << "threads " << threads << " B " << batch);
      std::vector<std::int64_t> tokens(std::size_t(batch), 0);
      auto state = model.initial_state(batch);
      state.set_mlstm_storage(storage);
      Matrix<S> logits(batch, model.vocab_size());
      expect_step_allocates_nothing(threads, [&](int t) {
        for (std::size_t b = 0; b < tokens.size(); ++b) tokens[b] = (7 * t + 13 * Index(b)) % 1000;
        model.step(tokens, state, logits);
      });
      EXPECT_TRUE(logits.allFinite());
    }
  }
}

TYPED_TEST(NoAllocTest, LargeModelStepDoesNotAllocate) {
  using S = TypeParam;
  xlstm::LargeModel<S> model(small_large_config());
  xlstm::Rng rng(15);
  model.initialize(rng, /*noise=*/0.5);
  check_large_model(model);
  SCOPED_TRACE("C stored in bfloat16 (math §4.8)");
  check_large_model(model, xlstm::MLstmStateStorage::bf16);
}

// The plain sequence forward (inference, prefill) keeps its intermediates in
// the calling thread's buffers (design §7.7): after a warm-up, forwards of the
// same shapes allocate nothing besides what they return, at every thread
// count; xlstm::release_thread_buffers() frees them (the next call allocates
// again) and changes no result. Each case runs twice as warm-up: the first
// forward starts from the zero state (mLSTM: parallel form), later ones from
// the state it left (chunkwise).
template <typename Forward>
void expect_plain_forward_reuses_thread_buffers(Forward&& forward) {
  const ThreadCountGuard guard;
  for (const int threads : thread_counts()) {
    xlstm::set_num_threads(threads);
    SCOPED_TRACE(::testing::Message() << "threads " << threads);
    forward();
    forward();
    const auto warm = count_allocations([&] { forward(); });
    EXPECT_EQ(warm.news, 0);
    EXPECT_EQ(warm.eigen, 0);
  }
  xlstm::release_thread_buffers();
  const auto released = count_allocations([&] { forward(); });
  EXPECT_GT(released.eigen, 0) << "release_thread_buffers() kept the buffers";
}

TYPED_TEST(NoAllocTest, PlainSequenceForwardReusesTheThreadBuffers) {
  using S = TypeParam;
  std::mt19937_64 rng(21);
  const xlstm::Lengths lengths = {40, 25};
  const Index batch = 2, time = 40, e = 32;
  const xlstm::Sequence<S> x = test_util::random_sequence<S>(batch, time, e, rng);
  {
    SCOPED_TRACE("MLstmBlock");
    xlstm::MLstmBlock<S> block(mlstm_block_config(e, 4));
    randomize(block, 22);
    auto state = block.initial_state(batch);
    xlstm::Sequence<S> y;
    expect_plain_forward_reuses_thread_buffers([&] { block.forward(x, lengths, state, y); });
  }
  {
    // The forward runs on a widened copy of the state in the thread's buffers.
    SCOPED_TRACE("MLstmBlock, C stored in bfloat16 (math §4.8)");
    xlstm::MLstmBlock<S> block(mlstm_block_config(e, 4));
    randomize(block, 22);
    auto state = block.initial_state(batch);
    state.set_mlstm_storage(xlstm::MLstmStateStorage::bf16);
    xlstm::Sequence<S> y;
    expect_plain_forward_reuses_thread_buffers([&] { block.forward(x, lengths, state, y); });
  }
  {
    SCOPED_TRACE("SLstmBlock");
    xlstm::SLstmBlock<S> block(slstm_block_config(e, 4));
    randomize(block, 23);
    auto state = block.initial_state(batch);
    xlstm::Sequence<S> y;
    expect_plain_forward_reuses_thread_buffers([&] { block.forward(x, lengths, state, y); });
  }
  {
    SCOPED_TRACE("BlockStack, and its output written over its input");
    const auto config = small_lm_config(e, 10, false);
    xlstm::BlockStack<S> stack(static_cast<const xlstm::BlockStackConfig&>(config));
    randomize(stack, 24);
    auto state = stack.initial_state(batch);
    xlstm::Sequence<S> y, in_place;
    expect_plain_forward_reuses_thread_buffers([&] { stack.forward(x, lengths, state, y); });
    // y may be x: the same result as into another sequence.
    auto state_a = stack.initial_state(batch), state_b = stack.initial_state(batch);
    stack.forward(x, lengths, state_a, y);
    in_place = x;
    stack.forward(in_place, lengths, state_b, in_place);
    EXPECT_TRUE(in_place.matrix().cwiseEqual(y.matrix()).all());
  }
  {
    SCOPED_TRACE("LanguageModel");
    xlstm::LanguageModel<S> model(small_lm_config(e, 50, true));
    randomize(model, 25);
    const xlstm::Tokens tokens = test_util::random_tokens(batch, time, 50, rng);
    auto state = model.initial_state(batch);
    xlstm::Sequence<S> logits;
    expect_plain_forward_reuses_thread_buffers(
        [&] { model.forward(tokens, lengths, state, logits); });
    // The same logits before and after the buffers are released.
    auto state_a = model.initial_state(batch), state_b = model.initial_state(batch);
    xlstm::Sequence<S> before, after;
    model.forward(tokens, lengths, state_a, before);
    xlstm::release_thread_buffers();
    model.forward(tokens, lengths, state_b, after);
    EXPECT_TRUE(before.matrix().cwiseEqual(after.matrix()).all());
  }
  {
    SCOPED_TRACE("LargeModel");
    xlstm::LargeModel<S> model(small_large_config());
    xlstm::Rng init(26);
    model.initialize(init, /*noise=*/0.5);
    const xlstm::Tokens tokens = test_util::random_tokens(batch, time, model.vocab_size(), rng);
    auto state = model.initial_state(batch);
    xlstm::Sequence<S> logits;
    expect_plain_forward_reuses_thread_buffers(
        [&] { model.forward(tokens, lengths, state, logits); });
  }
}

// 16-bit weights: decoded a piece of a row at a time into a stack buffer.
TEST(NoAllocLarge, SixteenBitWeightStepDoesNotAllocate) {
  for (const auto storage : {xlstm::WeightStorage::bf16, xlstm::WeightStorage::f16}) {
    SCOPED_TRACE(storage == xlstm::WeightStorage::bf16 ? "bf16" : "f16");
    xlstm::LargeModel<float> model(small_large_config(), xlstm::uninitialized, storage);
    std::mt19937 rng(16);
    std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
    for (auto* w : xlstm::weight_matrices(model)) {
      std::uint16_t* bits = w->owned_half_bits();
      ASSERT_NE(bits, nullptr);
      for (Index i = 0; i < w->rows() * w->cols(); ++i) {
        bits[i] = storage == xlstm::WeightStorage::bf16 ? xlstm::float_to_bf16(dist(rng))
                                                        : xlstm::float_to_f16(dist(rng));
      }
    }
    check_large_model(model);
  }
}

// TiRex streaming (math §13.11): a new patch is one token step; after the
// first, append allocates nothing (no operator new, no Eigen heap, no lock).
TEST(NoAllocTiRex, FrozenScalerAppendDoesNotAllocate) {
  const auto model = small_random_tirex(xlstm::SLstmNumerics::tirex_official, 17);
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> context(40), patch(8);
  for (float& v : context) v = normal(rng);
  for (float& v : patch) v = normal(rng);
  xlstm::tirex::ForecastStream<float> stream(model, context,
                                             xlstm::tirex::StreamMode::frozen_scaler);
  stream.append(patch);  // warm-up: sizes the workspace
  const auto counted = count_allocations([&] {
    for (int i = 0; i < kSteps; ++i) stream.append(patch.data(), 8);
  });
  EXPECT_EQ(counted.news, 0);
  EXPECT_EQ(counted.eigen, 0);
  EXPECT_EQ(counted.locks, 0);
  xlstm::tirex::ForecastStream<float> exact(model, context, xlstm::tirex::StreamMode::exact);
  const auto shifted = count_allocations([&] { exact.append(patch.data(), 8); });
  EXPECT_EQ(shifted.news, 0);
  EXPECT_EQ(shifted.eigen, 0);
}

// tirex::forecast (math §13.10): after a first call with the same shapes,
// forecast_into allocates nothing and forecast() only its two outputs
// (quantiles and median: two Eigen buffers) -- short and full contexts,
// ragged rows, several rollout passes, the accelerated rollout with a
// shorter last pass, a batch of full groups and a smaller last one, the
// list-of-series API; one thread, then two.
TEST(NoAllocTiRex, ForecastAllocatesOnlyItsOutputs) {
  const int saved_threads = xlstm::num_threads();
  const auto model = small_random_tirex(xlstm::SLstmNumerics::tirex_official, 18);
  std::mt19937 rng(18);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Case {
    Index batch, length, horizon, accelerated;
  };
  // W = 64, P = 8: length 20 is a short context (left padding), 100 a truncated one.
  const Case cases[] = {
      {1, 20, 8, 1}, {1, 20, 30, 1}, {3, 100, 20, 1}, {1, 20, 40, 2}, {11, 37, 16, 1}};
  for (const int threads : {1, 2}) {
    xlstm::set_num_threads(threads);
    for (const Case& k : cases) {
      SCOPED_TRACE(testing::Message()
                   << "batch " << k.batch << ", length " << k.length << ", h " << k.horizon
                   << ", accelerated " << k.accelerated << ", threads " << threads);
      Matrix<float> context(k.batch, k.length);
      for (Index i = 0; i < context.size(); ++i) context.data()[i] = normal(rng);
      context(0, 0) = std::numeric_limits<float>::quiet_NaN();  // a missing value
      if (k.batch > 1)
        context.row(1)
            .head(k.length / 2)
            .setConstant(std::numeric_limits<float>::quiet_NaN());  // a shorter row
      const xlstm::ConstMatrixRef<float> ref(context);
      xlstm::tirex::ForecastWorkspace<float> ws;
      xlstm::tirex::Forecast<float> out;
      xlstm::tirex::forecast_into(model, ref, k.horizon, out, ws, k.accelerated);  // warm-up
      const auto into = count_allocations(
          [&] { xlstm::tirex::forecast_into(model, ref, k.horizon, out, ws, k.accelerated); });
      EXPECT_EQ(into.news, 0);
      EXPECT_EQ(into.eigen, 0);
      if (threads == 1) {
        EXPECT_EQ(into.locks, 0);
      }
      // The same numbers as forecast(), which allocates its two outputs only.
      (void)xlstm::tirex::forecast(model, ref, k.horizon, k.accelerated);  // warm-up
      xlstm::tirex::Forecast<float> fresh;
      const auto plain = count_allocations(
          [&] { fresh = xlstm::tirex::forecast(model, ref, k.horizon, k.accelerated); });
      EXPECT_EQ(plain.news, 0);
      EXPECT_EQ(plain.eigen, 2);
      EXPECT_TRUE(fresh.quantiles.matrix().cwiseEqual(out.quantiles.matrix()).all());
    }
  }
  // The list-of-series API, with its batch matrix in the workspace.
  std::vector<std::vector<float>> series = {std::vector<float>(30, 1.5f),
                                            std::vector<float>(70, -0.5f)};
  for (auto& s : series) {
    for (float& v : s) v += normal(rng);
  }
  xlstm::set_num_threads(1);
  xlstm::tirex::ForecastWorkspace<float> ws;
  xlstm::tirex::Forecast<float> out;
  xlstm::tirex::forecast_into(model, series, 24, out, ws);
  const auto ragged =
      count_allocations([&] { xlstm::tirex::forecast_into(model, series, 24, out, ws); });
  EXPECT_EQ(ragged.news, 0);
  EXPECT_EQ(ragged.eigen, 0);
  xlstm::set_num_threads(saved_threads);
}

// Quantised weights (math §16): the step product of int8 and 4-bit weights,
// one row (decode) and a small batch, at one and two threads, after a warm-up
// that starts the thread pool.
TEST(NoAllocQuantized, StepProductAllocatesNothing) {
  const int saved_threads = xlstm::num_threads();
  std::mt19937_64 rng(13);
  const Matrix<float> w = random_matrix<float>(128, 4096, rng);
  for (const auto format : {xlstm::WeightStorage::int8_rows, xlstm::WeightStorage::q4_g32}) {
    const auto q = xlstm::WeightMatrix<float>::quantized(xlstm::WeightMatrix<float>(w), format);
    for (const Index batch : {Index(1), Index(16)}) {
      const Matrix<float> x = random_matrix<float>(batch, 4096, rng);
      Matrix<float> y(batch, 128);
      for (const int threads : {1, 2}) {
        SCOPED_TRACE(testing::Message() << (format == xlstm::WeightStorage::q4_g32 ? "q4" : "int8")
                                        << ", batch " << batch << ", threads " << threads);
        xlstm::set_num_threads(threads);
        q.multiply_transposed(x, y, false, xlstm::Workload::step);
        const auto counted = count_allocations([&] {
          for (int i = 0; i < 3; ++i) q.multiply_transposed(x, y, i > 0, xlstm::Workload::step);
        });
        EXPECT_EQ(counted.news, 0);
        EXPECT_EQ(counted.eigen, 0);
        if (threads == 1) {
          EXPECT_EQ(counted.locks, 0);
        }
      }
    }
  }
  xlstm::set_num_threads(saved_threads);
}

// The sequence product of 16-bit and quantised weights (tiles of W decoded
// into a buffer of the calling thread, multiplied with the float kernel):
// after a first call of the shape, nothing; its result is the float product
// of the decoded weights.
TEST(NoAllocQuantized, SequenceProductAllocatesNothingOnceWarm) {
  const int saved_threads = xlstm::num_threads();
  std::mt19937_64 rng(14);
  const Matrix<float> w = random_matrix<float>(200, 384, rng);
  std::vector<std::uint16_t> bits(std::size_t(w.size()));
  for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = xlstm::float_to_bf16(w.data()[i]);
  std::vector<xlstm::WeightMatrix<float>> formats;
  formats.push_back(
      xlstm::WeightMatrix<float>::half_owned(xlstm::WeightStorage::bf16, bits, w.rows(), w.cols()));
  for (const auto format : {xlstm::WeightStorage::int8_rows, xlstm::WeightStorage::q4_g32}) {
    formats.push_back(xlstm::WeightMatrix<float>::quantized(xlstm::WeightMatrix<float>(w), format));
  }
  const Matrix<float> x = random_matrix<float>(64, 384, rng);
  for (const auto& q : formats) {
    Matrix<float> decoded(w.rows(), w.cols());
    q.copy_block(0, 0, decoded);
    // A q4_g32 product multiplies x rounded to 8 bits per group (math §16.7).
    Matrix<float> input = x;
    if (q.storage() == xlstm::WeightStorage::q4_g32)
      xlstm::kernels::round_activations<float>(x, input);
    const Matrix<double> expected = input.cast<double>() * decoded.cast<double>().transpose();
    const Matrix<double> scale =
        input.cast<double>().cwiseAbs() * decoded.cast<double>().cwiseAbs().transpose();
    for (const int threads : {1, 2}) {
      SCOPED_TRACE(testing::Message() << "storage " << int(q.storage()) << ", threads " << threads);
      xlstm::set_num_threads(threads);
      Matrix<float> y(x.rows(), w.rows());
      q.multiply_transposed(x, y, false, xlstm::Workload::sequence);
      // Float rounding on the scale of the terms: sum |x| |W|.
      EXPECT_TRUE(((y.cast<double>() - expected).array().abs() <= 1e-5 * scale.array()).all());
      const auto counted = count_allocations([&] {
        for (int i = 0; i < 3; ++i) q.multiply_transposed(x, y, i > 0, xlstm::Workload::sequence);
      });
      EXPECT_EQ(counted.news, 0);
      EXPECT_EQ(counted.eigen, 0);
    }
  }
  xlstm::set_num_threads(saved_threads);
}

}  // namespace
