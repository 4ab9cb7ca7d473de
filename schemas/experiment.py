"""The experiment configuration (`hicra experiment --config ...`): a grid of methods x seeds over one base run config.

Each cell is an ordinary run named `<name>-<method>-s<seed>`: the base config, then the experiment's `overrides`,
then the method's, then the run section and `data.order_key` the experiment sets (so that every method of a seed
draws the same prompts). Errors name the file and the field (`methods.hicra: algorithm.alpha: ...`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.config import ConfigError, RunConfig, Section, load_config

SET_BY_EXPERIMENT = ("run.id", "run.seed", "run.iterations", "run.warehouse", "data.order_key")
"""Run config fields that the experiment sets for each run: not allowed among its overrides."""
RUN_ID = re.compile(r"^(?P<experiment>.+)-(?P<method>[a-z0-9_]+)-s(?P<seed>[0-9]+)$")
"""A run id of an experiment: `<experiment>-<method>-s<seed>` (method names have no dashes, so this parses)."""


def _check_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Dotted run config fields only (`algorithm.advantage`, as `hicra train --set`), none the experiment sets."""
    for key, value in overrides.items():
        if key in SET_BY_EXPERIMENT:
            raise ValueError(f"{where}: {key} is set by the experiment for each run (see name, seeds, iterations)")
        if isinstance(value, dict):
            raise ValueError(
                f"{where}: {key}: give each field by its dotted name (`{key}.FIELD: value`), not a mapping"
            )
    return overrides


class ExperimentConfig(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Names the experiment: its runs are `<name>-<method>-s<seed>`, and it seeds their prompt order.",
    )
    base: str = Field(description="The base run config (YAML), relative to the experiment file.")
    methods: dict[str, dict[str, Any]] = Field(
        min_length=1,
        description="Method name (lower-case letters, digits, `_`) -> its run config overrides, by dotted field name "
        "(`algorithm.advantage: grpo`).",
    )
    seeds: list[int] = Field(min_length=1, description="Seeds (run.seed): one run per method and seed.")
    iterations: int | None = Field(None, ge=1, description="Iterations of every run; default: the base config's.")
    warehouse: str | None = Field(None, description="Warehouse root of every run; default: the base config's.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of every run (dotted field names), under the methods' own."
    )
    baseline: str = Field("grpo", description="The method that `hicra report --experiment` tests the others against.")

    @field_validator("methods")
    @classmethod
    def _method_names(cls, methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for method, overrides in methods.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", method):
                raise ValueError(f"method name {method!r}: use lower-case letters, digits and `_` only")
            _check_overrides(overrides, method)
        return methods

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) < len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct and >= 0, got {seeds}")
        return seeds

    @field_validator("overrides")
    @classmethod
    def _common_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides(overrides, "overrides")

    @model_validator(mode="after")
    def _baseline_is_a_method(self) -> ExperimentConfig:
        if self.baseline not in self.methods:
            raise ValueError(f"baseline {self.baseline!r} is not one of the methods {sorted(self.methods)}")
        return self

    def run_id(self, method: str, seed: int) -> str:
        return f"{self.name}-{method}-s{seed}"


def parse_run_id(run_id: str) -> tuple[str, str, int] | None:
    """(experiment, method, seed) of an experiment's run id, or None for a run id of another form."""
    match = RUN_ID.match(run_id)
    return (match["experiment"], match["method"], int(match["seed"])) if match else None


class Experiment:
    """A validated experiment: its config and every run's config, in the order they run (seed-major)."""

    def __init__(self, path: str | Path, config: ExperimentConfig) -> None:
        self.path, self.config = Path(path), config
        self.base_path = self.path.parent / config.base
        self.runs: dict[tuple[str, int], RunConfig] = {}
        for seed in config.seeds:
            for method in config.methods:
                self.runs[method, seed] = self._run_config(method, seed)

    def overrides(self, method: str, seed: int) -> dict[str, Any]:
        """The overrides of one run over the base config, but its run id, iterations and warehouse (`run_section`):
        the experiment's, the method's, then the seed and the prompt order key."""
        return {
            **self.config.overrides,
            **self.config.methods[method],
            "run.seed": seed,
            "data.order_key": self.config.name,
        }

    def run_section(self, method: str, seed: int) -> dict[str, Any]:
        """The run's id, and the iterations and warehouse when the experiment sets them (None: the base's)."""
        config = self.config
        return {
            "run.id": config.run_id(method, seed),
            "run.iterations": config.iterations,
            "run.warehouse": config.warehouse,
        }

    def _run_config(self, method: str, seed: int) -> RunConfig:
        try:
            config = load_config(self.base_path, **self.overrides(method, seed), **self.run_section(method, seed))
        except ConfigError as err:
            raise ConfigError(f"{self.path}: methods.{method} (over base {self.config.base}): {err}") from err
        if not config.eval.due(config.run.iterations - 1):
            raise ConfigError(
                f"{self.path}: the runs must evaluate their last iteration for the report's final accuracy: set "
                f"eval.every (in overrides or the base) to a divisor of the iterations ({config.run.iterations})"
            )
        return config


def load_experiment(path: str | Path, warehouse: str | None = None) -> Experiment:
    """Read and validate an experiment file, and every run config it makes (so a bad override fails before any run);
    `warehouse`, if given, replaces the file's (`hicra experiment --warehouse`, $HICRA_WAREHOUSE)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if warehouse is not None and isinstance(raw, dict):
        raw["warehouse"] = warehouse
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from err
    return Experiment(path, config)
