"""hicra/generate.py's transformers backend: progress by decoding step (what the rollout stage's bar shows)."""

from __future__ import annotations

from hicra.generate import HFGenerator
from hicra.tiny import build_tiny_policy
from tests.conftest import TEST_MODEL


def test_progress_counts_responses_and_tokens_without_changing_the_samples():
    generator = HFGenerator(build_tiny_policy(**TEST_MODEL, seed=0), device="cpu")
    prompts = generator.encode_prompts(["What is 2 + 3?", "What is 7 - 4?", "What is 6 * 2?"]) * 2
    seeds = list(range(len(prompts)))
    calls: list[tuple[int, int]] = []
    out = generator.generate(prompts, seeds, max_new_tokens=8, batch_size=4, progress=lambda *c: calls.append(c))
    tokens = sum(len(g.token_ids) for g in out)
    assert calls[-1] == (6, tokens) and len(calls) > 2  # every decoding step reports, not only each batch
    assert calls == sorted(calls) and calls[0][0] == 0 < calls[0][1]  # responses complete batch by batch
    assert [g.token_ids for g in generator.generate(prompts, seeds, max_new_tokens=8, batch_size=4)] == [
        g.token_ids for g in out
    ]
