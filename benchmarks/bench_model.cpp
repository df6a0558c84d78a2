// A 125M-parameter language model (E = 768, 24 blocks, sLSTM at 3, 11, 19,
// 4 heads each, vocabulary 50304, tied embedding, context 512) with fresh
// random weights: prefill tokens/s (B = 1, T = 512) and decode tokens/s
// (LanguageModel::step after a short prefill) per batch size.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "bench_common.hpp"
#include "bench_models.hpp"

namespace xbench {

constexpr Index kPrompt = 16;

/// Built once (~0.5 GB of float weights) and shared by every row.
xlstm::LanguageModel<float>& model_125m() {
  static std::unique_ptr<xlstm::LanguageModel<float>> model = [] {
    auto m = std::make_unique<xlstm::LanguageModel<float>>(config_125m());
    xlstm::Rng rng(125);
    m->initialize(rng);
    std::fprintf(stderr, "lm125m: %.1fM parameters (%.0f MB float)\n",
                 parameter_bytes(*m) / sizeof(float) / 1e6, parameter_bytes(*m) / 1e6);
    return m;
  }();
  return *model;
}

xlstm::Tokens random_tokens(Index batch, Index time, Index vocab, std::uint64_t seed) {
  xlstm::Rng rng(seed);
  std::uniform_int_distribution<std::int64_t> dist(0, vocab - 1);
  xlstm::Tokens t(batch, time);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = dist(rng.engine());
  return t;
}

namespace {

/// Prefill: forward of B x T tokens from a fresh state, logits for every
/// position. FLOPs per token: the stack (mLSTM blocks chunkwise at T = 512)
/// plus the LM head 2*E*V.
/// `threads` > 0: run this row on that many threads whatever the run's count,
/// so that one run can compare prefill across thread counts.
void bm_prefill(benchmark::State& state, int threads) {
  const Index batch = state.range(0), time = state.range(1);
  xlstm::set_num_threads(threads > 0 ? threads : options().used_threads);
  auto& model = model_125m();
  const auto tokens = random_tokens(batch, time, model.vocab_size(), 51);
  auto s = model.initial_state(batch);
  xlstm::Sequence<float> logits;
  // Untimed warm-up: fresh pages and thread buffers (design §7.7).
  model.forward(tokens, s, logits);
  Stopwatch sw;
  for (auto _ : state) {
    s.reset();
    sw.measure(state, [&] { model.forward(tokens, s, logits); });
    benchmark::DoNotOptimize(logits.matrix().data());
  }
  xlstm::set_num_threads(options().used_threads);
  Work w;
  w.items = double(batch * time);
  w.flops = w.items * (stack_flops_per_token(model.stack(), MLstmForm::automatic, double(time)) +
                       2.0 * double(model.embedding_dim() * model.vocab_size()));
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

/// Decode: one LanguageModel::step for B rows after a 16-token prefill. Per
/// step every weight is read once (stack, LM head, B embedding rows) and the
/// recurrent state is read and written: weight_GBps = those bytes / time.
/// `storage`: how the mLSTM states keep C (math §4.8).
void bm_decode(benchmark::State& state,
               xlstm::MLstmStateStorage storage = xlstm::MLstmStateStorage::full) {
  const Index batch = state.range(0);
  auto& model = model_125m();
  auto s = model.initial_state(batch);
  s.set_mlstm_storage(storage);
  {
    xlstm::Sequence<float> prompt_logits;
    model.forward(random_tokens(batch, kPrompt, model.vocab_size(), 52), s, prompt_logits);
  }
  const auto next = random_tokens(batch, 1, model.vocab_size(), 53);
  std::vector<std::int64_t> ids(next.data(), next.data() + next.size());
  xlstm::Matrix<float> logits(batch, model.vocab_size());
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { model.step(ids, s, logits); });
    benchmark::DoNotOptimize(logits.data());
  }
  const double e = double(model.embedding_dim()), v = double(model.vocab_size());
  const double weights =
      parameter_bytes(model.stack()) + v * e * sizeof(float) + double(batch) * e * sizeof(float);
  const double st = state_bytes(s.stack);
  Work w;
  w.items = double(batch);
  w.flops = w.items * (stack_flops_per_token(model.stack(), MLstmForm::recurrent, 1) + 2 * e * v);
  w.bytes = weights + 2 * st;
  w.working_set = weights + st;
  w.bound = Bound::memory;
  w.bytes_counter = "weight_GBps";
  report(state, w, sw.median_total());
  // For the summary's batch target: what a step reads once (the weights) and
  // what it reads and writes per row (the state).
  state.counters["weight_bytes"] = weights;
  state.counters["state_bytes_per_row"] = 2 * st / double(batch);
}

/// Serving 8 requests (prompts of 5..40 tokens, 16 new tokens each, greedy):
/// arg 1 = continuous batching (one ragged prefill, then one step for all
/// rows, finished rows leave), arg 0 = one request after the other (B = 1).
/// items = generated tokens.
void bm_serve(benchmark::State& state) {
  const bool batched = state.range(0) == 1;
  auto& model = model_125m();
  std::vector<std::vector<std::int64_t>> prompts;
  for (int r = 0; r < 8; ++r) {
    const auto t = random_tokens(1, 5 + 5 * r, model.vocab_size(), 60 + std::uint64_t(r));
    prompts.emplace_back(t.data(), t.data() + t.size());
  }
  xlstm::GenerateOptions options;
  options.max_length = 16;
  Stopwatch sw;
  double tokens = 0;
  for (auto _ : state) {
    sw.measure(state, [&] {
      if (batched) {
        for (const auto& out : xlstm::generate(model, prompts, options))
          tokens += double(out.size());
      } else {
        for (const auto& p : prompts)
          tokens += double(xlstm::generate(model, {p}, options)[0].size());
      }
    });
  }
  Work w;
  w.items = tokens / double(state.iterations());
  w.bound = Bound::memory;
  report(state, w, sw.total());
}

}  // namespace

void register_model_benchmarks(bool quick) {
  auto* p = benchmark::RegisterBenchmark("lm125m/f32/prefill", bm_prefill, 0);
  p->ArgNames({"B", "T"})->Args({1, kLmContext})->UseManualTime()->Unit(benchmark::kMillisecond);
  if (options().used_threads > 1) {  // for the summary's thread-scaling target
    auto* p1 = benchmark::RegisterBenchmark("lm125m/f32/prefill", bm_prefill, 1);
    p1->ArgNames({"B", "T", "threads"})->Args({1, kLmContext, 1})->UseManualTime();
    p1->Unit(benchmark::kMillisecond);
    if (quick) p1->MinTime(kQuickMinTime);
  }
  auto* d =
      benchmark::RegisterBenchmark("lm125m/f32/decode", [](benchmark::State& s) { bm_decode(s); });
  d->ArgNames({"B"})->UseManualTime()->Unit(benchmark::kMillisecond);
  // The opt-in bfloat16 storage of the mLSTM states' C (math §4.8).
  auto* h = benchmark::RegisterBenchmark("lm125m/f32/decode_bf16_state", [](benchmark::State& s) {
    bm_decode(s, xlstm::MLstmStateStorage::bf16);
  });
  h->ArgNames({"B"})->UseManualTime()->Unit(benchmark::kMillisecond);
  h->Arg(1)->Arg(8);
  if (quick) {
    p->MinTime(kQuickMinTime);
    d->Arg(1)->Arg(8)->MinTime(0.3);
    h->MinTime(0.3);
  } else {
    d->Arg(1)->Arg(2)->Arg(4)->Arg(8);
    benchmark::RegisterBenchmark("lm125m/f32/serve8", bm_serve)
        ->ArgNames({"batched"})
        ->Arg(0)
        ->Arg(1)
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace xbench
