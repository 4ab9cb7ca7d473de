"""Reward shaping on top of the verifier's verdict: correctness, an optional format reward, DAPO's overlong penalty.

Pure functions of one response's verdict and length, so that the reward of every rollout can be recomputed from
the `scores` and `rollouts` tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardConfig:
    """The fields of `schemas.config.RewardSection`, built by `schemas.config.from_sections` (tests/test_config.py
    keeps the defaults equal)."""

    correct: float = 1.0
    format_reward: float = 0.0
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0


def overlong_penalty(length: int, max_length: int, buffer: int, factor: float) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13): 0 up to max_length - buffer, then falling linearly
    to -factor at max_length (and -factor beyond). 0 when buffer is 0."""
    if buffer <= 0 or length <= max_length - buffer:
        return 0.0
    return -factor * min(1.0, (length - (max_length - buffer)) / buffer)


def shaped_reward(correct: bool, answered: bool, length: int, max_length: int, config: RewardConfig) -> float:
    """correct * `correct` + answered * `format_reward` + the overlong penalty; `answered` = an answer was extracted."""
    reward = config.correct * correct + config.format_reward * answered
    return reward + overlong_penalty(length, max_length, config.overlong_buffer, config.overlong_penalty)
