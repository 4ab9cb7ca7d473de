"""bench/trl_compare.py's loss check: TRL's GRPOTrainer and hicra's trainer give the same first-step loss on the
same batch (TRL's completions, rewards and advantages), with clip-higher, token-mean loss and no KL."""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="trl is a bench-only dependency: pip install -e '.[bench]'")

from bench.trl_compare import Settings, trl_first_step_check  # noqa: E402
from hicra.tiny import build_tiny_policy  # noqa: E402
from tests.conftest import TEST_MODEL  # noqa: E402


def spread_reward(texts: list[str], ids: list[list[int]], answers: list[str]) -> list[float]:
    """Rewards that differ within a group (the small test policy is rarely right), from the token ids alone."""
    return [(sum(t) % 4) / 3 for t in ids]


def test_first_step_losses_agree(tmp_path):
    model = build_tiny_policy(**TEST_MODEL, seed=0)
    # the bench's shape, smaller: 16 sequences, 2 optimizer steps of 8 in micro-batches of 4, so TRL computes old
    # log-probs and its first step takes half the rows (a loss that is not zero even when all lengths are equal)
    settings = Settings(prompts=4, group=4, max_new_tokens=24, mini_batch=8, micro_batch=4)
    check = trl_first_step_check(model, settings, spread_reward, tmp_path)
    assert check.advantage_diff < 1e-6
    assert check.old_logprob_diff is not None and check.old_logprob_diff < 1e-4
    assert abs(check.trl) > 1e-3, "a batch whose loss is zero checks nothing"
    assert check.hicra_at_trl_normaliser == pytest.approx(check.trl, rel=1e-4, abs=1e-6)
