"""The update on 2 DeepSpeed ranks (torchrun, gloo) gives the parameters of 1 rank on the same data, with
micro-batches by count and by token budget.

Tolerance: the two runs sum gradients in different orders, see `assert_same_update`; step losses agree to 1e-3
relative (measured 1.2e-4).
"""

from __future__ import annotations

import pytest

from hicra.tiny import build_tiny_policy
from hicra.trainer import UpdateConfig
from hicra.update import run_update, run_update_distributed
from tests.conftest import TEST_MODEL, assert_same_update, random_update_request


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_tokens", [None, 40])
def test_two_ranks_match_one_rank(tmp_path, micro_batch_tokens):
    model_dir = build_tiny_policy(**TEST_MODEL)
    # 12 rows: an odd share per rank and micro-batch, so ranks get unequal numbers of rows in the last step
    trainer = UpdateConfig(
        mini_batch_size=10, micro_batch_size=2 if micro_batch_tokens is None else 5, lr=1e-2, epochs=2, seed=3,
        micro_batch_tokens=micro_batch_tokens,
    )  # fmt: skip
    request = random_update_request(model_dir, tmp_path / "one", trainer)
    one = run_update(request)
    request.save_to = str(tmp_path / "two")
    two = run_update_distributed(request, 2, tmp_path / "work")
    assert [s["num_tokens"] for s in two.steps] == [s["num_tokens"] for s in one.steps]
    for a, b in zip(one.steps, two.steps, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
        assert b["clip_fraction"] == pytest.approx(a["clip_fraction"], abs=1e-6)
    assert_same_update(tmp_path / "one" / "hf", tmp_path / "two" / "hf", model_dir)
    assert all(s["grad_norm"] > 0 for s in one.steps + two.steps)
