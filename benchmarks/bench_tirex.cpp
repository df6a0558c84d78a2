// TiRex at its released size (P 32, W 2048, D 512, 4 heads, 12 sLSTM blocks, FF 2048, 9
// quantiles: 35.3M parameters) with random weights in the official numerics: forecasts per
// batch, context and horizon (the cases of ../shared/reference/tirex_bench.py, which times the
// official package on the same machine) and the frozen-scaler streaming update per new patch
// (math §13.11). Each row runs at 1 thread and at the run's thread count.
#include <cstdio>
#include <memory>
#include <vector>

#include "bench_common.hpp"
#include "xlstm/tirex/tirex.hpp"

namespace xbench {
namespace {

using xlstm::tirex::TiRexModel;

/// Built once (~140 MB of float weights), random (tirex::randomize_weights)
/// and prepared (bf16 kernels and padding states).
const TiRexModel<float>& tirex_model() {
  static std::unique_ptr<TiRexModel<float>> model = [] {
    auto m = std::make_unique<TiRexModel<float>>(xlstm::tirex::TiRexConfig{});
    std::fprintf(stderr, "tirex: %.1fM parameters\n", parameter_bytes(*m) / sizeof(float) / 1e6);
    xlstm::tirex::randomize_weights(*m, 2024);
    return m;
  }();
  return *model;
}

xlstm::Matrix<float> random_context(Index batch, Index length) {
  xlstm::Matrix<float> c(batch, length);
  fill_normal(c, 77);
  return c;
}

/// FLOPs of one pass over `tokens` tokens per row (products only).
double pass_flops(const TiRexModel<float>& model, double tokens, double head_tokens) {
  const auto& c = model.config();
  const double p = double(c.patch_size()), d = double(c.embedding_dim), ff = double(c.input_ff_dim);
  const double qp = double(c.num_quantiles()) * p;
  double per_token = 2 * (2 * p * ff + ff * d + 2 * p * d);
  for (Index i = 0; i < model.num_blocks(); ++i) {
    per_token += slstm_block_flops_per_token(model.block(i));
  }
  return tokens * per_token + head_tokens * 2 * (d * ff + ff * qp + d * qp);
}

/// One forecast of B series of `length` values, h steps (plain rollout).
/// `threads` > 0: this row runs on that many threads.
void bm_forecast(benchmark::State& state, int threads) {
  const Index batch = state.range(0), length = state.range(1), horizon = state.range(2);
  xlstm::set_num_threads(threads > 0 ? threads : options().used_threads);
  const auto& model = tirex_model();
  const auto context = random_context(batch, length);
  // Untimed warm-up: fresh pages and the thread's forecast buffers (design §7.7).
  {
    auto f = xlstm::tirex::forecast(model, xlstm::ConstMatrixRef<float>(context), horizon);
    benchmark::DoNotOptimize(f.quantiles.matrix().data());
  }
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] {
      auto f = xlstm::tirex::forecast(model, xlstm::ConstMatrixRef<float>(context), horizon);
      benchmark::DoNotOptimize(f.quantiles.matrix().data());
    });
  }
  xlstm::set_num_threads(options().used_threads);
  const auto& c = model.config();
  const Index p = c.patch_size(), passes = (horizon + p - 1) / p;
  double flops = 0;
  for (Index pass = 0; pass < passes; ++pass) {  // the real tokens of each pass's window
    const Index real = std::min(length + pass * p, c.train_ctx_len);
    flops += pass_flops(model, double((real + p - 1) / p), 1);
  }
  Work w;
  w.items = double(batch);  // series forecast per second
  w.flops = double(batch) * flops;
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

/// The frozen-scaler streaming update: one new patch of one series (one
/// token step through the network and the head).
void bm_stream_update(benchmark::State& state, int threads) {
  xlstm::set_num_threads(threads > 0 ? threads : options().used_threads);
  const auto& model = tirex_model();
  const Index p = model.config().patch_size();
  const auto context = random_context(1, model.config().train_ctx_len);
  xlstm::tirex::ForecastStream<float> stream(
      model, std::vector<float>(context.data(), context.data() + context.size()),
      xlstm::tirex::StreamMode::frozen_scaler);
  const auto patch = random_context(1, p);
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { stream.append(patch.data(), p); });
  }
  xlstm::set_num_threads(options().used_threads);
  Work w;
  w.items = 1;  // patches per second
  w.flops = pass_flops(model, 1, 1);
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

}  // namespace

void register_tirex_benchmarks(bool quick) {
  // {B, context length, h}: the reference cases b1h32, b1h128, b8h32, b64h32
  // at context 2048, and b1h32 at context 512 (the padding states skip 48 of
  // the window's 64 tokens).
  const std::vector<std::vector<std::int64_t>> cases = {
      {1, 2048, 32}, {1, 2048, 128}, {1, 512, 32}, {8, 2048, 32}, {64, 2048, 32}};
  std::vector<int> thread_counts = {1};
  if (options().used_threads > 1) thread_counts.push_back(options().used_threads);
  for (const int threads : thread_counts) {
    for (const auto& args : cases) {
      if (quick && args[0] == 64) continue;
      auto* b = benchmark::RegisterBenchmark("tirex/f32/forecast", bm_forecast, threads);
      b->ArgNames({"B", "L", "h", "threads"})
          ->Args({args[0], args[1], args[2], threads})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      if (args[0] == 64) b->Iterations(2);
      if (quick) b->MinTime(kQuickMinTime);
    }
    auto* s = benchmark::RegisterBenchmark("tirex/f32/stream_update", bm_stream_update, threads);
    s->ArgNames({"threads"})->Arg(threads)->UseManualTime()->Unit(benchmark::kMillisecond);
    if (quick) s->MinTime(kQuickMinTime);
  }
}

}  // namespace xbench
