"""Build the tiny policy with given settings and report build time, sampled and greedy accuracy on eval problems,
and at temperature 1 each method's share and success rate (docs/strategy-task.md).

Usage: python bench/tiny_warmup_eval.py [--steps 630 --batch-size 32 --lr 3e-3 --hidden 128 ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hicra.tiny import STRATEGIES, build_tiny_policy, tiny_accuracy, tiny_samples


def main() -> None:
    """Parse settings, build (timed), evaluate at temperature 1.0 and greedily, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=630)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="hicra-tiny-bench-"))

    def report(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            wall, used = time.monotonic() - started, time.process_time() - cpu
            print(f"step {step}/{total} loss {loss:.4f} at {wall:.0f}s wall, {used:.0f}s cpu", flush=True)

    started, cpu = time.monotonic(), time.process_time()
    folder = build_tiny_policy(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
        warmup_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        cache_dir=cache,
        progress=report,
    )
    build_s, build_cpu_s = time.monotonic() - started, time.process_time() - cpu
    started = time.monotonic()
    samples = tiny_samples(folder, n=args.n, temperature=1.0, seed=args.seed)
    sampled = sum(correct for _, correct in samples) / len(samples)
    methods = {}
    for name in [*STRATEGIES, None]:
        picked = [correct for strategy, correct in samples if strategy == name]
        methods[str(name)] = {"share": len(picked) / len(samples), "acc": sum(picked) / max(len(picked), 1)}
    greedy = tiny_accuracy(folder, n=args.n, temperature=0.0, seed=args.seed)
    result = {
        **vars(args),
        "cache": str(cache),
        "folder": str(folder),
        "build_s": round(build_s, 1),
        "build_cpu_s": round(build_cpu_s, 1),
        "acc_t1": sampled,
        "acc_greedy": greedy,
        "methods_t1": methods,
        "eval_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
