// One pool of threads with a BLAS behind Eigen's products (CMake option
// XLSTM_USE_BLAS, which defines EIGEN_USE_BLAS, and XLSTM_BLAS_OPENBLAS when
// the BLAS found is OpenBLAS).
//
// The library parallelises with OpenMP: its own loops (heads, batch rows,
// ranges of weight rows) run on the set_num_threads threads, and Eigen's
// products called inside them must run on the calling thread. OpenBLAS's
// OpenMP build does exactly that (it runs serially inside a parallel region
// and on OpenMP's thread count outside one). Its pthreads build keeps a pool
// of its own, as many threads as processors, whatever set_num_threads says:
// inside the library's parallel regions the two pools then compete for the
// same cores, and on two cores the 125M prefill ran 3.3x and the sLSTM block
// forward 8x slower than without a BLAS (README, "Threads"). So with the
// pthreads build the library keeps OpenBLAS to one thread, when the program
// starts, and its own threads do all parallel work.
#pragma once

#include <string>

#if defined(XLSTM_BLAS_OPENBLAS)
extern "C" {
// OpenBLAS's own functions (its cblas.h declares them the same way).
int openblas_get_parallel(void);  // 0: sequential, 1: pthreads, 2: OpenMP
void openblas_set_num_threads(int num_threads);
}
#endif

namespace xlstm {

/// How the BLAS behind Eigen's products shares the cores with the library's
/// threads.
enum class BlasThreads {
  no_blas,         ///< built without XLSTM_USE_BLAS: Eigen's own products
  sequential,      ///< a single-threaded BLAS (OpenBLAS's serial build)
  follows_openmp,  ///< OpenBLAS's OpenMP build: the library's threads
  kept_to_one,     ///< OpenBLAS's pthreads build, set to one thread
  unknown,         ///< another BLAS: its threading is the application's to set
};

namespace detail {

/// Applies the rule above once: called by the initialiser below, before
/// main() in any program that includes this header.
inline BlasThreads keep_blas_in_one_pool() {
#if defined(XLSTM_BLAS_OPENBLAS)
  switch (openblas_get_parallel()) {
    case 0:
      return BlasThreads::sequential;
    case 2:
      return BlasThreads::follows_openmp;
    default:
      openblas_set_num_threads(1);
      return BlasThreads::kept_to_one;
  }
#elif defined(EIGEN_USE_BLAS)
  return BlasThreads::unknown;
#else
  return BlasThreads::no_blas;
#endif
}

inline const BlasThreads blas_threads_at_start = keep_blas_in_one_pool();

}  // namespace detail

/// The BLAS's threading in this program (see the top of this file).
inline BlasThreads blas_threads() { return detail::blas_threads_at_start; }

/// blas_threads() in words, for logs and benchmark reports.
inline std::string blas_threads_name(BlasThreads t) {
  switch (t) {
    case BlasThreads::no_blas:
      return "none (Eigen's products)";
    case BlasThreads::sequential:
      return "OpenBLAS, sequential build";
    case BlasThreads::follows_openmp:
      return "OpenBLAS, OpenMP build (the library's threads)";
    case BlasThreads::kept_to_one:
      return "OpenBLAS, pthreads build, kept to one thread (the library's threads parallelise)";
    case BlasThreads::unknown:
      break;
  }
  return "a BLAS other than OpenBLAS (its threads are the application's to set)";
}

}  // namespace xlstm
