"""Bench runner: where a training run's wall time goes, stage by stage, at the tiny default and at a ~20M CPU size.

    python -m bench [--sizes tiny,20m] [--iterations 6] [--large-iterations 2] [--keep DIR]
                    [--set FIELD=VALUE ...] [--compare FIELD=VALUE]

For each size it runs `hicra train` as a subprocess (what a user types) on a fresh warehouse, reads the stage
attempts, rollouts and train steps back with SQL, and prints per stage its seconds per iteration, tokens/s and
share of the run's wall time, plus the time from the command to the first stage and the time outside stages.
Loading (the policy from its checkpoint, a DeepSpeed engine) is timed apart in this process, for the stages that
pay it each iteration. Against the hardware, in the same process: the update's achieved FLOP/s (6 x parameters x
trained tokens / update seconds) over a large fp32 matmul's, and generation tokens/s over the policy's
forward-pass ceiling (one batched forward over as many tokens as a rollout samples, no cache).

`--set` overrides config fields in every run (`model.tiny.*` also choose the tiny policy the bench loads);
`--compare FIELD=VALUE` runs each size a second time, right after the first, with that override too (for example
`trainer.resident=false`: every stage loading the last checkpoint) and prints the two runs' ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from cli.common import parse_override
from hicra.tiny import build_tiny_policy
from schemas.config import STAGES
from warehouse.catalog import query

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Size:
    """One bench size: the overrides of configs/tiny.yaml that make it."""

    name: str
    overrides: tuple[str, ...]


def large_policy(folder: Path) -> Path:
    """A randomly initialised ~20M-parameter Llama with the tiny policy's tokenizer and room for 512-token responses
    (no warm-up: the bench times work, and a random policy samples every response to its length limit)."""
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_policy())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_training(size: Size, iterations: int, warehouse: Path) -> float:
    """Run `hicra train` as a subprocess; returns the Unix time at which the command was started."""
    command = [
        sys.executable, "-m", "cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--run-id", run_id(size), "--iterations", str(iterations), "--warehouse", str(warehouse),
        "--set", "eval.every=0", *(arg for item in size.overrides for arg in ("--set", item)),
    ]  # fmt: skip
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80"})
    return started


def run_id(size: Size) -> str:
    return f"bench-{size.name}"


def stage_rows(warehouse: Path, run_id: str) -> list[dict]:
    """Per stage: total seconds of its committed (`ok`) attempts and the tokens it handled."""
    sql = f"""
    with a as (
        select stage, sum(epoch(ended_at::timestamptz) - epoch(started_at::timestamptz)) as seconds,
               min(started_at::timestamptz) as first_start, max(ended_at::timestamptz) as last_end
        from stage_attempts where run_id = '{run_id}' and status = 'ok' group by stage),
    r as (select sum(response_length)::double as generated, sum(len(prompt_token_ids) + response_length)::double as seen
          from rollouts where run_id = '{run_id}'),
    t as (select sum(num_tokens)::double as trained from train_steps where run_id = '{run_id}')
    select a.*, r.generated, r.seen, t.trained from a, r, t
    """
    return query(warehouse, sql).to_pylist()


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """Achieved FLOP/s of an n x n fp32 matmul on this machine (the hardware's practical ceiling)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def forward_ceiling(model_dir: Path, tokens: int, length: int) -> tuple[float, float]:
    """(tokens/s of one batched no-cache forward over `tokens` tokens in rows of `length`, seconds to load the
    policy from its folder): what generation would reach if every sampled token cost one forward position."""
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    load = time.perf_counter() - started
    rows = max(1, tokens // length)
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    with torch.no_grad():
        model(ids[:1])
        started = time.perf_counter()
        model(ids)
    return rows * length / (time.perf_counter() - started), load


def parameters(model_dir: Path) -> int:
    """The policy's parameter count, from its safetensors header (tied weights are stored once): no model built."""
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118


def report(size: Size, iterations: int, warehouse: Path, started: float, model_dir: Path, peak: float) -> dict:
    """Print the run's table; returns its wall, start, stage and seam seconds (for `--compare`)."""
    rows = {r["stage"]: r for r in stage_rows(warehouse, run_id(size))}
    first = min(r["first_start"] for r in rows.values()).timestamp()
    last = max(r["last_end"] for r in rows.values()).timestamp()
    wall = last - started
    inside = sum(r["seconds"] for r in rows.values())
    any_row = next(iter(rows.values()))
    generated, seen, trained = any_row["generated"], any_row["seen"], any_row["trained"]
    ceiling, load = forward_ceiling(model_dir, tokens=int(generated / iterations), length=128)
    n_parameters = parameters(model_dir)
    print(f"\n{size.name}: {iterations} iterations, {n_parameters / 1e6:.1f}M parameters, wall {wall:.1f} s")
    print(f"{'stage':<10}{'s/iter':>8}{'tok/s':>10}{'share':>8}")
    per_stage_tokens = {"rollout": generated, "update": trained}
    for stage, row in sorted(rows.items(), key=lambda item: STAGES.index(item[0])):
        tokens = per_stage_tokens.get(stage)
        rate = f"{tokens / row['seconds']:.0f}" if tokens else "-"
        print(f"{stage:<10}{row['seconds'] / iterations:>8.2f}{rate:>10}{row['seconds'] / wall:>8.1%}")
    print(f"{'start':<10}{first - started:>8.2f}{'':>10}{(first - started) / wall:>8.1%}  command -> first stage")
    seams = last - first - inside
    print(f"{'seams':<10}{seams / iterations:>8.2f}{'':>10}{seams / wall:>8.1%}  between stages")
    print(f"loop / stage time: {(last - first) / inside:.2f}x (goal <= 1.1x); end of run -> exit not counted")
    share = 2 * load / (inside / iterations)
    print(
        f"policy load, timed apart: {load:.2f} s; rollout and update load it each iteration: {share:.0%} of stage time"
    )
    update = rows.get("update")
    if update:
        achieved = 6 * n_parameters * seen / update["seconds"]
        print(f"update: {achieved / 1e9:.2f} GFLOP/s = {achieved / peak:.1%} of the matmul's {peak / 1e9:.1f}")
    rollout = rows.get("rollout")
    if rollout:
        rate = generated / rollout["seconds"]
        print(f"generation: {rate:.0f} tok/s = {rate / ceiling:.1%} of the forward ceiling {ceiling:.0f} tok/s")
    return {"wall": wall, "start": first - started, "stages": inside, "seams": seams, "loop": last - first}


def print_ratios(name: str, override: str, base: dict, other: dict) -> None:
    """The first run's seconds over the second's (`--compare`), per quantity of `report`."""
    print(f"\n{name}: run 1 / run 2 ({override}), seconds over seconds")
    for key, value in base.items():
        print(f"{key:<10}{value:>8.2f} / {other[key]:>8.2f} = {value / other[key]:.2f}")


def tiny_policy(overrides: list[str]) -> Path:
    """The tiny policy of the runs: the default, or the one the `model.tiny.*` overrides choose."""
    settings = dict(parse_override(item) for item in overrides)
    prefix = "model.tiny."
    return build_tiny_policy(**{k.removeprefix(prefix): v for k, v in settings.items() if k.startswith(prefix)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,20m", help="comma-separated: tiny, 20m")
    parser.add_argument("--iterations", type=int, default=6, help="iterations of the tiny run")
    parser.add_argument("--large-iterations", type=int, default=2, help="iterations of the 20m run")
    parser.add_argument("--keep", type=Path, help="keep the warehouses (and the 20m policy) under this folder")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override in every run")
    parser.add_argument("--compare", metavar="FIELD=VALUE", help="run each size again with this override")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="hicra-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    peak = matmul_flops()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fp32 matmul {peak / 1e9:.1f} GFLOP/s"
    )
    for name in args.sizes.split(","):
        if name == "tiny":
            size, iterations, model_dir = Size("tiny", tuple(args.set)), args.iterations, tiny_policy(args.set)
        elif name == "20m":
            model_dir = large_policy(folder / "policy-20m")
            overrides = ("model.kind=hf", f"model.path={model_dir}", "rollout.max_new_tokens=512", *args.set)
            size, iterations = Size("20m", overrides), args.large_iterations
        else:
            raise SystemExit(f"unknown size {name!r}: tiny or 20m")
        runs = [size] + ([Size(size.name, (*size.overrides, args.compare))] if args.compare else [])
        numbers = []
        for k, run in enumerate(runs):
            warehouse = folder / f"warehouse-{name}-{k + 1}"
            if args.compare:
                print(f"\nrun {k + 1} of {name}: {f'--set {args.compare}' if k else 'without --compare'}")
            started = run_training(run, iterations, warehouse)
            numbers.append(report(run, iterations, warehouse, started, Path(model_dir), peak))
        if args.compare:
            print_ratios(name, args.compare, *numbers)


if __name__ == "__main__":
    main()
