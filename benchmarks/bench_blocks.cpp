// The blocks: mLSTM (E = 512, NH = 4, B = 1, T = 1024) and sLSTM (E = 512,
// NH = 4, B in {1, 8}, T = 1024), each over a sequence and per step.
#include "bench_common.hpp"

namespace xbench {

// The builders are shared with the backward rows (bench_backward.cpp), which
// run the same blocks.
xlstm::MLstmBlock<float> make_mlstm_block() {
  xlstm::MLstmBlockConfig c;
  c.mlstm.embedding_dim = kBlockEmbedding;
  c.mlstm.num_heads = kBlockHeads;
  c.mlstm.context_length = kBlockTime;
  xlstm::MLstmBlock<float> block(c);
  xlstm::Rng rng(31);
  block.initialize(rng);
  return block;
}

xlstm::SLstmBlock<float> make_slstm_block() {
  xlstm::SLstmBlockConfig c;
  c.slstm.embedding_dim = kBlockEmbedding;
  c.slstm.num_heads = kBlockHeads;
  c.slstm.recurrent_weight_init = "standard";  // non-zero R: the recurrence does real work
  xlstm::SLstmBlock<float> block(c);
  xlstm::Rng rng(32);
  block.initialize(rng);
  return block;
}

namespace {

/// Forward of B x T x E from a fresh state (what the block does with
/// MLstmForm::automatic: chunkwise at T = 1024).
template <typename Block>
void bm_block_forward(benchmark::State& state) {
  const Index batch = state.range(0), time = kBlockTime;
  Block block = [] {
    if constexpr (std::is_same_v<Block, xlstm::MLstmBlock<float>>) {
      return make_mlstm_block();
    } else {
      return make_slstm_block();
    }
  }();
  xlstm::Sequence<float> x(batch, time, kBlockEmbedding), y;
  fill_normal(x.matrix(), 41);
  auto s = block.initial_state(batch);
  // Untimed warm-up: fresh pages and thread buffers (design §7.7).
  block.forward(x, s, y);
  Stopwatch sw;
  for (auto _ : state) {
    s.reset();
    sw.measure(state, [&] { block.forward(x, s, y); });
    benchmark::DoNotOptimize(y.matrix().data());
  }
  Work w;
  w.items = double(batch * time);
  if constexpr (std::is_same_v<Block, xlstm::MLstmBlock<float>>) {
    w.flops = w.items * mlstm_block_flops_per_token(block, MLstmForm::automatic, double(time));
  } else {
    w.flops = w.items * slstm_block_flops_per_token(block);
  }
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

/// One step of B rows: every weight read once, the state read and written.
template <typename Block>
void bm_block_step(benchmark::State& state) {
  const Index batch = state.range(0);
  Block block = [] {
    if constexpr (std::is_same_v<Block, xlstm::MLstmBlock<float>>) {
      return make_mlstm_block();
    } else {
      return make_slstm_block();
    }
  }();
  xlstm::Matrix<float> x(batch, kBlockEmbedding), y(batch, kBlockEmbedding);
  fill_normal(x, 42);
  auto s = block.initial_state(batch);
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { block.step(x, s, y); });
    benchmark::DoNotOptimize(y.data());
  }
  const double weights = parameter_bytes(block), st = state_bytes(s);
  Work w;
  w.items = double(batch);
  if constexpr (std::is_same_v<Block, xlstm::MLstmBlock<float>>) {
    w.flops = w.items * mlstm_block_flops_per_token(block, MLstmForm::recurrent, 1);
  } else {
    w.flops = w.items * slstm_block_flops_per_token(block);
  }
  w.bytes = weights + 2 * st;
  w.working_set = weights + st;
  w.bound = Bound::memory;
  report(state, w, sw.total());
}

}  // namespace

void register_block_benchmarks(bool quick) {
  using M = xlstm::MLstmBlock<float>;
  using S = xlstm::SLstmBlock<float>;
  auto* mf = benchmark::RegisterBenchmark("mlstm_block/f32/forward", bm_block_forward<M>);
  mf->ArgNames({"B"})->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* ms = benchmark::RegisterBenchmark("mlstm_block/f32/step", bm_block_step<M>);
  ms->ArgNames({"B"})->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
  auto* sf = benchmark::RegisterBenchmark("slstm_block/f32/forward", bm_block_forward<S>);
  sf->ArgNames({"B"})->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* ss = benchmark::RegisterBenchmark("slstm_block/f32/step", bm_block_step<S>);
  ss->ArgNames({"B"})->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
  if (quick) {
    for (auto* b : {mf, ms, sf, ss}) b->MinTime(kQuickMinTime);
  } else {
    sf->Arg(8);
    ss->Arg(8);
  }
}

}  // namespace xbench
