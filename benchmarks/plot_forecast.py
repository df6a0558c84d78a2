#!/usr/bin/python3
"""Draws a TiRex forecast written by examples/forecast.

    forecast DATA.csv --column y --horizon 64 --output f.csv --plot f.png
    /usr/bin/python3 benchmarks/plot_forecast.py DATA.csv f.csv f.png

One panel per forecast series: the last values of the series (up to four horizons of them), the
median forecast and the band between the lowest and the highest quantile.

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""

import argparse
import csv
import math
import sys


def read_series(path, names):
    """The columns `names` of the CSV file `path` (missing cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    out = {}
    for name in names:
        i = header.index(name)
        values = []
        for row in rows[1:]:
            if not row:
                continue
            try:
                values.append(float(row[i]) if i < len(row) and row[i].strip() else math.nan)
            except ValueError:
                values.append(math.nan)
        out[name] = values
    return out


def read_forecast(path):
    """{series: (quantile names, [[values per quantile] per step])} in file order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    quantiles = rows[0][2:]
    out = {}
    for row in rows[1:]:
        out.setdefault(row[0], (quantiles, []))[1].append([float(v) for v in row[2:]])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("forecast")
    ap.add_argument("out")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_forecast.py: needs matplotlib (apt-get install python3-matplotlib)")
    forecast = read_forecast(args.forecast)
    history = read_series(args.data, list(forecast))
    fig, axes = plt.subplots(len(forecast), 1, figsize=(9, 3 * len(forecast)), squeeze=False)
    for ax, (name, (quantiles, steps)) in zip(axes[:, 0], forecast.items()):
        past = history[name]
        h = len(steps)
        shown = past[-4 * h :]
        x0 = len(past) - len(shown)
        ax.plot(range(x0, len(past)), shown, color="black", linewidth=1, label=name)
        xs = range(len(past), len(past) + h)
        median = quantiles.index("q0.5") if "q0.5" in quantiles else len(quantiles) // 2
        ax.fill_between(xs, [s[0] for s in steps], [s[-1] for s in steps], alpha=0.3,
                        label=f"{quantiles[0]}-{quantiles[-1]}")
        ax.plot(xs, [s[median] for s in steps], label="median")
        ax.legend(loc="upper left")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
