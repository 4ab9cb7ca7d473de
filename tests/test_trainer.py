"""Trainer options for large models, on the CPU: token-budget micro-batches, gradient checkpointing and ZeRO offload
give the update of the plain path; bf16 is refused without a CUDA device; the GPU DeepSpeed config validates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from deepspeed.runtime.config import DeepSpeedConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hicra.tiny import build_tiny_policy
from hicra.trainer import UpdateConfig, deepspeed_config, init_distributed, pack_by_tokens, resolve_precision
from hicra.update import open_trainer, run_update
from schemas.config import ConfigError, load_config
from tests.conftest import TEST_MODEL, DataParallel, assert_same_update, random_update_request

BASE = UpdateConfig(mini_batch_size=10, micro_batch_size=2, lr=1e-2, epochs=2, seed=3)


def test_pack_by_tokens_respects_budget_and_keeps_every_row():
    lengths = torch.tensor([5, 30, 12, 12, 3, 50, 7, 12, 1, 9])
    rows = torch.tensor([9, 2, 5, 0, 7, 1, 3, 8, 4, 6])
    chunks = pack_by_tokens(rows, lengths, max_tokens=36, max_rows=3)
    assert sorted(torch.cat(chunks).tolist()) == sorted(rows.tolist())
    for chunk in chunks:
        padded = len(chunk) * int(lengths[chunk].max())
        assert len(chunk) == 1 or padded <= 36, chunk
        assert len(chunk) <= 3
    assert [c.tolist() for c in chunks] == [[5], [1], [2, 3, 7], [9, 6, 0], [4, 8]]
    # the cut depends on the rows, not on their order (ties of length go by row id)
    assert [c.tolist() for c in pack_by_tokens(rows.flip(0), lengths, 36, 3)] == [c.tolist() for c in chunks]
    assert [c.tolist() for c in pack_by_tokens(rows, lengths, 24, 8)] == [[5], [1], [2, 3], [7, 9], [6, 0, 4], [8]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plain update (fixed micro-batch count, fp32, ZeRO-0) of the random request: (model dir, result, dir)."""
    model_dir = build_tiny_policy(**TEST_MODEL)
    out = tmp_path_factory.mktemp("plain")
    return model_dir, run_update(random_update_request(model_dir, out, BASE)), out


@pytest.mark.parametrize(
    "changes",
    [
        {"micro_batch_tokens": 40, "micro_batch_size": 10},
        {"gradient_checkpointing": True},
        {"zero_stage": 2, "offload_optimizer": True},
        {"zero_stage": 3, "offload_optimizer": True, "offload_params": True, "micro_batch_tokens": 64},
    ],
    ids=["token-budget", "checkpointing", "zero2-offload", "zero3-offload-tokens"],
)
def test_option_gives_the_plain_update(tmp_path, reference, changes):
    model_dir, plain, plain_dir = reference
    result = run_update(random_update_request(model_dir, tmp_path, dataclasses.replace(BASE, **changes)))
    assert [s["num_tokens"] for s in result.steps] == [s["num_tokens"] for s in plain.steps]
    for a, b in zip(plain.steps, result.steps, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
    assert_same_update(plain_dir / "hf", tmp_path / "hf", model_dir)


def test_precision_bf16_needs_cuda():
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        pytest.skip("this machine has CUDA bf16")
    assert resolve_precision("auto") == "fp32"
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match=r"trainer\.precision is 'bf16'.*no CUDA device"):
        resolve_precision("bf16")


def test_gpu_deepspeed_config_validates():
    """What a bf16 ZeRO-3 update with offload would hand DeepSpeed on 8 GPUs (it cannot run here): DeepSpeed's own
    config parser accepts it, with CPU Adam for the offloaded optimizer."""
    config = dataclasses.replace(
        BASE, zero_stage=3, offload_optimizer=True, offload_params=True, mini_batch_size=512, micro_batch_size=4
    )
    built = deepspeed_config(config, world_size=8, precision="bf16", cuda=True)
    init_distributed()  # DeepSpeed reads the rank from the process group and the data-parallel size from an `mpu`
    parsed = DeepSpeedConfig(built, mpu=DataParallel(8))
    assert parsed.bfloat16_config.enabled
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.train_batch_size == 4 * 128 * 8
    assert built["optimizer"]["params"]["torch_adam"] is False
    assert deepspeed_config(BASE, 1, "fp32", cuda=False)["optimizer"]["params"]["torch_adam"] is True


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"trainer.offload_params": True, "trainer.zero_stage": 2}, r"trainer\.offload_params"),
        ({"trainer.offload_optimizer": True}, r"trainer\.offload_optimizer"),
        ({"trainer.precision": "fp16"}, r"trainer\.precision"),
        ({"trainer.micro_batch_tokens": 0}, r"trainer\.micro_batch_tokens"),
    ],
)
def test_bad_trainer_options_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, **overrides)


def test_sgd_steps_follow_the_gradient(tmp_path):
    """`optimizer: sgd` is plain SGD: a weight's change is -lr * its gradient, so doubling lr doubles every change
    (up to the second-order effect of the update's later micro-steps), while AdamW's first step moves every trained
    weight by about lr whatever its gradient's size."""
    model_dir = build_tiny_policy(**TEST_MODEL)
    one_step = dataclasses.replace(BASE, epochs=1, mini_batch_size=12, max_grad_norm=1e9)
    changes = {}
    for name, config in {
        "sgd": dataclasses.replace(one_step, optimizer="sgd", lr=0.5),
        "sgd2": dataclasses.replace(one_step, optimizer="sgd", lr=1.0),
        "adamw": dataclasses.replace(one_step, lr=1e-3),
    }.items():
        run_update(random_update_request(model_dir, tmp_path / name, config))
        start, end = load_file(model_dir / "model.safetensors"), load_file(tmp_path / name / "hf" / "model.safetensors")
        changes[name] = torch.cat([(end[k] - start[k]).flatten() for k in sorted(start)])
    assert changes["sgd"].abs().max() > 0
    assert torch.allclose(changes["sgd2"], 2 * changes["sgd"], rtol=1e-2, atol=1e-6)

    def spread(change: torch.Tensor) -> float:  # 90th over 10th percentile of the weights' moves
        moved = change.abs()[change != 0]
        return float(moved.quantile(0.9) / moved.quantile(0.1))

    assert spread(changes["adamw"]) < 2  # sign-like: about lr for every weight
    assert spread(changes["sgd"]) > 10  # in proportion to each weight's gradient


@pytest.mark.parametrize("changes", [{}, {"zero_stage": 2, "offload_optimizer": True}], ids=["plain", "zero2-offload"])
def test_resident_engine_equals_one_resumed_from_its_checkpoint(tmp_path, changes):
    """Two iterations' updates on one engine kept in memory (`next_iteration`) give exactly the steps and weights
    of the second update on a fresh engine loading the first one's DeepSpeed checkpoint; `copy_weights_to` puts
    the weights the HF export holds into a generator's model."""
    model_dir = build_tiny_policy(**TEST_MODEL)
    config = dataclasses.replace(BASE, **changes)
    first = random_update_request(model_dir, tmp_path / "first", config)
    trainer = open_trainer(first)
    run_update(first, trainer)
    second = dataclasses.replace(
        random_update_request(model_dir, tmp_path / "resident", dataclasses.replace(config, seed=4)),
        rewards=list(reversed(first.rewards)),  # another iteration's rewards
    )
    resident = run_update(second, trainer)
    checkpoint = str(tmp_path / "first" / "deepspeed")
    resumed = run_update(dataclasses.replace(second, save_to=str(tmp_path / "resumed"), resume_from=checkpoint))
    assert resident.steps == resumed.steps and resident.global_step == resumed.global_step == 8
    weights = [load_file(tmp_path / name / "hf" / "model.safetensors") for name in ("resident", "resumed", "first")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["model.norm.weight"], weights[2]["model.norm.weight"])
    generator = AutoModelForCausalLM.from_pretrained(tmp_path / "first" / "hf")
    trainer.copy_weights_to(generator)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "resident" / "hf").state_dict()
    assert all(torch.equal(value, exported[name]) for name, value in generator.state_dict().items())
    with pytest.raises(ValueError, match="other than the seed"):
        trainer.next_iteration(dataclasses.replace(config, lr=1.0))
