"""The training flow `hicra`: resumable iterations of rollout -> verify -> annotate -> update.

Commit records in the warehouse, not Prefect's cache, decide what is done: rerunning the flow with the same run id
runs only the stages that have not committed.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.stage import run_stage_in_process
from schemas.config import BASE_ITERATION, STAGES, RunConfig, Stage, load_config
from tasks.common import console, freeze_run_config, open_warehouse, validate_registered_names
from tasks.evaluate import pending_eval_stages
from tasks.resident import resident_session
from tasks.stages import prepare_policy
from tasks.summary import iteration_line, summarize
from warehouse.report import inline_markdown


def _artifact_key(run_id: str, what: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{what}".lower())


def report_iteration(config: RunConfig, summaries: list[dict], seconds: float, last: bool) -> None:
    """Print the iteration's summary line, publish the summaries as a Prefect table artifact (and after the `last`
    iteration their plots: rendering them takes most of a second, `hicra report` draws them any time), and warn
    loudly when rewards carry no signal; `seconds`: the iteration's wall time."""
    latest = summaries[-1]
    console.print(iteration_line(latest, seconds), soft_wrap=True)
    create_table_artifact(
        table=summaries, key=_artifact_key(config.run.id, "summary"), description=f"Run {config.run.id}: per iteration"
    )
    if last:
        create_markdown_artifact(
            markdown=inline_markdown(config.run.id, summaries), key=_artifact_key(config.run.id, "plots"),
            description=f"Run {config.run.id}: plots of the per-iteration summary (`hicra report {config.run.id}`)",
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


class StageNotCommitted(RuntimeError):
    """A stage that ran as a deployment's flow run ended without committing."""


def run_stage_as_deployment(config: RunConfig, stage: Stage, iteration: int, deployment: str) -> None:
    """Run one stage as a flow run of a `hicra-stage` deployment (on its work pool), wait, and check it committed."""
    from prefect.deployments import run_deployment

    orchestration, run_id = config.orchestration, config.run.id
    warehouse = orchestration.stage_warehouse or open_warehouse(config).url
    parameters = {"warehouse": warehouse, "run_id": run_id, "iteration": iteration, "stage": stage}
    if stage == "eval":
        parameters["eval"] = config.eval.model_dump(mode="json")
    console.print(f"  iteration {iteration} {stage}: running as deployment {deployment}")
    flow_run = run_deployment(
        deployment, parameters=parameters, timeout=orchestration.stage_timeout_s, poll_interval=2,
        flow_run_name=f"{run_id}-i{iteration}-{stage}",
    )  # fmt: skip
    if stage == "eval":
        committed = not pending_eval_stages(config, iteration)
    else:
        committed = open_warehouse(config).is_committed(run_id, iteration, stage)
    if not committed:
        state = flow_run.state
        raise StageNotCommitted(
            f"stage {stage} of run {run_id!r} iteration {iteration} did not commit: deployment {deployment!r}, "
            f"flow run {flow_run.name!r} ({flow_run.id}) on work pool {flow_run.work_pool_name!r} is "
            f"{state.type.value if state else 'unknown'}{f' ({state.message})' if state and state.message else ''}"
        )


def run_stage_where_configured(config: RunConfig, stage: Stage, iteration: int, base_model_dir: str) -> None:
    """One stage of one iteration: as its deployment's flow run if `orchestration.stage_deployments` names one,
    else in this process."""
    deployment = config.orchestration.stage_deployments.get(stage)
    if deployment:
        run_stage_as_deployment(config, stage, iteration, deployment)
    else:
        run_stage_in_process(config, stage, iteration, base_model_dir)


def run_iterations(config: RunConfig, force: bool = False) -> list[dict]:
    """Run (or resume) every iteration of the configured run; returns the per-iteration summaries, after the
    starting policy's (iteration -1: its held-out accuracy only) when `eval.first` evaluates it.

    The run's lock is held throughout: a second start of the same run id while this one lives is refused at once
    (a killed run frees it, so its resume is not).
    """
    busy = f"run {config.run.id!r} is already running; wait for it to end or stop it"
    with open_warehouse(config).lock(config.run.id, what=busy):
        validate_registered_names(config)
        freeze_run_config(config, force=force)
        base_model_dir = prepare_policy(config)
        progress = create_progress_artifact(progress=0.0, key=_artifact_key(config.run.id, "progress"))
        start = []  # the starting policy's evaluation (eval.first): the baseline row of the summary table
        if config.eval.first and config.eval.every:
            started = time.perf_counter()
            console.print(f"[bold]starting policy[/bold] (run {config.run.id}): held-out evaluation")
            run_stage_where_configured(config, "eval", BASE_ITERATION, base_model_dir)
            start = [summarize(config, BASE_ITERATION)]
            console.print(iteration_line(start[0], time.perf_counter() - started), soft_wrap=True)
        summaries = []
        with resident_session(config):  # the policy stays loaded across the stages run here (trainer.resident)
            for iteration in range(config.run.iterations):
                started = time.perf_counter()
                console.print(f"[bold]iteration {iteration + 1}/{config.run.iterations}[/bold] (run {config.run.id})")
                for stage in STAGES:
                    run_stage_where_configured(config, stage, iteration, base_model_dir)
                if config.eval.due(iteration):
                    run_stage_where_configured(config, "eval", iteration, base_model_dir)
                summaries.append(summarize(config, iteration))
                last = iteration == config.run.iterations - 1
                report_iteration(config, summaries, time.perf_counter() - started, last)
                update_progress_artifact(progress, progress=100.0 * (iteration + 1) / config.run.iterations)
    return start + summaries


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
