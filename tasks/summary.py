"""Read an iteration's summary row back from the warehouse (what the CLI prints and Prefect records)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import RunConfig
from warehouse.catalog import query


@task(name="summarize", task_run_name="{config.run.id}-i{iteration}-summary", cache_policy=NO_CACHE)
def summarize(config: RunConfig, iteration: int) -> dict:
    """The `iteration_summary` row of one iteration, as a dict, with `eval_accuracy`: the mean avg@k of the
    checkpoint's evaluations (held-out suites), None when it was not evaluated."""
    where = f"run_id = '{config.run.id}' AND iteration = {int(iteration)}"
    rows = query(
        config.run.warehouse,
        f"SELECT *, (SELECT avg(avg_at_k) FROM eval_summary WHERE {where}) AS eval_accuracy "
        f"FROM iteration_summary WHERE {where}",
    ).to_pylist()
    return rows[0] if rows else {}
