// Forward+backward rows: the recording forward and the backward from a fixed
// output gradient of the mLSTM and sLSTM blocks (E = 512, T = 1024, B = 1 and
// 8, the blocks of bench_blocks.cpp) and of the mLSTM cell in its chunkwise
// form at T = 4096 (the head config of bench_cells.cpp); and the memory a
// chunkwise forward+backward of the mLSTM block keeps at T = 4096 against the
// T x T matrices of the parallel form.
//
// FLOPs: the forward's matmul FLOPs (bench_common.hpp) times 3, the usual
// convention for forward+backward (every product of the forward has two of
// the same size in the backward: one for the input, one for the weight).
// Each iteration also times the plain (non-recording) forward of the same
// shapes; the rows print the ratios backward/forward and
// (recording forward + backward)/forward as counters. The tape, the
// gradients and the state cotangent are reused across iterations (after one
// warm-up call nothing allocates: tests/test_no_alloc.cpp), so the timed
// loop measures arithmetic, not the allocator.
#include <cstdio>
#include <utility>

#include "bench_common.hpp"

namespace xbench {
namespace {

/// Times of one forward+backward row, summed over the iterations.
struct PairedTimes {
  double forward = 0;   ///< plain forward
  double recorded = 0;  ///< recording forward
  double backward = 0;  ///< backward

  /// Sets the ratio counters.
  void report(benchmark::State& state) const {
    state.counters["fwd_ms"] = 1e3 * forward / double(state.iterations());
    state.counters["bwd_ms"] = 1e3 * backward / double(state.iterations());
    state.counters["bwd_over_fwd"] = backward / forward;
    state.counters["fwdbwd_over_fwd"] = (recorded + backward) / forward;
  }
};

/// Runs `plain()`, then `recorded()` and `backward()` (timed as the row's
/// iteration time), after one untimed warm-up of the last two. `reset()`
/// (untimed) puts the states back before each forward.
template <typename Reset, typename Plain, typename Recorded, typename Backward>
PairedTimes run_paired(benchmark::State& state, Reset reset, Plain plain, Recorded recorded,
                       Backward backward) {
  // Untimed warm-up of every part: the first call of a shape pays for fresh
  // pages and for the thread buffers (design §7.7), which a training loop or a
  // server pays once.
  reset();
  plain();
  reset();
  recorded();
  backward();
  PairedTimes t;
  for (auto _ : state) {
    reset();
    double t0 = now_seconds();
    plain();
    t.forward += now_seconds() - t0;
    reset();
    t0 = now_seconds();
    recorded();
    const double t1 = now_seconds();
    backward();
    const double t2 = now_seconds();
    t.recorded += t1 - t0;
    t.backward += t2 - t1;
    state.SetIterationTime(t2 - t0);
  }
  return t;
}

/// A block with its inputs, output gradient, states, tape and gradients:
/// B x T x E from a fresh state.
template <typename Block, typename Tape, typename Grads>
struct BlockRun {
  const Block& block;
  xlstm::Sequence<float> x, grad_y, y, grad_x;
  decltype(std::declval<const Block&>().initial_state(1)) s, grad_state;
  Tape tape;
  Grads grads;

  BlockRun(const Block& b, Index batch, Index time)
      : block(b),
        x(batch, time, kBlockEmbedding),
        grad_y(batch, time, kBlockEmbedding),
        s(b.initial_state(batch)),
        grad_state(b.initial_state(batch)),
        grads(b) {
    fill_normal(x.matrix(), 41);
    fill_normal(grad_y.matrix(), 43);
  }
  void reset() {
    s.reset();
    grad_state.reset();
  }
  void backward(Tape& t) { xlstm::backward(block, t, grad_y, grad_state, grads, grad_x); }
  /// The row's timings, the forwards in `form` (none: the block's choice).
  template <typename... Form>
  PairedTimes time(benchmark::State& state, Form... form) {
    return run_paired(
        state, [&] { reset(); }, [&] { block.forward(x, s, y, form...); },
        [&] { block.forward(x, s, y, tape, form...); }, [&] { backward(tape); });
  }
};

/// Block forward+backward (the mLSTM block in the form the plain forward
/// picks: chunkwise at T = 1024).
template <typename Block, typename Tape, typename Grads>
void bm_block_forward_backward(benchmark::State& state, Block (*make_block)()) {
  const Index batch = state.range(0), time = kBlockTime;
  const Block block = make_block();
  BlockRun<Block, Tape, Grads> run(block, batch, time);
  const PairedTimes t = run.time(state);
  benchmark::DoNotOptimize(run.grad_x.matrix().data());
  Work w;
  w.items = double(batch * time);
  if constexpr (std::is_same_v<Block, xlstm::MLstmBlock<float>>) {
    w.flops = 3 * w.items * mlstm_block_flops_per_token(block, MLstmForm::automatic, double(time));
  } else {
    w.flops = 3 * w.items * slstm_block_flops_per_token(block);
  }
  w.bound = Bound::gemm;
  report(state, w, t.recorded + t.backward);
  t.report(state);
}

// ---------------------------------------------------------------------------
// Bytes a recording keeps (the library's own accounting: the sizes of the
// buffers it holds after a forward+backward, capacity = size for Eigen)

template <typename Derived>
double bytes_of(const Eigen::PlainObjectBase<Derived>& m) {
  return double(m.size()) * sizeof(typename Derived::Scalar);
}
template <typename Scalar>
double bytes_of(const xlstm::Sequence<Scalar>& s) {
  return bytes_of(s.matrix());
}

/// The cell's tape: inputs, boundary states and the per-thread buffers
/// (forward and backward).
template <typename Scalar>
double tape_bytes(const xlstm::MLstmTape<Scalar>& t) {
  double b = bytes_of(t.q) + bytes_of(t.k) + bytes_of(t.v) + bytes_of(t.igate) + bytes_of(t.fgate) +
             bytes_of(t.C) + bytes_of(t.n) + bytes_of(t.m) + bytes_of(t.num);
  for (const auto& w : t.buffers) {
    for (const auto* v : {&w.log_f, &w.cum_log_f, &w.log_weight, &w.max_log, &w.m, &w.w_inter,
                          &w.g_inter, &w.d_b, &w.d_i, &w.d_m, &w.segment_m}) {
      b += bytes_of(*v);
    }
    for (const auto* m : {&w.log_decay, &w.scores,  &w.qbar,        &w.weights,   &w.d_scores,
                          &w.d_log,     &w.qs,      &w.ks,          &w.d_qs,      &w.d_ks,
                          &w.v_ext,     &w.num,     &w.d_num,       &w.d_v_ext,   &w.ks_d_state,
                          &w.state_ext, &w.d_state, &w.d_state_out, &w.segment_C, &w.segment_n}) {
      b += bytes_of(*m);
    }
    b += double(w.arg_max.size()) * sizeof(Index);
  }
  return b;
}

/// The block's tape: every layer's recorded input and the cell's tape; plus
/// the backward's workspace, which the calling thread keeps (one for all the
/// blocks of a stack, design §7.7) and the last backward sized.
template <typename Scalar>
double tape_bytes(const xlstm::MLstmBlockTape<Scalar>& t) {
  double b = tape_bytes(t.cell) + bytes_of(t.conv_start.window) + bytes_of(t.conv_taps);
  const auto& ws =
      xlstm::detail::thread_slot<xlstm::detail::MLstmBlockBackwardScratch<Scalar>>().buffers;
  for (const auto* s : {&ws.d_up, &ws.d_qkv, &ws.d_gate_i, &ws.d_gate_f, &ws.d_x_m}) {
    b += bytes_of(*s);
  }
  for (const auto* s : {&t.x, &t.normed, &t.up, &t.x_m, &t.conv_out, &t.conv_act, &t.qkv, &t.gate_i,
                        &t.gate_f, &t.h, &t.h_norm, &t.gated}) {
    b += bytes_of(*s);
  }
  return b;
}

/// The mLSTM cell (B = 1, NH = 4, DH = 256, chunk 64) forward+backward over
/// T steps in the chunkwise form, with the tape's bytes per token.
void bm_mlstm_cell_forward_backward(benchmark::State& state) {
  constexpr Index heads = 4, head_dim = 256;
  const Index time = state.range(0), w = heads * head_dim;
  xlstm::MLstmCellConfig c;
  c.num_heads = heads;
  c.qk_head_dim = head_dim;
  c.v_head_dim = head_dim;
  const xlstm::MLstmCell<float> cell(c);
  xlstm::Sequence<float> q(1, time, w), k(1, time, w), v(1, time, w), igate(1, time, heads),
      fgate(1, time, heads), grad_h(1, time, w), h;
  // The inputs of bench_cells.cpp's rows (same seeds), and a gradient.
  fill_normal(q.matrix(), 21);
  fill_normal(k.matrix(), 22);
  fill_normal(v.matrix(), 23);
  fill_normal(igate.matrix(), 24);
  fill_normal(fgate.matrix(), 25, 3.0, 1.0);
  fill_normal(grad_h.matrix(), 26);
  auto s = cell.initial_state(1), grad_state = cell.initial_state(1);
  xlstm::MLstmTape<float> tape;
  xlstm::MLstmInputGradients<float> grads;
  const auto form = MLstmForm::chunkwise;
  const PairedTimes t = run_paired(
      state,
      [&] {
        s.reset();
        grad_state.reset();
      },
      [&] { cell.forward(q, k, v, igate, fgate, s, h, form); },
      [&] { cell.forward(q, k, v, igate, fgate, s, h, tape, form); },
      [&] { xlstm::backward(cell, tape, grad_h, grad_state, grads); });
  benchmark::DoNotOptimize(grads.q.matrix().data());
  Work work;
  work.items = double(time);
  work.flops =
      3 * work.items * double(heads) *
      mlstm_cell_flops_per_token_head(form, double(time), double(c.chunk_size), double(head_dim));
  work.bound = Bound::gemm;
  report(state, work, t.recorded + t.backward);
  t.report(state);
  state.counters["tape_bytes_per_token"] = tape_bytes(tape) / double(time);
}

/// Memory of training the mLSTM block (E = 512, NH = 4, DH = 256, chunk 64)
/// at T = 4096, B = 1 (issue 16 item 2): the tape plus the backward's
/// workspace after a chunkwise forward+backward (timed as the row), against
/// the same after one forward+backward in the parallel form (untimed), whose
/// backward recomputes T x T matrices per head. Counters per token, and one
/// T x T float matrix per head for scale. The row fails unless the chunkwise
/// recording is below half of the parallel one.
void bm_mlstm_block_memory(benchmark::State& state) {
  const Index batch = 1, time = state.range(0);
  const auto block = make_mlstm_block();
  BlockRun<xlstm::MLstmBlock<float>, xlstm::MLstmBlockTape<float>,
           xlstm::MLstmBlockGradients<float>>
      run(block, batch, time);
  const auto form = MLstmForm::chunkwise;
  const PairedTimes t = run.time(state, form);
  Work w;
  w.items = double(batch * time);
  w.flops = 3 * w.items * mlstm_block_flops_per_token(block, form, double(time));
  w.bound = Bound::gemm;
  report(state, w, t.recorded + t.backward);
  t.report(state);

  xlstm::MLstmBlockTape<float> parallel_tape;
  run.reset();
  block.forward(run.x, run.s, run.y, parallel_tape, MLstmForm::parallel);
  run.backward(parallel_tape);

  const double tokens = double(batch * time);
  const double chunkwise = tape_bytes(run.tape), parallel = tape_bytes(parallel_tape);
  const double square =
      double(batch * block.cell().num_heads()) * double(time) * double(time) * sizeof(float);
  state.counters["chunkwise_bytes_per_token"] = chunkwise / tokens;
  state.counters["chunkwise_cell_bytes_per_token"] = tape_bytes(run.tape.cell) / tokens;
  state.counters["parallel_bytes_per_token"] = parallel / tokens;
  state.counters["TxT_per_head_bytes_per_token"] = square / tokens;
  state.counters["chunkwise_over_parallel"] = chunkwise / parallel;
  if (!(chunkwise < 0.5 * parallel)) {
    state.SkipWithError("the chunkwise recording is not below half of the parallel form's");
  }
}

}  // namespace

void register_backward_benchmarks(bool quick) {
  using M = xlstm::MLstmBlock<float>;
  using S = xlstm::SLstmBlock<float>;
  auto* m = benchmark::RegisterBenchmark(
      "mlstm_block/f32/forward_backward",
      bm_block_forward_backward<M, xlstm::MLstmBlockTape<float>, xlstm::MLstmBlockGradients<float>>,
      make_mlstm_block);
  auto* s = benchmark::RegisterBenchmark(
      "slstm_block/f32/forward_backward",
      bm_block_forward_backward<S, xlstm::SLstmBlockTape<float>, xlstm::SLstmBlockGradients<float>>,
      make_slstm_block);
  for (auto* b : {m, s}) {
    b->ArgNames({"B"})->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
    if (quick) {
      b->MinTime(kQuickMinTime);
    } else {
      b->Arg(8);
    }
  }
  auto* c = benchmark::RegisterBenchmark("mlstm_cell/f32/chunkwise_forward_backward",
                                         bm_mlstm_cell_forward_backward);
  c->ArgName("T")->Arg(4096)->UseManualTime()->Unit(benchmark::kMillisecond);
  auto* mem =
      benchmark::RegisterBenchmark("mlstm_block/f32/chunkwise_train_memory", bm_mlstm_block_memory);
  mem->ArgName("T")->Arg(4096)->UseManualTime()->Unit(benchmark::kMillisecond);
  if (quick) {
    c->MinTime(kQuickMinTime);
    mem->MinTime(kQuickMinTime);
  }
}

}  // namespace xbench
