"""What the command modules share: the warehouse root an invocation names, `--set` overrides, Prefect's settings."""

from __future__ import annotations

import argparse
import os

from warehouse.store import ROOT_HELP, Warehouse, default_root

__all__ = ["ROOT_HELP", "add_set_option", "config_warehouse", "parse_override", "prefect_defaults", "warehouse_root"]


def prefect_defaults() -> None:
    """Settings for running flows with no server on a machine without network (before Prefect is imported), and no
    per-file progress bars of transformers' model loading and saving between the stage reports."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def warehouse_root(args: argparse.Namespace, must_exist: bool = False) -> str:
    """The warehouse root of a command that reads or serves one: --warehouse, else $HICRA_WAREHOUSE, else
    ./warehouse-data; with `must_exist`, an error if no warehouse is there (rather than empty views)."""
    root = default_root(args.warehouse)
    if must_exist and not Warehouse(root).exists():
        raise FileNotFoundError(f"no warehouse at {root!r} (use --warehouse or $HICRA_WAREHOUSE)")
    return root


def config_warehouse(args: argparse.Namespace) -> str | None:
    """The warehouse root of a command that runs a config (`train`, `update-node`): --warehouse, else
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
