"""Every shipped config validates offline; the paper-scale ones say what the paper ran, and the DeepSpeed config
each would hand 8 GPUs passes DeepSpeed's own parser (nothing is downloaded: hub ids resolve only at run time)."""

from __future__ import annotations

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from hicra.cache import resolve_model_path
from hicra.trainer import deepspeed_config, init_distributed
from schemas.config import load_config
from tasks.stages import _update_config
from tests.conftest import ROOT, DataParallel

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
PAPER = {
    "qwen3-4b-base": "Qwen/Qwen3-4B-Base",
    "qwen3-4b-instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
    "qwen2.5-7b-base": "Qwen/Qwen2.5-7B",
}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_loads_and_its_templates_render(path):
    config = load_config(path)
    for template in (config.data.template, config.eval.protocol.template):
        if template:
            assert "A PROBLEM" in template.format(problem="A PROBLEM")


def test_every_paper_model_and_method_has_a_config():
    names = {p.stem for p in (ROOT / "configs" / "paper").glob("*.yaml")}
    assert names == {f"{model}-{method}" for model in PAPER for method in ("grpo", "hicra")}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_config(path):
    config = load_config(path)
    model, method = path.stem.rsplit("-", 1)
    assert (config.model.kind, config.model.path) == ("hf", PAPER[model])
    assert config.algorithm.advantage == method and config.algorithm.adv_norm == "mean"
    if method == "hicra":
        assert config.algorithm.alpha == 0.2
    assert (config.algorithm.clip_low, config.algorithm.clip_high, config.algorithm.kl_coef) == (0.2, 0.28, 0.0)
    assert config.trainer.precision == "bf16" and config.trainer.zero_stage in (2, 3)
    assert (config.data.source, config.data.path) == ("hf", "hf:agentica-org/DeepScaleR-Preview-Dataset")
    assert config.rollout.max_new_tokens >= 16384
    protocol = config.eval.protocol
    assert config.eval.suites == ["aime24", "aime25", "math500", "amc23", "minerva_math", "olympiadbench"]
    assert protocol.temperature == 0.6 and protocol.extractors == ["boxed"]
    assert [protocol.samples_for(s) for s in config.eval.suites] == [32, 32, 1, 4, 1, 1]
    ranks = config.trainer.num_processes
    built = deepspeed_config(_update_config(config, 0), ranks, "bf16", cuda=True)
    init_distributed()
    parsed = DeepSpeedConfig(built, mpu=DataParallel(ranks))
    assert parsed.bfloat16_config.enabled and parsed.zero_optimization_stage == config.trainer.zero_stage


def test_smollm2_config():
    config = load_config(ROOT / "configs" / "smollm2-135m.yaml")
    assert config.model.kind == "smollm2" and config.rollout.backend == "hf"
    assert config.data.use_chat_template and config.data.source == "synthetic"


def test_model_path_is_a_folder_or_a_hub_id(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"))  # an existing folder is never taken for a hub id
    with pytest.raises(FileNotFoundError, match="nor a hub id"):
        resolve_model_path("models/not/here")
