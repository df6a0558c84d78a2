#!/usr/bin/python3
"""Training-side timings of the official PyTorch xLSTM (NX-AI/xlstm @ 032a6fb) on the CPU, to put
beside xlstm_bench's backward and training rows measured on the same machine.

    export XLSTM_REFS=/path/to/folder/holding/xlstm     # the official clone at 032a6fb
    /usr/bin/python3 torch_train_bench.py --threads 2 [--cases mblock,sblock,parity] [--batches 1,8]

Cases (float32, sLSTM backend "vanilla", autograd):
  mblock  the mLSTM block (E 512, 4 heads, proj factor 2, conv 4, qkv block 4) at T 1024
          (--time): forward alone (no_grad) and forward + backward from a fixed output
          gradient; with the process's peak resident set
  sblock  the sLSTM block + gated GELU feed-forward (x1.3) at T 1024, the same two timings
  parity  one optimiser step of the official xLSTMLMModel at the parity configs (E 64, 2 blocks,
          1 head, vocab 3; slstm_at [0,1], [], [1]): forward, mean cross-entropy with
          ignore_index -1, backward, AdamW with the official two groups; batch 256, inputs of
          length 40 (the longest training length; rows not trimmed further), answer at the end

Debian's torch calls whatever libblas.so.3 the system selects: with the reference BLAS (libblas3
alone, no libopenblas0-pthread) its products run about ten times slower than with OpenBLAS, which
would flatter any comparison. The script prints the float32 GEMM rate torch reaches first; to
use an unpacked OpenBLAS without installing it:
    apt-get download libopenblas0-pthread && dpkg -x libopenblas0-pthread_*.deb ob
    export LD_LIBRARY_PATH=$PWD/ob/usr/lib/x86_64-linux-gnu/openblas-pthread

The thread count is set in the environment before torch is imported (Debian's torch runs its
float32 products on OpenBLAS, whose pool torch.set_num_threads does not reach). Every timing is
`reps` individually timed calls after `warmup` untimed ones; the median is printed.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


def set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def median_seconds(fn, warmup, reps):
    """Median, min and max seconds per call, and the median process CPU seconds per call. At one
    thread the CPU time leaves out the time other processes held the core (xlstm_bench times its
    one-thread rows the same way); at more threads it sums the threads, so compare wall time."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), min(times), max(times), statistics.median(cpu)


def block_stack(kind, T):
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,
                       sLSTMLayerConfig, xLSTMBlockStack, xLSTMBlockStackConfig)
    if kind == "mblock":
        cfg = xLSTMBlockStackConfig(
            mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(
                conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4, proj_factor=2.0)),
            slstm_block=None, context_length=T, num_blocks=1, embedding_dim=512, slstm_at=[])
    else:
        cfg = xLSTMBlockStackConfig(
            mlstm_block=None,
            slstm_block=sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(backend="vanilla", dtype="float32", num_heads=4,
                                       conv1d_kernel_size=4, bias_init="powerlaw_blockdependent"),
                feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
            context_length=T, num_blocks=1, embedding_dim=512, slstm_at="all")
    m = xLSTMBlockStack(cfg)
    m.reset_parameters()
    return m


def time_block(torch, kind, B, T, reps):
    m = block_stack(kind, T)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 512, generator=g, requires_grad=True)
    dy = torch.randn(B, T, 512, generator=g)

    def forward():
        with torch.no_grad():
            m(x)

    def forward_backward():
        m.zero_grad(set_to_none=False)
        x.grad = None
        m(x).backward(dy)

    fwd = median_seconds(forward, 1, reps)
    fb = median_seconds(forward_backward, 1, reps)
    # Peak resident set of the process so far (Linux reports KiB): the largest case run decides.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(case=kind, B=B, T=T, forward_s=fwd[0], fwd_bwd_s=fb[0], fwd_bwd_min_s=fb[1],
                fwd_bwd_max_s=fb[2], bwd_over_fwd=(fb[0] - fwd[0]) / fwd[0],
                forward_cpu_s=fwd[3], fwd_bwd_cpu_s=fb[3],
                peak_rss_mib=peak_mib)


def time_parity(torch, slstm_at, reps, batch=256, length=40):
    from xlstm import (mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)
    cfg = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=1)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(num_heads=1, backend="vanilla")),
        slstm_at=slstm_at, num_blocks=2, embedding_dim=64, context_length=256, vocab_size=3)
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    decay, no_decay = model._create_weight_decay_optim_groups()
    opt = torch.optim.AdamW([{"weight_decay": 0.1, "params": decay},
                             {"weight_decay": 0.0, "params": no_decay}], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    # Parity rows as the official dataset gives them: bits {1, 2}, the answer masked (0) in the
    # input, the target (#2s mod 2) + 1 at the last position, -1 elsewhere.
    bits = torch.randint(1, 3, (batch, length), generator=g)
    inputs = bits.clone()
    inputs[:, -1] = 0
    targets = torch.full((batch, length), -1, dtype=torch.long)
    targets[:, -1] = ((bits[:, :-1] == 2).sum(1) % 2) + 1

    def step():
        opt.zero_grad(set_to_none=False)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), targets.reshape(-1),
                                                 ignore_index=-1)
        loss.backward()
        opt.step()

    s = median_seconds(step, 2, reps)
    return dict(case="parity", slstm_at=slstm_at, batch=batch, length=length, step_s=s[0],
                steps_per_s=1.0 / s[0], step_cpu_s=s[3])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="mblock,sblock,parity")
    ap.add_argument("--batches", default="1", help="block batch sizes, e.g. 1,8")
    ap.add_argument("--time", type=int, default=1024, help="block sequence length")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="append the records to this file (one JSON per line)")
    args = ap.parse_args()
    set_threads(args.threads)
    refs = os.environ.get("XLSTM_REFS")
    if not refs:
        ap.error("set XLSTM_REFS to the folder holding the official xlstm clone")
    sys.path.insert(0, os.path.join(refs, "xlstm"))
    import torch  # after the thread variables
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = median_seconds(lambda: a @ b, 1, 5)
    print(json.dumps(dict(case="gemm_1024", threads=args.threads,
                          gflops=2 * 1024**3 / gemm[0] / 1e9,
                          gflops_cpu_time=2 * 1024**3 / gemm[3] / 1e9)), flush=True)

    def emit(record):  # as soon as measured: a long run shows its progress
        record["threads"] = args.threads
        print(json.dumps(record), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")

    for case in args.cases.split(","):
        if case in ("mblock", "sblock"):
            for B in (int(b) for b in args.batches.split(",")):
                emit(time_block(torch, case, B, args.time, args.reps))
        elif case == "parity":
            for slstm_at in ([0, 1], [1], []):
                emit(time_parity(torch, slstm_at, args.reps))
        else:
            ap.error(f"unknown case {case}")


if __name__ == "__main__":
    main()
