// xlstm_bench: the machine's limits first, then the cells, blocks and a 125M
// language model, each row next to the limit that bounds it.
//
//   xlstm_bench [--quick] [--threads=N] [Google Benchmark flags]
//
//   --quick       a representative subset in well under two minutes
//   --threads=N   threads for Eigen's products and OpenMP loops: 1 (default),
//                 2, ..., 0 = one per processor
//   --wall-time   time by the wall clock also when single-threaded (by default
//                 a single-threaded run is timed by its thread's CPU time, so
//                 that other processes on a shared machine do not count)
//   --large7b=F   also the whole 7B architecture with random weights in format
//                 F = bf16, int8 or q4 (about 14, 7.5 or 4.3 GB; one format per
//                 run, so that its peak_rss_MB counter is that format's)
//   --quantize-head  with --large7b=int8|q4: the embedding and LM head in that
//                 format too (by default BF16, as quantize_weights leaves them)
//
// At the end a summary table prints every row's figure, its limit and the
// percentage reached. JSON output (--benchmark_out=x.json
// --benchmark_out_format=json) carries the same counters; benchmarks/plot.py
// draws it.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_common.hpp"

namespace xbench {

namespace {
Options g_options;
}

const Options& options() { return g_options; }

namespace {

/// Forwards everything to the reporter of the chosen format and keeps the
/// runs for the summary.
class CollectingReporter : public benchmark::BenchmarkReporter {
 public:
  explicit CollectingReporter(std::unique_ptr<benchmark::BenchmarkReporter> inner)
      : inner_(std::move(inner)) {}

  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      const std::string name = r.benchmark_name();
      if (!index_.count(name)) {
        index_[name] = runs_.size();
        runs_.push_back(r);
      } else {
        runs_[index_[name]] = r;  // a later repetition replaces it
      }
    }
    inner_->ReportRuns(runs);
  }

  void Finalize() override { inner_->Finalize(); }

  const std::vector<Run>& runs() const { return runs_; }

 private:
  std::unique_ptr<benchmark::BenchmarkReporter> inner_;
  std::vector<Run> runs_;
  std::map<std::string, std::size_t> index_;
};

double counter(const benchmark::BenchmarkReporter::Run& r, const char* name) {
  const auto it = r.counters.find(name);
  return it == r.counters.end() ? 0.0 : it->second.value;
}

/// The row name without the parts that only say how it was run
/// (manual_time, iterations:N, min_time:X).
std::string row_name(const std::string& full) {
  std::string out, part;
  auto flush = [&] {
    if (part != "manual_time" && part != "real_time" && part.rfind("iterations:", 0) != 0 &&
        part.rfind("min_time:", 0) != 0) {
      out += (out.empty() ? "" : "/") + part;
    }
    part.clear();
  };
  for (char c : full) {
    if (c == '/') {
      flush();
    } else {
      part += c;
    }
  }
  flush();
  return out;
}

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

/// The better of two measurements of each limit.
Limits best_of(const Limits& a, const Limits& b) {
  Limits l;
  l.gemm_f32_gflops = std::max(a.gemm_f32_gflops, b.gemm_f32_gflops);
  l.gemm_f64_gflops = std::max(a.gemm_f64_gflops, b.gemm_f64_gflops);
  l.triad_gbps = std::max(a.triad_gbps, b.triad_gbps);
  l.dram_read_gbps = std::max(a.dram_read_gbps, b.dram_read_gbps);
  l.l3_read_gbps = std::max(a.l3_read_gbps, b.l3_read_gbps);
  l.cache_1mib_ns = std::min(a.cache_1mib_ns, b.cache_1mib_ns);
  l.fma_peak_f32_gflops = std::max(a.fma_peak_f32_gflops, b.fma_peak_f32_gflops);
  l.fma_peak_f32_1t_gflops = std::max(a.fma_peak_f32_1t_gflops, b.fma_peak_f32_1t_gflops);
  return l;
}

/// The limit a row's label names, from `l`.
double limit_of(const std::string& bound, const Limits& l) {
  if (bound == "gemm_f32") return l.gemm_f32_gflops;
  if (bound == "gemm_f64") return l.gemm_f64_gflops;
  if (bound == "DRAM") return l.dram_gbps();
  if (bound == "L3") return l.l3_read_gbps;
  if (bound == "cache_1MiB") return l.cache_1mib_gbps();
  return 0;
}

void print_summary(std::FILE* out, const std::vector<benchmark::BenchmarkReporter::Run>& runs,
                   const Limits& start, const Limits& end, double wall_seconds) {
  const Limits l = best_of(start, end);
  std::fprintf(out, "\nSummary (%s mode, %d thread%s, timed by %s; the run took %.0f s)\n",
               options().quick ? "quick" : "full", options().used_threads,
               options().used_threads == 1 ? "" : "s",
               cpu_timing() ? "thread CPU time" : "wall time", wall_seconds);
  // Measured before the rows and again after them: on a shared machine the
  // neighbours' load moves every figure, and the gap shows by how much.
  auto print_limits = [&](const char* what, const Limits& x) {
    std::fprintf(out,
                 "%-8s FMA peak f32 %5.1f GFLOP/s (1 thread %.1f) | GEMM f32 %5.1f GFLOP/s, f64 "
                 "%5.1f GFLOP/s | DRAM %5.1f GB/s (triad %.1f, read %.1f) | L3 read %5.1f GB/s | "
                 "1 MiB from cache %.2f us (%.1f GB/s)\n",
                 what, x.fma_peak_f32_gflops, x.fma_peak_f32_1t_gflops, x.gemm_f32_gflops,
                 x.gemm_f64_gflops, x.dram_gbps(), x.triad_gbps, x.dram_read_gbps, x.l3_read_gbps,
                 x.cache_1mib_ns / 1e3, x.cache_1mib_gbps());
  };
  print_limits("start:", start);
  print_limits("end:", end);
  print_limits("limits:", l);
  std::fprintf(out,
               "(%%limit divides by the best of start and end; the JSON's pct_* counters "
               "by the start values; %%peak: compute-bound rows against the FMA peak)\n");
  std::fprintf(out, "%-44s %11s %11s %15s %26s %7s %6s\n", "row", "us/token", "tokens/s", "figure",
               "limit", "%limit", "%peak");
  for (const auto& r : runs) {
    const std::string name = row_name(r.benchmark_name());
    const std::string& label = r.report_label;
    if (label == "limit") {
      const bool flops = r.counters.count("best_GFLOPs") != 0;
      const double best = counter(r, flops ? "best_GFLOPs" : "best_GBps");
      std::fprintf(out, "%-44s %11s %11s %15s %26s %7s %6s\n", name.c_str(), "-", "-",
                   format(flops ? "%.1f GFLOP/s" : "%.1f GB/s", best).c_str(), "(best pass)", "-",
                   "-");
      continue;
    }
    const double items = counter(r, "items_per_second");
    const std::string per_token = items > 0 ? format("%.2f", 1e6 / items) : "-";
    const std::string tokens = items > 0 ? format("%.0f", items) : "-";
    std::string figure = "-", limit = "-", pct = "-", peak_pct = "-";
    const bool has_figure = r.counters.count("GFLOPs") != 0 || r.counters.count("GBps") != 0 ||
                            r.counters.count("weight_GBps") != 0;
    if (label.rfind("bound=", 0) == 0 && has_figure) {  // serving rows have tokens/s only
      const std::string bound = label.substr(6);
      const bool gemm = bound.rfind("gemm", 0) == 0;
      const double value =
          gemm ? counter(r, "GFLOPs")
               : counter(r, r.counters.count("weight_GBps") ? "weight_GBps" : "GBps");
      const double lim = limit_of(bound, l);
      const char* unit = gemm ? "GFLOP/s" : "GB/s";
      figure = format("%.1f ", value) + unit;
      if (lim > 0) {
        limit = format("%.1f ", lim) + unit + " " + (gemm ? "GEMM" : bound);
        pct = format("%.1f", 100 * value / lim);
      }
      const double peak = l.fma_peak_gflops(bound == "gemm_f64");
      if (gemm && peak > 0) peak_pct = format("%.1f", 100 * value / peak);
    }
    std::fprintf(out, "%-44s %11s %11s %15s %26s %7s %6s\n", name.c_str(), per_token.c_str(),
                 tokens.c_str(), figure.c_str(), limit.c_str(), pct.c_str(), peak_pct.c_str());
  }
  std::fflush(out);
}

/// The performance targets (README, Performance), judged from this run's
/// rows: met, not met, or not run (a row missing from the run). The figures
/// are this run's, at its thread count and for the build it runs in (the
/// native and the x86-64-v3 build are judged alike): every compute-bound row
/// against the FMA peak of the run's threads, every memory-bound row against
/// the DRAM bandwidth, both measured in the same run.
void print_targets(std::FILE* out, const std::vector<benchmark::BenchmarkReporter::Run>& runs,
                   const Limits& l) {
  std::map<std::string, const benchmark::BenchmarkReporter::Run*> by_name;
  for (const auto& r : runs) by_name[row_name(r.benchmark_name())] = &r;
  auto value = [&](const std::string& row, const char* name) {
    const auto it = by_name.find(row);
    return it == by_name.end() ? 0.0 : counter(*it->second, name);
  };
  auto rate = [&](const std::string& row) { return value(row, "items_per_second"); };
  const int threads = options().used_threads;

  std::fprintf(
      out, "\nTargets (float32 unless named; %d thread%s, this build's FMA peak %.1f GFLOP/s)\n",
      threads, threads == 1 ? "" : "s", l.fma_peak_f32_gflops);
  auto line = [&](const std::string& target, bool measured, bool met, const std::string& figure) {
    std::fprintf(out, "  %-60s %-10s %s\n", target.c_str(),
                 !measured ? "not run" : (met ? "met" : "NOT MET"), measured ? figure.c_str() : "");
  };

  // 1-3. Compute-bound rows at >= 60 % of the FMA peak.
  const std::string prefill = "lm125m/f32/prefill/B:1/T:512";
  for (const auto& [row, name] :
       {std::pair{prefill, "prefill 125M, B=1, T=512"},
        std::pair{std::string("mlstm_block/f32/forward/B:1"), "mLSTM block forward, E=512, T=1024"},
        std::pair{std::string("slstm_block/f32/forward/B:1"),
                  "sLSTM block forward, E=512, T=1024"}}) {
    const double gflops = value(row, "GFLOPs");
    const double peak_pct = 100 * gflops / l.fma_peak_f32_gflops;
    line(std::string(name) + ": >= 60% of the FMA peak", rate(row) > 0, peak_pct >= 60,
         format("%.1f%% of the FMA peak", peak_pct) + format(" (%.1f GFLOP/s", gflops) +
             format(", %.1f%% of GEMM)", 100 * gflops / l.gemm_f32_gflops));
  }

  // 4. Decode B = 1 at the bandwidth (the row's median step).
  const std::string decode1 = "lm125m/f32/decode/B:1", decode8 = "lm125m/f32/decode/B:8";
  const double decode_pct = 100 * value(decode1, "weight_GBps") / l.dram_gbps();
  line("decode 125M, B=1: >= 80% of DRAM", rate(decode1) > 0, decode_pct >= 80,
       format("%.1f%% of DRAM", decode_pct) + format(", %.1f tokens/s", rate(decode1)));

  // 5. BF16 weights: half the bytes of float32.
  const std::string bf16 = "large/bf16/decode/model:0/B:1", f32 = "large/f32/decode/model:2/B:1";
  const double bf16_gain = rate(bf16) / rate(f32);
  line("BF16 decode >= 1.8x float32 weights (7B-shaped block)", rate(bf16) > 0 && rate(f32) > 0,
       bf16_gain >= 1.8, format("%.2fx", bf16_gain));

  // How fast two decode rows move their bytes, as shares of the DRAM read.
  auto dram_shares = [&](const std::string& batched, const std::string& single) {
    return format("; bytes at %.0f%%", value(batched, "pct_of_bandwidth")) +
           format(" of DRAM for B=8, %.0f%% for B=1", value(single, "pct_of_bandwidth"));
  };

  // 6. Decode B = 8 against its bandwidth bound. Bandwidth-bound, B = 8
  // moves W + 8 S bytes per step where B = 1 moves W + S (W weights, S state
  // read and written per row): at most 8 (W + S) / (W + 8 S) times the
  // tokens/s. The ratio to the bound is the ratio of the two rows' byte
  // rates, printed as percentages of the same-run DRAM read: a B = 1 row
  // above 100 % finds part of its bytes in the L3 (on a host whose L3 holds
  // a good part of W + S), which B = 8's larger working set cannot match.
  const double batch_gain = rate(decode8) / rate(decode1);
  const double weights = value(decode1, "weight_bytes"),
               row_state = value(decode1, "state_bytes_per_row");
  const double batch_bound = 8 * (weights + row_state) / (weights + 8 * row_state);
  line("decode 125M, B=8: >= 0.9x its bandwidth bound over B=1",
       rate(decode1) > 0 && rate(decode8) > 0, batch_gain >= 0.9 * batch_bound,
       format("%.2fx B=1", batch_gain) + format(" = %.2fx the bound", batch_gain / batch_bound) +
           format(" (bound %.2fx", batch_bound) + dram_shares(decode8, decode1) + ")");

  // 6b. The same with the mLSTM states' C in bfloat16 (math §4.8, opt-in):
  // S shrinks, which lifts the bound; judged against its own bound, and
  // compared with the full-storage B = 8 rows in tokens/s.
  const std::string half1 = "lm125m/f32/decode_bf16_state/B:1",
                    half8 = "lm125m/f32/decode_bf16_state/B:8";
  const double half_gain = rate(half8) / rate(half1);
  const double half_state = value(half1, "state_bytes_per_row");
  const double half_bound = 8 * (weights + half_state) / (weights + 8 * half_state);
  line("decode 125M, B=8, BF16 mLSTM state: >= 0.9x its (lifted) bound",
       rate(half1) > 0 && rate(half8) > 0, half_gain >= 0.9 * half_bound,
       format("%.2fx B=1", half_gain) + format(" = %.2fx the bound", half_gain / half_bound) +
           format(" (bound %.2fx", half_bound) + format(" vs %.2fx", batch_bound) +
           dram_shares(half8, half1) +
           format("); B=8 %.2fx the full state's tokens/s", rate(half8) / rate(decode8)));

  // 7. sLSTM step at B = 8: eight rows' FLOPs at the same run's GEMM rate.
  const std::string slstm8 = "slstm_cell/f32/step/B:8";
  const double row_us = rate(slstm8) > 0 ? 1e6 / rate(slstm8) : 0;
  const double row_bound_us = value(slstm8, "flops_per_row") / l.gemm_f32_gflops / 1e3;
  line("sLSTM step, B=8: per row <= 1.5x its time at the GEMM rate",
       rate(slstm8) > 0 && row_bound_us > 0, row_us <= 1.5 * row_bound_us,
       format("%.2f us per row", row_us) + format(" = %.2fx", row_us / row_bound_us) +
           format(" the %.2f us at the GEMM rate", row_bound_us));

  // 8. Thread scaling of prefill (2-thread runs).
  const std::string prefill1 = prefill + "/threads:1";
  const double scaling = rate(prefill) / rate(prefill1);
  line("prefill on 2 threads >= 1.6x on 1 thread",
       threads == 2 && rate(prefill) > 0 && rate(prefill1) > 0, scaling >= 1.6,
       format("%.2fx", scaling));

  // 9. Long sequences: chunkwise keeps its rate.
  const std::string chunk256 = "mlstm_cell/f32/chunkwise/T:256",
                    chunk4096 = "mlstm_cell/f32/chunkwise/T:4096";
  const double chunk_peak = 100 * value(chunk4096, "GFLOPs") / l.fma_peak_f32_gflops;
  const double chunk_growth = rate(chunk256) / rate(chunk4096);  // time per token, 4096 vs 256
  line("mLSTM chunkwise T=4096: <= 1.25x the time per token of T=256",
       rate(chunk256) > 0 && rate(chunk4096) > 0, chunk_growth <= 1.25,
       format("%.2fx per token", chunk_growth) + format(", %.1f%% of the FMA peak", chunk_peak));

  // 10. The 8/4-bit weights (7B-shaped block, B = 1).
  const std::string int8 = "large/int8/decode/model:3/B:1", q4 = "large/q4/decode/model:4/B:1";
  for (const auto& [row, name, gain_target] :
       {std::tuple{int8, "int8", 1.8}, std::tuple{q4, "q4", 3.0}}) {
    const double gain = rate(row) / rate(bf16);
    const double pct = 100 * value(row, "weight_GBps") / l.dram_gbps();
    line(std::string(name) + " decode >= " + format("%.1fx", gain_target) +
             " BF16 and >= 75% of DRAM",
         rate(row) > 0 && rate(bf16) > 0, gain >= gain_target && pct >= 75,
         format("%.2fx BF16", gain) + format(", %.1f%% of DRAM", pct));
  }
  std::fprintf(out, "  accuracy: the golden tests (ctest), not this benchmark\n");
}

bool starts_with(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr,
               "xlstm_bench: %s\nusage: xlstm_bench [--quick] [--threads=N] "
               "[--wall-time] [--large7b=bf16|int8|q4 [--quantize-head]] [--benchmark_...]\n",
               message.c_str());
  std::exit(2);
}

}  // namespace
}  // namespace xbench

int main(int argc, char** argv) {
  using namespace xbench;
  const auto start = std::chrono::steady_clock::now();

  // Our flags first; Google Benchmark must not see them.
  std::string format = "console";
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--quick") == 0) {
      g_options.quick = true;
      continue;
    }
    if (starts_with(a, "--threads=")) {
      char* end = nullptr;
      const long n = std::strtol(a + 10, &end, 10);
      if (end == a + 10 || *end != '\0' || n < 0 || n > 1024) {
        usage_error(std::string("bad value in '") + a + "' (1, 2, ... or 0 = all)");
      }
      g_options.threads = int(n);
      continue;
    }
    if (std::strcmp(a, "--wall-time") == 0) {
      g_options.wall_time = true;
      continue;
    }
    if (std::strcmp(a, "--quantize-head") == 0) {
      g_options.quantize_head = true;
      continue;
    }
    if (starts_with(a, "--large7b=")) {
      const std::string f = a + 10;
      if (f == "bf16") {
        g_options.large7b = xlstm::WeightStorage::bf16;
      } else if (f == "int8") {
        g_options.large7b = xlstm::WeightStorage::int8_rows;
      } else if (f == "q4") {
        g_options.large7b = xlstm::WeightStorage::q4_g32;
      } else {
        usage_error(std::string("bad value in '") + a + "' (bf16, int8 or q4)");
      }
      continue;
    }
    if (starts_with(a, "--benchmark_format=")) format = a + 19;
    argv[kept++] = argv[i];
  }
  argc = kept;
  argv[argc] = nullptr;
  if (g_options.quantize_head && g_options.large7b != xlstm::WeightStorage::int8_rows &&
      g_options.large7b != xlstm::WeightStorage::q4_g32) {
    usage_error("--quantize-head needs --large7b=int8 or --large7b=q4");
  }

#ifdef _OPENMP
  // Both Eigen's products and any OpenMP loop (the library's own, the
  // bandwidth limits) use this many threads; 0 = one per processor.
  const int threads = g_options.threads == 0 ? omp_get_num_procs() : g_options.threads;
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
  g_options.used_threads = threads;
  const char* openmp = "yes";
#else
  const char* openmp = "no (built without OpenMP: products run on one thread)";
  if (Eigen::nbThreads() != 1 || g_options.threads != 1) {
    std::fprintf(stderr, "xlstm_bench: --threads=%d ignored: built without OpenMP\n",
                 g_options.threads);
  }
#endif
  benchmark::AddCustomContext("xlstm_mode", g_options.quick ? "quick" : "full");
  benchmark::AddCustomContext("xlstm_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("xlstm_threads_flag", std::to_string(g_options.threads));
  benchmark::AddCustomContext("xlstm_timing", cpu_timing() ? "thread CPU time" : "wall time");
  benchmark::AddCustomContext("eigen_openmp", openmp);
  benchmark::AddCustomContext("blas", xlstm::blas_threads_name(xlstm::blas_threads()));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));

  // Registration order is run order: the limits first, so that every later
  // row can divide by them.
  register_limit_benchmarks(g_options.quick);
  register_cell_benchmarks(g_options.quick);
  register_block_benchmarks(g_options.quick);
  register_model_benchmarks(g_options.quick);
  register_backward_benchmarks(g_options.quick);
  register_training_benchmarks(g_options.quick);
  register_large_benchmarks(g_options.quick);
  register_tirex_benchmarks(g_options.quick);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  std::unique_ptr<benchmark::BenchmarkReporter> inner;
  if (format == "console") {
    inner = std::make_unique<benchmark::ConsoleReporter>(
        isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_ColorTabular
                              : benchmark::ConsoleReporter::OO_Tabular);
  } else if (format == "json") {
    inner = std::make_unique<benchmark::JSONReporter>();
  }
  if (!inner) {  // csv: Google Benchmark's own reporter, no summary
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
  }
  CollectingReporter reporter(std::move(inner));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  ensure_limits();  // (if a filter skipped the limits rows)
  const Limits end = measure_missing(Limits{});
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // With JSON on stdout the summary goes to stderr, keeping stdout valid JSON.
  std::FILE* summary = format == "console" ? stdout : stderr;
  print_summary(summary, reporter.runs(), limits(), end, wall);
  print_targets(summary, reporter.runs(), best_of(limits(), end));
  benchmark::Shutdown();
  return 0;
}
