// The cells alone: SLstmCell (H = 512, NH = 4) over T = 1024 and per step,
// MLstmCell (B = 1, NH = 4, DH = 256) in each of its forms and per step.
#include "bench_common.hpp"

namespace xbench {
namespace {

constexpr Index kSLstmHidden = 512, kSLstmHeads = 4, kSLstmTime = 1024;
constexpr Index kMLstmHeads = 4, kMLstmHeadDim = 256;

/// A cell with random weights, prepared as the blocks' constructors and the
/// loaders leave it (SLstmCell::prepare_kernels) unless `prepared` is false.
xlstm::SLstmCell<float> make_slstm_cell(bool prepared = true) {
  xlstm::SLstmCellConfig c;
  c.hidden_size = kSLstmHidden;
  c.num_heads = kSLstmHeads;
  xlstm::SLstmCell<float> cell(c);
  xlstm::Rng rng(7);
  xlstm::default_linear_init(cell.recurrent_kernel(), kSLstmHidden, rng);
  rng.normal(cell.bias(), 0.0, 1.0);
  if (prepared) cell.prepare_kernels();
  return cell;
}

double slstm_kernel_bytes(const xlstm::SLstmCell<float>& cell) {
  return double(cell.recurrent_kernel().size()) * sizeof(float);
}

/// B rows over T = 1024 steps; FLOPs T*B*2*4H*DH, and the kernel is read from
/// cache once per step (pct_of_cache).
void bm_slstm_cell_forward(benchmark::State& state) {
  const Index batch = state.range(0), time = kSLstmTime;
  const auto cell = make_slstm_cell();
  xlstm::Sequence<float> pre(batch, time, 4 * kSLstmHidden), y;
  fill_normal(pre.matrix(), 11);
  auto s = cell.initial_state(batch);
  cell.forward(pre, s, y);  // untimed warm-up: fresh pages of y
  Stopwatch sw;
  for (auto _ : state) {
    s.reset();
    sw.measure(state, [&] { cell.forward(pre, s, y); });
    benchmark::DoNotOptimize(y.matrix().data());
  }
  Work w;
  w.items = double(batch * time);
  w.flops = w.items * slstm_cell_flops_per_token(kSLstmHidden, kSLstmHeads);
  w.bytes = double(time) * slstm_kernel_bytes(cell);
  w.working_set = slstm_kernel_bytes(cell);
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

/// One step of B rows: bounded by reading the 1 MiB recurrent kernel from
/// cache (B = 1); larger batches reuse each kernel read for every row. The
/// `step_unprepared` rows: a cell whose R was changed after prepare_kernels,
/// which packs R on the stack at every step (design §7.9).
template <bool kPrepared>
void bm_slstm_cell_step(benchmark::State& state) {
  const Index batch = state.range(0);
  const auto cell = make_slstm_cell(kPrepared);
  xlstm::Matrix<float> pre(batch, 4 * kSLstmHidden);
  fill_normal(pre, 12);
  auto s = cell.initial_state(batch);
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { cell.step(pre, s); });
    benchmark::DoNotOptimize(s.y.data());
  }
  Work w;
  w.items = double(batch);
  w.flops = w.items * slstm_cell_flops_per_token(kSLstmHidden, kSLstmHeads);
  // Kernel once, state {y, c, n, m} read and written.
  w.bytes = slstm_kernel_bytes(cell) + 2.0 * 4 * double(batch * kSLstmHidden) * sizeof(float);
  w.working_set = slstm_kernel_bytes(cell);
  w.bound = Bound::cache_1mib;
  report(state, w, sw.total());
  // For the summary's sLSTM target: the time to read just the kernel.
  state.counters["kernel_bytes"] = slstm_kernel_bytes(cell);
  state.counters["flops_per_row"] = slstm_cell_flops_per_token(kSLstmHidden, kSLstmHeads);
}

template <typename Scalar>
struct MLstmInputs {
  xlstm::MLstmCell<Scalar> cell;
  xlstm::Sequence<Scalar> q, k, v, igate, fgate;

  explicit MLstmInputs(Index time) : cell(config()) {
    const Index w = kMLstmHeads * kMLstmHeadDim;
    q.resize(1, time, w);
    k.resize(1, time, w);
    v.resize(1, time, w);
    igate.resize(1, time, kMLstmHeads);
    fgate.resize(1, time, kMLstmHeads);
    fill_normal(q.matrix(), 21);
    fill_normal(k.matrix(), 22);
    fill_normal(v.matrix(), 23);
    fill_normal(igate.matrix(), 24);
    fill_normal(fgate.matrix(), 25, 3.0, 1.0);  // forget gates mostly open, as trained
  }

  static xlstm::MLstmCellConfig config() {
    xlstm::MLstmCellConfig c;
    c.num_heads = kMLstmHeads;
    c.qk_head_dim = kMLstmHeadDim;
    c.v_head_dim = kMLstmHeadDim;
    return c;
  }
};

/// B = 1 over T steps in one form. FLOPs: T * NH * mlstm_cell_flops_per_token_head.
template <typename Scalar>
void bm_mlstm_cell_forward(benchmark::State& state, MLstmForm form) {
  const Index time = state.range(0);
  MLstmInputs<Scalar> in(time);
  auto s = in.cell.initial_state(1);
  xlstm::Sequence<Scalar> h;
  // One untimed call first: quick runs time a single call at T = 4096, which
  // would otherwise include the first touch of h's pages.
  in.cell.forward(in.q, in.k, in.v, in.igate, in.fgate, s, h, form);
  Stopwatch sw;
  for (auto _ : state) {
    s.reset();  // the parallel form starts from the zero state
    sw.measure(state, [&] { in.cell.forward(in.q, in.k, in.v, in.igate, in.fgate, s, h, form); });
    benchmark::DoNotOptimize(h.matrix().data());
  }
  Work w;
  w.items = double(time);
  w.flops = w.items * double(kMLstmHeads) *
            mlstm_cell_flops_per_token_head(form, double(time), double(in.cell.config().chunk_size),
                                            double(kMLstmHeadDim));
  w.f64 = std::is_same_v<Scalar, double>;
  w.bound = Bound::gemm;
  report(state, w, sw.total());
}

/// One recurrent step at B = 1: C (NH x DH x DH) is read and written.
template <typename Scalar>
void bm_mlstm_cell_step(benchmark::State& state) {
  MLstmInputs<Scalar> in(1);
  auto s = in.cell.initial_state(1);
  xlstm::Matrix<Scalar> h(1, kMLstmHeads * kMLstmHeadDim);
  const auto& q = in.q.matrix();
  const auto& k = in.k.matrix();
  const auto& v = in.v.matrix();
  Stopwatch sw;
  for (auto _ : state) {
    sw.measure(state, [&] { in.cell.step(q, k, v, in.igate.matrix(), in.fgate.matrix(), s, h); });
    benchmark::DoNotOptimize(h.data());
  }
  const double state_bytes = double(s.C.size() + s.n.size() + s.m.size()) * sizeof(Scalar);
  Work w;
  w.items = 1;
  w.flops = double(kMLstmHeads) *
            mlstm_cell_flops_per_token_head(MLstmForm::recurrent, 1, 1, double(kMLstmHeadDim));
  w.bytes = 2 * state_bytes;
  w.working_set = double(s.C.size()) * sizeof(Scalar);
  w.f64 = std::is_same_v<Scalar, double>;
  w.bound = Bound::memory;
  report(state, w, sw.total());
}

template <typename Scalar>
void register_mlstm_forms(bool quick) {
  for (MLstmForm form : {MLstmForm::parallel, MLstmForm::chunkwise, MLstmForm::recurrent}) {
    if (quick && form != MLstmForm::chunkwise) continue;
    const std::string name =
        std::string("mlstm_cell/") + dtype_name<Scalar>() + "/" + xlstm::form_name(form);
    auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_mlstm_cell_forward<Scalar>, form);
    b->ArgName("T")->UseManualTime()->Unit(benchmark::kMillisecond);
    if (quick) {
      // T = 256 and 4096 too: the summary's chunkwise target compares them.
      b->Arg(256)->Arg(1024)->Arg(4096)->MinTime(kQuickMinTime);
    } else {
      // The parallel form's T x T buffers are 64 MiB (f32) / 128 MiB (f64) at
      // T = 4096, far below the 4 GiB where it would be skipped.
      b->Arg(256)->Arg(1024)->Arg(4096);
    }
  }
}

}  // namespace

void register_cell_benchmarks(bool quick) {
  auto* f = benchmark::RegisterBenchmark("slstm_cell/f32/forward", bm_slstm_cell_forward);
  f->ArgNames({"B"})->UseManualTime()->Unit(benchmark::kMillisecond);
  if (quick) {
    f->Arg(1)->MinTime(kQuickMinTime);
  } else {
    f->Arg(1)->Arg(8);
  }
  auto* s = benchmark::RegisterBenchmark("slstm_cell/f32/step", bm_slstm_cell_step<true>);
  s->ArgNames({"B"})->Arg(1)->Arg(8)->UseManualTime()->Unit(benchmark::kMicrosecond);
  if (quick) s->MinTime(kQuickMinTime);
  if (!quick) {
    benchmark::RegisterBenchmark("slstm_cell/f32/step_unprepared", bm_slstm_cell_step<false>)
        ->ArgNames({"B"})
        ->Arg(1)
        ->Arg(8)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }

  register_mlstm_forms<float>(quick);
  if (!quick) register_mlstm_forms<double>(quick);

  auto* m = benchmark::RegisterBenchmark("mlstm_cell/f32/step", bm_mlstm_cell_step<float>);
  m->UseManualTime()->Unit(benchmark::kMicrosecond);
  if (quick) m->MinTime(kQuickMinTime);
  if (!quick) {
    benchmark::RegisterBenchmark("mlstm_cell/f64/step", bm_mlstm_cell_step<double>)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace xbench
