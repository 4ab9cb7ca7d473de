"""Training mixtures: the slot rule, each source's own seeded walk, prefixed ids, the data position, the refill
draws, and the config forms (data.sources, `extends:`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hicra.data import (
    DataError,
    load_training_mixture,
    load_training_problems,
    mixture_position,
    mixture_prompts,
    prompts_for_iteration,
    refill_prompts,
    source_slots,
)
from schemas.config import ConfigError, DataSection, load_config


def mixture_section(tmp_path, weights=(1.0, 3.0)) -> DataSection:
    """Two sources: 40 synthetic problems and 12 problems of a JSONL file."""
    path = tmp_path / "b.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "problem": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(12))
    )
    return DataSection(
        sources=[
            {"name": "a", "source": "synthetic", "synthetic_size": 40, "weight": weights[0]},
            {"name": "b", "source": "jsonl", "path": str(path), "weight": weights[1], "template": "B: {problem}"},
        ]
    )


def test_slots_follow_the_weights_at_every_prefix():
    weights = [17398.0, 40315.0, 5000.0]
    slots = source_slots(weights, 1000)
    for k in range(1, 1001):
        counts = Counter(slots[:k])
        for s, w in enumerate(weights):
            assert abs(counts[s] - k * w / sum(weights)) < 1, (k, s)
    assert source_slots([1.0, 3.0], 8) == [1, 0, 1, 1, 1, 0, 1, 1]  # ties go to the first listed
    assert source_slots([1.0, 3.0], 8)[:5] == source_slots([1.0, 3.0], 5)  # a prefix never changes


def test_mixture_prompts_are_per_source_seeded_walks(tmp_path):
    mixture = load_training_mixture(mixture_section(tmp_path), seed=0)
    assert [s.name for s in mixture] == ["a", "b"]
    ids = [p.id for s in mixture for p in s.problems]
    assert len(set(ids)) == len(ids) and ids[0] == "a/synth-train-0" and "b/q3" in ids
    iterations = [mixture_prompts(mixture, 8, "run", 0, i) for i in range(6)]
    assert iterations[2] == mixture_prompts(mixture, 8, "run", 0, 2)  # a function of (run, seed, iteration)
    assert iterations[0] != mixture_prompts(mixture, 8, "other", 0, 0)
    for prompts in iterations:
        assert Counter(p.source for p in prompts) == {"a": 2, "b": 6}  # 1:3 in every iteration
    walk_b = [p.id for prompts in iterations for p in prompts if p.source == "b"]
    assert sorted(walk_b[:12]) == sorted(p.id for p in mixture[1].problems)  # one epoch of b: no repeats
    assert Counter(walk_b[12:24]) == Counter(walk_b[:12]) and walk_b[12:24] != walk_b[:12]  # next epoch, reshuffled
    position = mixture_position({"a": 40, "b": 12}, {"a": 1.0, "b": 3.0}, 8, "run", 0, 5)
    assert position["sources"] == {
        "a": {"cursor": 10, "epoch": 0, "offset": 10, "dataset_size": 40},
        "b": {"cursor": 30, "epoch": 2, "offset": 6, "dataset_size": 12},
    }
    assert (position["cursor"], position["dataset_size"]) == (40, 52)
    assert load_training_problems(mixture_section(tmp_path), seed=0) == [p for s in mixture for p in s.problems]


def test_single_source_form_is_unchanged():
    """data.source/path is one unnamed source: ids unprefixed, prompts and position as before mixtures."""
    data = DataSection(synthetic_size=50)
    (source,) = load_training_mixture(data, seed=0)
    assert source.name == "" and source.problems[0].id == "synth-train-0"
    assert mixture_prompts([source], 8, "t", 0, 3) == prompts_for_iteration(list(source.problems), 8, "t", 0, 3)
    position = mixture_position({"": 50}, {"": 1.0}, 8, "t", 0, 7)
    assert "sources" not in position and (position["epoch"], position["offset"]) == (1, 6)


def test_refill_draws_are_seeded_by_round_and_skip_what_the_iteration_drew(tmp_path):
    mixture = load_training_mixture(mixture_section(tmp_path), seed=0)
    first = mixture_prompts(mixture, 8, "run", 0, 4)
    used = {p.id for p in first}
    one = refill_prompts(mixture, 8, "run", 0, 4, 1, used)
    assert one == refill_prompts(mixture, 8, "run", 0, 4, 1, used)
    assert one != refill_prompts(mixture, 8, "run", 0, 4, 2, used)
    assert Counter(p.source for p in one) == {"a": 2, "b": 6} and not used & {p.id for p in one}
    everything_of_b = used | {p.id for p in mixture[1].problems}
    assert {p.source for p in refill_prompts(mixture, 8, "run", 0, 4, 1, everything_of_b)} == {"a"}  # b exhausted


def test_a_bad_row_names_its_source_file(tmp_path):
    data = mixture_section(tmp_path)
    path = tmp_path / "b.jsonl"
    path.write_text(
        json.dumps({"id": "x", "problem": "1+1", "answer": "2"}) + "\n" + json.dumps({"id": "y", "problem": "2"})
    )
    with pytest.raises(DataError, match=r"b\.jsonl: row 2: no 'answer'"):
        load_training_mixture(data, seed=0)


def test_sources_config_form(tmp_path):
    with pytest.raises(ValueError, match="set data.sources or data.path, data.source, not both"):
        DataSection(path="x.jsonl", source="jsonl", sources=[{"name": "a"}])
    with pytest.raises(ValueError, match="names must be unique"):
        DataSection(sources=[{"name": "a"}, {"name": "a", "weight": 2}])
    with pytest.raises(ValueError, match="data.path is required"):
        DataSection(sources=[{"name": "a", "source": "jsonl"}])
    data = mixture_section(tmp_path)
    assert (data.template_for("b"), data.template_for("a")) == ("B: {problem}", None)


def test_extends_merges_bases_under_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text("run: {seed: 3, iterations: 7}\nrollout: {group_size: 2, max_new_tokens: 64}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nrollout: {group_size: 6}\n")
    (tmp_path / "top.yaml").write_text("extends: [mid.yaml]\nrun: {id: top}\n")
    config = load_config(tmp_path / "top.yaml")
    assert (config.run.id, config.run.seed, config.run.iterations) == ("top", 3, 7)
    assert (config.rollout.group_size, config.rollout.max_new_tokens) == (6, 64)
    (tmp_path / "base.yaml").write_text("extends: top.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "top.yaml")
    (tmp_path / "mid.yaml").write_text("extends: none.yaml\n")
    with pytest.raises(ConfigError, match="none.yaml.*extended by"):
        load_config(tmp_path / "top.yaml")


def test_growth_and_refill_options_are_checked():
    with pytest.raises(ConfigError, match="grow_max_new_tokens must exceed"):
        load_config(**{"rollout.max_new_tokens": 64, "rollout.grow_max_new_tokens": 64})
    with pytest.raises(ConfigError, match="needs algorithm.dynamic_sampling"):
        load_config(**{"algorithm.dynamic_sampling_rounds": 3})
