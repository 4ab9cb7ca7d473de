"""The evaluation flow `hicra-eval`: checkpoints on benchmark suites, one commit per (checkpoint, suite, protocol).

With a model folder, or a run and an iteration (or `latest`), it evaluates that checkpoint; with neither, every
committed checkpoint (of the run, or of all runs). What is committed is never evaluated again, so the scheduled
deployment evaluates exactly the new checkpoints.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.runtime import flow_run

from schemas.config import EvalProtocol, EvalSection, RunConfig
from tasks.common import validate_registered_names
from tasks.evaluate import eval_summary, evaluate_checkpoint, find_checkpoints, load_suites


def _flow_run_name() -> str:
    parameters = flow_run.parameters
    target = parameters.get("model_dir") or parameters.get("run_id") or "all"
    return f"eval-{target}"


@flow(name="hicra-eval", flow_run_name=_flow_run_name)
def evaluate(
    warehouse: str = "warehouse-data",
    run_id: str | None = None,
    iteration: int | Literal["latest"] | None = None,
    model_dir: str | None = None,
    suites: list[str] | None = None,
    limit: int | None = None,
    protocol: EvalProtocol | None = None,
    fields: dict[str, str] | None = None,
    batch_size: int = 64,
    verifier_workers: int = 2,
    verifier_timeout_s: float = 5.0,
) -> list[dict]:
    """Evaluate checkpoints on suites (default: the tiny task's eval split); returns their `eval_summary` rows.

    `limit` keeps the first N problems of each suite; `fields` names a problem file's columns (id, problem, answer,
    alternatives); `protocol` overrides the paper's sampling protocol.
    """
    protocol = protocol or EvalProtocol()
    validate_registered_names(RunConfig(eval=EvalSection(protocol=protocol)))
    checkpoints = find_checkpoints(warehouse, run_id, iteration, model_dir)
    loaded = load_suites(suites or EvalSection().suites, limit, fields)
    keys = []
    for checkpoint in checkpoints:
        keys += evaluate_checkpoint(
            warehouse, checkpoint, loaded, protocol, batch_size, verifier_workers, verifier_timeout_s
        )
    return eval_summary(warehouse, keys)
