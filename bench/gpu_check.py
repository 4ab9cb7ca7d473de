"""GPU check: rollout and update throughput of a Qwen3-0.6B-shaped policy, random init, nothing downloaded.

    python bench/gpu_check.py [--smoke] [--out FILE.json] [--peak-tflops F]     (bench/gpu_check.sh wraps it)

On one GPU it measures, through the project's own code: generation tokens/s with `HFGenerator` (and with vLLM when
it is importable), the DeepSpeed update (`PolicyTrainer`, bf16, ZeRO-2) in tokens/s and model FLOP utilisation
(MFU = training FLOPs / time / the card's bf16 dense peak), the old-policy forward in tokens/s, and peak GPU memory
of each phase. It prints the figures and writes them as JSON (default `$OUT/gpu_check.json`, else ./gpu_check.json).
`--smoke` runs a tiny model of the same architecture on the CPU (fp32), so a test can check the script end to end.
Sized to finish in about 3 minutes on an H100 (start-up included); `gpu_check.sh` stops it after 8.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from hicra.generate import HFGenerator
from hicra.trainer import PolicyTrainer, Rollouts, UpdateConfig

# Qwen3-0.6B's config.json (hub id Qwen/Qwen3-0.6B), written out so nothing is downloaded
QWEN3_0_6B = {
    "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip
TINY = {
    "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 512, "tie_word_embeddings": True,
}  # fmt: skip

# (prompts, prompt tokens, new tokens) of the generation test; (sequences, prompt tokens, response tokens, optimizer
# steps, micro-batch token budget) of the update test
FULL = {"generate": (64, 256, 256), "update": (64, 256, 768, 2, 8192)}
SMOKE = {"generate": (4, 8, 8), "update": (8, 8, 24, 2, 96)}

# bf16 dense tensor-core peak (FLOP/s) by device name, from the vendors' data sheets
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)]


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((flops for key, flops in PEAK_BF16 if key in device_name), None)


def build_policy(folder: Path, shape: dict, dtype: torch.dtype, device: str) -> int:
    """Save a randomly initialised Qwen3 model of `shape` with a word-level tokenizer covering its vocabulary (every
    id decodes); returns the parameter count (tied embeddings counted once)."""
    vocab = {f"<{i}>": i for i in range(shape["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<1>", pad_token="<0>").save_pretrained(folder)
    config = Qwen3Config(**shape, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    parameters = model.num_parameters()
    del model
    return parameters


def random_ids(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=generator).tolist()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def generate_hf(folder: Path, sizes: tuple, vocab: int, device: str, dtype: torch.dtype) -> dict:
    """Tokens/s of `HFGenerator` sampling `new` tokens for each prompt in one batch (after a short warm-up)."""
    count, prompt_len, new = sizes
    reset_peak(device)
    generator = HFGenerator(folder, device=device, dtype=dtype)
    prompts = random_ids(count, prompt_len, vocab, seed=1)
    generator.generate(prompts, list(range(count)), 4, batch_size=count)  # warm-up: kernels, allocator
    synchronize(device)
    started = time.perf_counter()
    out = generator.generate(prompts, list(range(count)), new, batch_size=count)
    synchronize(device)
    seconds = time.perf_counter() - started
    tokens = sum(len(g.token_ids) for g in out)
    del generator
    return {
        "prompts": count, "prompt_tokens": prompt_len, "new_tokens": new, "generated_tokens": tokens,
        "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1), "peak_memory_gib": peak_gib(device),
    }  # fmt: skip


def generate_vllm(folder: Path, sizes: tuple, vocab: int) -> dict:
    """Tokens/s of vLLM on the same batch, when vLLM is importable (it is not part of the project's environment)."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as err:
        return {"skipped": f"vllm not importable: {err}"}
    count, prompt_len, new = sizes
    if torch.distributed.is_initialized():  # the update's one-rank group; vLLM sets up its own
        torch.distributed.destroy_process_group()
    reset_peak("cuda")
    llm = LLM(model=str(folder), dtype="bfloat16", gpu_memory_utilization=0.5, seed=0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in random_ids(count, prompt_len, vocab, seed=1)]
    llm.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    started = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(max_tokens=new, ignore_eos=True, seed=0), use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    del llm
    gc.collect()
    return {"generated_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def update(folder: Path, sizes: tuple, shape: dict, parameters: int, precision: str, device: str) -> dict:
    """The DeepSpeed update (ZeRO-2) over random sequences with random advantages: tokens/s of the optimizer steps
    (forward, backward, step) and of the old-policy forward, and MFU of the steps.

    Training FLOPs per sequence of S tokens: 6 * parameters * S (matrix products, forward and backward) plus
    12 * layers * heads * head_dim * S^2 (attention scores and values, PaLM's formula, no causal discount).
    """
    count, prompt_len, response_len, steps, token_budget = sizes
    reset_peak(device)
    config = UpdateConfig(
        lr=1e-6, mini_batch_size=count // steps, micro_batch_size=count // steps, micro_batch_tokens=token_budget,
        zero_stage=2, precision=precision, epochs=1, seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    trainer = PolicyTrainer(folder, config)
    init_seconds = time.perf_counter() - started
    vocab = shape["vocab_size"]
    rollouts = Rollouts(random_ids(count, prompt_len, vocab, 2), random_ids(count, response_len, vocab, 3), pad_id=0)
    advantages = torch.randn(rollouts.response_mask.shape, generator=torch.Generator().manual_seed(4))
    warm = torch.arange(count // steps)  # one optimizer step first: kernels, allocator, optimizer state
    old, _, _ = trainer.old_logprobs(rollouts.subset(warm))
    trainer.update(rollouts.subset(warm), advantages[warm], old)
    synchronize(device)
    started = time.perf_counter()
    old, _, _ = trainer.old_logprobs(rollouts)
    synchronize(device)
    forward_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = trainer.update(rollouts, advantages, old)
    synchronize(device)
    seconds = time.perf_counter() - started
    tokens = int(rollouts.lengths.sum())
    attention = 12 * shape["num_hidden_layers"] * shape["num_attention_heads"] * shape["head_dim"]
    flops = 6 * parameters * tokens + attention * int((rollouts.lengths.double() ** 2).sum())
    del trainer
    gc.collect()
    return {
        "zero_stage": 2, "precision": precision, "sequences": count, "sequence_tokens": prompt_len + response_len,
        "optimizer_steps": len(metrics), "micro_batch_tokens": token_budget,
        "engine_init_seconds": round(init_seconds, 1),
        "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
        "old_logprob_tokens_per_s": round(tokens / forward_seconds, 1), "training_flops": flops,
        "achieved_tflops": round(flops / seconds / 1e12, 2), "peak_memory_gib": peak_gib(device),
        "loss": [round(m["loss"], 6) for m in metrics],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script works")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: $OUT/gpu_check.json or ./)")
    parser.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, for MFU on unlisted cards")
    args = parser.parse_args()
    out = args.out or Path(os.environ.get("OUT") or ".") / "gpu_check.json"
    started = time.perf_counter()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a machine without a GPU")
    shape, sizes = (TINY, SMOKE) if args.smoke else (QWEN3_0_6B, FULL)
    precision, dtype = ("fp32", torch.float32) if args.smoke else ("bf16", torch.bfloat16)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    import deepspeed

    result: dict = {
        "device": name, "smoke": args.smoke, "torch": torch.__version__, "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__, "model": {"architecture": "Qwen3ForCausalLM", **shape},
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase: a crash or the time limit keeps what was measured
        result["wall_s"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "policy"
        result["model"]["parameters"] = parameters = build_policy(folder, shape, dtype, device)
        result["generation_hf"] = hf = generate_hf(folder, sizes["generate"], shape["vocab_size"], device, dtype)
        save()
        result["update"] = upd = update(folder, sizes["update"], shape, parameters, precision, device)
        peak = peak_flops(name, args.peak_tflops) if device == "cuda" else None
        upd["peak_tflops"] = peak / 1e12 if peak else None
        upd["mfu"] = round(upd["training_flops"] / upd["seconds"] / peak, 4) if peak else None
        result["update_over_generation"] = round(upd["tokens_per_s"] / hf["tokens_per_s"], 2)
        save()
        if device == "cuda":
            try:
                result["generation_vllm"] = generate_vllm(folder, sizes["generate"], shape["vocab_size"])
            except Exception as err:  # optional: vLLM's failure must not lose the other figures
                result["generation_vllm"] = {"error": f"{type(err).__name__}: {err}"}
        else:
            result["generation_vllm"] = {"skipped": "CPU smoke run"}
    save()
    print(f"device {name}; model {parameters / 1e6:.1f}M parameters; {result['wall_s']} s in all")
    print(f"generation (HFGenerator): {hf['tokens_per_s']} tokens/s, peak {hf['peak_memory_gib']} GiB")
    vllm = result["generation_vllm"]
    print(f"generation (vLLM): {vllm.get('tokens_per_s', vllm.get('skipped', vllm.get('error')))}")
    print(
        f"update ({precision}, ZeRO-2): {upd['tokens_per_s']} tokens/s, {upd['achieved_tflops']} TFLOP/s, "
        f"MFU {upd['mfu']}, peak {upd['peak_memory_gib']} GiB; old-policy forward {upd['old_logprob_tokens_per_s']} "
        f"tokens/s; update/generation tokens/s ratio {result['update_over_generation']}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
