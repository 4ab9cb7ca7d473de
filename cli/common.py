"""What the command modules share: the warehouse root an invocation names, `--set` overrides, Prefect's settings."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import threading
from typing import TextIO

import duckdb
import pyarrow as pa

from warehouse.store import ROOT_HELP, Warehouse, default_root

__all__ = [
    "MAX_ROWS", "ROOT_HELP", "add_set_option", "config_warehouse", "parse_override", "prefect_defaults", "print_rows",
    "start_temporary_prefect_server", "warehouse_root", "write_box",
]  # fmt: skip
MAX_ROWS = 40  # rows a box shows (the first and last halves), as DuckDB's CLI `.maxrows`


def prefect_defaults() -> None:
    """Settings for running flows with no server on a machine without network (before Prefect is imported), and no
    per-file progress bars of transformers' model loading and saving between the stage reports."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def start_temporary_prefect_server() -> threading.Thread | None:
    """Start, in a thread, the temporary Prefect API server that a flow run starts when no PREFECT_API_URL is set
    (Prefect's ephemeral mode: the same per-process server its client then finds running), so that its seconds of
    start-up overlap the imports of the flow's stages; join the thread before the flow runs. None with a server
    configured. Should the start fail here, the flow run starts the server itself, as without this."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def warehouse_root(args: argparse.Namespace, must_exist: bool = False) -> str:
    """The warehouse root of a command that reads or serves one: --warehouse, else $HICRA_WAREHOUSE, else
    ./warehouse-data; with `must_exist`, an error if no warehouse is there (rather than empty views)."""
    root = default_root(args.warehouse)
    if must_exist and not Warehouse(root).exists():
        raise FileNotFoundError(f"no warehouse at {root!r} (use --warehouse or $HICRA_WAREHOUSE)")
    return root


def config_warehouse(args: argparse.Namespace) -> str | None:
    """The warehouse root of a command that runs a config (`train`, `experiment`, `update-node`): --warehouse, else
    $HICRA_WAREHOUSE, else None (the config's `run.warehouse`)."""
    return args.warehouse or os.environ.get("HICRA_WAREHOUSE")


def parse_override(item: str) -> tuple[str, object]:
    """`section.field=value` with the value read as YAML (numbers, booleans, lists), for `--set`."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects section.field=value, got {item!r}")
    return key.strip(), yaml.safe_load(value)


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `--set FIELD=VALUE` option of the commands that load a run config."""
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=help)


def write_box(result: pa.Table, out: TextIO, width: int, max_rows: int = MAX_ROWS) -> None:
    """DuckDB's box rendering of a result at most `width` columns wide: columns and rows that do not fit are elided
    and the footer says how many are shown (a 1-row result has no footer)."""
    relation = duckdb.connect().from_arrow(result)
    with contextlib.redirect_stdout(out):
        relation.show(max_width=width, max_rows=max_rows, null_value="NULL")


def print_rows(rows: list[dict], title: str) -> None:
    """Rows of one shape under a title, as a box fitted to the terminal ($COLUMNS, else the terminal's, else 80)."""
    print(title)
    if not rows:
        print("(none)")
        return
    write_box(pa.Table.from_pylist(rows), sys.stdout, shutil.get_terminal_size().columns, max_rows=len(rows))
