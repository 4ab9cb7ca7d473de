"""The paper's per-iteration metrics (arXiv 2509.03646, Section 5 and its figures) as small pure functions.

Token-level inputs are (B, T) tensors from the update's old-policy pass (entropy, log-prob) and the annotation
(planning mask); text-level inputs are the decoded responses with their Strategic Gram spans, as (start, end, gram)
triples (`hicra.grams.GramMatcher.find` reports every match, overlapping ones too; the text-level metrics count
gram occurrences as `longest_first` picks them, so "need to find" counts once and not also as "need to").
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import torch

from hicra.core_algos import top_entropy_mask
from hicra.grams import normalise_gram

_WORD = re.compile(r"\S+")

Match = tuple[int, int, str]
"""A gram match: start and end offsets in its text, and the gram."""


def token_class_stats(
    entropy: torch.Tensor, logprob: torch.Tensor, planning: torch.Tensor, response: torch.Tensor
) -> dict:
    """Mean entropy and mean NLL of planning and of execution tokens (all inputs (B, T)).

    exp(mean NLL) is each class's perplexity; `iteration_summary` divides it by the run's first iteration's value
    (the paper's relative perplexity).
    """
    planning = planning * response
    execution = (1 - planning) * response
    out = {}
    for name, mask in (("planning", planning), ("execution", execution)):
        count = float(mask.sum())
        out[f"entropy_{name}"] = float((entropy * mask).sum()) / count if count else math.nan
        out[f"nll_{name}"] = float((-logprob * mask).sum()) / count if count else math.nan
    return out


def fork_overlap(entropy: torch.Tensor, planning: torch.Tensor, response: torch.Tensor, fraction: float = 0.3) -> dict:
    """How planning tokens and high-entropy "fork" tokens overlap: |P&H|/|P| and |P&H|/|H|, H = top-`fraction`."""
    high = top_entropy_mask(entropy, response, fraction)
    planning = planning * response
    both = float((high * planning).sum())
    n_planning, n_high = float(planning.sum()), float(high.sum())
    return {
        "planning_in_top_entropy": both / n_planning if n_planning else math.nan,
        "top_entropy_in_planning": both / n_high if n_high else math.nan,
    }


def shannon_bits(counts: Counter) -> float:
    """Shannon entropy in bits of the distribution given by counts (0 for an empty one)."""
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) if total else 0.0


def longest_first(spans: Sequence[Match]) -> list[Match]:
    """The non-overlapping matches, longest first: take the longest match (ties: the earlier one), drop every match
    sharing a character with it, repeat. Returned sorted by start. A gram and the grams inside it ("need to find",
    "need to", "to find") are one occurrence, of the longest."""
    taken: list[Match] = []
    starts: list[int] = []
    for span in sorted(spans, key=lambda s: (s[0] - s[1], s[0])):
        start, end, _ = span
        k = bisect_right(starts, start)
        if (k and taken[k - 1][1] > start) or (k < len(taken) and taken[k][0] < end):
            continue
        starts.insert(k, start)
        taken.insert(k, span)
    return taken


def semantic_entropy(spans_per_response: Sequence[Sequence[Match]], strategy: Mapping[str, int] | None = None) -> float:
    """The paper's semantic entropy (Section 5): Shannon entropy (bits) of the distribution of strategies used over
    a batch's responses, one count per gram occurrence (`longest_first`).

    A strategy is the gram's cluster where the set has clusters (a mined set: `strategy` maps each gram to its
    cluster), else the gram's own form. Bounded by log2 of the number of strategies.
    """
    bins = {normalise_gram(g): c for g, c in strategy.items()} if strategy is not None else None
    counts: Counter = Counter()
    for spans in spans_per_response:
        for _, _, gram in longest_first(spans):
            key = normalise_gram(gram)
            if bins is None:
                counts[key] += 1
            elif key in bins:
                counts[bins[key]] += 1
            else:
                raise KeyError(f"semantic_entropy: gram {gram!r} has no strategy (not in the gram set's clusters)")
    return shannon_bits(counts)


def conditional_entropy(texts: Sequence[str], spans: Sequence[Sequence[Match]], n: int = 3) -> float:
    """H(next procedural n-gram | Strategic Gram), in bits: the n words that follow each gram occurrence
    (`longest_first`), given the gram.

    Low values mean each planning phrase is followed by the same execution pattern (rote); higher values mean more
    varied execution after the same plan.
    """
    following: dict[str, Counter] = defaultdict(Counter)
    for text, matches in zip(texts, spans, strict=True):
        for _, end, gram in longest_first(matches):
            words = _WORD.findall(text, end, min(len(text), end + 200))[:n]
            if len(words) == n:
                following[gram][" ".join(w.lower() for w in words)] += 1
    total = sum(sum(c.values()) for c in following.values())
    if not total:
        return 0.0
    return sum(sum(c.values()) / total * shannon_bits(c) for c in following.values())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
