#!/usr/bin/python3
"""Writes reference.txt: random streams, task rows and dataset examples drawn by the
official NX-AI/xlstm code, for tests/test_formal_language.cpp to compare with exactly.

The official code is imported, not copied: pass the root of a checkout of NX-AI/xlstm
(the tests were made at 032a6fb) that holds experiments/. It needs numpy (Debian
python3-numpy 1.24.2) and torch (python3-torch; only torch.utils.data.Dataset and
torch.arange/where are touched). torchmetrics is not installed on the build machine and
is only used by the official metric classes, which data generation never calls, so a
stand-in module is registered before the import.

    git --git-dir=<mirror of NX-AI/xlstm> archive 032a6fb experiments | tar -x -C /tmp/xlstm
    /usr/bin/python3 make_reference.py /tmp/xlstm > reference.txt
"""
import random
import sys
import types
import warnings

import numpy as np


def import_official(root):
    stub = types.ModuleType("torchmetrics")
    stub.Metric = object
    stub.MetricCollection = object
    stub.Accuracy = object
    sys.modules.setdefault("torchmetrics", stub)
    sys.path.insert(0, root)
    from experiments.data.formal_language import formal_language_dataset, generate

    return formal_language_dataset, generate


def ints(values):
    return ",".join(str(int(v)) for v in values)


def opt(value):
    return "none" if value is None else str(value)


def write_streams():
    for seed in [0, 1, 42, -7, (1 << 40) + 3]:
        for a, b, n in [(0, 1 << 32, 4), (5, 17, 6)]:
            rng = random.Random(seed)
            print(f"randint seed={seed} a={a} b={b} values={ints(rng.randint(a, b) for _ in range(n))}")
    calls = [(1, 3, 7), (3, 41, 2), (5, 6, 2), (0, (1 << 32) - 5, 1), (0, (1 << 40) + 7, 2),
             (-10, 10, 3), (0, 1 << 32, 2), (1, 3, 1)]
    for seed in [0, 1, 123456789, 1 << 32, (1 << 32) - 1]:
        rng = np.random.default_rng(seed)
        values = []
        for low, high, n in calls:
            values += list(rng.integers(low, high, size=n))
        spec = ",".join(f"{low}:{high}:{n}" for low, high, n in calls)
        print(f"integers seed={seed} calls={spec} values={ints(values)}")


def task_line(generate, name, vocab, context, lo, hi, step, batch, seed, note=""):
    kwargs = dict(batch_size=batch, vocab_size=vocab, min_sequence_length=lo,
                  max_sequence_length=hi, context_length=context, seed=seed)
    if name == "cycle_navigation":
        kwargs["max_step_size"] = step
    tokens, mask = generate.GEN_FUNCS[name](**kwargs)
    lengths = [int(np.nonzero(row)[0][0]) + 1 for row in mask]
    print(f"task name={name} vocab={vocab} context={context} min={opt(lo)} max={opt(hi)} "
          f"step={step} batch={batch} seed={seed} lengths={ints(lengths)} "
          f"tokens={ints(tokens.flatten())} mask={ints(mask.flatten())}{note}")


def overflowing_seed(generate, **kwargs):
    """The first seed whose modular-arithmetic rows overflow int64 (numpy warns, wraps)."""
    for seed in range(10000):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            try:
                generate.GEN_FUNCS["modular_arithmetic"](seed=seed, **kwargs)
            except RuntimeWarning:
                return seed
    raise RuntimeError("no overflowing seed found")


def write_tasks(generate):
    for seed in [0, 7, 2024]:
        task_line(generate, "parity", 3, 24, 3, 20, 1, 3, seed)
        task_line(generate, "parity", 5, 16, None, None, 1, 2, seed)
        task_line(generate, "even_pairs", 3, 20, 3, 20, 1, 3, seed)
        task_line(generate, "even_pairs", 4, 12, 5, None, 1, 2, seed)
        task_line(generate, "cycle_navigation", 9, 20, 1, 20, 1, 3, seed)
        task_line(generate, "cycle_navigation", 11, 16, 2, 9, 3, 2, seed)
        task_line(generate, "modular_arithmetic", 10, 40, 3, 39, 1, 3, seed)
        task_line(generate, "modular_arithmetic", 6, 15, 4, 15, 1, 2, seed)
    kwargs = dict(batch_size=4, vocab_size=1000, min_sequence_length=40, max_sequence_length=63,
                  context_length=64)
    seed = overflowing_seed(generate, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        task_line(generate, "modular_arithmetic", 1000, 64, 40, 63, 1, 4, seed, " note=int64_wraps")


DATASETS = [
    # name, task kwargs, seed, counts, subpar, shift, enable_mask, indices per split
    ("official_parity",
     dict(synth_lang_type="parity", vocab_size=3, context_length=256, min_sequence_length=3,
          max_sequence_length=40),
     1, dict(train=5120000, validation=8192, test=8192),
     dict(validation=dict(min_sequence_length=40, max_sequence_length=256),
          test=dict(min_sequence_length=40, max_sequence_length=256)),
     1, True, [0, 1, 2, 255, 256, 8191, 5119999]),
    ("cycle_parts",
     dict(synth_lang_type="cycle_navigation", vocab_size=9, context_length=32,
          min_sequence_length=3, max_sequence_length=10),
     7, dict(train=100, validation=50, test=50),
     dict(validation_short=dict(min_sequence_length=3, max_sequence_length=10),
          validation_long=dict(min_sequence_length=11, max_sequence_length=32)),
     1, True, [0, 3, 49]),
    ("even_pairs_nomask_shift2",
     dict(synth_lang_type="even_pairs", vocab_size=3, context_length=16, min_sequence_length=3,
          max_sequence_length=16),
     42, dict(train=10, validation=5, test=5), None, 2, False, [0, 4]),
    ("modular_shift_minus1",
     dict(synth_lang_type="modular_arithmetic", vocab_size=10, context_length=24,
          min_sequence_length=3, max_sequence_length=23),
     3, dict(train=20, validation=20, test=20),
     dict(test_a=dict(min_sequence_length=3, max_sequence_length=9),
          test_b=dict(min_sequence_length=11, max_sequence_length=23)),
     -1, True, [0, 19]),
]


def write_datasets(fld):
    for name, task, seed, counts, subpar, shift, enable_mask, indices in DATASETS:
        config = fld.FormLangDatasetConfig(**task, seed=seed, count=counts, subpar=subpar,
                                           shift=shift, enable_mask=enable_mask)
        gen = fld.FormLangDatasetGenerator(config)
        parts = "" if not subpar else ",".join(
            f"{k}:{opt(v.get('min_sequence_length'))}:{opt(v.get('max_sequence_length'))}"
            for k, v in subpar.items())
        print(f"dataset id={name} name={task['synth_lang_type']} vocab={task['vocab_size']} "
              f"context={task['context_length']} min={task['min_sequence_length']} "
              f"max={task['max_sequence_length']} seed={seed} "
              f"counts={counts['train']},{counts['validation']},{counts['test']} "
              f"subparts={parts or 'none'} shift={shift} enable_mask={int(enable_mask)}")
        for split, ds in gen.datasets.items():
            online = ds._dataset._access_func.__self__._online_task_generate
            print(f"split dataset={name} name={split} split_seed={gen.seeds[split]} "
                  f"base_seed={int(online.base_seed)}")
            for index in indices:
                if index >= len(ds):
                    continue
                inputs, targets = ds[index]
                print(f"example dataset={name} split={split} index={index} "
                      f"input={ints(inputs.tolist())} target={ints(targets.tolist())}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fld, generate = import_official(sys.argv[1])
    print("# Made by tests/data/formal_language/make_reference.py from the official NX-AI/xlstm")
    print(f"# code with numpy {np.__version__}, Python {sys.version.split()[0]}; see README.md.")
    write_streams()
    write_tasks(generate)
    write_datasets(fld)


if __name__ == "__main__":
    main()
