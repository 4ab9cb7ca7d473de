"""Bench: rollout generation throughput of the two backends, transformers (`HFGenerator`) and vLLM (`VLLMGenerator`).

    python bench/generation.py [--model HF_FOLDER] [--prompts 8] [--group 4] [--max-new-tokens 128]
                               [--vllm-python .venv-vllm/bin/python] [--no-enforce-eager]

Samples the same requests (prompts x group, per-sample seeds, temperature 1) with both backends on the CPU in one
run and prints, per backend, the model load time (vLLM: worker process and engine start), the generation time,
the sampled tokens and tokens/s, generation only and end to end (what a rollout stage pays per iteration), with the
vLLM/HF ratios. The default model is the embedded tiny policy (`configs/tiny.yaml`, built once and cached); pass
`--model` for another HF folder (e.g. SmolLM2-135M saved with `save_pretrained`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hicra.generate import Generation, HFGenerator, VLLMGenerator, derive_seed
from hicra.prompts import render_prompt
from hicra.tiny import build_tiny_policy, synthetic_problems
from schemas.config import RolloutSection

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model folder; default: the embedded tiny policy")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument(
        "--enforce-eager", action=argparse.BooleanOptionalAction, default=True, help="vLLM without torch.compile"
    )
    args = parser.parse_args()
    model = args.model or build_tiny_policy()
    problems = synthetic_problems(args.prompts, seed=0)
    jobs = [(p, s) for p in range(args.prompts) for s in range(args.group)]
    seeds = [derive_seed("bench", p, s) for p, s in jobs]
    rollout = RolloutSection()

    results = {}
    for name in ("hf", "vllm"):
        started = time.perf_counter()
        if name == "hf":
            generator = HFGenerator(model)
        else:
            generator = VLLMGenerator(
                model, python=args.vllm_python, enforce_eager=args.enforce_eager, env=rollout.worker_env
            )
        prompts = generator.encode_prompts([render_prompt(p["problem"], generator.tokenizer) for p in problems])
        loaded = time.perf_counter()
        out: list[Generation] = generator.generate(
            [prompts[p] for p, _ in jobs], seeds, args.max_new_tokens, batch_size=len(jobs)
        )
        total = time.perf_counter() - started
        if name == "vllm":  # the worker's own split: its process and engine start count as loading
            load, generate = total - generator.worker_seconds["generate"], generator.worker_seconds["generate"]
        else:
            load, generate = loaded - started, total - (loaded - started)
        tokens = sum(len(g.token_ids) for g in out)
        results[name] = (load, generate, tokens, tokens / generate, tokens / total)

    print(f"model {model}, {len(jobs)} sequences, up to {args.max_new_tokens} new tokens, fp32 on the CPU")
    print(f"{'backend':8} {'load s':>8} {'generate s':>11} {'tokens':>7} {'tok/s':>8} {'end-to-end tok/s':>17}")
    for name, (load, generate, tokens, rate, overall) in results.items():
        print(f"{name:8} {load:8.2f} {generate:11.2f} {tokens:7d} {rate:8.0f} {overall:17.0f}")
    hf, vllm = results["hf"], results["vllm"]
    print(f"vLLM/HF tokens/s: generation {vllm[3] / hf[3]:.2f}x, end to end {vllm[4] / hf[4]:.2f}x")


if __name__ == "__main__":
    main()
