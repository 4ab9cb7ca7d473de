"""Rollout generation: per-sample seeds and the sampler's log-probs, with transformers or with vLLM.

Both generators share one interface (`Generator`): encode prompts with the policy's tokenizer, then sample one
response per (prompt, seed) pair, each from its own generator seeded from run, iteration, prompt and sample (a rerun
regenerates the same tokens whatever else is in the batch), keeping the log-prob of each sampled token under the
sampling distribution (temperature and top-p applied).

`HFGenerator` is a small sampling loop over the transformers model's forward with a KV cache (rather than
`generate`, for the per-sample generators and log-probs), in the calling process. `VLLMGenerator` runs vLLM's
offline engine in a worker process of another Python environment (hicra/vllm_worker.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hicra import vllm_worker

Tensor = torch.Tensor


@dataclass(frozen=True)
class Generation:
    """One sampled response: token ids, the sampler's log-prob of each, decoded text, why it ended."""

    token_ids: list[int]  # the response's tokens, the eos included when one was sampled
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (eos sampled) or "length" (max_new_tokens reached)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions (unlike `hash`)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Set logits outside the smallest set of tokens whose probability reaches top_p to -inf. (N, V) -> (N, V)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class Generator(ABC):
    """Samples responses from an HF-format causal LM folder; what the rollout and eval stages use."""

    def __init__(self, model_dir: str | Path):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    @abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt (repeat a prompt G times with G seeds for a group). Keeps input order.

        `progress(responses, tokens)`, if given, hears how many responses are complete and how many tokens were
        generated so far (the transformers backend: after every decoding step; vLLM: once, at the end)."""

    def _generation(self, token_ids: list[int], logprobs: list[float], finish_reason: str) -> Generation:
        """A sampled response with its text decoded by the policy's tokenizer (special tokens such as eos dropped)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Generation(token_ids=token_ids, logprobs=logprobs, text=text, finish_reason=finish_reason)


class HFGenerator(Generator):
    """Samples with transformers in this process (CPU or one GPU: the GPU when there is one, unless `device` says).

    Sampling draws from per-sample CPU generators over logits copied to the CPU, so a seed gives the same tokens on
    any device up to the model's own numerics.
    """

    def __init__(self, model_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__(model_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device
        self.eos_ids = {self.tokenizer.eos_token_id} | set(_as_list(self.model.generation_config.eos_token_id))
        self.eos_ids.discard(None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        # transformers 5.2x renamed `past_key_values` to `cache` (argument and output); accept both
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        out: list[Generation] = []
        tokens_before = 0  # tokens of the finished batches
        for start in range(0, len(prompt_ids), batch_size):
            chunk = slice(start, start + batch_size)

            def step(batch_tokens: int, done: int = len(out), before: int = tokens_before) -> None:
                if progress:
                    progress(done, before + batch_tokens)

            out += self._generate_batch(prompt_ids[chunk], seeds[chunk], max_new_tokens, temperature, top_p, step)
            tokens_before += sum(len(g.token_ids) for g in out[start:])
            if progress:
                progress(len(out), tokens_before)
        return out

    def _generate_batch(
        self, prompt_ids, seeds, max_new_tokens, temperature, top_p, step: Callable[[int], None]
    ) -> list[Generation]:
        """One batch, decoded step by step; `step(tokens)` hears the batch's token count after each step."""
        n = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        tokens = torch.full((n, max_new_tokens), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((n, max_new_tokens))
        lengths = torch.full((n,), max_new_tokens, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        eos = torch.tensor(sorted(self.eos_ids))
        past, step_ids, step_pos = None, input_ids, positions
        for t in range(max_new_tokens):
            result = self.model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=step_pos,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: past},
            )
            past = getattr(result, self._cache_arg)
            logits = _top_p_filter(result.logits[:, -1, :].float().cpu() / temperature, top_p)
            step_logprobs = torch.log_softmax(logits, dim=-1)
            probs = step_logprobs.exp()
            sampled = torch.stack([torch.multinomial(probs[r], 1, generator=generators[r])[0] for r in range(n)])
            sampled = torch.where(done, torch.full_like(sampled, self.pad_id), sampled)
            tokens[:, t] = sampled
            logprobs[:, t] = step_logprobs.gather(-1, sampled[:, None])[:, 0]
            finished_now = ~done & torch.isin(sampled, eos)
            lengths[finished_now] = t + 1
            done |= finished_now
            step(int(lengths.clamp(max=t + 1).sum()))
            if bool(done.all()):
                break
            step_ids = sampled[:, None].to(self.device)
            step_pos = step_pos[:, -1:] + 1
            attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=self.device)], dim=1)
        ends = zip(lengths.tolist(), done.tolist(), strict=True)
        return [
            self._generation(tokens[row, :end].tolist(), logprobs[row, :end].tolist(), "stop" if stop else "length")
            for row, (end, stop) in enumerate(ends)
        ]


class VLLMWorkerError(RuntimeError):
    """The vLLM worker process crashed or was killed (transient: the rollout stage retries; nothing was committed)."""


class VLLMGenerator(Generator):
    """Samples with vLLM's offline engine (`LLM.generate`) in a worker process run by `python`.

    Every `generate` call starts a fresh worker that loads `model_dir` in a new engine and exits when done, so the
    engine's accelerator memory is free again for the update. `python` is the interpreter of an environment with
    vLLM installed (`make vllm-env`), since vLLM pins its own torch and transformers; the default is this one.
    `env` adds environment variables for the worker (vLLM's `VLLM_*` settings).
    """

    def __init__(
        self,
        model_dir: str | Path,
        python: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "float32",
        enforce_eager: bool = False,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 3600.0,
    ):
        super().__init__(model_dir)
        self.model_dir = str(Path(model_dir).resolve())
        self.python = python or sys.executable
        self.engine = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enforce_eager": enforce_eager,
        }
        self.env = dict(env or {})
        self.timeout_s = timeout_s
        self.worker_seconds: dict[str, float] = {}  # the last worker's engine start ("load") and "generate" times

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        request = {
            "model": self.model_dir,
            "prompt_token_ids": [list(map(int, ids)) for ids in prompt_ids],
            "seeds": [int(s) for s in seeds],
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "engine": {**self.engine, "max_num_seqs": batch_size},
        }
        with tempfile.TemporaryDirectory(prefix="hicra-vllm-") as tmp:
            result = self._run_worker(request, Path(tmp))
        results, self.worker_seconds = result["generations"], result["seconds"]
        if len(results) != len(request["seeds"]):
            raise VLLMWorkerError(f"the vLLM worker returned {len(results)} responses for {len(seeds)} requests")
        out = [self._generation(r["token_ids"], r["logprobs"], r["finish_reason"]) for r in results]
        if progress:
            progress(len(out), sum(len(g.token_ids) for g in out))
        return out

    def _run_worker(self, request: dict, folder: Path) -> dict:
        """Run the worker on `request`: its result, or an error with the end of its log."""
        request_path, result_path, log_path = folder / "request.json", folder / "result.json", folder / "worker.log"
        request_path.write_text(json.dumps(request))
        command = [self.python, vllm_worker.__file__, str(request_path), str(result_path)]
        with log_path.open("wb") as log:
            try:
                code = subprocess.run(
                    command, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                    timeout=self.timeout_s, check=False,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired as err:
                raise TimeoutError(f"the vLLM worker ran past {self.timeout_s:.0f} s and was killed") from err
        if code == 0 and result_path.is_file():
            return json.loads(result_path.read_text())
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        if code == vllm_worker.REJECTED:
            raise ValueError(f"vLLM rejected the rollout request ({self.python}):\n{tail}")
        raise VLLMWorkerError(f"the vLLM worker ({self.python}) exited with code {code}:\n{tail}")


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
