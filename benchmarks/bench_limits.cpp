// The machine's limits, measured in the same run as the model rows so that
// every row can say how far it is from what this machine can do:
//   limits/gemm_*     Eigen GEMM (C = A B^T, the Linear layout) at the model's
//                     shapes, GFLOP/s = 2*M*N*K / time;
//   limits/triad      STREAM triad a = b + s*c over 3 x 128 MiB, GB/s counting
//                     the three arrays once (no write-allocate), as STREAM does;
//   limits/dram_read  a read-only sweep over 384 MiB;
//   limits/l3_read    a read-only sweep over half the L3;
//   limits/cache_read_1MiB the time to read a 1 MiB buffer that is in cache
//                     (the size of the sLSTM recurrent kernel at H = 512,
//                     NH = 4), 16 sweeps per timed pass;
//   limits/fma_peak_f32 independent float FMA chains in registers at the
//                     build's vector width (Eigen's packet, the one the
//                     kernels use), on 1 thread and on the run's threads:
//                     the arithmetic peak, GFLOP/s = 2 * lanes * FMAs / time.
// Each keeps its best iteration in limits(); report() divides by them.
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_common.hpp"

namespace xbench {

Limits& limits() {
  static Limits l;
  return l;
}

namespace {

/// Seconds of one call of f, by the clock the rows use (now_seconds()).
template <typename F>
double seconds_of(F&& f) {
  const double t0 = now_seconds();
  f();
  return now_seconds() - t0;
}

std::size_t cache_size(int level, std::size_t fallback) {
  for (const auto& c : benchmark::CPUInfo::Get().caches) {
    if (c.level == level && c.type != "Instruction" && c.size > 0) return std::size_t(c.size);
  }
  return fallback;
}

/// Calls fn(part, begin, end) on `parts` slices of [0, n), in parallel with
/// OpenMP when Eigen is set to more than one thread.
template <typename F>
void parallel_slices(std::size_t n, int parts, F&& fn) {
#ifdef _OPENMP
  if (parts > 1) {
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int p = 0; p < parts; ++p) {
      fn(p, n * std::size_t(p) / std::size_t(parts), n * std::size_t(p + 1) / std::size_t(parts));
    }
    return;
  }
#endif
  fn(0, std::size_t(0), n);
}

int memory_threads() {
#ifdef _OPENMP
  return std::max(1, Eigen::nbThreads());
#else
  return 1;
#endif
}

/// Sum with 64 independent accumulators, so the loop is bound by loads, not
/// by the latency of one chain of additions (the compiler vectorises it).
float sum_range(const float* p, std::size_t n) {
  constexpr std::size_t kWidth = 64;
  alignas(64) float acc[kWidth] = {};
  std::size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    for (std::size_t j = 0; j < kWidth; ++j) acc[j] += p[i + j];
  }
  float s = 0;
  for (; i < n; ++i) s += p[i];
  for (float a : acc) s += a;
  return s;
}

// The kernels: each owns its buffers, run() is one measured pass, work() the
// FLOPs or bytes of one pass.

template <typename Scalar>
struct GemmKernel {
  xlstm::Matrix<Scalar> a, b, c;
  GemmKernel(Index m, Index k, Index n) : a(m, k), b(n, k), c(m, n) {
    fill_normal(a, 1);
    fill_normal(b, 2);
  }
  void run() {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  double work() const { return 2.0 * double(a.rows()) * double(b.rows()) * double(a.cols()); }
};

struct TriadKernel {
  static constexpr std::size_t kBytesPerArray = std::size_t(128) << 20;
  Eigen::VectorXf a, b, c;
  int parts = memory_threads();
  TriadKernel() {
    const auto n = Index(kBytesPerArray / sizeof(float));
    a.resize(n);
    b.resize(n);
    c.resize(n);
    // First touch in the threads that will stream them.
    parallel_slices(std::size_t(n), parts, [&](int, std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) {
        a[Index(i)] = 0.0f;
        b[Index(i)] = 1.0f;
        c[Index(i)] = 2.0f;
      }
    });
  }
  void run() {
    const float s = 3.0f;
    float* pa = a.data();
    const float* pb = b.data();
    const float* pc = c.data();
    parallel_slices(std::size_t(a.size()), parts, [&](int, std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) pa[i] = pb[i] + s * pc[i];
    });
    benchmark::DoNotOptimize(pa);
    benchmark::ClobberMemory();
  }
  double work() const { return 3.0 * double(a.size()) * sizeof(float); }
};

struct ReadKernel {
  Eigen::VectorXf buffer;
  int parts;
  int sweeps;  ///< sweeps per run(): makes a small buffer's pass dwarf the clock's overhead
  std::vector<float> partial;
  ReadKernel(std::size_t bytes, int parts_, int sweeps_ = 1)
      : parts(parts_), sweeps(sweeps_), partial(std::size_t(parts_)) {
    buffer.resize(Index(bytes / sizeof(float)));
    parallel_slices(std::size_t(buffer.size()), parts, [&](int, std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) buffer[Index(i)] = float(i % 7);
    });
    run();  // warm the caches (for the in-cache sizes)
  }
  void run() {
    const float* p = buffer.data();
    for (int s = 0; s < sweeps; ++s) {
      parallel_slices(std::size_t(buffer.size()), parts,
                      [&](int part, std::size_t lo, std::size_t hi) {
                        partial[std::size_t(part)] += sum_range(p + lo, hi - lo);
                      });
      benchmark::DoNotOptimize(partial.data());
      benchmark::ClobberMemory();
    }
  }
  double work() const { return double(sweeps) * double(buffer.size()) * sizeof(float); }
  double seconds_per_sweep(double seconds) const { return seconds / sweeps; }
};

/// Float FMAs on registers only: kChains independent accumulators, enough to
/// cover the FMA latency times the FMA ports of current x86 cores (4-5
/// cycles x 2 ports), few enough to stay in the 16 vector registers of AVX2.
struct FmaPeakKernel {
  using Packet = Eigen::internal::packet_traits<float>::type;
  static constexpr int kLanes = Eigen::internal::packet_traits<float>::size;
  static constexpr int kChains = 12;
  static constexpr long kIterations = 1 << 22;  ///< per thread and pass
  int threads;
  std::vector<float> sink;
  explicit FmaPeakKernel(int threads_) : threads(threads_), sink(std::size_t(threads_)) {}

  static float chains(float seed) {
    namespace ei = Eigen::internal;
    Packet acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = ei::pset1<Packet>(seed + float(c));
    // Multiplier and addend keep the values bounded (x -> 0.999999 x + 1e-7).
    const Packet a = ei::pset1<Packet>(0.999999f), b = ei::pset1<Packet>(1e-7f);
    for (long i = 0; i < kIterations; ++i) {
      for (int c = 0; c < kChains; ++c) acc[c] = ei::pmadd(acc[c], a, b);
    }
    Packet total = acc[0];
    for (int c = 1; c < kChains; ++c) total = ei::padd(total, acc[c]);
    return ei::predux(total);
  }
  void run() {
    parallel_slices(std::size_t(threads), threads, [&](int part, std::size_t, std::size_t) {
      sink[std::size_t(part)] = chains(float(part));
    });
    benchmark::DoNotOptimize(sink.data());
    benchmark::ClobberMemory();
  }
  double work() const { return 2.0 * kLanes * kChains * double(kIterations) * threads; }
};

constexpr std::size_t kMiB = std::size_t(1) << 20;
constexpr std::size_t kDramReadBytes = 384 * kMiB;
constexpr int kCacheSweeps = 16;
std::size_t l3_read_bytes() { return std::max<std::size_t>(4 * kMiB, l3_bytes() / 2); }

void keep_max(double& slot, double value) { slot = std::max(slot, value); }

/// Runs the kernel under Google Benchmark, timing each iteration; returns the
/// best time and sets the rate counters ("GFLOPs" or "GBps" and its best).
template <typename Kernel>
double run_limit(benchmark::State& state, Kernel& kernel, const char* counter) {
  Stopwatch sw;
  for (auto _ : state) sw.measure(state, [&] { kernel.run(); });
  const double giga = kernel.work() / 1e9;
  state.counters[counter] = giga * double(state.iterations()) / sw.total();
  state.counters[std::string("best_") + counter] = giga / sw.best();
  state.SetLabel("limit");
  return sw.best();
}

template <typename Scalar>
void bm_gemm(benchmark::State& state) {
  GemmKernel<Scalar> kernel(state.range(0), state.range(1), state.range(2));
  const double best = run_limit(state, kernel, "GFLOPs");
  auto& l = limits();
  keep_max(std::is_same_v<Scalar, double> ? l.gemm_f64_gflops : l.gemm_f32_gflops,
           kernel.work() / best / 1e9);
}

void bm_triad(benchmark::State& state) {
  TriadKernel kernel;
  keep_max(limits().triad_gbps, kernel.work() / run_limit(state, kernel, "GBps") / 1e9);
}

void bm_dram_read(benchmark::State& state) {
  ReadKernel kernel(kDramReadBytes, memory_threads());
  keep_max(limits().dram_read_gbps, kernel.work() / run_limit(state, kernel, "GBps") / 1e9);
}

void bm_l3_read(benchmark::State& state) {
  ReadKernel kernel(l3_read_bytes(), 1);
  keep_max(limits().l3_read_gbps, kernel.work() / run_limit(state, kernel, "GBps") / 1e9);
}

void bm_cache_1mib(benchmark::State& state) {
  ReadKernel kernel(kMiB, 1, kCacheSweeps);
  const double best = kernel.seconds_per_sweep(run_limit(state, kernel, "GBps"));
  state.counters["best_ns"] = best * 1e9;
  auto& l = limits();
  l.cache_1mib_ns = l.cache_1mib_ns > 0 ? std::min(l.cache_1mib_ns, best * 1e9) : best * 1e9;
}

/// state.range(0) = 1: one thread; 0: the run's thread count.
void bm_fma_peak(benchmark::State& state) {
  const int threads = state.range(0) == 1 ? 1 : memory_threads();
  FmaPeakKernel kernel(threads);
  const double gflops = kernel.work() / run_limit(state, kernel, "GFLOPs") / 1e9;
  auto& l = limits();
  keep_max(threads == 1 ? l.fma_peak_f32_1t_gflops : l.fma_peak_f32_gflops, gflops);
  if (threads == 1 && memory_threads() == 1) keep_max(l.fma_peak_f32_gflops, gflops);
}

/// Best seconds of `reps` passes, outside Google Benchmark.
template <typename Kernel>
double best_of(Kernel& kernel, int reps) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < reps; ++r) best = std::min(best, seconds_of([&] { kernel.run(); }));
  return best;
}

}  // namespace

std::size_t l2_bytes() { return cache_size(2, kMiB); }
std::size_t l3_bytes() { return cache_size(3, 32 * kMiB); }

Limits measure_missing(Limits l) {
  if (l.gemm_f32_gflops == 0) {
    GemmKernel<float> k(512, 768, 3072);
    l.gemm_f32_gflops = k.work() / best_of(k, 5) / 1e9;
  }
  if (l.gemm_f64_gflops == 0) {
    GemmKernel<double> k(512, 768, 3072);
    l.gemm_f64_gflops = k.work() / best_of(k, 5) / 1e9;
  }
  if (l.triad_gbps == 0) {
    TriadKernel k;
    l.triad_gbps = k.work() / best_of(k, 3) / 1e9;
  }
  if (l.dram_read_gbps == 0) {
    ReadKernel k(kDramReadBytes, memory_threads());
    l.dram_read_gbps = k.work() / best_of(k, 3) / 1e9;
  }
  if (l.l3_read_gbps == 0) {
    ReadKernel k(l3_read_bytes(), 1);
    l.l3_read_gbps = k.work() / best_of(k, 50) / 1e9;
  }
  if (l.fma_peak_f32_gflops == 0) {
    FmaPeakKernel k(memory_threads());
    l.fma_peak_f32_gflops = k.work() / best_of(k, 5) / 1e9;
  }
  if (l.fma_peak_f32_1t_gflops == 0) {
    FmaPeakKernel k(1);
    l.fma_peak_f32_1t_gflops = k.work() / best_of(k, 5) / 1e9;
  }
  if (l.cache_1mib_ns == 0) {
    ReadKernel k(kMiB, 1, kCacheSweeps);
    l.cache_1mib_ns = k.seconds_per_sweep(best_of(k, 100)) * 1e9;
  }
  return l;
}

void ensure_limits() { limits() = measure_missing(limits()); }

void report(benchmark::State& state, const Work& w, double seconds) {
  ensure_limits();
  const Limits& l = limits();
  const double iters = double(state.iterations());
  auto rate = [&](double per_iteration) { return per_iteration * iters / seconds; };
  if (w.items > 0) state.SetItemsProcessed(std::int64_t(w.items * iters));
  if (w.flops > 0) {
    state.counters["GFLOPs"] = rate(w.flops / 1e9);
    if (w.bound == Bound::gemm) {
      state.counters["pct_of_gemm"] = rate(w.flops / 1e9 / l.gemm_gflops(w.f64) * 100);
      state.counters["pct_of_fma_peak"] = rate(w.flops / 1e9 / l.fma_peak_gflops(w.f64) * 100);
    }
  }
  std::string bound = w.f64 ? "gemm_f64" : "gemm_f32";
  if (w.bytes > 0) {
    const double gb = w.bytes / 1e9;
    state.counters[w.bytes_counter] = rate(gb);
    state.counters["pct_of_bandwidth"] = rate(gb / l.dram_gbps() * 100);
    std::string level = "DRAM";
    double cache_gbps = 0;
    if (w.bound == Bound::cache_1mib ||
        (w.working_set > 0 && w.working_set <= double(l2_bytes()))) {
      level = "cache_1MiB";
      cache_gbps = l.cache_1mib_gbps();
    } else if (w.working_set > 0 && w.working_set <= double(l3_bytes())) {
      level = "L3";
      cache_gbps = l.l3_read_gbps;
    }
    if (cache_gbps > 0) state.counters["pct_of_cache"] = rate(gb / cache_gbps * 100);
    if (w.bound != Bound::gemm) bound = level;
  }
  state.SetLabel("bound=" + bound);
}

void register_limit_benchmarks(bool quick) {
  const int scale = quick ? 1 : 3;
  // The mLSTM block's up-projection of a 512-token prefill at E = 768
  // (512 x 768 times 768 x 3072), and a square 1024.
  benchmark::RegisterBenchmark("limits/gemm_f32", bm_gemm<float>)
      ->Args({512, 768, 3072})
      ->Args({1024, 1024, 1024})
      ->Iterations(10 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/gemm_f64", bm_gemm<double>)
      ->Args({512, 768, 3072})
      ->Args({1024, 1024, 1024})
      ->Iterations(5 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/fma_peak_f32", bm_fma_peak)
      ->ArgName("one_thread")
      ->Arg(1)
      ->Arg(0)
      ->Iterations(5 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/triad_3x128MiB", bm_triad)
      ->Iterations(12 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/dram_read_384MiB", bm_dram_read)
      ->Iterations(12 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/l3_read_half_L3", bm_l3_read)
      ->Iterations(100 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("limits/cache_read_1MiB", bm_cache_1mib)
      ->Iterations(200 * scale)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace xbench
