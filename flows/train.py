"""The training flow `hicra`: resumable iterations of rollout -> verify -> annotate -> update.

Commit records in the warehouse, not Prefect's cache, decide what is done: rerunning the flow with the same run id
runs only the stages that have not committed.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from rich.table import Table

from schemas.config import RunConfig, load_config
from tasks.common import console, freeze_run_config
from tasks.stages import annotate_planning, prepare_policy, rollout, update, verify
from tasks.summary import summarize

SUMMARY_COLUMNS = {
    "reward": "reward",
    "accuracy": "accuracy",
    "pass_at_group": "pass@G",
    "mean_response_length": "length",
    "planning_token_share": "planning",
    "zero_adv_group_share": "zero-adv groups",
    "loss": "loss",
}


def summary_table(rows: list[dict]) -> Table:
    table = Table(title="per-iteration summary")
    table.add_column("iteration", justify="right")
    for label in SUMMARY_COLUMNS.values():
        table.add_column(label, justify="right")
    for row in rows:
        cells = [row.get(key) for key in SUMMARY_COLUMNS]
        table.add_row(str(row.get("iteration")), *("-" if c is None else f"{c:.4g}" for c in cells))
    return table


def run_iterations(config: RunConfig, force: bool = False) -> list[dict]:
    """Run (or resume) every iteration of the configured run; returns the per-iteration summaries."""
    freeze_run_config(config, force=force)
    base_model_dir = prepare_policy(config)
    summaries = []
    for iteration in range(config.run.iterations):
        console.print(f"[bold]iteration {iteration + 1}/{config.run.iterations}[/bold] (run {config.run.id})")
        rollout(config, iteration, base_model_dir)
        verify(config, iteration)
        annotate_planning(config, iteration, base_model_dir)
        update(config, iteration, base_model_dir)
        summaries.append(summarize(config, iteration))
        console.print(summary_table(summaries[-1:]))
    return summaries


def _flow_run_name() -> str:
    parameters = flow_run.parameters
    return f"{parameters.get('run_id') or 'config-run'}-train"


@flow(name="hicra", flow_run_name=_flow_run_name)
def train(
    config_path: str = "configs/tiny.yaml",
    run_id: str | None = None,
    iterations: int | None = None,
    warehouse: str | None = None,
    force: bool = False,
) -> list[dict]:
    """Train with HICRA from a YAML config; `run_id`, `iterations` and `warehouse` override the config's run section."""
    config = load_config(config_path, **{"run.id": run_id, "run.iterations": iterations, "run.warehouse": warehouse})
    return run_iterations(config, force=force)
