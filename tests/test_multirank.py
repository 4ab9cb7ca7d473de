"""The update on 2 DeepSpeed ranks (torchrun, gloo) gives the parameters of 1 rank on the same data, with
micro-batches by count and by token budget, on one node and on 2 nodes of 1 rank (torchrun's multi-node launch).

Tolerance: the two runs sum gradients in different orders, see `assert_same_update`; step losses agree to 1e-3
relative (measured 1.2e-4).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from hicra.tiny import build_tiny_policy
from hicra.trainer import UpdateConfig
from hicra.update import REQUEST_FILE, NodeLaunch, run_update, run_update_distributed
from tests.conftest import (
    ROOT,
    TEST_MODEL,
    assert_same_update,
    child_env,
    free_port,
    random_update_request,
    small_config,
)
from warehouse.store import Warehouse


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


@pytest.mark.slow
def test_two_nodes_match_one_rank(tmp_path):
    """2 nodes of 1 rank on this machine: node 1 is `hicra update-node` (a follower watching the shared folder), node
    0 puts the request there and serves torchrun's static rendezvous on 127.0.0.1; the result equals 1 rank's."""
    model_dir = build_tiny_policy(**TEST_MODEL)
    trainer = UpdateConfig(mini_batch_size=10, micro_batch_size=2, lr=1e-2, epochs=2, seed=3)
    request = random_update_request(model_dir, tmp_path / "one", trainer)
    one = run_update(request)
    shared, master = tmp_path / "shared", f"127.0.0.1:{free_port()}"
    config = small_config(tmp_path / "wh", trainer={"nodes": {"count": 2, "master": master, "shared_dir": str(shared)}})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli", "update-node", "--config", str(tmp_path / "run.yaml"), "--node-rank", "1",
         "--once"],
        env=child_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        workdir = shared / "t" / "iteration=0" / "update-test"
        request.save_to = str(workdir / "checkpoint")
        two = run_update_distributed(request, 1, workdir, NodeLaunch(2, 0, master))
        output, _ = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert follower.returncode == 0, output
    assert "joining the update" in output and "failed" not in output, output
    assert [s["num_tokens"] for s in two.steps] == [s["num_tokens"] for s in one.steps]
    for a, b in zip(one.steps, two.steps, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
    assert_same_update(tmp_path / "one" / "hf", workdir / "checkpoint" / "hf", model_dir)


@pytest.mark.slow
def test_training_flow_updates_on_two_nodes(tmp_path, prefect_server):
    """The update stage of `hicra train` on 2 nodes: the follower finds the request in the warehouse's `_staging`
    folder (the default shared folder), the iteration commits, and the working folder is gone afterwards."""
    from flows.train import train

    master = f"127.0.0.1:{free_port()}"
    config = small_config(tmp_path / "wh", iterations=1, trainer={"nodes": {"count": 2, "master": master}})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli", "update-node", "--config", str(tmp_path / "run.yaml"), "--once"],
        env=child_env(PYTHONPATH=str(ROOT), SLURM_NODEID="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        summaries = train(config_path=str(tmp_path / "run.yaml"))
        output, _ = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert follower.returncode == 0 and "joining the update" in output and "failed" not in output, output
    assert summaries[0]["optimizer_steps"] >= 1
    assert Warehouse(tmp_path / "wh").is_committed("t", 0, "update")
    assert not list((tmp_path / "wh" / "_staging").rglob(REQUEST_FILE))
