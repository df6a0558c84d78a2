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

namespace detail {

/// out[b] = w . x_b for B rows of x (row stride `ld`), with Eigen's SIMD
/// packets: each packet of w is loaded once and used for all B rows.
template <int B, typename Scalar>
inline void dot_rows(const Scalar* w, const Scalar* x, Index ld, Index n, Scalar* out) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<Scalar>::type;
  constexpr Index kLanes = packet_traits<Scalar>::size;
  Packet acc[B];
  for (int b = 0; b < B; ++b) acc[b] = pset1<Packet>(Scalar(0));
  Index i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Packet wv = ploadu<Packet>(w + i);
    for (int b = 0; b < B; ++b) acc[b] = pmadd(wv, ploadu<Packet>(x + b * ld + i), acc[b]);
  }
  for (int b = 0; b < B; ++b) {
    Scalar sum = predux(acc[b]);
    for (Index j = i; j < n; ++j) sum += w[j] * x[b * ld + j];
    out[b] = sum;
  }
}

/// Rows [r0, r0 + n) of y = x W^T for a batch of at most 8 rows: every row of
/// W is read from memory once and dotted with all batch rows while it is in
/// the L1 cache. Eigen's GEMM would first pack (copy) W, which costs more than
/// the product itself when the batch is this small.
template <typename Scalar, typename XRef, typename WeightRef>
void small_batch_rows(const XRef& x, const WeightRef& w, MatrixRef<Scalar> y, bool accumulate,
                      Index r0, Index n) {
  const Index batch = x.rows(), in = w.cols(), ld = x.outerStride();
  const Scalar* xs = x.data();
  Scalar dots[8];
  for (Index o = r0; o < r0 + n; ++o) {
    const Scalar* wr = &w.coeffRef(o, 0);
    Index b = 0;
    for (; b + 4 <= batch; b += 4) dot_rows<4>(wr, xs + b * ld, ld, in, dots + b);
    for (; b + 2 <= batch; b += 2) dot_rows<2>(wr, xs + b * ld, ld, in, dots + b);
    for (; b < batch; ++b) dot_rows<1>(wr, xs + b * ld, ld, in, dots + b);
    for (b = 0; b < batch; ++b) {
      if (accumulate) {
        y(b, o) += dots[b];
      } else {
        y(b, o) = dots[b];
      }
    }
  }
}

}  // namespace detail

/// y = x W^T (or y += x W^T) with W stored (out x in) row-major. Products
/// with few rows of x (decode) read W once with a kernel that dots each W row
/// with all of them, the output columns split over the threads, each
/// streaming its own rows of W. Larger products are Eigen's GEMM (parallel by
/// itself with OpenMP).
template <typename Scalar, typename WeightRef>
void matmul_transposed(const ConstMatrixRef<Scalar>& x, const WeightRef& w, MatrixRef<Scalar> y,
                       bool accumulate = false) {
  const Index out = w.rows(), batch = x.rows();
  constexpr Index kSmallBatch = 8;
  // Work (weights) below which a product stays on one thread: a parallel
  // region costs a few microseconds, and more when the other core is busy.
  constexpr Index kMinParallelWork = Index(1) << 18;
  if (batch > kSmallBatch || batch == 0) {
    if (accumulate) {
      y.noalias() += x * w.transpose();
    } else {
      y.noalias() = x * w.transpose();
    }
    return;
  }
  auto rows = [&](Index r0, Index n) {
    detail::small_batch_rows<Scalar>(x, w, y, accumulate, r0, n);
  };
  const int threads = num_threads();
  if (threads > 1 && w.size() >= kMinParallelWork) {
    // Contiguous, 16-row aligned ranges of W per thread.
    const Index per = ((out + threads - 1) / threads + 15) / 16 * 16;
    const Index parts = (out + per - 1) / per;
    parallel_for(parts, true, [&](Index p) { rows(p * per, std::min(per, out - p * per)); });
    return;
  }
  rows(0, out);
}

}  // namespace xlstm
