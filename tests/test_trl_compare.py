"""bench/trl_compare.py's loss check: TRL's GRPOTrainer and hicra's trainer give the same first-step loss on the
same batch (TRL's completions, rewards and advantages), with clip-higher, token-mean loss and no KL."""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="trl is a bench-only dependency: pip install -e '.[bench]'")
pytest.importorskip("datasets", reason="TRL's trainer takes a datasets.Dataset: pip install -e '.[hub]'")

from bench.trl_compare import Settings, trl_first_step_check  # noqa: E402
from hicra.tiny import build_tiny_policy  # noqa: E402
from tests.conftest import TEST_MODEL  # noqa: E402


def spread_reward(texts: list[str], ids: list[list[int]], answers: list[str]) -> list[float]:
    """Rewards that differ within a group (the small test policy is rarely right), from the token ids alone."""
    return [(sum(t) % 4) / 3 for t in ids]


def test_first_step_losses_agree(tmp_path):
    model = build_tiny_policy(**TEST_MODEL, seed=0)
    # 16 sequences, one optimizer step of 16 in 2 micro-batches: TRL's "dapo" normaliser is then the step's tokens
    settings = Settings(prompts=4, group=4, max_new_tokens=24, mini_batch=16, micro_batch=8)
    check = trl_first_step_check(model, settings, spread_reward, tmp_path)
    assert check.advantage_diff < 1e-6
    assert check.step_tokens == check.trl_normaliser
    assert abs(check.trl) > 1e-4, "a batch whose loss is zero checks nothing"
    assert check.hicra == pytest.approx(check.trl, rel=1e-4, abs=1e-6)
