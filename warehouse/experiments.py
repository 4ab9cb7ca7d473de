"""The numbers of a multi-run report (`hicra report RUN RUN ...` or `--experiment NAME`), read with SQL.

Runs are grouped into methods: a run id `<experiment>-<method>-s<seed>` (what `hicra experiment` names its runs)
is method `<method>` with its seed; any other run is a method of its own (its seed from its frozen config). Held-out
accuracy is the `eval_summary` avg@k of one (suite, protocol) that every run was evaluated with during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from schemas.experiment import parse_run_id
from warehouse.catalog import connect
from warehouse.store import Warehouse

EXPERIMENT_RUNS_SQL = "SELECT DISTINCT run_id FROM commits WHERE starts_with(run_id, $prefix) ORDER BY run_id"
EVALUATED_SQL = "SELECT DISTINCT run_id FROM eval_summary WHERE list_contains($runs, run_id)"
EVAL_KEYS_SQL = """
SELECT suite, protocol_hash, count(DISTINCT run_id) AS runs FROM eval_summary
WHERE list_contains($runs, run_id) GROUP BY ALL ORDER BY ALL
"""
# Per (run, iteration): the training summary with the held-out accuracy of the chosen suite and protocol; the
# starting policy (iteration -1, `eval.first`) has a held-out accuracy and no training summary.
PANEL_SQL = """
WITH h AS (
    SELECT run_id, iteration, avg_at_k AS heldout_accuracy FROM eval_summary
    WHERE suite = $suite AND protocol_hash = $protocol AND list_contains($runs, run_id)
), s AS (SELECT * FROM iteration_summary WHERE list_contains($runs, run_id))
SELECT coalesce(s.run_id, h.run_id) AS run_id, coalesce(s.iteration, h.iteration) AS iteration,
       s.* EXCLUDE (run_id, iteration), h.heldout_accuracy
FROM s FULL JOIN h ON s.run_id = h.run_id AND s.iteration = h.iteration ORDER BY 1, 2
"""
# The last iteration that every run evaluated (the iteration compared as "final").
FINAL_ITERATION_SQL = """
SELECT min(last) FROM (
    SELECT run_id, max(iteration) AS last FROM eval_summary
    WHERE list_contains($runs, run_id) AND suite = $suite AND protocol_hash = $protocol GROUP BY run_id
)
"""
# Per run and evaluation problem: the accuracy (mean reward over its samples) at one iteration.
PROBLEM_SQL = """
SELECT run_id, problem_id, avg(reward) AS accuracy FROM eval_results
WHERE list_contains($runs, run_id) AND suite = $suite AND protocol_hash = $protocol AND iteration = $iteration
GROUP BY ALL ORDER BY ALL
"""
# Per (run, iteration, strategy): the share of the iteration's responses that announced the strategy (the tiny task's
# `planning.strategy`; NULL, a response that announced none: `(none)`).
STRATEGY_SQL = """
SELECT run_id, iteration, coalesce(strategy, '(none)') AS strategy,
       count(*) / sum(count(*)) OVER (PARTITION BY run_id, iteration) AS share
FROM planning WHERE list_contains($runs, run_id) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
HAS_STRATEGY_SQL = """
SELECT count(*) FROM information_schema.columns WHERE table_name = 'planning' AND column_name = 'strategy'
"""
STRATEGY_PREFIX = "strategy_share:"
"""Panel rows carry each strategy's share as column `strategy_share:<strategy>`."""
# Per run: avg@k at one iteration.
FINAL_SQL = """
SELECT run_id, avg_at_k FROM eval_summary
WHERE list_contains($runs, run_id) AND suite = $suite AND protocol_hash = $protocol AND iteration = $iteration
"""


@dataclass(frozen=True)
class RunKey:
    """Where a run sits in the comparison: its method and its seed."""

    run_id: str
    method: str
    seed: int


@dataclass(frozen=True)
class ComparisonData:
    """Everything a multi-run report shows, read from the warehouse.

    panels: one dict per (run, iteration): `iteration_summary` columns, `heldout_accuracy`, `method`, `seed` and
    the share of each strategy (`strategy_share:<strategy>`, for the `strategies` any response announced).
    final: run id -> held-out avg@k at `final_iteration`; problems: run id -> {problem id: accuracy} there.
    """

    runs: list[RunKey]
    suite: str
    protocol: str
    final_iteration: int
    panels: list[dict]
    strategies: list[str]
    final: dict[str, float]
    problems: dict[str, dict[str, float]]


def experiment_runs(root: str | Path, name: str) -> list[str]:
    """The run ids of experiment `name` in the warehouse (`<name>-<method>-s<seed>`), sorted."""
    with connect(root) as con:
        found = [row[0] for row in con.execute(EXPERIMENT_RUNS_SQL, {"prefix": f"{name}-"}).fetchall()]
    runs = [run for run in found if (parsed := parse_run_id(run)) and parsed[0] == name]
    if not runs:
        raise ValueError(f"no runs of experiment {name!r} (`{name}-<method>-s<seed>`) in the warehouse {root}")
    return runs


def evaluated(root: str | Path, run_ids: list[str]) -> list[str]:
    """The runs among `run_ids` with any held-out evaluation (`eval_summary` rows), in the given order."""
    with connect(root) as con:
        found = {row[0] for row in con.execute(EVALUATED_SQL, {"runs": run_ids}).fetchall()}
    return [run for run in run_ids if run in found]


def run_keys(root: str | Path, run_ids: list[str]) -> list[RunKey]:
    """Each run's method and seed: from an experiment's run id, else the run id and its frozen config's seed."""
    store, keys = Warehouse(root), []
    for run_id in run_ids:
        if parsed := parse_run_id(run_id):
            keys.append(RunKey(run_id, parsed[1], parsed[2]))
            continue
        frozen = store.frozen_config(run_id)
        if frozen is None:
            raise ValueError(f"run {run_id!r} is not in the warehouse {root} (see `hicra runs`)")
        keys.append(RunKey(run_id, run_id, int(yaml.safe_load(frozen[0])["run"]["seed"])))
    return keys


def _eval_key(con, runs: list[str], suite: str | None) -> tuple[str, str]:
    """The one (suite, protocol hash) every run was evaluated with (of `suite` if given), or a clear error."""
    keys = con.execute(EVAL_KEYS_SQL, {"runs": runs}).fetchall()
    common = [(s, p) for s, p, n in keys if n == len(runs) and suite in (None, s)]
    if len(common) == 1:
        return common[0]
    seen = ", ".join(f"{s} (protocol {p}, {n} of {len(runs)} runs)" for s, p, n in keys) or "none"
    if not common:
        raise ValueError(
            f"no held-out suite{f' {suite!r}' if suite else ''} evaluated in all {len(runs)} runs (eval.every in "
            f"the runs' config; `hicra eval`); evaluated: {seen}"
        )
    raise ValueError(f"the runs were evaluated on several suites or protocols: {seen}; pick one with --suite")


def comparison_data(root: str | Path, run_ids: list[str], suite: str | None = None) -> ComparisonData:
    """Read a multi-run report's numbers (see ComparisonData) for the given runs."""
    runs = run_keys(root, run_ids)
    by_id = {key.run_id: key for key in runs}
    with connect(root) as con:
        suite, protocol = _eval_key(con, run_ids, suite)
        where = {"runs": run_ids, "suite": suite, "protocol": protocol}
        result = con.execute(PANEL_SQL, where)
        names = [d[0] for d in result.description]
        panels = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
        final_iteration = con.execute(FINAL_ITERATION_SQL, where).fetchone()[0]
        at_final = {**where, "iteration": final_iteration}
        final = dict(con.execute(FINAL_SQL, at_final).fetchall())
        problems: dict[str, dict[str, float]] = {run: {} for run in run_ids}
        for run_id, problem_id, accuracy in con.execute(PROBLEM_SQL, at_final).fetchall():
            problems[run_id][problem_id] = accuracy
        shares = con.execute(STRATEGY_SQL, {"runs": run_ids}).fetchall() if _has_strategy(con) else []
    strategies = sorted({strategy for _, _, strategy, _ in shares} - {"(none)"})
    by_iteration = {(run, it): {f"{STRATEGY_PREFIX}{s}": 0.0 for s in strategies} for run, it, _, _ in shares}
    for run, it, strategy, share in shares:
        if strategy in strategies:
            by_iteration[run, it][f"{STRATEGY_PREFIX}{strategy}"] = share
    for row in panels:
        row.update(method=by_id[row["run_id"]].method, seed=by_id[row["run_id"]].seed)
        row.update(by_iteration.get((row["run_id"], row["iteration"]), {}))
    return ComparisonData(runs, suite, protocol, final_iteration, panels, strategies, final, problems)


def _has_strategy(con) -> bool:
    """Whether the warehouse's `planning` has the strategy column (warehouses written before it do not)."""
    return con.execute(HAS_STRATEGY_SQL).fetchone()[0] > 0
