// xLSTM-Large shapes with BF16, int8 and 4-bit weights (kept compressed,
// products in float): a single 7B-shaped block (E = 4096, NH = 8, the 7B
// block sizes) and a 1.3B-parameter model (E = 2048, NH = 4, 24 blocks,
// vocabulary 50304); with --large7b=FORMAT also the whole 7B architecture
// (32 blocks, vocabulary 50304) in that format. Fresh weights are generated
// in-process straight into their storage (no float copy, no download; the
// quantised ones row by row like a quantising load, math §16.3). Rows:
// prefill tokens/s (B = 1, T = 512), decode tokens/s (B = 1) and small-batch
// decode (B = 2..8), with peak resident memory as a counter.
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_models.hpp"

namespace xbench {
namespace {

/// The whole 7B architecture with random weights in `format`: the matrices
/// quantize_weights would quantise are generated row by row straight into
/// int8 / 4-bit (WeightMatrix::quantized_rows), the others (the small gate
/// projections; the embedding and head unless --quantize-head) as BF16, as a
/// quantising load of the BF16 checkpoint leaves them. The model is built of placeholder matrices
/// (no memory) and they are replaced one by one, so the peak resident memory is that of `format`
/// plus one matrix.
std::unique_ptr<xlstm::LargeModel<float>> random_7b(xlstm::WeightStorage format) {
  auto model = std::make_unique<xlstm::LargeModel<float>>(config_7b(), xlstm::uninitialized,
                                                          xlstm::WeightStorage::placeholder);
  if (format == xlstm::WeightStorage::bf16) {
    fill_bf16(*model, 11);
    return model;
  }
  RandomWeights random(11);
  xlstm::QuantizeOptions rule;
  rule.include_embedding_and_head = options().quantize_head;
  model->for_each_parameter([&](const auto& p) {
    if (!p.matrix) return;
    xlstm::WeightMatrix<float>& w = *p.matrix;
    const Index rows = w.rows(), cols = w.cols();
    if (!xlstm::kept_by_name(p.name, rule) && xlstm::quantizable_shape(rows, cols, format, rule)) {
      w = xlstm::WeightMatrix<float>::quantized_rows(
          format, rows, cols, [&](Index, float* out) { random.row(cols, out); }, "random_7b");
    } else {
      w = random_bf16(rows, cols, random);
    }
  });
  init_gate_biases(*model);
  return model;
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

/// The benchmark's models: 0 the 7B-shaped block in BF16, 1 the 1.3B model
/// in BF16, 2 model 0 in float32, 3 and 4 model 0 quantised to int8_rows and
/// q4_g32 (quantize_weights' default rule), 5 the whole 7B architecture in
/// the --large7b format.
xlstm::LargeModel<float>& model_for(int which) {
  static std::map<int, std::unique_ptr<xlstm::LargeModel<float>>> models;
  auto& slot = models[which];
  if (slot) return *slot;
  const char* name = "";
  if (which == 2) {
    slot = float_copy(model_for(0));
    name = "large7b_block_f32";
  } else if (which == 3 || which == 4) {
    slot = std::make_unique<xlstm::LargeModel<float>>(model_for(0));
    xlstm::quantize_weights(
        *slot, which == 3 ? xlstm::WeightStorage::int8_rows : xlstm::WeightStorage::q4_g32);
    name = which == 3 ? "large7b_block_int8" : "large7b_block_q4";
  } else if (which == 5) {
    slot = random_7b(options().large7b);
    name = "large7b";
  } else {
    slot = std::make_unique<xlstm::LargeModel<float>>(
        which == 0 ? config_7b_block() : config_1_3b(), xlstm::uninitialized,
        xlstm::WeightStorage::placeholder);
    fill_bf16(*slot, 7 + std::uint64_t(which));
    name = which == 0 ? "large7b_block" : "large1.3b";
  }
  std::fprintf(stderr, "%s: %.2f GB of weights\n", name, double(slot->weight_bytes()) / 1e9);
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

/// Decode of B rows (range 1, default 1): one step of every row per
/// iteration; items are tokens (B per step), bytes the weights once plus
/// every row's state read and written.
void bm_large_decode(benchmark::State& state) {
  auto& model = model_for(int(state.range(0)));
  const Index batch = state.range(1) > 0 ? state.range(1) : 1;
  auto s = model.initial_state(batch);
  xlstm::Matrix<float> logits(batch, model.vocab_size());
  std::vector<std::int64_t> ids(std::size_t(batch), 1);
  for (int i = 0; i < 4; ++i) model.step(ids, s, logits);  // a short prompt
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { model.step(ids, s, logits); });
    benchmark::DoNotOptimize(logits.data());
  }
  double state_size = 0;  // all rows
  for (const auto& b : s.blocks)
    state_size += double(b.cell.C.size() + b.cell.n.size()) * sizeof(float);
  Work w;
  w.items = double(batch);
  w.flops = double(batch) * flops_per_token(model);
  w.bytes = double(model.weight_bytes()) + 2 * state_size;
  w.working_set = double(model.weight_bytes()) + state_size;
  w.bound = Bound::memory;
  w.bytes_counter = "weight_GBps";
  report(state, w, sw.median_total());
  state.counters["peak_rss_MB"] = peak_rss_mb();
}

}  // namespace

void register_large_benchmarks(bool quick) {
  // Models: see model_for. Decode rows: {model, B}.
  auto* d = benchmark::RegisterBenchmark("large/bf16/decode", bm_large_decode);
  d->ArgNames({"model", "B"})->Args({0, 1})->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* f = benchmark::RegisterBenchmark("large/f32/decode", bm_large_decode);
  f->ArgNames({"model", "B"})->Args({2, 1})->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* i8 = benchmark::RegisterBenchmark("large/int8/decode", bm_large_decode);
  i8->ArgNames({"model", "B"})->Args({3, 1})->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* q4 = benchmark::RegisterBenchmark("large/q4/decode", bm_large_decode);
  q4->ArgNames({"model", "B"})->Args({4, 1})->UseManualTime()->Unit(benchmark::kMillisecond);
  if (options().large7b != xlstm::WeightStorage::native) {
    const std::string format = format_label(options().large7b, options().quantize_head);
    auto* whole =
        benchmark::RegisterBenchmark(("large7b/" + format + "/decode").c_str(), bm_large_decode);
    whole->ArgNames({"model", "B"})
        ->Args({5, 1})
        ->Args({5, 8})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(quick ? 0.5 : 2.0);
    if (!quick) {
      auto* p = benchmark::RegisterBenchmark(("large7b/" + format + "/prefill").c_str(),
                                             bm_large_prefill);
      p->ArgNames({"model", "T"})
          ->Args({5, 128})
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    }
  }
  if (quick) {
    for (auto* b : {d, f, i8, q4}) b->MinTime(0.3);
    return;
  }
  d->Args({1, 1});
  for (auto* b : {d, i8, q4}) {
    for (int batch : {2, 4, 8}) b->Args({b == d ? 0 : b == i8 ? 3 : 4, batch});
  }
  for (const auto& [name, model] :
       {std::pair{"large/bf16/prefill", 0}, {"large/int8/prefill", 3}, {"large/q4/prefill", 4}}) {
    auto* p = benchmark::RegisterBenchmark(name, bm_large_prefill);
    p->ArgNames({"model", "T"})
        ->Args({model, 512})
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
    if (model == 0) p->Args({1, 512});
  }
}

}  // namespace xbench
