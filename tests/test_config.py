"""The run config: defaults validate, bad input names the field, the hash guards resume."""

from __future__ import annotations

import pytest

from schemas.config import ConfigError, RunConfig, load_config
from tests.conftest import ROOT


def test_shipped_tiny_config_loads():
    config = load_config(ROOT / "configs" / "tiny.yaml")
    assert config.algorithm.advantage == "hicra"
    assert config.algorithm.alpha == 0.2
    assert config.run.iterations >= 3


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  lr: 1e-4\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.learning_rate"):
        load_config(path)


def test_old_extractor_keys_are_accepted_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("verifier:\n  fallbacks: [boxed, answer_is]\neval:\n  protocol:\n    fallbacks: [boxed]\n")
    with pytest.warns(FutureWarning) as caught:
        config = load_config(path)
    messages = {str(warning.message) for warning in caught}
    assert "verifier.fallbacks is deprecated: use verifier.extractors" in messages
    assert "eval.protocol.fallbacks is deprecated: use eval.protocol.extractors" in messages
    assert config.verifier.extractors == ["boxed", "answer_is"] and config.eval.protocol.extractors == ["boxed"]
    path.write_text("verifier:\n  fallbacks: [boxed]\n  extractors: [boxed]\n")
    with pytest.raises(ConfigError, match=r"set only verifier\.extractors"):
        load_config(path)


def test_extractor_names_are_checked_against_the_registry():
    from tasks.common import validate_registered_names

    validate_registered_names(RunConfig())
    assert RunConfig().verifier.extractors == ["boxed"] and RunConfig().eval.protocol.extractors is None
    with pytest.raises(ConfigError, match=r"^verifier\.extractors: unknown extractor 'nope'; known: boxed, "):
        validate_registered_names(RunConfig.model_validate({"verifier": {"extractors": ["boxed", "nope"]}}))
    bad_eval = RunConfig.model_validate({"eval": {"protocol": {"extractors": ["latex", "x"]}}})
    with pytest.raises(ConfigError, match=r"^eval\.protocol\.extractors: unknown extractor 'x'"):
        validate_registered_names(bad_eval)


def test_bad_value_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm:\n  alpha: 1.5\n")
    with pytest.raises(ConfigError, match=r"algorithm\.alpha"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")


def test_micro_batch_must_fit_the_mini_batch():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        load_config(None, **{"trainer.mini_batch_size": 8, "trainer.micro_batch_size": 16})


def test_tensor_parallel_needs_the_vllm_backend():
    with pytest.raises(ConfigError, match=r"tensor_parallel_size > 1 needs rollout\.backend 'vllm'"):
        load_config(None, **{"rollout.tensor_parallel_size": 2})
    config = load_config(None, **{"rollout.backend": "vllm", "rollout.tensor_parallel_size": 2})
    assert config.rollout.worker_env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    with pytest.raises(ConfigError, match=r"rollout\.backend"):
        load_config(None, **{"rollout.backend": "sglang"})


def test_several_nodes_need_node_zeros_address():
    with pytest.raises(ConfigError, match=r"trainer\.nodes\.master .* is required"):
        load_config(None, **{"trainer.nodes.count": 2})
    with pytest.raises(ConfigError, match=r"trainer\.nodes\.master"):
        load_config(None, **{"trainer.nodes.count": 2, "trainer.nodes.master": "node0"})  # no port
    two = load_config(None, **{"trainer.nodes.count": 2, "trainer.nodes.master": "node0:29500"})
    moved = load_config(
        None, **{"trainer.nodes.count": 2, "trainer.nodes.master": "n7:1234", "trainer.nodes.shared_dir": "/x"}
    )
    assert two.config_hash() == moved.config_hash() != RunConfig().config_hash()  # the node count is hashed


def test_hash_ignores_length_and_location_but_not_algorithm():
    base = RunConfig()
    longer = load_config(None, **{"run.iterations": 50, "run.warehouse": "/elsewhere"})
    other = load_config(None, **{"algorithm.alpha": 0.1})
    assert base.config_hash() == longer.config_hash()
    assert base.config_hash() != other.config_hash()
    elsewhere = load_config(None, **{"orchestration.stage_deployments": {"rollout": "hicra-stage/gpu"}})
    assert elsewhere.config_hash() == base.config_hash()  # where a stage runs never changes what it computes
    machine = load_config(None, **{"rollout.python": "/opt/vllm/bin/python", "rollout.worker_timeout_s": 60})
    assert machine.config_hash() == base.config_hash()  # nor the interpreter that runs the vLLM worker
    assert load_config(None, **{"rollout.temperature": 0.7}).config_hash() != base.config_hash()


def test_stage_deployments_name_known_stages():
    with pytest.raises(ConfigError, match=r"orchestration\.stage_deployments\.generate"):
        load_config(None, **{"orchestration.stage_deployments": {"generate": "hicra-stage/gpu"}})


def test_set_overrides_parse_yaml_values_and_name_bad_fields():
    from cli.common import parse_override

    assert parse_override("rollout.group_size=8") == ("rollout.group_size", 8)
    assert parse_override("algorithm.dynamic_sampling=true") == ("algorithm.dynamic_sampling", True)
    key, value = parse_override("algorithm.advantage=placebo")
    assert load_config(ROOT / "configs" / "tiny.yaml", **{key: value}).algorithm.advantage == "placebo"
    from tasks.common import validate_registered_names

    with pytest.raises(ConfigError, match=r"algorithm\.advantage: unknown advantage estimator 'ppo'; known: grpo"):
        validate_registered_names(load_config(None, **{"algorithm.advantage": "ppo"}))
    with pytest.raises(ValueError, match="--set expects"):
        parse_override("no-equals-sign")


def test_hicra_settings_dataclasses_are_their_sections_fields_with_the_same_defaults():
    """hicra/ keeps plain dataclasses (no pydantic there); each is built from its sections by field name, so its
    defaults must be theirs, and a field renamed on one side fails `from_sections` at once."""
    from hicra.core_algos import AdvantageConfig
    from hicra.rewards import RewardConfig
    from hicra.trainer import UpdateConfig
    from schemas.config import from_sections

    config = RunConfig()
    built = {
        AdvantageConfig: from_sections(AdvantageConfig, config.algorithm),
        RewardConfig: from_sections(RewardConfig, config.reward),
        UpdateConfig: from_sections(
            UpdateConfig, config.trainer, config.algorithm, config.rollout,
            norm_length=config.rollout.max_new_tokens, seed=0,
        ),
    }  # fmt: skip
    for cls, from_config in built.items():
        assert from_config == cls(), cls.__name__
    with pytest.raises(TypeError, match=r"UpdateConfig\.seed: in none of TrainerSection"):
        from_sections(UpdateConfig, config.trainer, config.algorithm, config.rollout, norm_length=128)
    with pytest.raises(TypeError, match="AdvantageConfig has no field seed"):
        from_sections(AdvantageConfig, config.algorithm, seed=0)


def test_a_registered_estimator_is_a_config_name_with_no_other_edit():
    from hicra.core_algos import ADVANTAGES, grpo_advantage, register_advantage
    from tasks.common import validate_registered_names

    config = load_config(None, **{"algorithm.advantage": "test_only"})
    with pytest.raises(ConfigError, match="unknown advantage estimator 'test_only'"):
        validate_registered_names(config)
    register_advantage("test_only")(grpo_advantage)
    try:
        validate_registered_names(config)
    finally:
        del ADVANTAGES["test_only"]
