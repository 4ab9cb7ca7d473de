"""Reward shaping: correctness, format reward and DAPO's overlong penalty, by hand."""

from __future__ import annotations

import pytest

from hicra.rewards import RewardConfig, overlong_penalty, shaped_reward


def test_overlong_penalty_is_linear_in_the_buffer():
    assert overlong_penalty(100, 128, 0, 1.0) == 0.0  # off
    assert overlong_penalty(96, 128, 32, 1.0) == 0.0  # before the buffer
    assert overlong_penalty(112, 128, 32, 1.0) == pytest.approx(-0.5)
    assert overlong_penalty(128, 128, 32, 2.0) == pytest.approx(-2.0)
    assert overlong_penalty(500, 128, 32, 1.0) == pytest.approx(-1.0)


def test_shaped_reward_adds_its_parts():
    plain = RewardConfig()
    assert shaped_reward(True, True, 10, 128, plain) == 1.0
    assert shaped_reward(False, True, 10, 128, plain) == 0.0
    shaped = RewardConfig(correct=1.0, format_reward=0.1, overlong_buffer=28, overlong_penalty=1.0)
    assert shaped_reward(False, True, 10, 128, shaped) == pytest.approx(0.1)
    assert shaped_reward(True, True, 114, 128, shaped) == pytest.approx(1.1 - 0.5)
    assert shaped_reward(False, False, 128, 128, shaped) == pytest.approx(-1.0)
