"""The training flow `hicra`: resumable iterations of rollout -> verify -> annotate -> update.

Commit records in the warehouse, not Prefect's cache, decide what is done: rerunning the flow with the same run id
runs only the stages that have not committed.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from rich.table import Table

from flows.report import inline_markdown
from schemas.config import RunConfig, load_config
from tasks.common import console, freeze_run_config
from tasks.evaluate import evaluate_iteration
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


def _artifact_key(run_id: str, what: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{what}".lower())


def report_iteration(config: RunConfig, summaries: list[dict]) -> None:
    """Print the iteration's summary, publish it as Prefect artifacts, and warn loudly when rewards carry no signal."""
    latest = summaries[-1]
    console.print(summary_table([latest]))
    create_table_artifact(
        table=summaries, key=_artifact_key(config.run.id, "summary"), description=f"Run {config.run.id}: per iteration"
    )
    create_markdown_artifact(
        markdown=inline_markdown(config.run.id, summaries), key=_artifact_key(config.run.id, "plots"),
        description=f"Run {config.run.id}: plots of the per-iteration summary (also `hicra report {config.run.id}`)",
    )  # fmt: skip
    problems = []
    if (latest.get("not_ok_share") or 0) > 0.5:
        problems.append(f"{latest['not_ok_share']:.0%} of the rollouts were not verified `ok` (see `scores.status`)")
    if latest.get("zero_adv_group_share") == 1:
        problems.append("every group has zero advantage: equal rewards within each group, so no gradient signal")
    if problems:
        text = f"iteration {latest['iteration']} of run {config.run.id}: " + "; ".join(problems)
        get_run_logger().warning(text)
        console.print(f"[bold red]warning:[/bold red] {text}")
        create_markdown_artifact(markdown=f"**Warning**: {text}", key=_artifact_key(config.run.id, "warning"))


def run_iterations(config: RunConfig, force: bool = False) -> list[dict]:
    """Run (or resume) every iteration of the configured run; returns the per-iteration summaries."""
    freeze_run_config(config, force=force)
    base_model_dir = prepare_policy(config)
    progress = create_progress_artifact(progress=0.0, key=_artifact_key(config.run.id, "progress"))
    summaries = []
    for iteration in range(config.run.iterations):
        console.print(f"[bold]iteration {iteration + 1}/{config.run.iterations}[/bold] (run {config.run.id})")
        rollout(config, iteration, base_model_dir)
        verify(config, iteration, base_model_dir)
        annotate_planning(config, iteration, base_model_dir)
        update(config, iteration, base_model_dir)
        if config.eval.every and iteration % config.eval.every == config.eval.every - 1:
            evaluate_iteration(config, iteration)
        summaries.append(summarize(config, iteration))
        report_iteration(config, summaries)
        update_progress_artifact(progress, progress=100.0 * (iteration + 1) / config.run.iterations)
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
    overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """Train with HICRA from a YAML config; `run_id`, `iterations` and `warehouse` override the config's run section,
    and `overrides` any field by its dotted name (`{"algorithm.advantage": "grpo"}`)."""
    config = load_config(
        config_path,
        **(overrides or {}),
        **{"run.id": run_id, "run.iterations": iterations, "run.warehouse": warehouse},
    )
    return run_iterations(config, force=force)
