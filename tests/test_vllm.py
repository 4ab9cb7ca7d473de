"""The vLLM rollout backend: a worker run by the vLLM environment's interpreter (`make vllm-env`: .venv-vllm).

The tests that need vLLM skip when .venv-vllm is missing, unless HICRA_REQUIRE_VLLM is set (`make test` and so CI
set it, so they cannot silently skip there). The crash tests use a stand-in interpreter and need no vLLM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hicra.generate import VLLMWorkerError, derive_seed
from hicra.tiny import build_tiny_policy
from hicra.trainer import token_logprobs
from schemas.config import RunConfig
from tests.conftest import ROOT, TEST_MODEL, small_config
from warehouse.catalog import query
from warehouse.store import Warehouse

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if not VLLM_PYTHON.exists():
        if os.environ.get("HICRA_REQUIRE_VLLM"):
            pytest.fail(f"HICRA_REQUIRE_VLLM is set but {VLLM_PYTHON} is missing: run `make vllm-env`")
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make vllm-env` builds it")
    return str(VLLM_PYTHON)


@pytest.fixture(scope="module")
def policy() -> Path:
    return build_tiny_policy(**TEST_MODEL)


def vllm_config(warehouse: Path, python: str, **rollout) -> RunConfig:
    """The small test run with vLLM rollouts: 2 prompts x 4 samples, eager engine (it starts in seconds)."""
    rollout = {"backend": "vllm", "python": python, "enforce_eager": True, "prompts_per_iteration": 2, **rollout}
    return RunConfig.model_validate(small_config(warehouse, rollout=rollout))


@pytest.fixture(scope="module")
def vllm_rollouts(vllm_python, policy, tmp_path_factory) -> tuple[RunConfig, list[dict]]:
    """Iteration 0's rollout stage with `rollout.backend: vllm` at temperature 0.7: the config and committed rows."""
    from tasks.stages import rollout

    root = tmp_path_factory.mktemp("vllm") / "wh"
    config = vllm_config(root, vllm_python, temperature=0.7, max_new_tokens=128)
    rollout.fn(config, 0, str(policy))
    store = Warehouse(root)
    assert store.is_committed("t", 0, "rollout")
    return config, store.read_table("rollouts", "t", 0).to_pylist()


def test_rollout_stage_with_vllm_commits_rows(vllm_rollouts, policy):
    config, rows = vllm_rollouts
    assert len(rows) == 2 * config.rollout.group_size
    tokenizer = AutoTokenizer.from_pretrained(policy)
    for row in rows:
        assert 0 < row["response_length"] == len(row["response_token_ids"]) == len(row["sampler_logprobs"])
        assert row["response"] == tokenizer.decode(row["response_token_ids"], skip_special_tokens=True)
        assert row["seed"] == derive_seed("sample", "t", 0, 0, row["prompt_id"], row["sample_index"])
        if row["finish_reason"] == "stop":
            assert row["response_token_ids"][-1] == tokenizer.eos_token_id
        else:
            assert row["finish_reason"] == "length" and row["response_length"] == 128
    assert any(row["finish_reason"] == "stop" for row in rows)


def test_vllm_logprobs_match_transformers(vllm_rollouts, policy):
    """vLLM's log-prob of each sampled token equals the transformers model's (the update's `token_logprobs`, same
    temperature 0.7) within 1e-4.

    Both run the float32 policy on the CPU, with different kernels (vLLM's CPU attention and fused linear layers,
    other summation orders), so the logits differ by float32 rounding, which the temperature scales by 1/0.7.
    Measured on 8 responses, 600 tokens: max abs diff 6.4e-6, mean 2.5e-7. The tolerance is 15x the measured
    maximum and far below what a wrong temperature (0.1-1 per token) or raw instead of processed log-probs would give.
    """
    config, rows = vllm_rollouts
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    diffs = []
    with torch.no_grad():
        for row in rows:
            prompt, response = row["prompt_token_ids"], row["response_token_ids"]
            ids = torch.tensor([prompt + response])
            response_index = torch.arange(len(prompt), ids.shape[1])[None]
            expected, _ = token_logprobs(
                model, ids, torch.ones_like(ids), response_index, torch.tensor([response]), config.rollout.temperature
            )
            diffs.append((expected[0] - torch.tensor(row["sampler_logprobs"])).abs())
    diffs = torch.cat(diffs)
    print(f"vLLM vs transformers log-probs over {diffs.numel()} tokens: max {diffs.max():.2e}, mean {diffs.mean():.2e}")
    assert diffs.max() < 1e-4


def crashing_python(tmp_path: Path, exit_code: str) -> str:
    """A stand-in interpreter that prints a line and ends with `exit_code` (`kill` kills itself with SIGKILL)."""
    script = tmp_path / "python"
    end = "kill -9 $$" if exit_code == "kill" else f"exit {exit_code}"
    script.write_text(f"#!/bin/sh\necho 'engine died here' >&2\n{end}\n")
    script.chmod(0o755)
    return str(script)


def test_crashed_worker_is_retried_and_nothing_is_committed(tmp_path, policy, prefect_server):
    from tasks.stages import rollout

    config = vllm_config(tmp_path / "wh", crashing_python(tmp_path, "kill"))
    with pytest.raises(VLLMWorkerError, match=r"exited with code -9:\nengine died here"):
        rollout(config, 0, str(policy))
    assert Warehouse(tmp_path / "wh").commits() == []
    attempts = query(tmp_path / "wh", "select stage, status, error from stage_attempts").to_pylist()
    assert [(a["stage"], a["status"]) for a in attempts] == [("rollout", "failed")] * 3, "2 retries"
    assert not list((tmp_path / "wh").glob("rollouts/**/*.parquet")), "nothing written outside staging"


def test_rejected_request_is_not_retried(tmp_path, policy, prefect_server):
    """A worker that exits with the rejection code (vLLM raised a ValueError) fails the stage at once."""
    from tasks.stages import rollout

    config = vllm_config(tmp_path / "wh", crashing_python(tmp_path, "3"))
    with pytest.raises(ValueError, match="vLLM rejected the rollout request") as err:
        rollout(config, 0, str(policy))
    assert not isinstance(err.value, VLLMWorkerError)
    attempts = query(tmp_path / "wh", "select status from stage_attempts").to_pylist()
    assert attempts == [{"status": "failed"}], "a rejected request must not be retried"
