"""Bench: rendering one report plot (warehouse/report.py) with its fixed margins against matplotlib's constrained
layout engine, in the same process.

    python bench/report.py [--repeats 5] [--iterations 50]

Prints seconds per plot for both and the ratio; the rows are a synthetic run of `--iterations` iterations.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, before bench/ (bench/warehouse.py)

from warehouse.report import PLOTS, render  # noqa: E402


def constrained(plot, rows: list[dict], dpi: int = 80) -> bytes:
    """The baseline: the same figure laid out by matplotlib's constrained layout engine."""
    figure = Figure(figsize=(6, 3.2), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    for column, label in plot.series.items():
        axes.plot([r["iteration"] for r in rows], [r[column] for r in rows], marker="o", label=label)
    axes.set(title=plot.title, xlabel="iteration", ylabel=plot.ylabel)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", backend="agg")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    plot = PLOTS[0]
    rows = [{"iteration": i, **{c: math.sin(i + k) for k, c in enumerate(plot.series)}} for i in range(args.iterations)]
    render(plot, rows), constrained(plot, rows)  # warm: fonts, backends

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn(plot, rows)
        return (time.perf_counter() - start) / args.repeats

    fixed, layout = timed(render), timed(constrained)
    print(f"machine: {os.cpu_count()} CPUs; {args.iterations} iterations, {args.repeats} renders each")
    ratio = layout / fixed
    print(f"plot: fixed margins {fixed * 1000:.0f} ms vs constrained layout {layout * 1000:.0f} ms: {ratio:.1f}x")


if __name__ == "__main__":
    main()
