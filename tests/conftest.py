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
    "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256, "warmup_steps": 150, "batch_size": 32,
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
