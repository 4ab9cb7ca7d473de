"""The vLLM rollout backend: a worker run by the vLLM environment's interpreter (`make vllm-env`: .venv-vllm).

The tests that need vLLM skip when .venv-vllm is missing, unless HICRA_REQUIRE_VLLM is set (`make test` and so CI
set it, so they cannot silently skip there). The crash tests use a stand-in interpreter and need no vLLM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hicra.generate import VLLMGenerator, VLLMWorkerError, derive_seed
from hicra.prompts import render_prompt
from hicra.tiny import build_tiny_policy, synthetic_problems
from hicra.trainer import token_logprobs
from schemas.config import RolloutSection, RunConfig
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
    rollout = {"backend": "vllm", "python": python, "prompts_per_iteration": 4, "max_new_tokens": 48, **rollout}
    return RunConfig.model_validate(small_config(warehouse, rollout=rollout))


def test_vllm_logprobs_match_transformers(vllm_python, policy):
    """vLLM's log-prob of each sampled token equals the transformers model's (the update's `token_logprobs`, same
    temperature) within 1e-3, and a sample's tokens depend on its seed only, not on its place in the batch.

    Both run the float32 policy on the CPU, with different kernels (vLLM's CPU attention and fused linear layers,
    other summation orders), so the logits differ by float32 rounding, which the temperature 0.7 scales by 1/0.7.
    Measured on 17 responses, 600 tokens: max abs diff 1.9e-6, mean 1.6e-7. The tolerance is 500x the measured
    maximum, far below what a wrong temperature (0.1-1 per token) or raw instead of processed log-probs would give.
    """
    generator = VLLMGenerator(policy, python=vllm_python, env=RolloutSection().worker_env)
    problems = synthetic_problems(8, seed=3)
    prompts = generator.encode_prompts([render_prompt(p["problem"], generator.tokenizer) for p in problems])
    jobs = [(g, s) for g in range(len(prompts)) for s in range(2)] + [(0, 0)]  # the last repeats the first
    seeds = [derive_seed("test", g, s) for g, s in jobs]
    max_new_tokens, temperature = 48, 0.7
    out = generator.generate([prompts[g] for g, _ in jobs], seeds, max_new_tokens, temperature, batch_size=8)

    assert len(out) == len(jobs)
    assert out[-1].token_ids == out[0].token_ids, "a seed and prompt give one response wherever it is in the batch"
    assert out[-1].logprobs == pytest.approx(out[0].logprobs, abs=1e-6)
    eos = generator.tokenizer.eos_token_id
    for gen in out:
        assert len(gen.logprobs) == len(gen.token_ids) > 0
        assert gen.text == generator.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
        if gen.finish_reason == "stop":
            assert gen.token_ids[-1] == eos
        else:
            assert gen.finish_reason == "length" and len(gen.token_ids) == max_new_tokens
    assert any(gen.finish_reason == "stop" for gen in out)

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    diffs = []
    with torch.no_grad():
        for (g, _), gen in zip(jobs, out, strict=True):
            ids = torch.tensor([prompts[g] + gen.token_ids])
            response_index = torch.arange(len(prompts[g]), ids.shape[1])[None]
            expected, _ = token_logprobs(
                model, ids, torch.ones_like(ids), response_index, torch.tensor([gen.token_ids]), temperature
            )
            diffs.append((expected[0] - torch.tensor(gen.logprobs)).abs())
    diffs = torch.cat(diffs)
    print(f"vLLM vs transformers log-probs over {diffs.numel()} tokens: max {diffs.max():.2e}, mean {diffs.mean():.2e}")
    assert diffs.max() < 1e-3


def test_rollout_stage_with_vllm_commits_rows(vllm_python, policy, tmp_path):
    from tasks.stages import rollout

    config = vllm_config(tmp_path / "wh", vllm_python)
    rollout.fn(config, 0, str(policy))

    store = Warehouse(tmp_path / "wh")
    assert store.is_committed("t", 0, "rollout")
    rows = store.read_table("rollouts", "t", 0).to_pylist()
    assert len(rows) == 4 * config.rollout.group_size
    for row in rows:
        assert 0 < row["response_length"] == len(row["response_token_ids"]) == len(row["sampler_logprobs"])
        assert row["response_length"] <= 48 and row["finish_reason"] in ("stop", "length")
        assert all(lp <= 0 for lp in row["sampler_logprobs"])
        assert row["seed"] == derive_seed("sample", "t", 0, 0, row["prompt_id"], row["sample_index"])


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
