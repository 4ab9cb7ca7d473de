"""Bench: peak memory of the update's log-probs and entropies (hicra.trainer.response_logprobs) against the
implementation before issue 14, which gathered, scaled and log-softmaxed full-vocabulary fp32 copies of the logits.

    python bench/logprobs.py [--tokens 512] [--vocab 151936] [--temperature 0.7]

Both run in this process on the same logits (one row of `tokens` + 1 positions, a leaf tensor standing for the
model's output): a no-grad pass (the old-policy pass) and a forward + backward pass with a differentiable entropy
(an entropy bonus; the most memory it can take). Peak memory is the process's peak resident set size (VmHWM, reset
through /proc/self/clear_refs before each pass) above its size before the pass, so the logits themselves are not
counted; it is printed in MB and as a multiple of the logits tensor's size (goal: at most 1.5x). The backward pass
must produce the logits' gradient, one tensor of their size. Also prints the largest difference in values and in
gradient between the two, and each one's error against float64 math on a few tokens (the smaller
error says which of the two differs from the exact values). Linux and glibc only
(reads /proc, sets glibc's mmap threshold). The default size peaks near 2.5 GB (the old implementation).
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hicra.trainer import response_logprobs

Impl = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def old_logprobs(logits, response_index, response_ids, temperature, entropy_grad=False):
    """The baseline: `token_logprobs` before issue 14 (a gathered copy, fp32, scaled, log-softmax twice)."""
    picked = logits.gather(1, (response_index - 1)[..., None].expand(-1, -1, logits.shape[-1])).float() / temperature
    logprob = torch.log_softmax(picked, dim=-1).gather(-1, response_ids[..., None])[..., 0]
    source = picked if entropy_grad else picked.detach()
    logp = torch.log_softmax(source.float(), dim=-1)
    return logprob, -(logp.exp() * logp).sum(-1)


def exact_rss() -> None:
    """Make glibc serve every allocation of 1 MB or more by mmap and give it back on free (a fixed threshold, not
    the dynamic one that rises to 32 MB after the first free), so the resident size follows the live tensors."""
    m_mmap_threshold = -3
    if not ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 1 << 20):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mb(run: Callable[[], object]) -> tuple[float, float, object]:
    """Run `run()`; return the peak resident memory above the start (MB), the seconds it took, and its result."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_kb("VmRSS")
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    return (_status_kb("VmHWM") - before) / 1024, seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    exact_rss()
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, args.tokens + 1, args.vocab, generator=generator) * 2).requires_grad_()
    response_index = torch.arange(1, args.tokens + 1)[None, :]
    response_ids = torch.randint(0, args.vocab, (1, args.tokens), generator=generator)
    weights = torch.randn(2, 1, args.tokens, generator=generator)
    logits_mb = logits.numel() * logits.element_size() / 2**20
    print(f"logits: {args.tokens + 1} x {args.vocab:,} fp32 = {logits_mb:,.0f} MB; temperature {args.temperature}")

    def no_grad(impl: Impl) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                return impl(logits, response_index, response_ids, args.temperature)

        return run

    def with_grad(impl: Impl) -> Callable[[], object]:
        def run():
            logits.grad = None
            logprob, entropy = impl(logits, response_index, response_ids, args.temperature, entropy_grad=True)
            ((logprob * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
            return logprob.detach(), entropy.detach(), logits.grad

        return run

    results = {}
    print(f"{'pass':<22}{'impl':<6}{'peak MB':>9}{'x logits':>10}{'seconds':>9}")
    for name, make in (("no grad", no_grad), ("forward + backward", with_grad)):
        for label, impl in (("old", old_logprobs), ("new", response_logprobs)):
            mb, seconds, results[name, label] = peak_mb(make(impl))
            print(f"{name:<22}{label:<6}{mb:>9,.0f}{mb / logits_mb:>9.2f}x{seconds:>9.2f}")
    for name in ("no grad", "forward + backward"):
        old, new = results[name, "old"], results[name, "new"]
        diffs = [float((a - b).abs().max()) for a, b in zip(old, new, strict=False)]
        kinds = ("log-prob", "entropy", "gradient")[: len(diffs)]
        print(
            f"{name}: max abs diff old vs new: " + ", ".join(f"{k} {d:.2e}" for k, d in zip(kinds, diffs, strict=True))
        )
    print("error vs a float64 reference, first 16 tokens (log-prob, entropy, gradient):")
    for label, impl in (("old", old_logprobs), ("new", response_logprobs)):
        print(
            f"  {label}: "
            + ", ".join(
                f"{e:.2e}" for e in float64_errors(impl, logits.detach(), response_ids, weights, args.temperature)
            )
        )


def float64_errors(
    impl: Impl, logits: torch.Tensor, response_ids: torch.Tensor, weights: torch.Tensor, temperature: float
) -> list[float]:
    """Largest error of `impl` (fp32) in log-prob, entropy and gradient against float64 math, on 16 tokens."""
    width = min(16, response_ids.shape[1])
    index, ids, w = torch.arange(1, width + 1)[None, :], response_ids[:, :width], weights[:, :, :width]
    out = []
    for dtype in (torch.float32, torch.float64):
        x = logits[:, : width + 1].to(dtype).clone().requires_grad_()
        if dtype == torch.float32:
            logprob, entropy = impl(x, index, ids, temperature, entropy_grad=True)
        else:
            logp = torch.log_softmax(x[0, :width] / temperature, -1)
            logprob, entropy = logp.gather(-1, ids[0, :, None])[None, :, 0], -(logp.exp() * logp).sum(-1)[None]
        ((logprob * w[0]).sum() + (entropy * w[1]).sum()).backward()
        out.append((logprob.detach().double(), entropy.detach().double(), x.grad.double()))
    return [float((a - b).abs().max()) for a, b in zip(*out, strict=True)]


if __name__ == "__main__":
    main()
