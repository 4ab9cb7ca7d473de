"""What runs a warehouse holds and how far each got, from commit records (`hicra runs`, `hicra status RUN`)."""

from __future__ import annotations

from schemas.config import STAGES
from warehouse.catalog import connect, query

RUNS_SQL = """
WITH last AS (
    SELECT run_id, arg_max(iteration, (iteration, {order})) AS iteration, arg_max(stage, (iteration, {order})) AS stage,
           max(committed_at) AS last_commit, count(*) AS commits
    FROM commits WHERE stage IN {stages} GROUP BY run_id
), failures AS (
    SELECT run_id, count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'interrupted') AS interrupted,
           count(*) FILTER (WHERE status = 'running') AS running
    FROM stage_attempts GROUP BY run_id
)
SELECT l.run_id, l.iteration AS last_iteration, l.stage AS last_stage, l.last_commit, l.commits,
       coalesce(f.running, 0) AS running, coalesce(f.failed, 0) AS failed, coalesce(f.interrupted, 0) AS interrupted
FROM last l LEFT JOIN failures f USING (run_id) ORDER BY l.last_commit DESC
"""

STATUS_SQL = """
SELECT iteration, {columns}
FROM commits WHERE run_id = $run AND stage IN {stages} GROUP BY iteration ORDER BY iteration
"""


def _stage_order() -> str:
    return "CASE stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES)) + " END"


def _stages() -> str:
    return "(" + ", ".join(f"'{s}'" for s in STAGES) + ")"


def runs(root: str) -> list[dict]:
    """One row per run: its last committed (iteration, stage), commit count and attempt outcomes."""
    return query(root, RUNS_SQL.format(order=_stage_order(), stages=_stages())).to_pylist()


def status(root: str, run_id: str) -> list[dict]:
    """One row per iteration of a run: when each stage committed (None if not yet)."""
    columns = ", ".join(f"max(committed_at) FILTER (WHERE stage = '{s}') AS {s}" for s in STAGES)
    with connect(root) as con:
        result = con.execute(STATUS_SQL.format(columns=columns, stages=_stages()), {"run": run_id})
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
