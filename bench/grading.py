"""Bench: how often `hicra grade` agrees with hand-given verdicts, against plain math-verify on the same inputs.

    python bench/grading.py [--cases bench/grading_cases.jsonl] [--workers 2] [--misses]

Each case of the labelled set is a model output (`response`), a `reference` and the verdict a careful reader gives
(`expected`: does the response's final answer equal the reference?), in one of the categories of docs/grading.md;
`boxed` and `bare` (the response is only the answer) make the easy set, the others the harder one. Split `dev`:
the cases the extractors were tuned on; `heldout`: written after that, graded once. Graded three
ways: `hicra grade` as it runs by default (the full extractor chain), `hicra grade --extractors boxed` (the
training reward's default), and plain math-verify, `verify(parse("$" + reference + "$"), parse(response))` with its
default extraction (the reference in `$..$` so that its LaTeX is read). Prints the agreement with the verdicts per
category and per set, and the grading time per item (the pools already started; plain math-verify in this process).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

EASY = ("boxed", "bare")
DEFAULT_CASES = Path(__file__).with_name("grading_cases.jsonl")


def plain_math_verify(response: str, reference: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${reference}$"), parse(response)))


def hicra_verify(cases: list[dict], extractors: tuple[str, ...], workers: int) -> tuple[list[bool], float, list]:
    """Verdicts, seconds per item and results of a Verifier with these extractors (what `hicra grade` runs)."""
    from hicra.verifier import Verifier

    with Verifier(workers=workers, timeout_s=5.0, extractors=extractors) as verifier:
        start = time.perf_counter()
        results = verifier.score([c["response"] for c in cases], [c["reference"] for c in cases])
        seconds = (time.perf_counter() - start) / len(cases)
    return [r.reward == 1.0 for r in results], seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--misses", action="store_true", help="list the cases the full chain gets wrong")
    args = parser.parse_args()
    from hicra.verifier import FULL_CHAIN, TRAINING_EXTRACTORS

    cases = [json.loads(line) for line in args.cases.read_text().splitlines() if line.strip()]
    graders: dict[str, tuple[list[bool], float]] = {}
    full, seconds, results = hicra_verify(cases, FULL_CHAIN, args.workers)
    graders["hicra grade"] = (full, seconds)
    boxed, seconds, _ = hicra_verify(cases, TRAINING_EXTRACTORS, args.workers)
    graders["--extractors boxed"] = (boxed, seconds)
    start = time.perf_counter()
    plain = [plain_math_verify(c["response"], c["reference"]) for c in cases]
    graders["plain math-verify"] = (plain, (time.perf_counter() - start) / len(cases))

    groups: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(cases):
        groups[case["category"]].append(index)
        kind = "boxed/bare" if case["category"] in EASY else "harder"
        groups[f"= {kind} {case['split']}"].append(index)
        groups[f"= {kind}"].append(index)
    groups["= all"] = list(range(len(cases)))
    groups = dict(sorted(groups.items(), key=lambda item: item[0].startswith("=")))  # categories, then the sets
    names = list(graders)
    print(f"{'category / set':<22} {'cases':>5} " + " ".join(f"{name:>18}" for name in names))
    for group, indices in groups.items():
        cells = []
        for name in names:
            verdicts = graders[name][0]
            cells.append(sum(verdicts[i] == cases[i]["expected"] for i in indices) / len(indices))
        print(f"{group:<22} {len(indices):>5} " + " ".join(f"{cell:>18.3f}" for cell in cells))
    print(f"{'ms per item':<28} " + " ".join(f"{1000 * graders[name][1]:>18.1f}" for name in names))
    if args.misses:
        for case, verdict, result in zip(cases, full, results, strict=True):
            if verdict != case["expected"]:
                print(f"MISS {case['category']}: {case['response'][-90:]!r} vs {case['reference']!r}: {result}")


if __name__ == "__main__":
    main()
