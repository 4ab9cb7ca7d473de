"""The experiment flow `hicra-experiment`: a grid of methods x seeds, each cell an ordinary training run.

The runs execute one after another in this process, seed by seed, as subflows of the training flow `hicra`
(exactly what `hicra train --config BASE --set ...` would run). A run whose last iteration (and its evaluation) is
committed is skipped; any other resumes from its commits, so rerunning the experiment after a kill continues it.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.train import train
from schemas.config import RunConfig
from schemas.experiment import load_experiment
from tasks.common import console, freeze_run_config, open_warehouse
from tasks.evaluate import pending_eval_stages


def run_is_done(config: RunConfig) -> bool:
    """Whether the run's last iteration committed its update and every evaluation its config asks for there."""
    last = config.run.iterations - 1
    if not open_warehouse(config).is_committed(config.run.id, last, "update"):
        return False
    return not config.eval.due(last) or not pending_eval_stages(config, last)


def _flow_run_name() -> str:
    return f"experiment-{flow_run.parameters.get('config_path', '')}".replace("/", "-")


@flow(name="hicra-experiment", flow_run_name=_flow_run_name)
def experiment(
    config_path: str = "configs/experiment.yaml", force: bool = False, warehouse: str | None = None
) -> list[str]:
    """Run (or resume) every run of the experiment (in `warehouse` if given, else the file's or the base config's);
    returns their run ids in the order they ran.

    `force` resumes runs whose config changed since they started (recorded in the warehouse), as `hicra train
    --force`; without it such a run fails with the fields that changed.
    """
    exp = load_experiment(config_path, warehouse)
    total, failed = len(exp.runs), {}
    for index, ((method, seed), config) in enumerate(exp.runs.items(), start=1):
        console.print(f"[bold]experiment {exp.config.name}: run {index}/{total}[/bold] {config.run.id}")
        if run_is_done(config):
            freeze_run_config(config, force=force)  # a finished run with another config than asked: say so
            console.print(f"  [dim]{config.run.id}: all {config.run.iterations} iterations committed, skipped[/dim]")
            continue
        section = exp.run_section(method, seed)
        try:
            train(
                config_path=str(exp.base_path), run_id=section["run.id"], iterations=section["run.iterations"],
                warehouse=section["run.warehouse"], force=force, overrides=exp.overrides(method, seed),
            )  # fmt: skip
        except Exception as err:  # one failing cell does not stop the grid: the others run, then this is reported
            console.print(f"[bold red]{config.run.id} failed:[/bold red] {err}")
            failed[config.run.id] = err
    if failed:
        reasons = "; ".join(f"{run}: {err}" for run, err in failed.items())
        raise ExperimentIncomplete(f"{len(failed)} of {total} runs failed (rerun to resume them): {reasons}")
    return [config.run.id for config in exp.runs.values()]


class ExperimentIncomplete(RuntimeError):
    """Runs of the experiment failed; the others ran to the end."""
