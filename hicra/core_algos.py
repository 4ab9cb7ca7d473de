"""Advantage estimators and policy losses as small pure tensor functions behind name registries.

Shapes: B responses, T response tokens (right-padded), `response_mask` (B, T) is 1 on real response tokens.
Every advantage estimator has the signature of `AdvantageFn`: rewards (B,), group_index (B,) long, response_mask,
planning_mask and entropy (B, T), a config; it returns per-token advantages (B, T) and the mask of tokens whose
advantage it amplified (B, T). The trainer knows nothing of the algorithm: it consumes the
per-token advantages. Reference: Wang et al., "Emergent Hierarchical Reasoning in LLMs through Reinforcement
Learning", arXiv 2509.03646, Section 3 (HICRA) and the baselines of its Section 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdvantageConfig:
    """What an advantage estimator needs besides tensors: the fields of `schemas.config.AlgorithmSection` of the same
    names (built by `schemas.config.from_sections`; tests/test_config.py keeps the defaults equal)."""

    adv_norm: str = "mean"
    alpha: float = 0.2
    entropy_fraction: float = 0.3


class AdvantageFn(Protocol):
    def __call__(
        self,
        rewards: Tensor,
        group_index: Tensor,
        response_mask: Tensor,
        planning_mask: Tensor,
        entropy: Tensor,
        config: AdvantageConfig,
    ) -> tuple[Tensor, Tensor]: ...


ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return wrap


def get_advantage_fn(name: str) -> AdvantageFn:
    if name not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]


def group_advantage(rewards: Tensor, group_index: Tensor, adv_norm: str = "mean", eps: float = 1e-6) -> Tensor:
    """Outcome advantage per response, A_i = R_i - mean_j R_j over its group (paper: no std division).

    rewards (B,) float, group_index (B,) long in [0, n_groups). `mean_std` also divides by the group's unbiased std
    plus eps (verl's default); `none` returns the rewards. A group of one response gets 0.
    """
    if adv_norm == "none":
        return rewards.clone()
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    ones = torch.ones_like(rewards)
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_index, ones)
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_index, rewards)
    mean = total / count.clamp(min=1)
    centred = rewards - mean[group_index]
    single = count[group_index] < 2
    if adv_norm == "mean":
        return centred.masked_fill(single, 0.0)
    if adv_norm == "mean_std":
        sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_index, centred * centred)
        std = (sq / (count - 1).clamp(min=1)).sqrt()
        return (centred / (std[group_index] + eps)).masked_fill(single, 0.0)
    raise ValueError(f"unknown adv_norm {adv_norm!r}; expected mean, mean_std or none")


def amplify(advantages: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """HICRA's credit re-weighting, out of place: A + alpha * |A| where mask is 1, A elsewhere. Shapes (B, T).

    Positive advantages on masked tokens grow by (1 + alpha); negative ones shrink in size by (1 - alpha).
    """
    return torch.addcmul(advantages, advantages.abs(), mask.to(advantages.dtype), value=alpha)


@register_advantage("grpo")
def grpo_advantage(rewards, group_index, response_mask, planning_mask, entropy, config):
    """GRPO: the group advantage broadcast to every response token. Returns (B, T) advantages, (B, T) zero mask."""
    adv = group_advantage(rewards, group_index, config.adv_norm)
    token_adv = adv[:, None] * response_mask.to(adv.dtype)
    return token_adv, response_mask.new_zeros(()).expand_as(response_mask)  # nothing amplified: a free zero view


@register_advantage("hicra")
def hicra_advantage(rewards, group_index, response_mask, planning_mask, entropy, config):
    """HICRA (paper Eq. 3): A + alpha*|A| on planning tokens (Strategic Gram tokens), A on execution tokens."""
    token_adv, _ = grpo_advantage(rewards, group_index, response_mask, planning_mask, entropy, config)
    mask = planning_mask.to(response_mask.dtype) * response_mask
    return amplify(token_adv, mask, config.alpha), mask


@register_advantage("high_entropy")
def high_entropy_advantage(rewards, group_index, response_mask, planning_mask, entropy, config):
    """The paper's "High-Entropy Advantage" baseline with HICRA's token budget (Section 4): in each response, HICRA's
    re-weighting on as many tokens as its planning mask holds, the ones of highest policy entropy.

    So each response has its planning-token count k_b of amplified tokens, as under `hicra`, and only which tokens
    differs (top-k_b by entropy, ties by position). Returns (B, T) advantages and the (B, T) amplified mask.
    """
    token_adv, _ = grpo_advantage(rewards, group_index, response_mask, planning_mask, entropy, config)
    counts = (planning_mask.to(response_mask.dtype) * response_mask).sum(-1).long()
    mask = top_entropy_per_response(entropy, response_mask, counts)
    return amplify(token_adv, mask, config.alpha), mask


@register_advantage("high_entropy_gated")
def high_entropy_gated_advantage(rewards, group_index, response_mask, planning_mask, entropy, config):
    """The verl-style gated variant of the high-entropy baseline: HICRA's re-weighting on a fixed share of the batch.

    The mask is the `entropy_fraction` (default 0.3) of all the batch's response tokens with the highest entropy
    (`top_entropy_mask`); its budget is that share, not the planning-token count. (B, T) in, (B, T) out.
    """
    token_adv, _ = grpo_advantage(rewards, group_index, response_mask, planning_mask, entropy, config)
    mask = top_entropy_mask(entropy, response_mask, config.entropy_fraction)
    return amplify(token_adv, mask, config.alpha), mask


@register_advantage("placebo")
def placebo_advantage(rewards, group_index, response_mask, planning_mask, entropy, config):
    """The paper's "Placebo HICRA": HICRA's re-weighting (Eq. 3) on the matches of a placebo gram set.

    The caller passes, as `planning_mask`, the tokens the annotator marks for a random gram set with the Strategic
    Gram set's size and length distribution (`hicra.mining.placebo_grams`), so the formula is HICRA's and only the
    credited phrases are random. (B, T) in, (B, T) advantages and amplified mask out.
    """
    return hicra_advantage(rewards, group_index, response_mask, planning_mask, entropy, config)


def top_entropy_mask(entropy: Tensor, response_mask: Tensor, fraction: float) -> Tensor:
    """0/1 mask (B, T) of the ceil(fraction * n) response tokens of highest entropy among the batch's n tokens."""
    valid = response_mask > 0
    k = math.ceil(fraction * int(valid.sum()))
    mask = torch.zeros_like(response_mask)
    if k == 0:
        return mask
    scores = entropy.masked_fill(~valid, float("-inf")).flatten()
    mask.view(-1)[scores.topk(k).indices] = 1
    return mask


def top_entropy_per_response(entropy: Tensor, response_mask: Tensor, counts: Tensor) -> Tensor:
    """0/1 mask (B, T): in row b, the counts[b] response tokens of highest entropy (ties: the earlier position).

    entropy and response_mask (B, T), counts (B,) long; a row with fewer response tokens than counts[b] gets all.
    """
    valid = response_mask > 0
    order = entropy.masked_fill(~valid, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    return ((rank < counts[:, None]) & valid).to(response_mask.dtype)


def mixed_groups(rewards: Tensor, group_index: Tensor) -> Tensor:
    """(B,) bool: True for responses whose group has at least two different rewards (DAPO's dynamic sampling keeps
    only these; a group of equal rewards has zero advantage and gives no gradient)."""
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    high = torch.full((n_groups,), float("-inf")).scatter_reduce(0, group_index, rewards, "amax")
    low = torch.full((n_groups,), float("inf")).scatter_reduce(0, group_index, rewards, "amin")
    return (high > low)[group_index]


def clipped_policy_loss(
    logprob: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate with clip-higher (DAPO): -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A).

    With `dual_clip` = c > 1 (Ye et al. 2020), the loss of a token with A < 0 is also capped at -c*A, so a huge ratio
    cannot blow up a negative update. All inputs (B, T); returns the per-token loss (B, T) and a 0/1 tensor (B, T)
    of tokens where a clip was active.
    """
    ratio = torch.exp(logprob - old_logprob)
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    active = clipped > unclipped
    if dual_clip is not None:
        capped = torch.minimum(loss, -dual_clip * advantages)
        active = active | ((advantages < 0) & (capped < loss))
        loss = torch.where(advantages < 0, capped, loss)
    return loss, active.to(logprob.dtype)


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, estimator: str) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate (B, T) from sampled tokens (Schulman's k1, k2, k3)."""
    log_ratio = logprob - ref_logprob
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def aggregate_loss(
    loss: Tensor, mask: Tensor, mode: str, global_tokens: int, global_sequences: int, norm_length: int
) -> Tensor:
    """Aggregate a micro-batch's per-token loss (B, T) so that summing over micro-batches gives the step's loss.

    Normalisers are the whole optimizer step's token and sequence counts, never the micro-batch's, so the gradient
    does not depend on how the step is cut into micro-batches (verl issues 906, 3332, 5625).
    `token-mean`: sum / global tokens. `seq-mean-token-mean`: sum of per-sequence token means / global sequences.
    `seq-mean-token-sum`: sum / global sequences. `seq-mean-token-sum-norm` (Dr. GRPO): sum / (sequences * norm_length).
    """
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        return masked.sum() / max(global_tokens, 1)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / max(global_sequences, 1)
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(global_sequences, 1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / max(global_sequences * norm_length, 1)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values (B, T) over positions where mask (B, T) is 1; 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)
