"""Shared fixtures: offline Prefect settings, a session cache for tiny policies, a small run config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HICRA_CACHE", str(Path.home() / ".cache" / "hicra-tests"))

ROOT = Path(__file__).resolve().parents[1]

# A policy small enough to warm up in seconds; rarely right, so `small_config` adds length shaping for reward variance.
TEST_MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 256,
    "warmup_steps": 150,
    "batch_size": 32,
    "lr": 3e-3,
}  # fmt: skip  (every warm-up setting pinned: the demo defaults may change)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a test's Prefect server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess of a test: without the torch.distributed rendezvous variables that an
    in-process update earlier in the session set (its port is still bound here), plus `extra`."""
    rendezvous = ("MASTER_PORT", "MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    return {**{k: v for k, v in os.environ.items() if k not in rendezvous}, **extra}


def pytest_configure(config: pytest.Config) -> None:
    """Build the test policy once, in the main process, before pytest-xdist's workers start: on a cold cache they
    would each build it at the same time."""
    if hasattr(config, "workerinput"):  # a worker: the main process built it
        return
    from hicra.tiny import build_tiny_policy

    build_tiny_policy(**TEST_MODEL, seed=0)


def small_config(warehouse: Path, run_id: str = "t", iterations: int = 2, **sections: dict) -> dict:
    """A run config (as a dict) for a 2-iteration run of the small test policy in `warehouse`."""
    config = {
        "run": {"id": run_id, "seed": 0, "iterations": iterations, "warehouse": str(warehouse)},
        "model": {"kind": "tiny", "tiny": dict(TEST_MODEL)},
        "rollout": {"prompts_per_iteration": 8, "group_size": 4, "max_new_tokens": 96, "batch_size": 32},
        "verifier": {"workers": 1},
        # the small policy is rarely right: length shaping gives every group reward variance, so advantages are non-zero
        "reward": {"overlong_buffer": 64, "overlong_penalty": 0.5},
        "trainer": {"mini_batch_size": 16, "micro_batch_size": 8, "lr": 1e-3},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def rollout(run: str, iteration: int, group: int, sample: int):
    """A 3-token rollout row of group `group`, sample `sample` (reference "1")."""
    from schemas.tables import RolloutRow

    return RolloutRow(
        run_id=run, iteration=iteration, rollout_id=f"{run}/{iteration}/{group}/{sample}", prompt_id=f"p{group}",
        group_index=group, sample_index=sample, prompt="Q", reference="1", prompt_token_ids=[1, 2],
        response="A", response_token_ids=[3, 4, 5], sampler_logprobs=[-0.1, -0.2, -0.3], finish_reason="stop",
        response_length=3, seed=7, policy_iteration=iteration - 1,
    )  # fmt: skip


def score(run: str, iteration: int, group: int, sample: int, reward: float):
    """The `ok` score row of `rollout(run, iteration, group, sample)` with this reward."""
    from schemas.tables import ScoreRow

    return ScoreRow(
        run_id=run, iteration=iteration, rollout_id=f"{run}/{iteration}/{group}/{sample}", reward=reward,
        correct=reward > 0, status="ok", extracted="1", detail=None, verify_seconds=0.01,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path):
    """A warehouse with one committed iteration (rollout and verify): 4 rollouts (2 groups) and their scores."""
    from schemas.tables import RolloutRow, ScoreRow, to_table
    from warehouse.store import Warehouse

    wh = Warehouse(tmp_path / "wh")
    wh.commit_stage(
        "r", 0, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 0, g, s) for g in (0, 1) for s in (0, 1)])}
    )
    scores = [score("r", 0, g, s, float(g == s == 0)) for g in (0, 1) for s in (0, 1)]
    wh.commit_stage("r", 0, "verify", {"scores": to_table(ScoreRow, scores)})
    return wh


def random_update_request(model_dir: Path, save_to: Path, trainer, rows: int = 12):
    """An `UpdateRequest` over `rows` random sequences (prompts of 4-8 tokens, responses of 2-19) in groups of 4, with
    mixed rewards and every third response token a planning token: for comparing update paths on the same data."""
    import torch

    from hicra.core_algos import AdvantageConfig
    from hicra.update import UpdateRequest

    generator = torch.Generator().manual_seed(0)
    prompt_lengths = torch.randint(4, 9, (rows,), generator=generator).tolist()
    response_lengths = torch.randint(2, 20, (rows,), generator=generator).tolist()
    prompts = [torch.randint(3, 100, (n,), generator=generator).tolist() for n in prompt_lengths]
    responses = [torch.randint(3, 100, (n,), generator=generator).tolist() for n in response_lengths]
    return UpdateRequest(
        base_model_dir=str(model_dir),
        resume_from=None,
        save_to=str(save_to),
        prompt_ids=prompts,
        response_ids=responses,
        planning=[[int(t % 3 == 0) for t in r] for r in responses],
        rewards=[float(k % 3 == 0 or k % 4 == 3) for k in range(rows)],
        group_index=[k // 4 for k in range(rows)],
        pad_id=0,
        advantage="hicra",
        advantage_config=AdvantageConfig(alpha=0.2),
        trainer=trainer,
    )


def assert_same_update(one: Path, two: Path, initial: Path) -> None:
    """Two HF exports of updates from the same `initial` weights agree: every tensor trained, and each differs by at
    most 1% of the size of its own update (summation order changes float rounding, and Adam's division by sqrt(v)
    magnifies it in near-zero gradient entries; measured at most 0.3%)."""
    from safetensors.torch import load_file

    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    start = load_file(initial / "model.safetensors")
    for name, value in weights_one.items():
        update = float((value - start[name]).abs().max())
        assert update > 0, f"{name} did not train"
        assert float((weights_two[name] - value).abs().max()) <= 0.01 * update, name


class DataParallel:
    """DeepSpeed's `mpu` protocol reduced to a data-parallel size: lets its config parser check a config for N ranks
    in a one-rank test process."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, prefect_server):
    """One uninterrupted 2-iteration run of the small policy, shared by the tests that read a real warehouse.

    Returns (warehouse root, config file, per-iteration summaries). Treat it as read-only.
    """
    import yaml

    from flows.train import train

    root = tmp_path_factory.mktemp("small-run")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(root / "wh")))
    summaries = train(config_path=str(config))
    return root / "wh", config, summaries


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server for the whole session (Prefect's own test harness); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()
