#!/usr/bin/python3
"""Draws the learning curves of the JSON logs written by the trainer examples.

    train_parity --log parity01.json ...
    train_char_lm --text FILE --log char.json ...
    /usr/bin/python3 benchmarks/plot_training.py parity01.json parity10.json --out curves.png

One PNG with two panels, one line per log (labelled by --label, else by the
log's block map, e.g. "xLSTM[0:1]", or its file name):
  left   training loss per step (a moving mean over --smooth steps, default
         1 % of the run; the raw values are too noisy to compare runs);
  right  for a parity log, the accuracy of every evaluation on lengths 40-256
         (solid), per length bucket (thin) and on the training lengths
         (in-dist, squares) when logged, with the chance line at 0.5;
         for a character-model log, the validation bits per character.

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""

import argparse
import json
import math
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_training.py needs matplotlib: apt-get install python3-matplotlib")


def moving_mean(values, window):
    """Mean of the last `window` values at every position (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def block_map_label(log):
    """The paper's 'xLSTM[a:b]' (the ratio of mLSTM to sLSTM blocks, reduced:
    two sLSTM blocks are [0:1]) from the model config, or None."""
    config = log.get("model_config", {})
    blocks = config.get("num_blocks")
    at = config.get("slstm_at")
    if not isinstance(blocks, int):
        return None
    slstm = blocks if at == "all" else len(at) if isinstance(at, list) else None
    if slstm is None:
        return None
    divisor = math.gcd(blocks - slstm, slstm) or 1
    return "xLSTM[%d:%d]" % ((blocks - slstm) // divisor, slstm // divisor)


def read_log(path):
    try:
        with open(path) as f:
            log = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("plot_training.py: cannot read %s: %s" % (path, e))
    if not isinstance(log, dict) or not isinstance(log.get("steps"), list):
        sys.exit("plot_training.py: %s is not a trainer log (no 'steps' list)" % path)
    return log


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+", help="JSON logs of train_parity or train_char_lm")
    parser.add_argument("--out", default="learning_curves.png", help="PNG to write")
    parser.add_argument("--label", action="append", help="one per log, in order")
    parser.add_argument("--smooth", type=int, default=0, help="moving-mean window in steps")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args()
    if args.label and len(args.label) != len(args.logs):
        sys.exit("plot_training.py: give --label once per log (%d logs, %d labels)"
                 % (len(args.logs), len(args.label)))

    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    parity_seen = char_seen = False
    for i, path in enumerate(args.logs):
        log = read_log(path)
        label = (args.label[i] if args.label else
                 block_map_label(log) or os.path.splitext(os.path.basename(path))[0])
        steps = [s["step"] for s in log["steps"]]
        losses = [s["loss"] for s in log["steps"]]
        window = args.smooth or max(1, len(steps) // 100)
        line, = loss_ax.plot(steps, moving_mean(losses, window), label=label)
        color = line.get_color()

        evaluations = log.get("evaluations", [])
        if evaluations and "validation_bpc" in evaluations[0]:
            char_seen = True
            eval_ax.plot([e["step"] for e in evaluations],
                         [e["validation_bpc"] for e in evaluations], "o-", color=color,
                         label=label)
        elif evaluations:
            parity_seen = True
            x = [e["step"] for e in evaluations]
            eval_ax.plot(x, [e["accuracy"] for e in evaluations], "o-", color=color,
                         label=label + " 40-256")
            in_dist = [(e["step"], e["in_distribution"]["accuracy"]) for e in evaluations
                       if "in_distribution" in e]
            if in_dist:
                eval_ax.plot([x for x, _ in in_dist], [a for _, a in in_dist], "s--",
                             color=color, linewidth=0.8, label=label + " in-dist")
            styles = [":", "--", "-."]
            for b, bucket in enumerate(evaluations[0].get("buckets", [])):
                name = "%d-%d" % (bucket["min_length"], bucket["max_length"])
                eval_ax.plot(x, [e["buckets"][b]["accuracy"] for e in evaluations],
                             styles[b % len(styles)], color=color, linewidth=0.8,
                             label=label + " " + name)

    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss (moving mean)")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    eval_ax.set_xlabel("step")
    if parity_seen:
        eval_ax.axhline(0.5, color="gray", linewidth=0.8)
        eval_ax.set_ylabel("validation accuracy (0.5 = chance)")
        eval_ax.set_ylim(0.4, 1.02)
    if char_seen:
        eval_ax.set_ylabel("validation bits per character")
    eval_ax.grid(alpha=0.3)
    if parity_seen or char_seen:
        eval_ax.legend(fontsize=7)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
