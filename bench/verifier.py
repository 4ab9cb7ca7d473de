"""Bench: the verifier's two speed claims (hicra/verifier.py), each against its baseline in the same process.

    python bench/verifier.py [--megabytes 2] [--starts 2]

1. `_closing_brace` (the `\\boxed{...}` scan: escapes blanked, depth by C-level iterators) against a plain Python
   loop over the characters, on a nested-brace text of the given size: seconds per megabyte and the ratio.
2. Starting a warm verifier pool (`Verifier`, forkserver with sympy and math-verify preloaded) against pebble's
   pool with the "spawn" start method (every worker imports them itself): seconds per start and the ratio.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

from pebble import ProcessPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, before bench/ (bench/warehouse.py)

from hicra.verifier import Verifier, _closing_brace, _warm_up  # noqa: E402


def loop_closing_brace(text: str, pos: int) -> int | None:
    """The baseline: walk the characters, skip escapes, count the depth."""
    depth, i = 0, pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += char == "{"
        depth -= char == "}"
        if depth == 0:
            return i
        i += 1
    return None


def best_of(repeats: int, fn, *args) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def spawn_start(workers: int) -> None:
    pool = ProcessPool(max_workers=workers, initializer=_warm_up, context=multiprocessing.get_context("spawn"))
    for future in [pool.schedule(math.isqrt, (n,)) for n in range(workers)]:
        future.result()
    pool.stop()
    pool.join()


def forkserver_start(workers: int) -> None:
    Verifier(workers=workers).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=2.0)
    parser.add_argument("--starts", type=int, default=2, help="pool starts per method (best is kept)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    unit = "{a \\{ b {c} d} "
    text = "{" + unit * int(args.megabytes * 1e6 / len(unit)) + "}"
    assert _closing_brace(text, 0) == loop_closing_brace(text, 0) == len(text) - 1
    fast, slow = best_of(3, _closing_brace, text, 0), best_of(3, loop_closing_brace, text, 0)
    mb = len(text) / 1e6
    print(f"machine: {os.cpu_count()} CPUs; text {mb:.1f} MB")
    print(f"closing brace: {fast / mb:.3f} s/MB vs Python loop {slow / mb:.3f} s/MB: {slow / fast:.1f}x faster")
    forkserver_start(args.workers)  # the forkserver itself starts once per process: not part of a pool start
    fork = best_of(args.starts, forkserver_start, args.workers)
    spawn = best_of(args.starts, spawn_start, args.workers)
    print(f"pool start ({args.workers} workers): forkserver {fork:.2f} s vs spawn {spawn:.2f} s: {spawn / fork:.1f}x")


if __name__ == "__main__":
    main()
