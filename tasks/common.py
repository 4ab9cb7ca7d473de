"""What every stage task shares: the run's warehouse, the commit check, where each iteration's policy lives."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from schemas.config import RunConfig
from warehouse.store import Warehouse

console = Console(highlight=False)


class RunConfigMismatch(RuntimeError):
    """A run restarted with a config whose hash differs from the one it was started with."""


def open_warehouse(config: RunConfig) -> Warehouse:
    return Warehouse(config.run.warehouse)


def begin_stage(store: Warehouse, config: RunConfig, iteration: int, stage: str) -> bool:
    """False when the stage is committed (nothing to do); else remove a killed attempt's leftovers and return True."""
    if store.is_committed(config.run.id, iteration, stage):
        console.print(f"  [dim]iteration {iteration} {stage}: committed, skipped[/dim]")
        return False
    store.discard_uncommitted(config.run.id, iteration, stage)
    if stage == "update":
        shutil.rmtree(store.checkpoint_dir(config.run.id, iteration), ignore_errors=True)
    return True


def policy_dir(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> Path:
    """The HF folder that generates iteration i: the base model for i = 0, else update i-1's export."""
    if iteration == 0:
        return Path(base_model_dir)
    if not store.is_committed(config.run.id, iteration - 1, "update"):
        raise RuntimeError(f"iteration {iteration} needs the committed update of iteration {iteration - 1}")
    return store.checkpoint_dir(config.run.id, iteration - 1) / "hf"


def freeze_run_config(config: RunConfig, force: bool = False) -> None:
    """Record the config at a run's first start; refuse a changed config later unless forced (then log it)."""
    store = open_warehouse(config)
    frozen = store.frozen_config(config.run.id)
    digest = config.config_hash()
    if frozen is None:
        store.freeze_config(config.run.id, config.to_yaml(), digest)
        return
    old_yaml, old_digest = frozen
    if old_digest == digest:
        return
    changed = _changed_fields(old_yaml, config.to_yaml())
    if not force:
        raise RunConfigMismatch(
            f"run {config.run.id!r} was started with another config (hash {old_digest}, now {digest}); "
            f"changed: {', '.join(changed)}. Use a new run id, or --force to continue with the new config."
        )
    store.freeze_config(config.run.id, config.to_yaml(), digest, note=f"forced {old_digest} -> {digest}: {changed}")


def _changed_fields(old_yaml: str, new_yaml: str) -> list[str]:
    import yaml

    def flat(node: object, prefix: str = "") -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    old, new = flat(yaml.safe_load(old_yaml)), flat(yaml.safe_load(new_yaml))
    ignored = {"run.iterations", "run.warehouse"}
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in ignored)
