"""`hicra runs` and `hicra status RUN`: what runs a warehouse holds and how far each got (warehouse/runs.py)."""

from __future__ import annotations

import argparse
import datetime as dt

from cli.common import ROOT_HELP, print_rows, warehouse_root
from warehouse.runs import runs, status


def _minutes(rows: list[dict], fmt: str) -> list[dict]:
    """Rows with their timestamps as text to the minute (UTC): narrow enough for 80 columns."""
    return [{k: v.astimezone(dt.UTC).strftime(fmt) if isinstance(v, dt.datetime) else v for k, v in r.items()}
            for r in rows]  # fmt: skip


def cmd_runs(args: argparse.Namespace) -> int:
    print_rows(_minutes(runs(warehouse_root(args)), "%Y-%m-%d %H:%M"), "runs (last commit in UTC)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = _minutes(status(warehouse_root(args), args.run_id), "%m-%d %H:%M")
    print_rows(rows, f"run {args.run_id}: when each stage committed (UTC; `hicra sql` has the commits view)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    runs_parser = sub.add_parser("runs", help="list the warehouse's runs, their last committed stage and failures")
    runs_parser.add_argument("--warehouse", help=ROOT_HELP)
    runs_parser.set_defaults(func=cmd_runs)
    status_parser = sub.add_parser("status", help="show a run's iterations and when each stage committed")
    status_parser.add_argument("run_id")
    status_parser.add_argument("--warehouse", help=ROOT_HELP)
    status_parser.set_defaults(func=cmd_status)
