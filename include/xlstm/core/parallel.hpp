// Threads: the thread count the library uses and the two parallel patterns it
// needs beyond Eigen's own parallel GEMM — a loop over independent items
// (heads, batch rows) and a row-split matrix-vector product (Eigen's GEMV is
// single-threaded, and decoding one token is nothing but GEMVs).
//
// Parallelism needs OpenMP (CMake option XLSTM_USE_OPENMP); without it every
// function here runs serially and gives the same results.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <thread>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace xlstm {

/// Threads the library (and Eigen) will use.
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the thread count for the library and Eigen; 0 means all hardware
/// threads. Without OpenMP this is a no-op (always 1).
inline void set_num_threads(int threads) {
  check(threads >= 0, "set_num_threads: argument 'threads' must be >= 0, got ", threads);
  if (threads == 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
#ifdef _OPENMP
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
#else
  (void)threads;
#endif
}

/// Calls fn(i) for i in [0, count), spread over the threads when `parallel`
/// is true and we are not already inside a parallel region. Items must be
/// independent.
template <typename Fn>
void parallel_for(Index count, bool parallel, Fn&& fn) {
#ifdef _OPENMP
  if (parallel && count > 1 && num_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < count; ++i) fn(i);
    return;
  }
#endif
  (void)parallel;
  for (Index i = 0; i < count; ++i) fn(i);
}

/// y = x W^T (or y += x W^T) with W stored (out x in) row-major. Products
/// with few rows of x (decode) are GEMVs: their output columns are split
/// over the threads, each thread streaming its own rows of W.
template <typename Scalar, typename WeightRef>
void matmul_transposed(const ConstMatrixRef<Scalar>& x, const WeightRef& w, MatrixRef<Scalar> y,
                         bool accumulate = false) {
  const Index out = w.rows();
  constexpr Index kSmallBatch = 8;       // up to this many rows, split W by rows
  constexpr Index kMinParallelWork = 1 << 16;  // weights below this stay on one thread
  const int threads = num_threads();
  if (x.rows() <= kSmallBatch && threads > 1 && w.size() >= kMinParallelWork) {
    // Contiguous, 16-row aligned ranges of W per thread.
    const Index per = ((out + threads - 1) / threads + 15) / 16 * 16;
    const Index parts = (out + per - 1) / per;
    parallel_for(parts, true, [&](Index p) {
      const Index r0 = p * per, n = std::min(per, out - r0);
      if (accumulate) {
        y.middleCols(r0, n).noalias() += x * w.middleRows(r0, n).transpose();
      } else {
        y.middleCols(r0, n).noalias() = x * w.middleRows(r0, n).transpose();
      }
    });
    return;
  }
  if (accumulate) {
    y.noalias() += x * w.transpose();
  } else {
    y.noalias() = x * w.transpose();
  }
}

}  // namespace xlstm
