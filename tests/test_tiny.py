"""Tests of the embedded default policy: synthetic task, tokenizer, cached deterministic warm-up build."""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hicra import tiny
from hicra.prompts import PLAIN_TEMPLATE, render_prompt

SMALL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "warmup_steps": 20}
REPO = Path(__file__).resolve().parents[1]
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _strategic_grams() -> list[str]:
    """Load the paper's Strategic Gram list (Appendix A) from the repository or the shared data folder."""
    candidates = sorted(REPO.glob("**/strategic_grams/paper_appendix_a.json"))
    candidates.append(Path("/work/shared/data/strategic_grams/paper_appendix_a.json"))
    for path in candidates:
        if ".venv" not in path.parts and path.is_file():
            return json.loads(path.read_text())["grams"]
    pytest.fail("paper_appendix_a.json (the Strategic Gram list) not found in the repository")


def _sg_matches(text: str, grams: list[str]) -> list[str]:
    """Strategic Grams found in `text` by a case-insensitive, word-boundary search."""
    return [g for g in grams if re.search(rf"(?<!\w){re.escape(g)}(?!\w)", text, re.IGNORECASE)]


@pytest.fixture(scope="module")
def small_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_policy(cache_dir=tmp_path_factory.mktemp("cache"), **SMALL)


def test_synthetic_problems_are_deterministic_and_well_formed() -> None:
    first = tiny.synthetic_problems(300, seed=7)
    assert first == tiny.synthetic_problems(300, seed=7)
    assert first[:50] == tiny.synthetic_problems(50, seed=7)  # a problem depends on its index only
    assert first != tiny.synthetic_problems(300, seed=8)
    assert len({p["id"] for p in first}) == 300
    assert first[17]["id"] == "synth-train-17"
    assert {tuple(sorted(p)) for p in first} == {("answer", "id", "problem", "solution", "strategy")}
    assert len({p["problem"] for p in first}) > 250
    with pytest.raises(ValueError):
        tiny.synthetic_problems(1, seed=0, split="test")


def test_train_and_eval_splits_are_disjoint() -> None:
    train = tiny.synthetic_problems(3000, seed=0, split="train")
    evals = tiny.synthetic_problems(500, seed=0, split="eval")
    assert {p["problem"] for p in train}.isdisjoint(p["problem"] for p in evals)
    assert all(t["problem"] != e["problem"] for t, e in zip(train, evals, strict=False))
    assert evals[3]["id"] == "synth-eval-3"


def test_solutions_have_correct_arithmetic_and_end_in_the_boxed_answer() -> None:
    for p in tiny.synthetic_problems(500, seed=1) + tiny.synthetic_problems(100, seed=1, split="eval"):
        answer = int(p["answer"])
        k, b = map(int, re.findall(r"\d+", p["problem"]))
        assert answer == k * b and 3 <= k <= 9 and 2 <= b <= 9
        assert p["solution"].endswith(f"So the answer is \\boxed{{{p['answer']}}}.")
        assert tiny.last_boxed(p["solution"]) == p["answer"]
        equations = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", p["solution"])
        assert len(equations) == (1 if p["strategy"] == "multiply" else k - 1)  # one product, or k - 1 sums
        for a, op, b_, result in equations:
            assert OPS[op](int(a), int(b_)) == int(result)
        assert int(equations[-1][3]) == answer  # the last step computes the answer


def test_every_planning_phrasing_contains_a_strategic_gram() -> None:
    grams = _strategic_grams()
    for phrase in [*tiny.STRATEGIES.values(), tiny.CONCLUSION]:
        assert _sg_matches(phrase, grams), phrase
    for p in tiny.synthetic_problems(50, seed=0):
        assert len(_sg_matches(p["solution"], grams)) >= 2  # the method, then the conclusion


def test_tokenizer_splits_digits_and_round_trips() -> None:
    problems = tiny.synthetic_problems(300, seed=0)
    tok = tiny.train_tokenizer([f"{PLAIN_TEMPLATE.format(problem=p['problem'])} {p['solution']}" for p in problems])
    assert 300 <= len(tok) <= 1000
    assert not [t for t in tok.get_vocab() if len(re.findall(r"\d", t)) > 1]
    ids = tok("12345 + 678 = 13023", add_special_tokens=False)["input_ids"]
    digit_tokens = [t for t in tok.convert_ids_to_tokens(ids) if re.search(r"\d", t)]
    assert digit_tokens == list("12345678") + list("13023")
    for text in [p["solution"] for p in problems[:20]] + ["Wait, that's not right: 7*8=56 ✓ café\n\tdone"]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    enc = tok("Question: 1 + 1")["input_ids"]
    assert enc[0] == tok.bos_token_id
    assert {tok.eos_token, tok.pad_token, tok.bos_token} == {tiny.EOS, tiny.PAD, tiny.BOS}


def test_built_policy_loads_and_generates(small_policy: Path) -> None:
    tok = AutoTokenizer.from_pretrained(small_policy)
    model = AutoModelForCausalLM.from_pretrained(small_policy)
    assert model.config.tie_word_embeddings and model.config.model_type == "llama"
    assert model.config.eos_token_id == tok.eos_token_id
    problem = tiny.synthetic_problems(1, seed=0, split="eval")[0]["problem"]
    prompt = render_prompt(problem, tok)
    assert prompt == f"Question: {problem}\nSolution:"
    assert render_prompt(problem, tok, use_chat_template=True) == prompt
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]
    manifest = json.loads((small_policy / tiny.MANIFEST).read_text())
    assert manifest["warmup_steps"] == 20 and manifest["final_loss"] < 6.0


def test_build_is_cached(small_policy: Path) -> None:
    calls: list[tuple[int, int, float]] = []
    started = time.monotonic()
    again = tiny.build_tiny_policy(cache_dir=small_policy.parent, progress=lambda *a: calls.append(a), **SMALL)
    assert again == small_policy
    assert time.monotonic() - started < 2.0
    assert calls == []
    assert [p.name for p in small_policy.parent.iterdir()] == [small_policy.name]  # no temp folders left
    other = tiny.build_tiny_policy(cache_dir=small_policy.parent, **{**SMALL, "warmup_steps": 2, "seed": 1})
    assert other != small_policy and other.parent == small_policy.parent


def test_same_seed_gives_identical_weights(small_policy: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int, float]] = []
    rebuilt = tiny.build_tiny_policy(cache_dir=tmp_path, progress=lambda *a: calls.append(a), **SMALL)
    assert rebuilt.name == small_policy.name and rebuilt != small_policy
    assert [c[:2] for c in calls] == [(i, 20) for i in range(1, 21)]
    assert all(isinstance(c[2], float) for c in calls)
    first, second = load_file(small_policy / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (small_policy / "tokenizer.json").read_bytes() == (rebuilt / "tokenizer.json").read_bytes()


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def interrupt(step: int, total: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny.build_tiny_policy(cache_dir=tmp_path, progress=interrupt, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_killed_build_leftovers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now
    settings = {**SMALL, "warmup_steps": 2}
    name = tiny.build_tiny_policy(cache_dir=tmp_path / "probe", **settings).name
    (tmp_path / f".{name}.tmp-{dead.pid}-0000").mkdir()
    (tmp_path / f".{name}.tmp-{os.getpid()}-0000").mkdir()  # a live build: kept
    built = tiny.build_tiny_policy(cache_dir=tmp_path, **settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".{name}.tmp-{os.getpid()}-0000", name, "probe"])
    assert built.name == name


def test_out_dir_is_used_and_guarded(tmp_path: Path) -> None:
    settings = {**SMALL, "warmup_steps": 2}
    out = tiny.build_tiny_policy(tmp_path / "policy", **settings)
    assert out == tmp_path / "policy"
    assert tiny.build_tiny_policy(tmp_path / "policy", **settings) == out
    with pytest.raises(FileExistsError):
        tiny.build_tiny_policy(tmp_path / "policy", **{**settings, "seed": 5})


@pytest.mark.demo
def test_default_policy_mixes_methods_whose_success_differs() -> None:
    """The warmed-up default solves some problems but not all, picks each method often, and one method succeeds
    far more often than the other (measured: add 70%, multiply 33%): the choice RL can learn (docs/strategy-task.md)."""
    folder = tiny.build_tiny_policy()  # the shared cache: `make test-demo` then `make demo` builds it once
    samples = tiny.tiny_samples(folder, n=200, temperature=1.0)
    assert 0.3 <= sum(correct for _, correct in samples) / len(samples) <= 0.7
    success = {}
    for method in tiny.STRATEGIES:
        picked = [correct for strategy, correct in samples if strategy == method]
        assert 0.3 <= len(picked) / len(samples) <= 0.7, method
        success[method] = sum(picked) / len(picked)
    assert abs(success["add"] - success["multiply"]) >= 0.2, success
