"""`hicra sql` (read-only queries over the warehouse's views), `hicra export` (a run's scored rollouts as JSONL or a
`datasets` folder) and `hicra warehouse check|gc` (integrity, cleanup)."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import warnings
from typing import TextIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cli.common import MAX_ROWS, ROOT_HELP, warehouse_root, write_box
from warehouse.catalog import init_sql, query
from warehouse.export import EXPORT_FORMATS, export_rollouts
from warehouse.store import Warehouse

FORMATS = ("box", "csv", "json", "markdown", "line", "parquet")
"""`box`: DuckDB's own renderer, fitted to the terminal (columns and rows it cannot fit are elided, with a note, as
DuckDB's CLI does); `line`: one `column = value` line per field, records apart (DuckDB's `.mode line`)."""
FILE_WIDTH = 100_000  # `box` into a file: no column elided


def _plain(value: object, null: str = "") -> object:
    """A value as text formats show it: nested values as JSON, NULL as `null`."""
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return null if value is None else value


def write_result(result: pa.Table, fmt: str, out: TextIO, width: int = 80, max_rows: int = MAX_ROWS) -> None:
    """Write a query result to a text stream in one of `FORMATS` (but parquet): `box` at most `width` wide, CSV with
    a header, a JSON array (one row a line), a Markdown table, or one field per line."""
    rows = result.to_pylist()
    if fmt == "box":
        write_box(result, out, width, max_rows)
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(result.column_names)
        writer.writerows([_plain(v) for v in row.values()] for row in rows)
    elif fmt == "json":
        out.write("[\n" + ",\n".join(json.dumps(row, default=str) for row in rows) + "\n]\n")
    elif fmt == "markdown":
        cells = [[str(_plain(v, "NULL")).replace("|", "\\|").replace("\n", " ") for v in r.values()] for r in rows]
        lines = [result.column_names, ["---"] * result.num_columns, *cells]
        out.writelines("| " + " | ".join(line) + " |\n" for line in lines)
    elif fmt == "line":
        pad = max((len(name) for name in result.column_names), default=0)
        records = ["".join(f"{k:>{pad}} = {_plain(v, 'NULL')}\n" for k, v in row.items()) for row in rows]
        out.write("\n".join(records))
    else:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def cmd_sql(args: argparse.Namespace) -> int:
    if args.init_file:
        print(init_sql(warehouse_root(args, must_exist=True)))
        return 0
    if args.statement is None:
        raise ValueError("give a SQL statement (or --init-file)")
    if args.format == "table":
        warnings.warn("--format table is deprecated: use --format box (the default)", FutureWarning, stacklevel=2)
        args.format = "box"
    if args.format == "parquet" and not args.out:
        raise ValueError("--format parquet needs --out FILE")
    try:
        result = query(warehouse_root(args, must_exist=True), args.statement, read_only=True)
    except duckdb.Error as err:  # DuckDB's first line names the problem; the rest repeats the statement
        raise ValueError(str(err).splitlines()[0]) from None
    if args.format == "parquet":
        pq.write_table(result, args.out, compression="zstd")
    elif args.out:  # a file has no width: nothing elided
        with open(args.out, "w", newline="") as fh:
            write_result(result, args.format, fh, width=FILE_WIDTH, max_rows=args.max_rows or result.num_rows)
    else:
        width = shutil.get_terminal_size().columns  # $COLUMNS, else the terminal's, else 80
        write_result(result, args.format, sys.stdout, width=width, max_rows=args.max_rows or MAX_ROWS)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    rows = export_rollouts(warehouse_root(args, must_exist=True), args.run, args.format, args.out, args.iteration)
    which = f"iteration {args.iteration}" if args.iteration is not None else "all iterations"
    print(f"exported {rows} scored rollouts of run {args.run!r} ({which}) to {args.out} ({args.format})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    store = Warehouse(warehouse_root(args, must_exist=True))
    problems = store.check_files(args.run)
    files = sum(len(c.files) for c in store.commits(args.run))
    for p in problems:
        print(f"{p.kind:9} {p.path}: {p.detail}")
    print(f"{files} committed files checked, {len(problems)} problems")
    return 1 if problems else 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = Warehouse(warehouse_root(args, must_exist=True))
    sweep = store.gc(min_age=args.min_age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in sweep.removed:
        print(f"{verb} {store.relative(path)}")
    for path in sweep.kept_recent:
        print(f"kept {store.relative(path)}: younger than {args.min_age:g}s, a stage may be writing it")
    print(f"{verb} {len(sweep.removed)} uncommitted paths older than {args.min_age:g}s (never a committed file)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    root_help = ROOT_HELP
    sql = sub.add_parser(
        "sql",
        help="run a read-only SQL query over the warehouse's views",
        description="Run one SELECT over the warehouse's views (docs/sql-cookbook.md). Anything that would write, "
        "attach, load or configure is refused, and the connection can read only the committed files.",
    )
    sql.add_argument("statement", nargs="?", help="one SELECT statement")
    sql.add_argument(
        "--format", choices=(*FORMATS, "table"), default="box",
        help="box (default: DuckDB's table, fitted to the terminal), csv, json, markdown, line (one field per line), "
        "parquet (needs --out); table is the old name of box",
    )  # fmt: skip
    sql.add_argument("--max-rows", type=int, help=f"rows the box shows (default: {MAX_ROWS}; with --out: all)")
    sql.add_argument("--out", help="write the result to this file (needed for parquet)")
    sql.add_argument("--warehouse", help=root_help)
    sql.add_argument(
        "--init-file",
        action="store_true",
        help="print the SQL that defines the views (as of now), for `duckdb -init FILE` or any DuckDB client",
    )
    sql.set_defaults(func=cmd_sql)

    export = sub.add_parser(
        "export",
        help="write a run's scored rollouts (the view scored_rollouts) as JSONL or a Hugging Face datasets folder",
        description="Write one row per scored rollout: prompt, response, reward, status, correct, iteration, "
        "rollout_id, group and sample index, token ids, sampler log-probs, planning mask and share. `jsonl`: one JSON "
        "object a line; `hf`: a folder written by Dataset.save_to_disk (read it with datasets.load_from_disk).",
    )
    export.add_argument("run", help="the run id")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", help="output format (default: jsonl)")
    export.add_argument("--out", required=True, help="the JSONL file, or the folder for hf (new or empty)")
    export.add_argument("--iteration", type=int, help="only this iteration (default: all)")
    export.add_argument("--warehouse", help=root_help)
    export.set_defaults(func=cmd_export)

    warehouse = sub.add_parser("warehouse", help="check the warehouse's files against their commit records; clean up")
    actions = warehouse.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", help="verify every committed file (exists, row count, sha256) and list files no commit names"
    )
    check.add_argument("--run", help="only this run (default: every run)")
    check.add_argument("--warehouse", help=root_help)
    check.set_defaults(func=cmd_check)
    gc = actions.add_parser("gc", help="remove _staging leftovers and uncommitted files of failed attempts")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="only remove paths untouched for this many seconds, so a stage writing now keeps its files "
        "(default: 3600)",
    )
    gc.add_argument("--warehouse", help=root_help)
    gc.set_defaults(func=cmd_gc)
