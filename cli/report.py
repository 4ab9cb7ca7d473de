"""`hicra report RUN`: a run's plots as PNGs and an index.md (rendered by warehouse/report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import ROOT_HELP, warehouse_root
from warehouse.report import PLOTS, write_report


def cmd_report(args: argparse.Namespace) -> int:
    index = write_report(warehouse_root(args), args.run_id, args.out or Path("reports") / args.run_id)
    print(f"wrote {len(PLOTS)} plots and {index}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="plot a run's per-iteration summary into PNGs and an index.md")
    report.add_argument("run_id")
    report.add_argument("--warehouse", help=ROOT_HELP)
    report.add_argument("--out", help="output folder (default: ./reports/RUN)")
    report.set_defaults(func=cmd_report)
