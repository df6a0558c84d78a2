// Threads: the thread count the library uses and the parallel loop it needs
// beyond Eigen's own parallel GEMM — a loop over independent items (heads,
// batch rows, ranges of weight rows; see core/kernels/dense.hpp for the last).
//
// Parallelism needs OpenMP (CMake option XLSTM_USE_OPENMP); without it every
// function here runs serially and gives the same results.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <thread>

#include "xlstm/core/blas_threads.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace xlstm {

namespace detail {

/// The count last given to set_num_threads (0: never set). It is kept here,
/// process-wide, because OpenMP's own setting belongs to the calling thread:
/// a std::thread started by the application would not see a count set in
/// main() and would run its parallel regions with the default instead.
inline std::atomic<int>& thread_count_setting() {
  static std::atomic<int> setting{0};
  return setting;
}

}  // namespace detail

/// Threads the library (and Eigen) will use: the set_num_threads count, else
/// OpenMP's default (OMP_NUM_THREADS or one per processor).
inline int num_threads() {
#ifdef _OPENMP
  const int set = detail::thread_count_setting().load(std::memory_order_relaxed);
  return set > 0 ? set : omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the thread count for the library and Eigen; 0 means all hardware
/// threads. The setting is process-wide: it applies to every thread that
/// calls into the library, including threads started before the call. Call it
/// while no model runs (Eigen keeps its count in a plain global). Without
/// OpenMP this is a no-op (always 1).
inline void set_num_threads(int threads) {
  check(threads >= 0, "set_num_threads: argument 'threads' must be >= 0, got ", threads);
  if (threads == 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
#ifdef _OPENMP
  detail::thread_count_setting().store(threads, std::memory_order_relaxed);
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
#else
  (void)threads;
#endif
}

/// Calls fn(i, thread) for i in [0, count), spread over the threads when
/// `parallel` is true and we are not already inside a parallel region;
/// `thread` is the executing thread's index in [0, num_threads()), 0 when the
/// items run on one thread (for per-thread workspaces, e.g. the mLSTM cell's
/// tape). Items must be independent.
template <typename Fn>
void parallel_for_indexed(Index count, bool parallel, Fn&& fn) {
#ifdef _OPENMP
  const int threads = num_threads();
  if (parallel && count > 1 && threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (Index i = 0; i < count; ++i) fn(i, omp_get_thread_num());
    return;
  }
#endif
  (void)parallel;
  for (Index i = 0; i < count; ++i) fn(i, 0);
}

/// Calls fn(i) for i in [0, count), as parallel_for_indexed.
template <typename Fn>
void parallel_for(Index count, bool parallel, Fn&& fn) {
  parallel_for_indexed(count, parallel, [&fn](Index i, int) { fn(i); });
}

/// Rows a row-block task takes in for_row_blocks. Fixed, so that work
/// split by these blocks (and partial sums kept per block) is the same at
/// every thread count.
inline constexpr Index kRowsPerBlock = 64;

/// Calls fn(block, first, count) for the blocks of kRowsPerBlock rows of
/// [0, rows), over the threads when rows x `row_cost` (about the operations
/// per row) is enough to pay for a parallel region.
template <typename Fn>
void for_row_blocks(Index rows, Index row_cost, Fn&& fn) {
  const Index blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const bool parallel = double(rows) * double(row_cost) >= double(Index(1) << 16);
  parallel_for(blocks, parallel, [&](Index block) {
    const Index first = block * kRowsPerBlock;
    fn(block, first, std::min(kRowsPerBlock, rows - first));
  });
}

/// y += x (same shape), by the row blocks of for_row_blocks: a block's
/// residual addition over a sequence, which on one thread would leave the
/// others idle between two parallel products.
template <typename X, typename Y>
void add_rows(const X& x, Y&& y) {
  for_row_blocks(y.rows(), y.cols(), [&](Index, Index first, Index count) {
    y.middleRows(first, count) += x.middleRows(first, count);
  });
}

}  // namespace xlstm
