// Shared parts of xlstm_bench: the options, the machine limits measured in the
// same run, the FLOP and byte counts of the modules, and the counter helper
// every row reports through.
//
// FLOPs are matmul FLOPs only, 2*M*N*K per product (a matrix-vector product is
// K = 1 or M = 1); pointwise work (norms, gates, exp, the causal-decay matrix)
// is not counted. Bytes are what a step has to move at least: every weight
// once, the recurrent state read and written.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <set>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "xlstm/xlstm.hpp"

namespace xbench {

using xlstm::Index;
using xlstm::MLstmForm;

// ---------------------------------------------------------------------------
// Options (parsed by main before Google Benchmark sees argv)

struct Options {
  bool quick = false;      ///< --quick: the representative subset, short minimum times
  int threads = 1;         ///< --threads=N as given (0 = all)
  int used_threads = 1;    ///< the thread count in effect
  bool wall_time = false;  ///< --wall-time: wall time even when single-threaded
  /// --large7b=bf16|int8|q4: also the whole 7B architecture in that format
  /// (native: not run). One format per process, so that peak_rss_MB is its own.
  xlstm::WeightStorage large7b = xlstm::WeightStorage::native;
  /// --quantize-head: with --large7b=int8|q4, the embedding and LM head in
  /// that format too (QuantizeOptions::include_embedding_and_head).
  bool quantize_head = false;
};
const Options& options();

/// Rows and limits are timed by the CPU time of the benchmark thread when
/// everything runs on that one thread: on a shared machine that leaves out
/// the time other processes hold the core (Google Benchmark's own default for
/// the same reason). With more threads, or --wall-time, by wall time.
inline bool cpu_timing() { return options().used_threads == 1 && !options().wall_time; }

/// The clock the rows are timed by, in seconds.
inline double now_seconds() {
  if (cpu_timing()) {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Minimum time per row in quick mode (seconds); rows whose single iteration
/// takes longer run once.
constexpr double kQuickMinTime = 0.05;

// ---------------------------------------------------------------------------
// Machine limits (bench_limits.cpp). The limits/* rows run first and store the
// best value they measured; 0 means not measured yet. After all rows main()
// measures them once more, so the summary can show how steady the machine was.

struct Limits {
  double gemm_f32_gflops = 0;  ///< best Eigen float GEMM rate
  double gemm_f64_gflops = 0;  ///< best Eigen double GEMM rate
  double triad_gbps = 0;       ///< STREAM triad a = b + s*c, arrays far larger than the LLC
  double dram_read_gbps = 0;   ///< read-only sweep over the same arrays
  double cache_1mib_ns = 0;    ///< time to read a 1 MiB buffer that is in cache
  double l3_read_gbps = 0;     ///< read of a buffer half the size of the L3
  /// Register-only float FMA loops at the build's vector width: the
  /// arithmetic peak of the run's thread count and of one thread. The
  /// physical ceiling of every compute-bound row (the GEMM rate is what a
  /// library reaches, which can sit far below it). Double: half of it.
  double fma_peak_f32_gflops = 0;
  double fma_peak_f32_1t_gflops = 0;

  /// The DRAM limit: the better of triad and read-only.
  double dram_gbps() const { return std::max(triad_gbps, dram_read_gbps); }
  double cache_1mib_gbps() const {
    return cache_1mib_ns > 0 ? double(1 << 20) / cache_1mib_ns : 0.0;
  }
  double gemm_gflops(bool f64) const { return f64 ? gemm_f64_gflops : gemm_f32_gflops; }
  /// One FMA instruction does half as many double lanes as float ones.
  double fma_peak_gflops(bool f64) const {
    return f64 ? fma_peak_f32_gflops / 2 : fma_peak_f32_gflops;
  }
};
Limits& limits();

/// Measures, briefly (best of a few passes), every limit that is 0 in `l`.
Limits measure_missing(Limits l);

/// Measures any limit still 0 (when a filter skipped the limits/* rows).
void ensure_limits();

/// Cache sizes from Google Benchmark's CPU info (1 MiB / 32 MiB if unknown).
std::size_t l2_bytes();
std::size_t l3_bytes();

void register_limit_benchmarks(bool quick);
void register_cell_benchmarks(bool quick);
void register_block_benchmarks(bool quick);
void register_model_benchmarks(bool quick);
void register_large_benchmarks(bool quick);
void register_tirex_benchmarks(bool quick);

// ---------------------------------------------------------------------------
// Modules shared by the forward rows and the backward/training rows

/// The blocks of bench_blocks.cpp: E = 512, NH = 4, rows over T = 1024.
constexpr Index kBlockEmbedding = 512, kBlockHeads = 4, kBlockTime = 1024;
xlstm::MLstmBlock<float> make_mlstm_block();
xlstm::SLstmBlock<float> make_slstm_block();

/// The 125M language model of bench_model.cpp (context 512), built once.
xlstm::LanguageModelConfig config_125m();
xlstm::LanguageModel<float>& model_125m();
/// B x T tokens uniform over the vocabulary.
xlstm::Tokens random_tokens(Index batch, Index time, Index vocab, std::uint64_t seed);

void register_backward_benchmarks(bool quick);
void register_training_benchmarks(bool quick);

// ---------------------------------------------------------------------------
// Counters

/// Which limit bounds a row; the row's label names it and the summary uses it.
enum class Bound {
  gemm,        ///< forward/prefill: GFLOP/s vs the GEMM rate
  memory,      ///< step/decode: GB/s vs the level the working set lives in
  cache_1mib,  ///< step whose weights are read from cache (the 1 MiB read)
};

/// What one benchmark iteration does.
struct Work {
  double items = 0;        ///< time steps or tokens
  double flops = 0;        ///< matmul FLOPs
  double bytes = 0;        ///< bytes that must be moved (weights + state read and written)
  double working_set = 0;  ///< distinct bytes touched: picks the cache level of a memory bound
  bool f64 = false;        ///< compare with the double GEMM rate
  Bound bound = Bound::gemm;
  const char* bytes_counter = "GBps";  ///< decode rows call it weight_GBps
};

/// Times the measured part of every iteration (by now_seconds()). All rows use
/// UseManualTime, so what an iteration prepares outside measure() (a state
/// reset) is not counted and the counters can be plain numbers computed from
/// the total.
class Stopwatch {
 public:
  template <typename F>
  void measure(benchmark::State& state, F&& f) {
    const double t0 = now_seconds();
    f();
    const double s = now_seconds() - t0;
    state.SetIterationTime(s);
    total_ += s;
    best_ = std::min(best_, s);
    times_.push_back(s);
  }
  double total() const { return total_; }
  double best() const { return best_; }
  /// The median iteration's time times the number of iterations: a total
  /// that a few iterations slowed by a neighbour on a shared machine do not
  /// move. Memory-bound rows (decode) report it, which steadies their
  /// percentage of the bandwidth from run to run.
  double median_total() const {
    if (times_.empty()) return 0;
    std::vector<double> t = times_;
    const auto mid = t.begin() + std::ptrdiff_t(t.size() / 2);
    std::nth_element(t.begin(), mid, t.end());
    return *mid * double(t.size());
  }

 private:
  double total_ = 0, best_ = 1e300;
  std::vector<double> times_;
};

/// Sets items/s, GFLOPs, pct_of_gemm (gemm-bound rows), the GB/s counter,
/// pct_of_bandwidth (vs DRAM) and pct_of_cache (vs the cache the working set
/// fits, if any), and the label "bound=<limit>" (gemm_f32, gemm_f64, DRAM, L3,
/// cache_1MiB) the summary reads. `seconds` is the Stopwatch total of the run (median_total for
/// decode rows). The percentages divide by the limits measured at the start of the run.
void report(benchmark::State& state, const Work& work, double seconds);

// ---------------------------------------------------------------------------
// Inputs

/// Fills with N(mean, std) from a seeded stream.
template <typename Derived>
void fill_normal(Eigen::PlainObjectBase<Derived>& x, std::uint64_t seed, double mean = 0.0,
                 double std = 1.0) {
  xlstm::Rng rng(seed);
  rng.normal(x, mean, std);
}

// ---------------------------------------------------------------------------
// FLOP counts (per token = per (batch row, time step))

/// mLSTM cell, per token and head; D = DHQK = DHV, L = chunk length.
///  parallel: scores Q K^T 2*T*D and H = S V 2*T*D per token (the library
///    computes the whole T x T square; the causal mask is applied by the
///    decay weights, so half of it is masked-out work), plus the final state
///    C += K^T diag(w) V 2*D*D and n 2*D.
///  chunkwise: intra-chunk scores 2*L*D and S V 2*L*D; inter-chunk
///    qbar C 2*D*D and qbar.n 2*D; state update C 2*D*D and n 2*D.
///  recurrent: C = f C + i k v^T 2*D*D, h = q C 2*D*D, n 2*D, q.n 2*D.
inline double mlstm_cell_flops_per_token_head(MLstmForm form, double time, double chunk, double d) {
  switch (form) {
    case MLstmForm::parallel:
      return 4 * time * d + 2 * d * d + 2 * d;
    case MLstmForm::chunkwise:
      return 4 * std::min(chunk, time) * d + 4 * d * d + 4 * d;
    default:
      return 4 * d * d + 4 * d;
  }
}

/// The form MLstmCell::forward picks for `automatic` from a zero state.
inline MLstmForm resolved_form(const xlstm::MLstmCellConfig& c, Index time) {
  return time <= c.parallel_max_length ? MLstmForm::parallel : MLstmForm::chunkwise;
}

/// sLSTM cell, per token: R y, one (4DH x DH) product per head: 2*4H*DH.
inline double slstm_cell_flops_per_token(double hidden, double heads) {
  return 2 * 4 * hidden * (hidden / heads);
}

/// mLSTM block (E, inner I, NH heads, D = I/NH, qkv block size bs, conv K),
/// per token: proj_up 2*E*2I, conv 2*K*I, q/k/v headwise 3*2*I*bs,
/// igate/fgate 2*2*3I*NH, the cell NH * (above), proj_down 2*I*E.
template <typename Scalar>
double mlstm_block_flops_per_token(const xlstm::MLstmBlock<Scalar>& block, MLstmForm form,
                                   double time) {
  const auto& c = block.config().mlstm;
  const double e = double(c.embedding_dim), i = double(block.inner_dim());
  const double nh = double(c.num_heads), d = i / nh;
  const double chunk = double(block.cell().config().chunk_size);
  if (form == MLstmForm::automatic) form = resolved_form(block.cell().config(), Index(time));
  return 2 * e * 2 * i + 2 * double(c.conv1d_kernel_size) * i +
         3 * 2 * i * double(c.qkv_proj_blocksize) + 2 * 2 * 3 * i * nh +
         nh * mlstm_cell_flops_per_token_head(form, time, chunk, d) + 2 * i * e;
}

/// sLSTM block (E, NH heads, conv K, feed-forward up dim U), per token: gates
/// i,f,z,o headwise 4*2*E*(E/NH), conv 2*K*E, the cell 2*4E*(E/NH), the gated
/// feed-forward 2*E*2U + 2*U*E.
template <typename Scalar>
double slstm_block_flops_per_token(const xlstm::SLstmBlock<Scalar>& block) {
  const auto& c = block.config().slstm;
  const double e = double(c.embedding_dim), nh = double(c.num_heads);
  double f = 4 * 2 * e * (e / nh) + 2 * double(c.conv1d_kernel_size) * e +
             slstm_cell_flops_per_token(e, nh);
  if (block.config().feedforward) {
    const double u = double(block.config().feedforward->_proj_up_dim);
    f += 2 * e * 2 * u + 2 * u * e;
  }
  return f;
}

/// A block stack, per token (mLSTM blocks in form `form` at length `time`).
template <typename Scalar>
double stack_flops_per_token(const xlstm::BlockStack<Scalar>& stack, MLstmForm form, double time) {
  double f = 0;
  for (const auto& b : stack.blocks()) {
    std::visit(
        [&](const auto& block) {
          using B = std::decay_t<decltype(block)>;
          if constexpr (std::is_same_v<B, xlstm::MLstmBlock<Scalar>>) {
            f += mlstm_block_flops_per_token(block, form, time);
          } else {
            f += slstm_block_flops_per_token(block);
          }
        },
        b);
  }
  return f;
}

// ---------------------------------------------------------------------------
// Byte counts

/// Bytes of a module's parameters (tied tensors counted once).
template <typename Module>
double parameter_bytes(Module& module) {
  using Scalar = typename Module::Scalar;
  xlstm::ParameterList<Scalar> list;
  list = xlstm::parameter_list(module, "");
  std::set<const Scalar*> seen;
  double bytes = 0;
  for (const auto& p : list) {
    if (seen.insert(p.data).second) bytes += double(xlstm::shape_product(p.shape) * sizeof(Scalar));
  }
  return bytes;
}

/// Bytes of the recurrent state of a block (without the step workspace).
template <typename Scalar>
double state_bytes(const xlstm::MLstmBlockState<Scalar>& s) {
  return double(s.cell.C.size() + s.cell.n.size() + s.cell.m.size() + s.conv.window.size()) *
             sizeof(Scalar) +
         double(s.cell.C_bf16.size()) * 2;  // C in bfloat16 (math §4.8)
}
template <typename Scalar>
double state_bytes(const xlstm::SLstmBlockState<Scalar>& s) {
  const auto& c = s.cell;
  return double(c.y.size() + c.c.size() + c.n.size() + c.m.size() + s.conv.window.size()) *
         sizeof(Scalar);
}
template <typename Scalar>
double state_bytes(const xlstm::BlockStackState<Scalar>& s) {
  double bytes = 0;
  for (const auto& b : s.blocks) std::visit([&](const auto& x) { bytes += state_bytes(x); }, b);
  return bytes;
}

/// A dtype tag for row names.
template <typename Scalar>
constexpr const char* dtype_name() {
  return std::is_same_v<Scalar, double> ? "f64" : "f32";
}

}  // namespace xbench
