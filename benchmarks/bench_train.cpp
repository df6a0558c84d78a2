// Training rows (issue 17 item 7): optimiser steps per second of the three
// official parity configs, and a training step of the 125M language model
// (B = 1, 2, 4, 8, T = 512) with its forward+backward rate and peak memory.
//
// A step is what examples/train_parity does per batch: draw the batch,
// forward, mean cross-entropy, backward (xlstm::loss_and_backward), global-norm
// clipping, AdamW with the official groups. Its FLOPs are the forward's
// matmul FLOPs times 3 (the forward+backward convention of bench_backward.cpp;
// the optimiser's pointwise work is not counted).
//
// Peak memory is the process's resident-set high-water mark (VmHWM) during the
// row: it is reset before the row through /proc/self/clear_refs (Linux), so it
// covers what the row holds (model, gradients, AdamW moments, tape, logits)
// plus whatever earlier rows left resident (the forward rows' shared 125M
// model, freed heap the allocator kept). 0 where /proc is not available.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "bench_common.hpp"
#include "bench_models.hpp"

namespace xbench {
namespace {

/// Resets the resident-set high-water mark; false if the kernel does not
/// offer it.
bool reset_peak_rss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

/// A "<key>: <n> kB" line of a /proc file, in bytes (0 if absent).
double proc_kib_field(const char* path, const char* key) {
  std::FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  char line[256];
  double kib = 0;
  const std::size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
      kib = std::atof(line + n + 1);
      break;
    }
  }
  std::fclose(f);
  return kib * 1024;
}

double peak_rss_bytes() { return proc_kib_field("/proc/self/status", "VmHWM"); }
double rss_bytes() { return proc_kib_field("/proc/self/status", "VmRSS"); }
/// Free memory, after giving the heap that earlier rows freed back to the
/// system (glibc keeps freed blocks below its adaptive mmap threshold, up to
/// 32 MiB each, which a 125M training step's tapes are made of).
double available_bytes() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  return proc_kib_field("/proc/meminfo", "MemAvailable");
}

/// A language model with its gradients, AdamW (official groups, lr 1e-3,
/// weight decay 0.1) and the loss workspace: one training step per call.
struct TrainStep {
  xlstm::LanguageModel<float>& model;
  xlstm::LanguageModelGradients<float> grads;
  xlstm::AdamW<float> adamw;
  xlstm::LanguageModelLossWorkspace<float> work;
  /// Clipping at 1 (the official parity recipe does not clip; clipping costs
  /// the norm, which the trainer examples compute anyway for their log).
  double max_grad_norm = 1.0;

  explicit TrainStep(xlstm::LanguageModel<float>& m)
      : model(m),
        grads(m),
        adamw({m, grads, xlstm::official_weight_decay_rule(m.config().weight_decay_on_embedding)},
              options()) {}

  static xlstm::AdamWOptions options() {
    xlstm::AdamWOptions o;
    o.learning_rate = 1e-3;
    o.weight_decay = 0.1;
    return o;
  }

  /// Zero, forward, loss, backward.
  float loss_and_backward(const xlstm::Tokens& inputs, const xlstm::Tokens& targets,
                          const xlstm::Lengths& lengths) {
    grads.zero();
    return xlstm::loss_and_backward(model, inputs, targets, lengths, grads, work);
  }
  /// Clip and AdamW.
  void update() {
    xlstm::clip_grad_norm(grads, max_grad_norm);
    adamw.step();
  }
};

// ---------------------------------------------------------------------------
// Parity (TRAINING.md §1: D = 64, 2 blocks, 1 head, vocab 3, context 256,
// batch 256, train lengths 3-40)

/// `parity_xlstm01` = sLSTM at [0, 1], `10` = none, `11` = [1], as
/// examples/train_parity builds them (ModelOptions::config).
xlstm::LanguageModelConfig parity_config(const std::vector<Index>& slstm_at) {
  xlstm::LanguageModelConfig c;
  c.vocab_size = 3;
  c.context_length = 256;
  c.embedding_dim = 64;
  c.num_blocks = 2;
  c.mlstm_block.emplace();
  c.mlstm_block->mlstm.num_heads = 1;
  if (!slstm_at.empty()) {
    c.slstm_block.emplace();
    c.slstm_block->slstm.num_heads = 1;
  }
  c.slstm_at = slstm_at;
  return c;
}

/// Steps per second of one parity config: the official data (seed 1,
/// lengths 3-40, in order; a pass of 64 batches, then again), each batch
/// trimmed to its longest row and its rows run to their answers only, as
/// examples/train_parity does. items = positions run (tokens).
void bm_parity_step(benchmark::State& state, std::vector<Index> slstm_at) {
  const auto config = parity_config(slstm_at);
  xlstm::LanguageModel<float> model(config, xlstm::uninitialized);
  xlstm::Rng rng(0);
  model.initialize(rng);
  TrainStep step(model);
  auto data_config = xlstm::FormalLanguageDatasetConfig::official_parity();
  constexpr Index batch_size = 256;
  data_config.train_count = 64 * batch_size;
  data_config.validation_count = 1;
  data_config.test_count = 1;
  const xlstm::FormalLanguageDataset data(data_config);
  xlstm::FormalLanguageBatches batches(data.train(), batch_size, xlstm::BatchOrder::sequential, 0,
                                       xlstm::BatchWidth::longest);
  xlstm::FormalLanguageBatch batch;
  auto one_step = [&] {
    batches.next(batch);
    step.loss_and_backward(batch.inputs, batch.targets, batch.lengths);
    step.update();
  };
  reset_peak_rss();
  one_step();  // warm-up: the workspace takes its size
  Stopwatch sw;
  double tokens = 0, flops = 0;
  for (auto _ : state) {
    sw.measure(state, one_step);
    double run = 0;  // positions run: each row up to its answer
    for (Index length : batch.lengths) run += double(length);
    tokens += run;
    flops += 3 * run *
             (stack_flops_per_token(model.stack(), MLstmForm::automatic, double(batch.time())) +
              2.0 * double(model.embedding_dim() * model.vocab_size()));
  }
  const double iters = double(state.iterations());
  Work w;
  w.items = tokens / iters;
  w.flops = flops / iters;
  w.bound = Bound::gemm;
  report(state, w, sw.total());
  state.counters["steps_per_s"] = iters / sw.total();
  state.counters["peak_rss_MB"] = peak_rss_bytes() / 1e6;
}

// ---------------------------------------------------------------------------
// The 125M language model

/// Bytes per token the LM step needed beyond what was resident before it and
/// its parameter-sized buffers (gradients, two AdamW moments), the largest
/// seen so far: to skip a batch that would not fit.
double g_lm_bytes_per_token = 0;

/// One training step of B x 512 random tokens (next-token targets, every
/// position counted). The iteration time is the whole step (zero, forward,
/// loss, backward, clip, AdamW): items/s = training tokens/s. Before them the
/// row times the plain forward of the same tokens, for the ratio counters:
///   fwdbwd_GFLOPs, fwdbwd_pct_of_gemm  forward+backward (loss_and_backward)
///                                      alone, 3x the forward's FLOPs
///   fwdbwd_over_fwd    loss_and_backward / plain forward
///   bwd_over_fwd       (loss_and_backward - plain forward) / plain forward:
///                      the backward with the loss, taking the recording
///                      forward to cost what the plain one does
///   optimizer_ms       clip + AdamW
void bm_lm_train_step(benchmark::State& state) {
  const Index batch = state.range(0), time = state.range(1);
  auto& model = model_125m();
  const double tokens_per_step = double(batch * time);
  const double fixed = 3 * parameter_bytes(model);
  if (g_lm_bytes_per_token > 0 &&
      available_bytes() < 1.1 * (fixed + g_lm_bytes_per_token * tokens_per_step)) {
    state.SkipWithError("skipped: not enough free memory for this batch");
    for (auto _ : state) {
    }
    return;
  }
  const auto tokens = random_tokens(batch, time + 1, model.vocab_size(), 71);
  const xlstm::Tokens inputs = tokens.leftCols(time), targets = tokens.rightCols(time);
  // The plain forward of the same tokens, for the ratios: timed first (after
  // an untimed call), then its logits and thread buffers are given back, so
  // that the peak resident set below is the training step's alone.
  constexpr int kForwardCalls = 2;
  double forward_per_call = 0;
  {
    auto s = model.initial_state(batch);
    xlstm::Sequence<float> logits;
    model.forward(inputs, s, logits);
    for (int i = 0; i < kForwardCalls; ++i) {
      s.reset();
      const double t0 = now_seconds();
      model.forward(inputs, s, logits);
      forward_per_call += (now_seconds() - t0) / kForwardCalls;
    }
    benchmark::DoNotOptimize(logits.matrix().data());
  }
  xlstm::release_thread_buffers();
  const double rss_before = rss_bytes();
  reset_peak_rss();
  auto step = std::make_unique<TrainStep>(model);
  step->loss_and_backward(inputs, targets, {});  // warm-up
  step->update();
  double fwdbwd = 0, update = 0;
  for (auto _ : state) {
    double t0 = now_seconds();
    benchmark::DoNotOptimize(step->loss_and_backward(inputs, targets, {}));
    const double t1 = now_seconds();
    step->update();
    const double t2 = now_seconds();
    fwdbwd += t1 - t0;
    update += t2 - t1;
    state.SetIterationTime(t2 - t0);
  }
  const double iters = double(state.iterations());
  const double forward = forward_per_call * iters;
  const double forward_flops =
      tokens_per_step * (stack_flops_per_token(model.stack(), MLstmForm::automatic, double(time)) +
                         2.0 * double(model.embedding_dim() * model.vocab_size()));
  Work w;
  w.items = tokens_per_step;
  w.flops = 3 * forward_flops;
  w.bound = Bound::gemm;
  report(state, w, fwdbwd + update);
  const double fb_gflops = 3 * forward_flops * iters / fwdbwd / 1e9;
  state.counters["fwdbwd_GFLOPs"] = fb_gflops;
  state.counters["fwdbwd_pct_of_gemm"] = 100 * fb_gflops / limits().gemm_f32_gflops;
  state.counters["fwdbwd_over_fwd"] = fwdbwd / forward;
  state.counters["bwd_over_fwd"] = (fwdbwd - forward) / forward;
  state.counters["fwd_ms"] = 1e3 * forward / iters;
  state.counters["optimizer_ms"] = 1e3 * update / iters;
  const double peak = peak_rss_bytes();
  state.counters["peak_rss_MB"] = peak / 1e6;
  if (peak > rss_before + fixed) {
    g_lm_bytes_per_token =
        std::max(g_lm_bytes_per_token, (peak - rss_before - fixed) / tokens_per_step);
  }
}

}  // namespace

void register_training_benchmarks(bool quick) {
  struct Parity {
    const char* name;
    std::vector<Index> slstm_at;
  };
  for (const Parity& p :
       {Parity{"train/parity_xlstm01", {0, 1}}, Parity{"train/parity_xlstm10", {}},
        Parity{"train/parity_xlstm11", {1}}}) {
    auto* b = benchmark::RegisterBenchmark(p.name, bm_parity_step, p.slstm_at);
    b->UseManualTime()->Unit(benchmark::kMillisecond);
    if (quick) b->MinTime(kQuickMinTime);
  }
  auto* lm = benchmark::RegisterBenchmark("lm125m/f32/train_step", bm_lm_train_step);
  lm->ArgNames({"B", "T"})->Args({1, kLmContext})->UseManualTime()->Unit(benchmark::kMillisecond);
  if (quick) {
    lm->MinTime(kQuickMinTime);
  } else {
    lm->Args({2, kLmContext})->Args({4, kLmContext})->Args({8, kLmContext});
  }
}

}  // namespace xbench
