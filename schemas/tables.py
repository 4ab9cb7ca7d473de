"""One pydantic row model per warehouse table; each table's Arrow schema is derived from its model, here only.

Per-token columns (token ids, masks, advantages) are lists aligned with `rollouts.response_token_ids`.
Column types that Python cannot say (int32, float32, int8 lists) are given as `pa.DataType` in `Annotated`.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1

Int32 = Annotated[int, pa.int32()]
Int8List = Annotated[list[int], pa.list_(pa.int8())]
Int32List = Annotated[list[int], pa.list_(pa.int32())]
Float32List = Annotated[list[float], pa.list_(pa.float32())]
SpanList = Annotated[
    list[dict], pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("gram", pa.string())]))
]


class Row(BaseModel):
    """Base of every table row: keyed by run and iteration, no extra fields."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    iteration: Int32


class RolloutRow(Row):
    """One sampled response to one prompt (table `rollouts`)."""

    rollout_id: str
    prompt_id: str
    group_index: Int32
    sample_index: Int32
    prompt: str
    reference: str
    prompt_token_ids: Int32List
    response: str
    response_token_ids: Int32List
    sampler_logprobs: Float32List
    finish_reason: str
    response_length: Int32
    seed: int
    policy_iteration: Int32


class ScoreRow(Row):
    """The verifier's verdict on one rollout (table `scores`)."""

    rollout_id: str
    reward: float
    correct: bool
    status: str
    extracted: str | None
    detail: str | None
    verify_seconds: float


class PlanningRow(Row):
    """Planning-token annotation of one rollout (table `planning`)."""

    rollout_id: str
    planning_mask: Int8List
    spans: SpanList
    num_planning_tokens: Int32
    grams_version: str
    strategy: str | None  # the method the response announced (hicra.tiny.strategy_of); None off the tiny task


class AdvantageRow(Row):
    """Exactly what the update used for one rollout (table `advantages`)."""

    rollout_id: str
    in_update: bool
    sequence_advantage: float
    advantage: Float32List
    amplified_mask: Int8List
    old_logprob: Float32List
    entropy: Float32List


class TrainStepRow(Row):
    """One optimizer step of the update stage (table `train_steps`)."""

    step: Int32
    epoch: Int32
    loss: float
    pg_loss: float
    clip_fraction: float
    approx_kl: float
    ref_kl: float | None
    entropy: float
    grad_norm: float
    lr: float
    num_sequences: Int32
    num_tokens: Int32


class CheckpointRow(Row):
    """A policy checkpoint written by an update (table `checkpoints`); paths are relative to the warehouse root."""

    hf_path: str
    deepspeed_path: str
    global_step: Int32
    created_at: dt.datetime


class EvalResultRow(Row):
    """One sampled answer of a checkpoint to one benchmark problem (table `eval_results`).

    `iteration` is -1 for a model folder outside any run. `protocol_hash` names everything that decides the suite's
    results (protocol, problem slice); one (checkpoint, suite, protocol) commits as stage `eval-<suite>-<hash>`.
    """

    checkpoint_id: str
    checkpoint_path: str
    suite: str
    protocol_hash: str
    problem_id: str
    sample_index: Int32
    reference: str
    response: str
    extracted: str | None
    status: str
    reward: float
    response_length: Int32
    finish_reason: str
    seed: int


class MetricRow(Row):
    """One named per-iteration metric computed by a stage (table `metrics`; `iteration_summary` pivots it)."""

    stage: str
    name: str
    value: float


class StrategicGramRow(Row):
    """One gram of a mined Strategic Gram set (table `strategic_grams`): run_id "sgs", iteration 0, one commit (stage
    = the set's version) per set, see `tasks.mining`. Each row repeats its set's parameters (JSON) and corpus."""

    version: str
    gram: str
    cluster: Int32
    cluster_df: Int32
    doc_freq: Int32
    params: str
    corpus: str
    corpus_size: Int32
    model: str
    created_at: dt.datetime


class JudgmentRow(Row):
    """An LLM judge's error type for one failed rollout (table `judgments`; `hicra judge`, see `hicra.judge`).

    One commit per (run, iteration, judge) as stage `judge-<judge_id>`; `judge_id` hashes the judge model, the prompt
    version, the constraint mode and the sample size, so re-judging with the same judge does nothing and another judge
    adds its own rows. `category` is one of `hicra.judge.CATEGORIES` or `unparseable`; `raw` is the judge's answer."""

    rollout_id: str
    judge_id: str
    model: str
    prompt_version: str
    category: str
    is_planning: bool
    raw: str
    constrained: bool
    judged_at: dt.datetime


TABLES: dict[str, type[Row]] = {
    "rollouts": RolloutRow,
    "scores": ScoreRow,
    "planning": PlanningRow,
    "advantages": AdvantageRow,
    "train_steps": TrainStepRow,
    "checkpoints": CheckpointRow,
    "metrics": MetricRow,
    "strategic_grams": StrategicGramRow,
    "eval_results": EvalResultRow,
    "judgments": JudgmentRow,
}

_PLAIN: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_type(annotation: Any, metadata: list[Any]) -> tuple[pa.DataType, bool]:
    """Arrow type and nullability of one field, from its annotation (and `Annotated` metadata)."""
    for item in metadata:
        if isinstance(item, pa.DataType):
            return item, False
    nullable = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable, annotation = True, args[0]
    if typing.get_origin(annotation) is Annotated:
        arrow, _ = _arrow_type(typing.get_args(annotation)[0], list(annotation.__metadata__))
        return arrow, nullable
    if typing.get_origin(annotation) is list:
        inner, _ = _arrow_type(typing.get_args(annotation)[0], [])
        return pa.list_(inner), nullable
    return _PLAIN[annotation], nullable


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a row model: one field per model field, in order, nullable where the model allows None."""
    fields = []
    for name, info in model.model_fields.items():
        arrow, nullable = _arrow_type(info.annotation, info.metadata)
        fields.append(pa.field(name, arrow, nullable=nullable))
    return pa.schema(fields)


def to_table(model: type[Row], rows: list[Row]) -> pa.Table:
    """Rows (validated pydantic objects) as an Arrow table with the model's schema."""
    for row in rows:
        if not isinstance(row, model):
            raise TypeError(f"expected {model.__name__}, got {type(row).__name__}")
    return pa.Table.from_pylist([row.model_dump() for row in rows], schema=arrow_schema(model))
