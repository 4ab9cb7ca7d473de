"""`hicra judge`'s work: classify each iteration's failed rollouts with an LLM judge (`hicra.judge`), commit verdicts.

One commit per (run, iteration, judge) as stage `judge-<judge_id>` (see `schemas.tables.JudgmentRow`), under the
stage's lock and attempt record like the training stages (`tasks.common.run_unless_committed`): a killed
`hicra judge` resumes at the first iteration not committed, and judging a run again with the same judge does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from hicra.judge import PLANNING, PROMPT_VERSION, Judge
from schemas.tables import JudgmentRow, to_table
from tasks.common import run_unless_committed
from warehouse.store import Warehouse


def judge_id(judge: Judge, sample: int | None) -> str:
    """Names one judge: its model, the prompt version, whether answers are constrained (as asked: `auto` is one
    mode) and how many failed rollouts per iteration it sees."""
    return hashlib.sha256(f"{judge.model}|{PROMPT_VERSION}|{judge.requested}|{sample}".encode()).hexdigest()[:8]


def failed_rollouts(store: Warehouse, run_id: str, iteration: int, sample: int | None) -> list[dict]:
    """The iteration's rollouts the verifier did not accept (prompt, reference, response); with `sample`, at most
    that many, chosen by a hash of the rollout id (the same ones on every call)."""
    rollouts = store.read_table("rollouts", run_id, iteration).select(["rollout_id", "prompt", "reference", "response"])
    scores = store.read_table("scores", run_id, iteration).select(["rollout_id", "correct"]).to_pydict()
    correct = dict(zip(scores["rollout_id"], scores["correct"], strict=True))
    failed = [row for row in rollouts.to_pylist() if not correct[row["rollout_id"]]]
    if sample is not None:
        failed = sorted(failed, key=lambda row: hashlib.sha256(row["rollout_id"].encode()).hexdigest())[:sample]
    return failed


def judge_iteration(
    store: Warehouse, run_id: str, iteration: int, judge: Judge, sample: int | None, workers: int
) -> str:
    """Judge one iteration's failed rollouts (`workers` requests in flight) and commit the verdicts."""
    failed = failed_rollouts(store, run_id, iteration, sample)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(lambda r: judge.classify(r["prompt"], r["reference"], r["response"]), failed))
    identity, now = judge_id(judge, sample), dt.datetime.now(dt.UTC)
    rows = [
        JudgmentRow(
            run_id=run_id,
            iteration=iteration,
            rollout_id=row["rollout_id"],
            judge_id=identity,
            model=judge.model,
            prompt_version=PROMPT_VERSION,
            category=verdict.category,
            is_planning=verdict.category == PLANNING,
            raw=verdict.raw,
            constrained=verdict.constrained,
            judged_at=now,
        )
        for row, verdict in zip(failed, verdicts, strict=True)
    ]
    info = {"judge_id": identity, "model": judge.model, "prompt_version": PROMPT_VERSION, "sample": sample}
    store.commit_stage(run_id, iteration, f"judge-{identity}", {"judgments": to_table(JudgmentRow, rows)}, info)
    planning = sum(r.is_planning for r in rows)
    return f"{len(rows)} failed rollouts judged, {planning} planning errors"


def judge_run(
    root: str,
    run_id: str,
    judge: Judge,
    sample: int | None = None,
    workers: int = 8,
    report: Callable[[int, str | None], None] = lambda iteration, line: None,
) -> str:
    """Judge every iteration of a run whose verify stage is committed and that this judge has not judged yet;
    `report(iteration, line)` gets each iteration's one-line report (None: committed before). Returns the stage."""
    store = Warehouse(root)
    iterations = sorted(c.iteration for c in store.commits(run_id) if c.stage == "verify")
    if not iterations:
        raise FileNotFoundError(f"run {run_id!r} has no verified rollouts in {store.url} (see `hicra runs`)")
    stage = f"judge-{judge_id(judge, sample)}"
    for iteration in iterations:
        work = partial(judge_iteration, store, run_id, iteration, judge, sample, workers)
        report(iteration, run_unless_committed(store, run_id, iteration, stage, work))
    return stage
