"""Bench: vectorised HICRA advantages (hicra.core_algos) against a plain per-group Python loop.

    python bench/advantages.py [--n 100000] [--max-len 2048] [--group 8]

Builds n responses of ragged lengths up to max-len with random rewards and planning masks, times both ways of
computing HICRA's per-token advantages, checks that they agree, and prints the times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from hicra.core_algos import ADVANTAGES, AdvantageConfig


def loop_hicra(rewards, lengths, planning, group_size: int, alpha: float) -> list[list[float]]:
    """The baseline: per group, per response, per token, in plain Python."""
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        for i in range(start, start + len(group)):
            a = rewards[i] - mean if len(group) > 1 else 0.0
            out.append([a + alpha * abs(a) if planning[i][t] else a for t in range(lengths[i])])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, args.max_len + 1, (args.n,), generator=generator)
    response = (torch.arange(args.max_len)[None, :] < lengths[:, None]).float()
    planning = (torch.rand(args.n, args.max_len, generator=generator) < 0.1).float() * response
    rewards = torch.randint(0, 2, (args.n,), generator=generator).float()
    groups = torch.arange(args.n) // args.group
    entropy = torch.zeros(1)
    config = AdvantageConfig(alpha=0.2)

    started = time.perf_counter()
    advantages, _ = ADVANTAGES["hicra"](rewards, groups, response, planning, entropy, config)
    vectorised = time.perf_counter() - started

    lengths_list, rewards_list = lengths.tolist(), rewards.tolist()
    planning_lists = [row[:n] for row, n in zip(planning.bool().tolist(), lengths_list, strict=True)]
    started = time.perf_counter()
    expected = loop_hicra(rewards_list, lengths_list, planning_lists, args.group, config.alpha)
    looped = time.perf_counter() - started

    for row in torch.randint(0, args.n, (200,), generator=generator).tolist():
        got = advantages[row, : lengths_list[row]]
        assert torch.allclose(got, torch.tensor(expected[row]), atol=1e-6), row
    tokens = int(lengths.sum())
    print(f"machine: {os.cpu_count()} cores; {args.n} responses, {tokens} tokens, groups of {args.group}")
    print(f"vectorised hicra advantages: {vectorised:.3f} s ({tokens / vectorised:,.0f} tokens/s)")
    print(f"per-group python loop:       {looped:.3f} s ({tokens / looped:,.0f} tokens/s)")
    print(f"speed-up: {looped / vectorised:.1f}x (results agree on 200 sampled rows)")


if __name__ == "__main__":
    main()
