"""Prompt datasets: bad rows are named; each iteration's prompts are a function of (run, seed, iteration)."""

from __future__ import annotations

import json

import pytest

from hicra.data import DataError, Problem, load_training_problems, prompts_for_iteration
from schemas.config import DataSection
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "data"


def jsonl(path, **fields) -> list[Problem]:
    return load_training_problems(DataSection(source="jsonl", path=str(path), **fields), seed=0)


def test_loads_a_shared_benchmark():
    prompts = jsonl(SHARED / "benchmarks" / "aime24.jsonl")
    assert len(prompts) == 30 and all(p.answer for p in prompts)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        jsonl(tmp_path / "none.jsonl")


def test_row_without_answer_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"id": "a", "problem": "1+1", "answer": "2"}) + "\n" + json.dumps({"id": "b", "problem": "x"})
    )
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: no 'answer'"):
        jsonl(path)


def test_duplicate_id_and_bad_json(tmp_path):
    path = tmp_path / "d.jsonl"
    row = json.dumps({"id": "a", "problem": "1+1", "answer": "2"})
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(DataError, match="duplicate id 'a'"):
        jsonl(path)
    path.write_text(row + "\n{oops\n")
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        jsonl(path)


def test_iteration_prompts_are_deterministic_and_walk_epochs():
    prompts = [Problem(str(i), f"q{i}", (str(i),)) for i in range(10)]
    first = prompts_for_iteration(prompts, 4, "run", 0, 0)
    assert first == prompts_for_iteration(prompts, 4, "run", 0, 0)
    assert first != prompts_for_iteration(prompts, 4, "other-run", 0, 0)
    epoch = [p for i in range(2) for p in prompts_for_iteration(prompts, 4, "run", 0, i)] + prompts_for_iteration(
        prompts, 2, "run", 0, 4
    )
    assert sorted(p.id for p in epoch) == sorted(p.id for p in prompts)  # no repeats within an epoch


def test_synthetic_prompt_order_is_pinned():
    """The prompts of a (run, seed, iteration) never change between versions: a resumed or compared run relies on
    them. (A refactor once renamed the seed's label and silently changed every run's prompts.)"""
    problems = load_training_problems(DataSection(), seed=0)
    chosen = prompts_for_iteration(problems, 8, "t", 0, 0)
    assert [p.id for p in chosen[:3]] == ["synth-train-94", "synth-train-4326", "synth-train-1807"]
    assert chosen[0].answer == "18"  # the problem's text is the task's (TASK_VERSION strategy-v2); its id is the order
