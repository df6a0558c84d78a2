// xLSTM-Large shapes with BF16 weights (kept 16-bit, products in float):
// a single 7B-shaped block (E = 4096, NH = 8, the 7B block sizes) and a
// 1.3B-parameter model (E = 2048, NH = 4, 24 blocks, vocabulary 50304).
// Fresh weights are generated in-process straight into BF16 (no float copy,
// no download). Rows: prefill tokens/s (B = 1, T = 512) and decode tokens/s
// (B = 1), with peak resident memory as a counter.
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace xbench {
namespace {

xlstm::LargeModelConfig config_7b_block() {
  xlstm::LargeModelConfig c;
  c.embedding_dim = 4096;
  c.num_heads = 8;
  c.num_blocks = 1;
  c.vocab_size = 1024;  // the head is not what this row measures
  return c;
}

xlstm::LargeModelConfig config_1_3b() {
  xlstm::LargeModelConfig c;
  c.embedding_dim = 2048;
  c.num_heads = 4;
  c.num_blocks = 24;
  c.vocab_size = 50304;
  return c;
}

/// Fills every weight matrix with small random BF16 values (xorshift, fast:
/// billions of values) and sets the gate biases like the HF initialisation.
void fill_bf16(xlstm::LargeModel<float>& model, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto* w : xlstm::weight_matrices(model)) {
    std::uint16_t* bits = w->owned_half_bits();
    const float scale = 1.0f / std::sqrt(float(w->cols()));
    const std::size_t n = std::size_t(w->rows() * w->cols());
    for (std::size_t i = 0; i < n; ++i) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      const float u = float(s >> 40) / float(1 << 24) - 0.5f;  // uniform [-0.5, 0.5)
      bits[i] = xlstm::float_to_bf16(2.0f * scale * u);
    }
  }
  for (auto& b : model.blocks()) {
    b.igate().bias().setConstant(-10.0f);
    xlstm::linspace_init(b.fgate().bias(), 3.0, 6.0);
  }
}

/// Model 2: the 7B-shaped block of model 0 with the same weights held as
/// float32 (what BF16 storage is compared with).
std::unique_ptr<xlstm::LargeModel<float>> float_copy(xlstm::LargeModel<float>& bf16) {
  auto copy = std::make_unique<xlstm::LargeModel<float>>(bf16.config(), xlstm::uninitialized);
  const auto from = xlstm::weight_matrices(bf16);
  const auto to = xlstm::weight_matrices(*copy);
  for (std::size_t i = 0; i < from.size(); ++i) {
    for (Index r = 0; r < from[i]->rows(); ++r) from[i]->copy_row(r, to[i]->native().row(r));
  }
  for (std::size_t b = 0; b < bf16.blocks().size(); ++b) {
    copy->blocks()[b].igate().bias() = bf16.blocks()[b].igate().bias();
    copy->blocks()[b].fgate().bias() = bf16.blocks()[b].fgate().bias();
  }
  return copy;
}

xlstm::LargeModel<float>& model_for(int which) {
  static std::map<int, std::unique_ptr<xlstm::LargeModel<float>>> models;
  auto& slot = models[which];
  if (!slot && which == 2) {
    slot = float_copy(model_for(0));
    std::fprintf(stderr, "large7b_block_f32: %.2f GB of float weights\n",
                 double(slot->weight_bytes()) / 1e9);
  }
  if (!slot) {
    slot = std::make_unique<xlstm::LargeModel<float>>(
        which == 0 ? config_7b_block() : config_1_3b(), xlstm::uninitialized,
        xlstm::WeightStorage::bf16);
    fill_bf16(*slot, 7 + std::uint64_t(which));
    std::fprintf(stderr, "%s: %.2f GB of BF16 weights\n", which == 0 ? "large7b_block" : "large1.3b",
                 double(slot->weight_bytes()) / 1e9);
  }
  return *slot;
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // kilobytes on Linux
}

/// FLOPs per token of the Large model's matrices (2 per weight) plus the
/// mLSTM cell (recurrent step: ~4 DHQK DHV per head; chunkwise is comparable).
double flops_per_token(xlstm::LargeModel<float>& model) {
  double weights = 0;
  for (auto* w : xlstm::weight_matrices(model)) weights += double(w->rows() * w->cols());
  weights -= double(model.embedding().rows() * model.embedding().cols());  // a lookup
  const auto& c = model.config();
  const double cell = double(c.num_blocks) * double(c.num_heads) * 4.0 *
                      double(c.qk_dim() / c.num_heads) * double(c.v_dim() / c.num_heads);
  return 2 * weights + cell;
}

void bm_large_prefill(benchmark::State& state) {
  auto& model = model_for(int(state.range(0)));
  const Index time = state.range(1);
  xlstm::Tokens tokens(1, time);
  for (Index t = 0; t < time; ++t) tokens(0, t) = (t * 7919) % model.vocab_size();
  auto s = model.initial_state(1);
  xlstm::Sequence<float> logits;
  // Untimed warm-up: fresh pages and thread buffers (design §7.7).
  model.forward(tokens, s, logits);
  Stopwatch sw;
  for (auto _ : state) {
    s.reset();
    sw.measure(state, [&] { model.forward(tokens, s, logits); });
    benchmark::DoNotOptimize(logits.matrix().data());
  }
  Work w;
  w.items = double(time);
  w.flops = w.items * flops_per_token(model);
  w.bound = Bound::gemm;
  report(state, w, sw.total());
  state.counters["peak_rss_MB"] = peak_rss_mb();
}

void bm_large_decode(benchmark::State& state) {
  auto& model = model_for(int(state.range(0)));
  auto s = model.initial_state(1);
  xlstm::Matrix<float> logits(1, model.vocab_size());
  std::vector<std::int64_t> ids{1};
  for (int i = 0; i < 4; ++i) model.step(ids, s, logits);  // a short prompt
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { model.step(ids, s, logits); });
    benchmark::DoNotOptimize(logits.data());
  }
  double state_size = 0;
  for (const auto& b : s.blocks) state_size += double(b.cell.C.size() + b.cell.n.size()) * sizeof(float);
  Work w;
  w.items = 1;
  w.flops = flops_per_token(model);
  w.bytes = double(model.weight_bytes()) + 2 * state_size;
  w.working_set = double(model.weight_bytes()) + state_size;
  w.bound = Bound::memory;
  w.bytes_counter = "weight_GBps";
  report(state, w, sw.total());
  state.counters["peak_rss_MB"] = peak_rss_mb();
}

}  // namespace

void register_large_benchmarks(bool quick) {
  // 0: the 7B-shaped block; 1: the 1.3B model; 2: model 0 in float32.
  auto* d = benchmark::RegisterBenchmark("large/bf16/decode", bm_large_decode);
  d->ArgNames({"model"})->Arg(0)->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* f = benchmark::RegisterBenchmark("large/f32/decode", bm_large_decode);
  f->ArgNames({"model"})->Arg(2)->UseManualTime()->Unit(benchmark::kMillisecond);
  if (quick) {
    d->MinTime(0.3);
    f->MinTime(0.3);
    return;
  }
  d->Arg(1);
  auto* p = benchmark::RegisterBenchmark("large/bf16/prefill", bm_large_prefill);
  p->ArgNames({"model", "T"})->Args({0, 512})->Args({1, 512})->UseManualTime()->Iterations(1)
      ->Unit(benchmark::kMillisecond);
}

}  // namespace xbench
