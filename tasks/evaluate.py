"""Evaluation tasks: find checkpoints, evaluate one on suites (one commit per suite and protocol), read the summary.

A (checkpoint, suite, protocol) is committed as stage `eval-<suite>-<protocol hash>` in the checkpoint's partition
(a model folder outside any run gets run id `model-<name>-<path hash>` and iteration -1), so asking again for what
is committed does nothing: that is also how the scheduled flow finds the checkpoints it has not evaluated yet.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Literal

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from hicra.data import Fields
from hicra.evaluate import (
    DEFAULT_MAX_NEW_TOKENS,
    EvalSample,
    Suite,
    SuiteSettings,
    evaluate_suite,
    load_suite,
    suite_settings,
)
from hicra.generate import HFGenerator
from hicra.grams import GramMatcher
from hicra.metrics import semantic_entropy
from schemas.config import BASE_ITERATION, GPU_TAG, EvalProtocol, PlanningSection, RunConfig
from schemas.tables import EvalResultRow, MetricRow, to_table
from tasks.common import console, local_checkpoint, open_warehouse, progress_bar, run_unless_committed, shared_verifier
from tasks.mining import planning_grams, planning_strategies
from warehouse.catalog import query
from warehouse.store import Warehouse

EVAL_TASK = {"cache_policy": NO_CACHE, "retries": 0}


@dataclass(frozen=True)
class Checkpoint:
    """An HF-format policy to evaluate: a run's iteration, or a model folder outside any run (iteration -1)."""

    run_id: str
    iteration: int
    path: str  # relative to the warehouse root for a run's checkpoint (as in `checkpoints.hf_path`), else absolute
    max_new_tokens: int  # the response limit when the protocol sets none: the run's rollout.max_new_tokens
    planning: PlanningSection = field(default_factory=PlanningSection)  # the run's gram set (a model folder: paper's)

    @property
    def id(self) -> str:
        return f"{self.run_id}/{self.iteration}"


def run_checkpoint(store: Warehouse, run_id: str, iteration: int | Literal["latest"]) -> Checkpoint:
    """The committed checkpoint of one iteration of a run (or its latest one)."""
    if iteration == "latest":
        done = [c.iteration for c in store.commits(run_id) if c.stage == "update"]
        if not done:
            raise FileNotFoundError(f"run {run_id!r} has no committed checkpoint in {store.url}")
        iteration = max(done)
    if not store.is_committed(run_id, iteration, "update"):
        raise FileNotFoundError(f"run {run_id!r} has no committed checkpoint at iteration {iteration}")
    frozen = store.frozen_config(run_id)
    if frozen is None:
        raise FileNotFoundError(f"run {run_id!r} has no frozen config in {store.url}")
    config = RunConfig.model_validate(yaml.safe_load(frozen[0]))
    path = store.relative(f"{store.checkpoint_dir(run_id, iteration)}/hf")
    return Checkpoint(run_id, iteration, path, config.rollout.max_new_tokens, config.planning)


def model_checkpoint(model_dir: str) -> Checkpoint:
    """A model folder outside any run, named by its folder name and a hash of its absolute path."""
    path = Path(model_dir).resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not an HF model folder (no config.json)")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name).strip("_") or "model"
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return Checkpoint(f"model-{name}-{digest}", BASE_ITERATION, str(path), DEFAULT_MAX_NEW_TOKENS)


def _local_folder(store: Warehouse, checkpoint: Checkpoint) -> Path:
    """The checkpoint's HF folder on this machine (a run's export from a remote root is downloaded once)."""
    if checkpoint.iteration == BASE_ITERATION:
        return Path(checkpoint.path)
    return local_checkpoint(store, checkpoint.run_id, checkpoint.iteration, "hf")


@task(name="find-checkpoints", **EVAL_TASK)
def find_checkpoints(
    warehouse: str, run_id: str | None, iteration: int | Literal["latest"] | None, model_dir: str | None
) -> list[Checkpoint]:
    """A model folder; a run's iteration (or `latest`); else every committed checkpoint (of `run_id`, or all)."""
    if model_dir:
        return [model_checkpoint(model_dir)]
    store = Warehouse(warehouse)
    if run_id and iteration is not None:
        return [run_checkpoint(store, run_id, iteration)]
    return [run_checkpoint(store, c.run_id, c.iteration) for c in store.commits(run_id) if c.stage == "update"]


@task(name="load-suites", **EVAL_TASK)
def load_suites(specs: list[str], limit: int | None, fields: dict[str, str] | None) -> list[Suite]:
    return [load_suite(spec, limit, Fields(**(fields or {}))) for spec in specs]


def _warn_if_mostly_not_ok(samples: list[EvalSample], what: str) -> None:
    """Never a silent zero: a suite whose answers were mostly not graded says so (run log and a markdown artifact)."""
    counts = Counter(s.result.status for s in samples)
    not_ok = len(samples) - counts["ok"]
    if not_ok * 2 <= len(samples):
        return
    text = (
        f"{what}: {not_ok} of {len(samples)} answers were not graded `ok` ({dict(counts)}), so its zeros are no verdict"
    )
    get_run_logger().warning(text)
    create_markdown_artifact(markdown=f"**Warning**: {text}", description="evaluation mostly not graded")


def _rows(checkpoint: Checkpoint, digest: str, samples: list[EvalSample], suite: str) -> list[EvalResultRow]:
    return [
        EvalResultRow(
            run_id=checkpoint.run_id,
            iteration=checkpoint.iteration,
            checkpoint_id=checkpoint.id,
            checkpoint_path=checkpoint.path,
            suite=suite,
            protocol_hash=digest,
            problem_id=s.problem.id,
            sample_index=s.sample_index,
            reference=s.problem.references[0],
            response=s.generation.text,
            extracted=s.result.extracted,
            status=s.result.status,
            reward=s.result.reward,
            response_length=len(s.generation.token_ids),
            finish_reason=s.generation.finish_reason,
            seed=s.seed,
        )
        for s in samples
    ]


def eval_stage(suite: str, protocol_hash: str) -> str:
    """The commit stage name of one suite's evaluation under one protocol."""
    return f"eval-{suite}-{protocol_hash}"


def pending_eval_stages(config: RunConfig, iteration: int) -> list[str]:
    """The eval stages of the run's `eval` section that iteration `iteration` has not committed yet."""
    store, ev = open_warehouse(config), config.eval
    stages = [
        eval_stage(suite.name, suite_settings(ev.protocol, suite, config.rollout.max_new_tokens).digest())
        for suite in (load_suite(spec, ev.limit) for spec in ev.suites)
    ]
    return [stage for stage in stages if not store.is_committed(config.run.id, iteration, stage)]


def _evaluate_suite(
    store: Warehouse,
    checkpoint: Checkpoint,
    suite: Suite,
    settings: SuiteSettings,
    generator: Callable[[], HFGenerator],
    batch_size: int,
    verifier_workers: int,
    verifier_timeout_s: float,
) -> str:
    """Evaluate one checkpoint on one suite and commit the results; returns a one-line report."""
    verifier = shared_verifier(verifier_workers, verifier_timeout_s, settings.extractors)
    total = len(suite.problems) * settings.samples
    with progress_bar(f"{checkpoint.id} {suite.name}", total, "samples") as advance:

        def progress(done: int, tokens: int) -> None:
            advance(done, f"{tokens} tokens")

        samples = evaluate_suite(generator(), verifier, suite, settings, batch_size, progress)
    digest = settings.digest()
    stage = eval_stage(suite.name, digest)
    table = to_table(EvalResultRow, _rows(checkpoint, digest, samples, suite.name))
    matcher = GramMatcher(planning_grams(checkpoint.planning, store))
    spans = [[(m.start, m.end, m.gram) for m in matcher.find(s.generation.text)] for s in samples]
    entropy = semantic_entropy(spans, planning_strategies(checkpoint.planning, store))
    metric = MetricRow(
        run_id=checkpoint.run_id, iteration=checkpoint.iteration, stage=stage, name="semantic_entropy", value=entropy
    )
    info = {"checkpoint_path": checkpoint.path, "protocol": asdict(settings)}
    tables = {"eval_results": table, "metrics": to_table(MetricRow, [metric])}
    store.commit_stage(checkpoint.run_id, checkpoint.iteration, stage, tables, info)
    _warn_if_mostly_not_ok(samples, f"{checkpoint.id} on {suite.name}")
    accuracy = sum(s.result.reward for s in samples) / len(samples)
    return f"avg@{settings.samples} {accuracy:.3f}, {len(samples)} samples"


def _evaluate(
    store: Warehouse,
    checkpoint: Checkpoint,
    suites: list[Suite],
    protocol: EvalProtocol,
    batch_size: int,
    verifier_workers: int,
    verifier_timeout_s: float,
) -> list[dict]:
    """Evaluate one checkpoint on each suite not yet committed under this protocol (each suite one stage attempt, see
    `run_unless_committed`); returns every (suite, hash) key."""
    keys = []
    generator = cache(lambda: HFGenerator(_local_folder(store, checkpoint)))  # loaded once, if a suite needs it
    for suite in suites:
        settings = suite_settings(protocol, suite, checkpoint.max_new_tokens)
        digest = settings.digest()
        stage = eval_stage(suite.name, digest)
        keys.append({"checkpoint_id": checkpoint.id, "suite": suite.name, "protocol_hash": digest})
        work = partial(
            _evaluate_suite, store, checkpoint, suite, settings, generator, batch_size, verifier_workers,
            verifier_timeout_s,
        )  # fmt: skip
        report = run_unless_committed(store, checkpoint.run_id, checkpoint.iteration, stage, work)
        if report is None:
            console.print(f"  [dim]{checkpoint.id} {suite.name}: evaluated before ({stage}), skipped[/dim]")
        else:
            console.print(f"  {checkpoint.id} {suite.name}: {report}")
    return keys


@task(
    name="evaluate-checkpoint",
    task_run_name="eval-{checkpoint.run_id}-i{checkpoint.iteration}",
    tags=[GPU_TAG],
    **EVAL_TASK,
)
def evaluate_checkpoint(
    warehouse: str,
    checkpoint: Checkpoint,
    suites: list[Suite],
    protocol: EvalProtocol,
    batch_size: int = 64,
    verifier_workers: int = 2,
    verifier_timeout_s: float = 5.0,
) -> list[dict]:
    """Evaluate a checkpoint on the suites it has no results for under this protocol (one commit per suite)."""
    store = Warehouse(warehouse)
    return _evaluate(store, checkpoint, suites, protocol, batch_size, verifier_workers, verifier_timeout_s)


@task(name="evaluate-iteration", task_run_name="{config.run.id}-i{iteration}-eval", tags=[GPU_TAG], **EVAL_TASK)
def evaluate_iteration(config: RunConfig, iteration: int, base_model_dir: str) -> list[dict]:
    """Training's periodic evaluation: the iteration's checkpoint on the run's `eval` suites and protocol; at
    BASE_ITERATION the run's starting policy `base_model_dir` (the baseline of the later evaluations)."""
    store, ev = open_warehouse(config), config.eval
    if iteration == BASE_ITERATION:
        path = str(Path(base_model_dir).resolve())
        checkpoint = Checkpoint(config.run.id, iteration, path, config.rollout.max_new_tokens, config.planning)
    else:
        checkpoint = run_checkpoint(store, config.run.id, iteration)
    suites = [load_suite(spec, ev.limit) for spec in ev.suites]
    vc = config.verifier
    return _evaluate(store, checkpoint, suites, ev.protocol, config.rollout.batch_size, vc.workers, vc.timeout_s)


@task(name="eval-summary", **EVAL_TASK)
def eval_summary(warehouse: str, keys: list[dict]) -> list[dict]:
    """The `eval_summary` rows of the given (checkpoint, suite, protocol hash) keys, in key order."""
    wanted = [(k["checkpoint_id"], k["suite"], k["protocol_hash"]) for k in keys]
    rows = {
        (r["checkpoint_id"], r["suite"], r["protocol_hash"]): r
        for r in query(warehouse, "FROM eval_summary").to_pylist()
    }
    return [rows[key] for key in wanted if key in rows]
