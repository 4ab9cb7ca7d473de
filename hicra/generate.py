"""Rollout generation with transformers on the CPU (or one GPU): per-sample seeds and the sampler's log-probs.

A small sampling loop over the model's forward with a KV cache, rather than `generate`, so that every response has
its own `torch.Generator` (seeded from run, iteration, prompt and sample: a rerun regenerates the same tokens
whatever else is in the batch) and so that the log-prob of each sampled token under the sampling distribution
(temperature and top-p applied) is kept.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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


class HFGenerator:
    """Samples responses from an HF-format causal LM folder."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device
        self.eos_ids = {self.tokenizer.eos_token_id} | set(_as_list(self.model.generation_config.eos_token_id))
        self.eos_ids.discard(None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        # transformers 5.2x renamed `past_key_values` to `cache` (argument and output); accept both
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt (repeat a prompt G times with G seeds for a group). Keeps input order."""
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), batch_size):
            chunk = slice(start, start + batch_size)
            out += self._generate_batch(prompt_ids[chunk], seeds[chunk], max_new_tokens, temperature, top_p)
            if progress:
                progress(len(out))
        return out

    def _generate_batch(self, prompt_ids, seeds, max_new_tokens, temperature, top_p) -> list[Generation]:
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
            if bool(done.all()):
                break
            step_ids = sampled[:, None].to(self.device)
            step_pos = step_pos[:, -1:] + 1
            attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=self.device)], dim=1)
        generations = []
        for row in range(n):
            length = int(lengths[row])
            ids = tokens[row, :length].tolist()
            generations.append(
                Generation(
                    token_ids=ids,
                    logprobs=logprobs[row, :length].tolist(),
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason="stop" if bool(done[row]) else "length",
                )
            )
        return generations


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
