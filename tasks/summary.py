"""Read an iteration's summary row back from the warehouse (what the CLI prints and Prefect records)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import RunConfig
from warehouse.catalog import query


@task(name="summarize", task_run_name="{config.run.id}-i{iteration}-summary", cache_policy=NO_CACHE)
def summarize(config: RunConfig, iteration: int) -> dict:
    """The `iteration_summary` row of one iteration, as a dict, with the semantic entropy of each suite evaluated on
    its checkpoint (`semantic_entropy_eval_<suite>`, from `eval_summary`; the last protocol's where there are several).
    """
    where = f"WHERE run_id = '{config.run.id}' AND iteration = {int(iteration)}"
    rows = query(config.run.warehouse, f"SELECT * FROM iteration_summary {where}").to_pylist()
    if not rows:
        return {}
    evals = query(
        config.run.warehouse, f"SELECT suite, semantic_entropy FROM eval_summary {where} ORDER BY protocol_hash"
    ).to_pylist()
    return rows[0] | {f"semantic_entropy_eval_{e['suite']}": e["semantic_entropy"] for e in evals}
