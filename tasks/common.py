"""What every stage task shares: the run's warehouse, the commit check, where each iteration's policy lives."""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from traceback import format_exc

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hicra.cache import default_cache_dir
from hicra.core_algos import ADVANTAGES
from hicra.data import DataError
from hicra.verifier import EXTRACTORS, Verifier
from schemas.config import GPU_TAG, NOT_HASHED, ConfigError, RunConfig
from tasks import resident
from warehouse.store import AlreadyCommitted, Busy, Warehouse

console = Console(highlight=False, emoji=False)  # no emoji codes: suite `synthetic:100` printed `synthetic💯`


@contextmanager
def progress_bar(description: str, total: int, unit: str) -> Iterator[Callable[..., None]]:
    """A transient progress bar on the console for a long stage (drawn only on a terminal, gone when done); yields
    `advance(done, note="")`: `done` of `total` `unit` so far, and a note such as the tokens generated."""
    columns = (
        TextColumn("  {task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn(unit),
        TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bar:
        job = bar.add_task(description, total=total, note="")

        def advance(done: int, note: str = "") -> None:
            bar.update(job, completed=done, note=note)

        yield advance


class RunConfigMismatch(RuntimeError):
    """A run restarted with a config whose hash differs from the one it was started with."""


def open_warehouse(config: RunConfig) -> Warehouse:
    return Warehouse(config.run.warehouse)


TRANSIENT_ERRORS = (OSError, RuntimeError, TimeoutError, MemoryError)
PERMANENT_ERRORS = (ConfigError, DataError, RunConfigMismatch, FileNotFoundError, AlreadyCommitted, Busy)


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry what may pass on a second try (I/O, a dead worker), never bad config or data."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except TRANSIENT_ERRORS:
        return True
    except BaseException:
        return False
    return False


StageFn = Callable[[Warehouse, RunConfig, int, str], str]


def run_unless_committed(
    store: Warehouse, run_id: str, iteration: int, stage: str, work: Callable[[], str]
) -> str | None:
    """Run `work` (which writes and commits the stage) unless the stage is committed; None if it was.

    Under the stage's lock (a second attempt running at the same time is refused with `Busy`), what an earlier,
    killed attempt left uncommitted is removed first, and the attempt is recorded (`stage_attempts`) with its error
    and traceback if it fails. Returns work's one-line report.
    """
    with store.lock(run_id, iteration, stage, what=f"stage {stage} of {run_id} iteration {iteration} is running"):
        if store.is_committed(run_id, iteration, stage):
            return None
        store.discard_uncommitted(run_id, iteration, stage)
        attempt = store.start_attempt(run_id, iteration, stage)
        try:
            report = work()
        except BaseException as err:
            store.end_attempt(attempt, "failed", error=f"{type(err).__name__}: {err}", traceback=format_exc())
            raise
        store.end_attempt(attempt, "ok")
        return report


def stage_task(stage: str, retries: int = 2, gpu: bool = False) -> Callable[[StageFn], Task]:
    """Make a stage function a Prefect task that runs only if the stage is not committed (`run_unless_committed`).

    The function gets (warehouse, config, iteration, base model folder), writes and commits its outputs, and returns
    a one-line report for the console. Transient errors are retried; the commit protocol makes a retry safe. `gpu`
    tags the task with `GPU_TAG`.
    """

    def wrap(fn: StageFn) -> Task:
        def run(config: RunConfig, iteration: int, base_model_dir: str) -> None:
            store = open_warehouse(config)
            started = time.perf_counter()
            try:
                report = run_unless_committed(
                    store, config.run.id, iteration, stage, lambda: fn(store, config, iteration, base_model_dir)
                )
            except BaseException:
                resident.drop()  # the held policy may be past the committed checkpoint: the retry loads that
                raise
            if report is None:
                console.print(f"  [dim]iteration {iteration} {stage}: committed, skipped[/dim]")
            else:
                console.print(f"  iteration {iteration} {stage}: {report} ({time.perf_counter() - started:.1f}s)")

        run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return task(
            run,
            name=stage,
            task_run_name=f"{{config.run.id}}-i{{iteration}}-{stage}",
            cache_policy=NO_CACHE,
            retries=retries,
            retry_delay_seconds=2,
            retry_condition_fn=retry_transient,
            tags=[GPU_TAG] if gpu else None,
        )

    return wrap


def local_checkpoint(store: Warehouse, run_id: str, iteration: int, part: str) -> Path:
    """A local folder with part `hf` or `deepspeed` of a committed checkpoint: in place on a folder root, else
    downloaded once into $HICRA_CACHE/checkpoints."""
    return store.local_checkpoint(run_id, iteration, part, default_cache_dir() / "checkpoints")


def policy_dir(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> Path:
    """The HF folder that generates iteration i: the base model for i = 0, else update i-1's export."""
    if iteration == 0:
        return Path(base_model_dir)
    if not store.is_committed(config.run.id, iteration - 1, "update"):
        raise RuntimeError(f"iteration {iteration} needs the committed update of iteration {iteration - 1}")
    return local_checkpoint(store, config.run.id, iteration - 1, "hf")


@lru_cache(maxsize=2)
def shared_verifier(workers: int, timeout_s: float, extractors: tuple[str, ...]) -> Verifier:
    """One verifier worker pool per process and settings, kept across iterations and suites (it takes seconds to
    start); closed at exit."""
    verifier = Verifier(workers=workers, timeout_s=timeout_s, extractors=extractors)
    atexit.register(verifier.close)
    return verifier


def validate_registered_names(config: RunConfig) -> None:
    """Check the config's names of registered functions against their registries, at the start of a run or an eval.

    schemas/ cannot import hicra/ (layering), so the config holds plain strings and this one function checks them
    (a new estimator or extractor is one function and its registering decorator); each entry of `checks` is (dotted
    field, its names or None for the default, registry, what a name names).
    """
    checks = [
        ("algorithm.advantage", [config.algorithm.advantage], ADVANTAGES, "advantage estimator"),
        ("verifier.extractors", config.verifier.extractors, EXTRACTORS, "extractor"),
        ("eval.protocol.extractors", config.eval.protocol.extractors, EXTRACTORS, "extractor"),
    ]
    for field, names, registry, kind in checks:
        for name in names or ():
            if name not in registry:
                raise ConfigError(f"{field}: unknown {kind} {name!r}; known: {', '.join(registry)}")


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
    if not changed:  # only fields added since the run started, at a null default: the same computation
        return
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

    def hashed(key: str) -> bool:
        return not any(key == field or key.startswith(f"{field}.") for field in NOT_HASHED)

    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and hashed(k))
