"""`hicra report RUN`: a run's plots as PNGs and an index.md (rendered by warehouse/report.py); `hicra report RUN
RUN ...` or `--experiment NAME`: the comparison of methods across seeds (warehouse/compare.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from cli.common import ROOT_HELP, warehouse_root
from warehouse.compare import final_table, panels, write_comparison
from warehouse.experiments import comparison_data, evaluated, experiment_runs
from warehouse.report import PLOTS, write_report


def cmd_report(args: argparse.Namespace) -> int:
    root = warehouse_root(args, must_exist=True)
    if len(args.run_ids) == 1 and not args.experiment:
        index = write_report(root, args.run_ids[0], args.out or Path("reports") / args.run_ids[0])
        print(f"wrote {len(PLOTS)} plots and {index}")
        return 0
    if not args.run_ids and not args.experiment:
        raise ValueError("hicra report: give one run, several runs, or --experiment NAME")
    from_experiment = experiment_runs(root, args.experiment) if args.experiment else []
    if left_out := sorted(set(from_experiment) - set(evaluated(root, from_experiment))):
        print(f"left out, no held-out evaluation yet (unfinished or failed): {', '.join(left_out)}")
        from_experiment = [run for run in from_experiment if run not in left_out]
    run_ids = list(dict.fromkeys([*args.run_ids, *from_experiment]))
    data = comparison_data(root, run_ids, args.suite)
    title = f"Experiment {args.experiment}" if args.experiment else f"Runs {', '.join(run_ids)}"
    out = args.out or Path("reports") / (args.experiment or "comparison")
    index = write_comparison(data, args.baseline, out, title)
    Console(width=80, emoji=False).print(final_table(data, args.baseline))
    print(f"wrote {len(panels(data))} plots and {index}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="plot a run's per-iteration summary, or compare methods across seeds")
    report.add_argument("run_ids", nargs="*", metavar="RUN", help="one run: its plots; several: their comparison")
    report.add_argument("--experiment", help="compare the runs of this experiment (`hicra experiment`)")
    report.add_argument("--baseline", default="grpo", help="the method the others are tested against (default grpo)")
    report.add_argument("--suite", help="the held-out suite compared (default: the one every run was evaluated on)")
    report.add_argument("--warehouse", help=ROOT_HELP)
    report.add_argument("--out", help="output folder (default: ./reports/RUN or ./reports/EXPERIMENT)")
    report.set_defaults(func=cmd_report)
