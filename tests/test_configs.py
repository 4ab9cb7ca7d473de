"""Every shipped config validates offline; the paper-scale ones say what the paper ran, and the DeepSpeed config
each would hand 8 GPUs passes DeepSpeed's own parser (nothing is downloaded: hub ids resolve only at run time)."""

from __future__ import annotations

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from hicra.cache import resolve_model_path
from hicra.trainer import deepspeed_config, init_distributed
from schemas.config import load_config
from schemas.experiment import load_experiment
from tasks.stages import _update_config
from tests.conftest import ROOT, DataParallel

EXPERIMENTS = sorted((ROOT / "configs").glob("experiment*.yaml"))  # grids of runs (`hicra experiment`)
CONFIGS = sorted(set((ROOT / "configs").rglob("*.yaml")) - set(EXPERIMENTS))
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


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_and_its_runs_validate(path):
    experiment = load_experiment(path)
    assert len(experiment.runs) == len(experiment.config.methods) * len(experiment.config.seeds)
    assert {config.data.order_key for config in experiment.runs.values()} == {experiment.config.name}


METHODS = {  # file suffix: (advantage, entropy_coef)
    "grpo": ("grpo", 0.0),
    "hicra": ("hicra", 0.0),
    "high_entropy": ("high_entropy", 0.0),
    "placebo": ("placebo", 0.0),
    "entropy_reg": ("grpo", 0.001),
}
PAPER_CONFIGS = sorted((ROOT / "configs" / "paper").glob("*.yaml"))


def flat(node: object, prefix: str = "") -> dict[str, object]:
    """A config dump as {dotted field: value}."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def test_every_paper_model_and_method_has_a_config():
    names = {p.stem for p in PAPER_CONFIGS}
    assert names == {f"{model}-{method}" for model in PAPER for method in METHODS}


def test_paper_configs_differ_only_where_intended():
    """Methods of one model differ in run.id and the algorithm's fields only; models of one method in run.id, the
    model path and the ZeRO stage only (everything else comes from configs/paper/base/common.yaml)."""
    dumps = {p.stem: flat(load_config(p).model_dump(mode="json")) for p in PAPER_CONFIGS}

    def differing(one: str, two: str) -> set[str]:
        return {k for k in dumps[one] if dumps[one][k] != dumps[two][k]}

    for model in PAPER:
        for method in METHODS:
            changed = differing(f"{model}-hicra", f"{model}-{method}")
            assert all(k == "run.id" or k.startswith("algorithm.") for k in changed), (model, method, changed)
    for method in METHODS:
        for model in PAPER:
            changed = differing(f"qwen3-4b-base-{method}", f"{model}-{method}") - {"run.id", "model.path"}
            assert changed <= {"trainer.zero_stage"}, (model, method, changed)
    assert differing("qwen3-4b-base-hicra", "qwen3-4b-base-grpo") == {"run.id", "algorithm.advantage"}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config(path):
    config = load_config(path)
    model, method = path.stem.rsplit("-", 1)
    assert (config.model.kind, config.model.path) == ("hf", PAPER[model])
    assert (config.algorithm.advantage, config.algorithm.entropy_coef) == METHODS[method]
    assert config.algorithm.adv_norm == "mean" and config.algorithm.alpha == 0.2
    assert (config.algorithm.clip_low, config.algorithm.clip_high, config.algorithm.kl_coef) == (0.2, 0.28, 0.0)
    assert config.trainer.precision == "bf16" and config.trainer.zero_stage in (2, 3)
    sources = [(s.name, s.source, s.path) for s in config.data.sources]
    assert sources == [
        ("dapo", "hf", "hf:BytedTsinghua-SIA/DAPO-Math-17k"),
        ("deepscaler", "hf", "hf:agentica-org/DeepScaleR-Preview-Dataset"),
    ]
    assert "answer_is" in config.verifier.extractors  # DAPO's prompts ask for "Answer: X"
    rollout = config.rollout
    assert (rollout.max_new_tokens, rollout.grow_max_new_tokens, rollout.grow_clip_rate) == (16384, 32768, 0.2)
    protocol = config.eval.protocol
    assert config.eval.suites == ["aime24", "aime25", "math500", "amc23", "minerva_math", "olympiadbench"]
    assert protocol.temperature == 0.6 and protocol.extractors == ["boxed"]
    assert [protocol.samples_for(s) for s in config.eval.suites] == [32, 32, 1, 4, 1, 1]
    ranks = config.trainer.num_processes
    built = deepspeed_config(_update_config(config, 0), ranks, "bf16", cuda=True)
    init_distributed()
    parsed = DeepSpeedConfig(built, mpu=DataParallel(ranks))
    assert parsed.bfloat16_config.enabled and parsed.zero_optimization_stage == config.trainer.zero_stage


def test_authors_training_set_config():
    """configs/paper/authors-data/: a paper config with its mixture replaced by the authors' released set."""
    config = load_config(ROOT / "configs" / "paper" / "authors-data" / "qwen3-4b-base-hicra.yaml")
    paper = load_config(ROOT / "configs" / "paper" / "qwen3-4b-base-hicra.yaml")
    assert [(s.name, s.path) for s in config.data.sources] == [("hicra-rldata", "hf:JasperHaozhe/HICRA_RLDATA_Math")]
    one, two = flat(config.model_dump(mode="json")), flat(paper.model_dump(mode="json"))
    assert {k for k in one if one[k] != two[k]} == {"run.id", "data.sources"}


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
