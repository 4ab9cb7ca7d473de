"""The `hicra` command line: `hicra train` runs the training flow, `hicra sql` queries the warehouse, and more."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# One module per command group, each with `add_parsers(sub)` that sets `func` on its parsers; in help order.
COMMAND_MODULES: list[str] = [
    "cli.train",
    "cli.experiment",
    "cli.runs",
    "cli.grams",
    "cli.eval",
    "cli.sql",
    "cli.serve",
    "cli.report",
    "cli.update_node",
    "cli.judge",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hicra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the message names the field, file or row; the traceback is noise for a user
        if os.environ.get("HICRA_DEBUG"):
            raise
        from schemas.config import ConfigError

        known = (ConfigError, FileNotFoundError, ValueError, RuntimeError)
        if isinstance(err, known):
            print(f"hicra: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
