"""Benchmark: the Strategic Gram mining pipeline (`hicra.mining.mine_strategic_grams`).

Mines a set from N solutions and prints the time of each phase: n-gram counting, model load, embedding, clustering,
and Cluster DF with the top-share cut. Two corpora:
- `synthetic` (default): the tiny task's solutions (`hicra.tiny.synthetic_problems`). They are templated, so 20,000
  of them hold only a few hundred distinct n-grams: this measures counting, not embedding;
- `prose`: bench/annotate.py's random 300-800-word responses (math filler and Strategic Gram phrases), whose
  n-grams are as varied as real ones: 1,000 of them hold ~46k n-grams in two or more, which measures embedding and
  MiniBatchKMeans at scale.

Run: `python bench/mining.py` (20,000 synthetic solutions) or `python bench/mining.py --corpus prose --n 1000`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from hicra.grams import load_grams  # noqa: E402
from hicra.mining import mine_strategic_grams  # noqa: E402
from hicra.tiny import synthetic_problems  # noqa: E402


def corpus(kind: str, n: int) -> list[str]:
    """The first n solutions of the tiny task, or n random prose responses (seeded)."""
    if kind == "synthetic":
        return [p["solution"] for p in synthetic_problems(n, 0)]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from annotate import make_response

    rng, grams = random.Random(0), load_grams()
    return [make_response(rng, grams) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["synthetic", "prose"], default="synthetic")
    parser.add_argument("--n", type=int, default=20_000, help="number of solutions (default: 20,000)")
    parser.add_argument("--clusters", type=int, help="k (default: sqrt(#n-grams), at most 1000)")
    parser.add_argument("--algorithm", default="auto", choices=["auto", "kmeans", "minibatch-kmeans"])
    parser.add_argument("--min-doc-freq", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", help="embedding device (default: sentence-transformers' choice)")
    args = parser.parse_args()

    console = Console()
    solutions = corpus(args.corpus, args.n)
    started_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bars:
        ids: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in ids:
                ids[phase] = bars.add_task(phase, total=total)
            bars.update(ids[phase], completed=done)
            started_at.setdefault(phase, time.perf_counter())
            if done == total:
                done_at[phase] = time.perf_counter()

        started = time.perf_counter()
        mined = mine_strategic_grams(
            solutions,
            n_clusters=args.clusters,
            algorithm=args.algorithm,
            min_doc_freq=args.min_doc_freq,
            batch_size=args.batch_size,
            device=args.device,
            progress=progress,
        )
        finished = time.perf_counter()

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    console.print(f"{platform.processor() or platform.machine()}, {len(cpus)} CPUs, load {os.getloadavg()[0]:.1f}")
    phases = {
        "n-grams and counts": done_at["ngrams"] - started,
        "model load": started_at["embed"] - done_at["ngrams"],
        "embedding": done_at["embed"] - started_at["embed"],
        "clustering": done_at["cluster"] - done_at["embed"],
        "Cluster DF and the cut": finished - done_at["cluster"],
        "total": finished - started,
    }
    for name, seconds in phases.items():
        console.print(f"  {name:<28} {seconds:8.1f} s")
    rate = mined.params["embedded_ngrams"] / phases["embedding"]
    console.print(f"  {rate:.0f} n-grams embedded per second; {args.corpus} corpus of {args.n}")
    console.print({k: v for k, v in mined.params.items() if k != "model"})
    console.print(f"{mined.version}: {len(mined.grams)} grams, e.g. {', '.join(mined.grams[:12])}")


if __name__ == "__main__":
    main()
