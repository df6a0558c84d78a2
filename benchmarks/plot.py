#!/usr/bin/python3
"""Draws the JSON written by xlstm_bench.

    xlstm_bench --benchmark_out=x.json --benchmark_out_format=json
    /usr/bin/python3 benchmarks/plot.py x.json [--out-dir docs/images]

Writes two PNGs:
  mlstm_forms.png   time per token vs sequence length, one line per mLSTM
                    cell form (parallel, chunkwise, recurrent) and dtype;
  decode_batch.png  125M model decode tokens/s vs batch size, with the
                    memory-bandwidth bound the run measured.

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""

import argparse
import json
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib")

RUN_PARTS = ("manual_time", "real_time")


def split_name(name):
    """'mlstm_cell/f32/chunkwise/T:1024/min_time:0.050/manual_time' ->
    (['mlstm_cell', 'f32', 'chunkwise'], {'T': '1024', 'min_time': '0.050'})"""
    base, args = [], {}
    for part in name.split("/"):
        if ":" in part:
            key, value = part.split(":", 1)
            args[key] = value
        elif part not in RUN_PARTS:
            base.append(part)
    return base, args


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = []
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        base, args = split_name(b["name"])
        rows.append((base, args, b))
    return data.get("context", {}), rows


def subtitle(context):
    threads = context.get("xlstm_threads", "?")
    cpus = context.get("num_cpus", "?")
    mhz = context.get("mhz_per_cpu", "?")
    timing = context.get("xlstm_timing", "")
    return (f"{cpus} CPUs @ {mhz} MHz, {threads} thread(s), {context.get('xlstm_mode', '')} run"
            + (f", timed by {timing}" if timing else ""))


def plot_mlstm_forms(context, rows, out):
    lines = {}
    for base, args, b in rows:
        if len(base) == 3 and base[0] == "mlstm_cell" and "T" in args and b.get("items_per_second"):
            key = (base[1], base[2])  # dtype, form
            lines.setdefault(key, []).append((int(args["T"]), 1e6 / b["items_per_second"]))
    if not lines:
        print("no mlstm_cell/<dtype>/<form>/T:<T> rows: skipping mlstm_forms.png")
        return False
    colors = {"parallel": "tab:red", "chunkwise": "tab:blue", "recurrent": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (dtype, form), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                linestyle="-" if dtype == "f32" else "--", color=colors.get(form, "gray"),
                label=f"{form} ({dtype})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("time per token (µs)")
    ax.set_title("mLSTM cell forms, B=1, NH=4, DH=256\n" + subtitle(context), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print("wrote", out)
    return True


def plot_decode(context, rows, out):
    points = []
    for base, args, b in rows:
        if base[:1] == ["lm125m"] and base[-1:] == ["decode"] and "B" in args:
            tps = b.get("items_per_second", 0)
            pct = b.get("pct_of_bandwidth", 0)
            bound = tps / (pct / 100) if pct else None
            points.append((int(args["B"]), tps, bound))
    if not points:
        print("no lm125m/.../decode/B:<B> rows: skipping decode_batch.png")
        return False
    points.sort()
    batches = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(batches, [p[1] for p in points], marker="o", label="measured")
    if all(p[2] for p in points):
        ax.plot(batches, [p[2] for p in points], linestyle="--", color="gray",
                label="bound: (weights + state) bytes / measured DRAM bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size B")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title("125M xLSTM LM, decode (LanguageModel::step)\n" + subtitle(context), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print("wrote", out)
    return True


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="xlstm_bench --benchmark_out JSON file")
    parser.add_argument("--out-dir", default=os.path.join(here, "..", "docs", "images"),
                        help="where to write the PNGs (default: docs/images)")
    args = parser.parse_args()
    context, rows = load(args.json)
    os.makedirs(args.out_dir, exist_ok=True)
    wrote = plot_mlstm_forms(context, rows, os.path.join(args.out_dir, "mlstm_forms.png"))
    wrote |= plot_decode(context, rows, os.path.join(args.out_dir, "decode_batch.png"))
    return 0 if wrote else 1


if __name__ == "__main__":
    sys.exit(main())
