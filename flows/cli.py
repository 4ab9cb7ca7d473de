"""The `hicra` command line: `hicra train` runs the training flow, `hicra sql` queries the warehouse."""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _prefect_defaults() -> None:
    """Settings for running flows with no server on a machine without network (before Prefect is imported), and no
    per-file progress bars of transformers' model loading and saving between the stage reports."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _warehouse(args: argparse.Namespace) -> str:
    from warehouse.store import default_root

    return default_root(args.warehouse)


def _parse_override(item: str) -> tuple[str, object]:
    """`section.field=value` with the value read as YAML (numbers, booleans, lists), for `--set`."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects section.field=value, got {item!r}")
    return key.strip(), yaml.safe_load(value)


def cmd_train(args: argparse.Namespace) -> int:
    _prefect_defaults()
    from flows.train import summary_table, train
    from tasks.common import console

    summaries = train(
        config_path=args.config,
        run_id=args.run_id,
        iterations=args.iterations,
        warehouse=args.warehouse or os.environ.get("HICRA_WAREHOUSE"),
        force=args.force,
        overrides=dict(_parse_override(item) for item in args.set),
    )
    console.print(summary_table(summaries))
    where = f" --warehouse {args.warehouse}" if args.warehouse else ""
    console.print("Query the run with SQL, for example:")
    console.print(f'  hicra sql{where} "select iteration, avg(reward) from scores group by 1 order by 1"')
    return 0


# Modules that add their own subcommands: each has `add_parsers(sub)` and sets `func` on its parsers.
SUBCOMMAND_MODULES: list[str] = [
    "warehouse.runs",
    "flows.cli_grams",
    "flows.eval_cli",
    "warehouse.cli",
    "flows.serve",
    "flows.report",
    "flows.update_node",
    "flows.judge_cli",
    "flows.experiment_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hicra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)

    train = sub.add_parser("train", help="train (or resume) a run with the Prefect flow `hicra`")
    train.add_argument("--config", default="configs/tiny.yaml", help="YAML run config")
    train.add_argument("--run-id", help="run id (default: the config's run.id)")
    train.add_argument("--iterations", type=int, help="number of iterations (default: the config's)")
    train.add_argument("--warehouse", help="warehouse root (default: $HICRA_WAREHOUSE or the config's)")
    train.add_argument("--force", action="store_true", help="resume even though the config changed (recorded)")
    train.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override any config field, e.g. --set algorithm.advantage=grpo --set rollout.group_size=8",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)
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
