"""Advantage estimators and losses: hand-computed cases, the paper's identities, micro-batch invariance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from hicra.core_algos import (
    ADVANTAGES,
    AdvantageConfig,
    aggregate_loss,
    amplify,
    clipped_policy_loss,
    get_advantage_fn,
    group_advantage,
    kl_penalty,
    mixed_groups,
    top_entropy_mask,
    top_entropy_per_response,
)
from hicra.trainer import Rollouts, response_logprobs, token_logprobs

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])


def test_group_advantage_by_hand():
    assert group_advantage(REWARDS, GROUPS, "mean").tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 0]
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of group 0
    expected = [0.5 / (std + 1e-6), -0.5 / (std + 1e-6)]
    assert group_advantage(REWARDS, GROUPS, "mean_std")[:2].tolist() == pytest.approx(expected)
    assert group_advantage(REWARDS, GROUPS, "none").tolist() == REWARDS.tolist()
    with pytest.raises(ValueError, match="adv_norm"):
        group_advantage(REWARDS, GROUPS, "median")


def test_hicra_by_hand_changes_planning_tokens_only():
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)
    planning = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)
    entropy = torch.zeros(2, 4)
    adv, amplified = get_advantage_fn("hicra")(rewards, groups, response, planning, entropy, AdvantageConfig())
    assert torch.allclose(adv, torch.tensor([[0.6, 0.5, 0.5, 0.0], [-0.5, -0.4, -0.4, -0.5]]))
    assert amplified.tolist() == planning.tolist()
    grpo, _ = get_advantage_fn("grpo")(rewards, groups, response, planning, entropy, AdvantageConfig())
    assert (adv != grpo).sum() == 3  # the planning tokens really changed (no silent in-place no-op)


def test_registry_knows_every_estimator():
    assert set(ADVANTAGES) == {"grpo", "hicra", "high_entropy", "high_entropy_gated", "placebo"}
    with pytest.raises(KeyError, match="unknown advantage"):
        get_advantage_fn("ppo")


@st.composite
def batches(draw):
    n_groups, size = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    width = draw(st.integers(1, 12))
    rows = n_groups * size
    rewards = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=rows, max_size=rows)))
    lengths = draw(st.lists(st.integers(1, width), min_size=rows, max_size=rows))
    response = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    bits = draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width))
    planning = torch.tensor(bits, dtype=torch.float32).view(rows, width) * response
    groups = torch.arange(n_groups).repeat_interleave(size)
    alpha = draw(st.floats(0.0, 0.99))
    return rewards, groups, response, planning, alpha


@settings(max_examples=200, deadline=None)
@given(batches())
def test_hicra_identities(batch):
    rewards, groups, response, planning, alpha = batch
    entropy = torch.rand(response.shape)
    grpo, _ = ADVANTAGES["grpo"](rewards, groups, response, planning, entropy, AdvantageConfig())
    hicra, _ = ADVANTAGES["hicra"](rewards, groups, response, planning, entropy, AdvantageConfig(alpha=alpha))
    # alpha = 0 and an all-zero mask give GRPO
    assert torch.equal(
        ADVANTAGES["hicra"](rewards, groups, response, planning, entropy, AdvantageConfig(alpha=0))[0], grpo
    )
    zero = torch.zeros_like(planning)
    assert torch.equal(
        ADVANTAGES["hicra"](rewards, groups, response, zero, entropy, AdvantageConfig(alpha=alpha))[0], grpo
    )
    # planning tokens: positive A grows by (1 + alpha), negative A shrinks by (1 - alpha); others unchanged
    on = planning > 0
    positive, negative = on & (grpo > 0), on & (grpo < 0)
    assert torch.allclose(hicra[positive], grpo[positive] * (1 + alpha))
    assert torch.allclose(hicra[negative], grpo[negative] * (1 - alpha))
    assert torch.equal(hicra[~on], grpo[~on])
    # groups of equal rewards get zero everywhere
    same = torch.ones_like(rewards)
    assert not ADVANTAGES["hicra"](same, groups, response, planning, entropy, AdvantageConfig(alpha=alpha))[0].any()


def test_high_entropy_gated_takes_the_batch_top_fraction():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.8, 0.2, 0.7, 0.3]])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)  # 9.0 is padding: never chosen
    mask = top_entropy_mask(entropy, response, 0.3)  # ceil(0.3 * 7) = 3 tokens: 0.9, 0.8, 0.7
    assert mask.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0]]
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    adv, amplified = ADVANTAGES["high_entropy_gated"](
        rewards, groups, response, torch.zeros_like(response), entropy, AdvantageConfig(entropy_fraction=0.3)
    )
    assert amplified.tolist() == mask.tolist()
    assert adv[0, 1] == pytest.approx(0.6) and adv[1, 0] == pytest.approx(-0.4) and adv[0, 0] == pytest.approx(0.5)


def test_high_entropy_has_hicras_budget_per_response_by_hand():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.8, 0.2, 0.7, 0.3], [0.4, 0.4, 0.4, 0.1]])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float32)
    planning = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float32)  # 2, 1, 2 tokens
    # row 0: 0.9, 0.5 (9.0 is padding); row 1: 0.8; row 2: a three-way tie at 0.4, the earlier two win
    expected = [[0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert top_entropy_per_response(entropy, response, torch.tensor([2, 1, 2])).tolist() == expected
    rewards, groups = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 0])
    adv, amplified = ADVANTAGES["high_entropy"](rewards, groups, response, planning, entropy, AdvantageConfig())
    assert amplified.tolist() == expected
    assert amplified.sum(-1).tolist() == (planning * response).sum(-1).tolist()  # HICRA's budget
    assert adv[0].tolist() == pytest.approx([0.5, 0.6, 0.6, 0.0])
    assert adv[1].tolist() == pytest.approx([-0.4, -0.5, -0.5, -0.5])
    assert adv[2].tolist() == pytest.approx([0.0] * 4)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_high_entropy_budget_is_the_planning_count(batch):
    rewards, groups, response, planning, alpha = batch
    entropy = torch.rand(response.shape, generator=torch.Generator().manual_seed(int(response.sum())))
    _, amplified = ADVANTAGES["high_entropy"](
        rewards, groups, response, planning, entropy, AdvantageConfig(alpha=alpha)
    )
    assert amplified.sum(-1).tolist() == (planning * response).sum(-1).tolist()
    assert not (amplified * (1 - response)).any()
    # every chosen token has at least the entropy of every response token not chosen in its row
    low = entropy.masked_fill(amplified == 0, float("inf")).min(-1).values
    high = entropy.masked_fill((amplified > 0) | (response == 0), float("-inf")).max(-1).values
    assert (low >= high).all()


def test_placebo_is_hicras_formula_on_the_given_mask():
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    response = torch.ones(2, 5)
    placebo = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.float32)
    entropy = torch.rand(2, 5)
    got = ADVANTAGES["placebo"](rewards, groups, response, placebo, entropy, AdvantageConfig())
    want = ADVANTAGES["hicra"](rewards, groups, response, placebo, entropy, AdvantageConfig())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_mixed_groups():
    assert mixed_groups(REWARDS, GROUPS).tolist() == [True] * 4 + [False] * 5


def test_clipped_loss_by_hand_and_dual_clip():
    old = torch.zeros(1, 4)
    logprob = torch.log(torch.tensor([[1.5, 0.5, 1.1, 5.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_policy_loss(logprob, old, adv, 0.2, 0.28)
    # r=1.5,A>0: min(1.5, 1.28) -> 1.28; r=0.5,A<0: max(0.5, 0.8)*... -> -min(-0.5, -0.8) = 0.8; r=1.1: 1.1; r=5,A<0: 5
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, -1.1, 5.0]]))
    assert clipped.tolist() == [[1, 1, 0, 0]]
    loss, clipped = clipped_policy_loss(logprob, old, adv, 0.2, 0.28, dual_clip=3.0)
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, -1.1, 3.0]]))
    assert clipped[0, 3] == 1


def test_kl_estimators():
    logprob, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logprob, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logprob, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logprob, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _ragged_batch(rows: int = 8) -> tuple[Rollouts, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 50, (int(n),), generator=generator).tolist() for n in torch.randint(2, 6, (rows,))]
    responses = [torch.randint(1, 50, (int(n),), generator=generator).tolist() for n in torch.randint(1, 12, (rows,))]
    batch = Rollouts(prompts, responses, pad_id=0)
    advantages = torch.randn(batch.response_mask.shape, generator=generator) * batch.response_mask
    return batch, advantages


def _gradient(model, batch, advantages, mode: str, micro: int) -> torch.Tensor:
    model.zero_grad()
    with torch.no_grad():
        old, _ = token_logprobs(model, *batch.rows(torch.arange(len(batch)))[:4], temperature=1.0)
    tokens, sequences = int(batch.response_mask.sum()), len(batch)
    for start in range(0, len(batch), micro):
        index = torch.arange(start, min(start + micro, len(batch)))
        ids, attn, resp_index, resp_ids, mask = batch.rows(index)
        logprob, _ = token_logprobs(model, ids, attn, resp_index, resp_ids, temperature=1.0)
        width = resp_ids.shape[1]
        per_token, _ = clipped_policy_loss(logprob, old[index, :width] + 0.05, advantages[index, :width], 0.2, 0.28)
        aggregate_loss(per_token, mask, mode, tokens, sequences, norm_length=16).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_gradient_does_not_depend_on_micro_batches(mode):
    model, (batch, advantages) = _tiny_model(), _ragged_batch()
    full = _gradient(model, batch, advantages, mode, micro=8)
    for micro in (4, 2):
        assert torch.allclose(_gradient(model, batch, advantages, mode, micro), full, rtol=1e-4, atol=1e-7), micro


def test_hicra_weights_reach_the_parameters():
    """At ratio 1 the loss gradient is -sum_t A_t grad log p_t / N_tokens with HICRA's A (and differs from GRPO's)."""
    model, (batch, _) = _tiny_model(), _ragged_batch()
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    planning = (torch.rand(batch.response_mask.shape, generator=torch.Generator().manual_seed(3)) < 0.4).float()
    entropy = torch.zeros_like(planning)
    hicra, _ = ADVANTAGES["hicra"](rewards, groups, batch.response_mask, planning, entropy, AdvantageConfig())
    grpo, _ = ADVANTAGES["grpo"](rewards, groups, batch.response_mask, planning, entropy, AdvantageConfig())
    ids, attn, resp_index, resp_ids, mask = batch.rows(torch.arange(len(batch)))
    tokens = int(mask.sum())

    def grad_of(loss_fn) -> torch.Tensor:
        model.zero_grad()
        logprob, _ = token_logprobs(model, ids, attn, resp_index, resp_ids, temperature=1.0)
        loss_fn(logprob).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def surrogate(adv):
        return lambda lp: aggregate_loss(
            clipped_policy_loss(lp, lp.detach(), adv, 0.2, 0.28)[0], mask, "token-mean", tokens, 8, 16
        )

    weighted = grad_of(lambda lp: -(hicra * lp * mask).sum() / tokens)
    assert torch.allclose(grad_of(surrogate(hicra)), weighted, atol=1e-7)
    assert not torch.allclose(grad_of(surrogate(grpo)), weighted, atol=1e-6)


def test_amplify_is_out_of_place():
    adv = torch.tensor([[1.0, -1.0]])
    out = amplify(adv, torch.tensor([[1.0, 1.0]]), 0.2)
    assert adv.tolist() == [[1.0, -1.0]] and torch.allclose(out, torch.tensor([[1.2, -0.8]]))


def _naive_logprobs(logits, response_index, response_ids, temperature):
    """The straightforward reference: every position's full log-softmax (what the update computed before issue 14)."""
    picked = logits.gather(1, (response_index - 1)[..., None].expand(-1, -1, logits.shape[-1])).float() / temperature
    logp = torch.log_softmax(picked, dim=-1)
    return logp.gather(-1, response_ids[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_equal_the_naive_values_and_gradients(chunk_tokens, temperature):
    generator = torch.Generator().manual_seed(chunk_tokens)
    vocab = 11
    logits = (torch.randn(3, 7, vocab, generator=generator) * 3).requires_grad_()
    # row 2 is padded: its last positions repeat the last real one, as Rollouts clamps them (duplicate positions)
    response_index = torch.tensor([[3, 4, 5, 6], [1, 2, 3, 4], [5, 6, 6, 6]])
    response_ids = torch.randint(0, vocab, (3, 4), generator=generator)
    weights = torch.randn(2, 3, 4, generator=generator)

    def value_and_grad(fn, **kwargs):
        logits.grad = None
        logprob, entropy = fn(logits, response_index, response_ids, temperature, **kwargs)
        ((logprob * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
        return logprob.detach(), entropy.detach(), logits.grad.clone()

    want = value_and_grad(_naive_logprobs)
    got = value_and_grad(response_logprobs, entropy_grad=True, chunk_bytes=4 * vocab * chunk_tokens)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # without entropy_grad the entropy is a constant: the gradient is the log-prob's alone
    logits.grad = None
    logprob, entropy = response_logprobs(logits, response_index, response_ids, temperature)
    assert not entropy.requires_grad
    (logprob * weights[0]).sum().backward()
    reference = logits.detach().clone().requires_grad_()
    (_naive_logprobs(reference, response_index, response_ids, temperature)[0] * weights[0]).sum().backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-6)


def test_response_logprobs_of_bf16_logits_match_fp32_math():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 300, generator=generator).to(torch.bfloat16).requires_grad_()
    response_index = torch.tensor([[1, 2, 3], [3, 4, 5]])
    response_ids = torch.randint(0, 300, (2, 3), generator=generator)
    logprob, entropy = response_logprobs(logits, response_index, response_ids, 1.0, entropy_grad=True, chunk_bytes=1)
    assert logprob.dtype == torch.float32 and entropy.dtype == torch.float32
    want_lp, want_ent = _naive_logprobs(logits.detach().float(), response_index, response_ids, 1.0)
    assert torch.allclose(logprob, want_lp, atol=1e-5) and torch.allclose(entropy, want_ent, atol=1e-5)
    (logprob.sum() + entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16
    reference = logits.detach().float().requires_grad_()
    sum(_naive_logprobs(reference, response_index, response_ids, 1.0)).sum().backward()
    assert torch.allclose(logits.grad.float(), reference.grad, atol=1e-2)
