"""`hicra runs` and `hicra status RUN`: what runs a warehouse holds and how far each got (warehouse/runs.py)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from cli.common import ROOT_HELP, warehouse_root
from warehouse.runs import runs, status


def print_rows(rows: list[dict], title: str) -> None:
    """Rows of one shape as a table; NULL shows as `-`."""
    table = Table(title=title)
    for name in rows[0] if rows else ["(none)"]:
        table.add_column(name)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    Console().print(table)


def cmd_runs(args: argparse.Namespace) -> int:
    print_rows(runs(warehouse_root(args)), "runs")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print_rows(status(warehouse_root(args), args.run_id), f"run {args.run_id}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    runs_parser = sub.add_parser("runs", help="list the warehouse's runs, their last committed stage and failures")
    runs_parser.add_argument("--warehouse", help=ROOT_HELP)
    runs_parser.set_defaults(func=cmd_runs)
    status_parser = sub.add_parser("status", help="show a run's iterations and when each stage committed")
    status_parser.add_argument("run_id")
    status_parser.add_argument("--warehouse", help=ROOT_HELP)
    status_parser.set_defaults(func=cmd_status)
