"""The flow `hicra-stage`: one stage of one iteration of a run, from the run's frozen config in the warehouse.

Its deployments put stages on other work pools (rollout and update on GPU machines, verification on CPU machines);
the training flow calls them with `run_deployment` when `orchestration.stage_deployments` names them. Every worker
must see the warehouse (shared storage): the stage reads its inputs there and commits its outputs there, exactly as
it does in the training flow's process.
"""

from __future__ import annotations

from typing import Any

import yaml
from prefect import flow

from schemas.config import RunConfig, Stage
from tasks.evaluate import evaluate_iteration
from tasks.stages import annotate_planning, prepare_policy, rollout, update, verify
from warehouse.store import Warehouse

STAGE_TASKS = {"rollout": rollout, "verify": verify, "annotate": annotate_planning, "update": update}  # in STAGES order


def run_stage_in_process(config: RunConfig, stage: Stage, iteration: int, base_model_dir: str) -> None:
    """Run one stage's task in this process, with the config's stage timeout as a backstop."""
    options = {"timeout_seconds": config.orchestration.stage_timeout_s}
    if stage == "eval":
        evaluate_iteration.with_options(**options)(config, iteration, base_model_dir)
    else:
        STAGE_TASKS[stage].with_options(**options)(config, iteration, base_model_dir)


def frozen_run_config(warehouse: str, run_id: str, **sections: dict[str, Any] | None) -> RunConfig:
    """The config a run was started with (`runs/<run>/config.yaml`), stored in `warehouse` (its root as this machine
    sees it); `sections` replace whole sections that do not change results (the caller's `eval`)."""
    store = Warehouse(warehouse)
    frozen = store.frozen_config(run_id)
    if frozen is None:
        raise FileNotFoundError(f"run {run_id!r} has no frozen config in {store.url} (is this the run's warehouse?)")
    raw = yaml.safe_load(frozen[0])
    raw["run"]["warehouse"] = store.url
    raw.update({name: value for name, value in sections.items() if value is not None})
    return RunConfig.model_validate(raw)


@flow(name="hicra-stage", flow_run_name="{run_id}-i{iteration}-{stage}")
def one_stage(warehouse: str, run_id: str, iteration: int, stage: Stage, eval: dict[str, Any] | None = None) -> None:
    """Run one stage (rollout, verify, annotate, update, eval) of one iteration of a run whose config is frozen in
    `warehouse`; a committed stage is skipped. `eval` is the caller's eval section (it never changes results)."""
    config = frozen_run_config(warehouse, run_id, eval=eval)
    run_stage_in_process(config, stage, iteration, prepare_policy(config))
