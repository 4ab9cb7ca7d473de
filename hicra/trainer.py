"""The policy update with DeepSpeed: old-policy log-probs and entropies, then the clipped policy-gradient steps.

The trainer knows nothing of HICRA: it consumes per-token advantages (N, T) aligned with the response tokens.
Runs on DeepSpeed's CPU accelerator (gloo, fp32) or on GPUs (NCCL, fp32 or bf16); ZeRO stage, offload, gradient
checkpointing and micro-batches by count or by token budget come from the config. An engine is built from the base
model folder and, after the first iteration, loads the previous DeepSpeed checkpoint (weights and optimizer state),
so an update can run in any process and resume anywhere; a caller that runs every update in one process may keep
the engine for the next iteration instead (`PolicyTrainer.next_iteration`), since it then holds what it would load.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hicra.core_algos import aggregate_loss, clipped_policy_loss, kl_penalty, masked_mean

CHECKPOINT_TAG = "policy"


@dataclass(frozen=True)
class UpdateConfig:
    """Trainer settings: the fields of the same names of `schemas.config.TrainerSection`, `AlgorithmSection` (the
    loss) and `RolloutSection` (temperature), built by `schemas.config.from_sections` (tests/test_config.py keeps the
    defaults equal); `norm_length` is rollout.max_new_tokens, `seed` the iteration's."""

    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    mini_batch_size: int = 32
    micro_batch_size: int = 16
    epochs: int = 1
    max_grad_norm: float = 1.0
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16 | auto
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_tokens: int | None = None
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    loss_agg: str = "token-mean"
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    temperature: float = 1.0
    norm_length: int = 128
    seed: int = 0


def init_distributed() -> None:
    """Make this process rank 0 of a one-rank gloo group unless a launcher already set the rank variables."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op on init (one to two minutes, once per
        # machine); gloo's all-reduce serves the CPU path (one rank, or a few for tests) without it, so skip it.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")


def resolve_precision(precision: str) -> str:
    """`fp32` or `bf16` for this machine: `auto` is bf16 where a CUDA device supports it; bf16 elsewhere is refused."""
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "bf16" and not cuda_bf16:
        raise ValueError(
            "trainer.precision is 'bf16' but this machine has no CUDA device with bf16 support; "
            "use trainer.precision 'fp32' or 'auto'"
        )
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"trainer.precision must be fp32, bf16 or auto, not {precision!r}")
    return precision


def deepspeed_config(config: UpdateConfig, world_size: int, precision: str, cuda: bool) -> dict:
    """The DeepSpeed config of an update. Gradient accumulation boundaries are set by `PolicyTrainer.update`, so
    `gradient_accumulation_steps` is nominal (micro-batches by token budget vary in number).

    Optimizer: torch's AdamW (no JIT build), except with optimizer offload on GPUs: DeepSpeed's CPU Adam, several times
    faster on the CPU-held fp32 state (its op is compiled on first use); or torch's SGD (`optimizer: sgd`).
    """
    accumulation = -(-config.mini_batch_size // config.micro_batch_size)
    zero: dict = {"stage": config.zero_stage}
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if config.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    return {
        "train_batch_size": config.micro_batch_size * accumulation * world_size,
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.max_grad_norm,
        "optimizer": _optimizer(config, cuda),
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _optimizer(config: UpdateConfig, cuda: bool) -> dict:
    """The DeepSpeed optimizer section: AdamW, or torch.optim.SGD (DeepSpeed builds any torch.optim class by name)."""
    if config.optimizer == "sgd":
        return {"type": "SGD", "params": {"lr": config.lr, "weight_decay": config.weight_decay}}
    torch_adam = not (config.offload_optimizer and cuda)
    return {"type": "AdamW", "params": {"lr": config.lr, "weight_decay": config.weight_decay, "torch_adam": torch_adam}}


def pack_by_tokens(rows: torch.Tensor, lengths: torch.Tensor, max_tokens: int, max_rows: int) -> list[torch.Tensor]:
    """Cut `rows` (K,) into micro-batches by a token budget: longest sequence first, ties by row id (so the cut depends
    only on which rows, on every rank), each micro-batch taking rows while rows x its longest length stays within
    `max_tokens` (its padded size; a longer sequence goes alone) and at most `max_rows`. lengths (N,) by row id."""
    by_id = rows.sort().values
    order = by_id[torch.sort(lengths[by_id], descending=True, stable=True).indices].tolist()
    chunks: list[list[int]] = []
    for row in order:
        current = chunks[-1] if chunks else []
        # sorted longest first: a micro-batch's padded width is the length of its first row
        if current and len(current) < max_rows and (len(current) + 1) * int(lengths[current[0]]) <= max_tokens:
            current.append(row)
        else:
            chunks.append([row])
    return [torch.tensor(chunk, dtype=torch.long) for chunk in chunks]


class Rollouts:
    """An iteration's sequences as padded tensors: prompt+response concatenated, responses aligned at column 0.

    input_ids (N, L) right-padded; response_index (N, T) the position of each response token in its sequence;
    response_ids (N, T); response_mask (N, T) 1 on real response tokens.
    """

    def __init__(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int):
        n = len(prompt_ids)
        seq_len = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
        resp_len = max(1, max(len(r) for r in response_ids))
        self.input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
        self.response_ids = torch.full((n, resp_len), pad_id, dtype=torch.long)
        self.response_mask = torch.zeros((n, resp_len), dtype=torch.float32)
        self.response_index = torch.zeros((n, resp_len), dtype=torch.long)
        for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
            full = list(prompt) + list(response)
            self.input_ids[row, : len(full)] = torch.tensor(full)
            self.attention_mask[row, : len(full)] = 1
            self.response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
            self.response_mask[row, : len(response)] = 1.0
            self.response_index[row] = len(prompt) + torch.arange(resp_len).clamp(max=max(len(response) - 1, 0))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Sequence length (prompt + response) of each row, (N,)."""
        return self.attention_mask.sum(-1)

    def subset(self, index: torch.Tensor) -> Rollouts:
        """The rows `index` (K,) as a new Rollouts (for dynamic sampling)."""
        picked = object.__new__(Rollouts)
        for name in ("input_ids", "attention_mask", "response_ids", "response_mask", "response_index"):
            setattr(picked, name, getattr(self, name)[index])
        return picked

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors of some rows, trimmed to their longest sequence and response."""
        seq_len = int(self.attention_mask[index].sum(-1).max())
        resp_len = max(1, int(self.response_mask[index].sum(-1).max()))
        return (
            self.input_ids[index, :seq_len],
            self.attention_mask[index, :seq_len],
            self.response_index[index, :resp_len],
            self.response_ids[index, :resp_len],
            self.response_mask[index, :resp_len],
        )


LOGPROB_CHUNK_BYTES = 256 * 2**20
"""Largest fp32 work tensor of one chunk of tokens in `response_logprobs` (441 tokens at a 151,936 vocabulary)."""

LOGPROB_CHUNK_SHARE = 16
"""A chunk's work tensor is at most 1/16 of the logits' size too, so the two or three of them alive at once add
at most about a fifth of the logits to the peak, whatever the micro-batch."""


class _SelectedLogSoftmax(torch.autograd.Function):
    """Log-prob of chosen tokens and the entropy of each distribution, a chunk of tokens at a time.

    forward(logits (B, L, V), rows (N,), cols (N,), token_ids (N,), temperature, chunk) -> logprob (N,), entropy (N,)
    in fp32, for the distributions softmax(logits[rows, cols] / temperature). Only `chunk` rows of the vocabulary
    are copied (to fp32) at a time, and nothing of vocabulary size is saved for backward but the logits themselves:
    backward recomputes each chunk's softmax from the saved log-normaliser and writes the gradient (one tensor the
    size of the logits, in their dtype) in place. With x = logits / temperature, p = softmax(x):
    d logprob / dx = onehot(token) - p;  d entropy / dx = -p * (log p + entropy).
    """

    @staticmethod
    def forward(ctx, logits, rows, cols, token_ids, temperature, chunk):
        n = rows.numel()
        logprob = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy, lse = torch.empty_like(logprob), torch.empty_like(logprob)
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            x = logits[rows[part], cols[part]].float().div_(temperature)  # (C, V), a copy
            lse[part] = torch.logsumexp(x, -1)
            logprob[part] = x.gather(-1, token_ids[part, None])[:, 0] - lse[part]
            logp = x.sub_(lse[part, None])
            entropy[part] = -torch.linalg.vecdot(logp.exp(), logp)
        ctx.save_for_backward(logits, rows, cols, token_ids, lse, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        logits, rows, cols, token_ids, lse, entropy = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for start in range(0, rows.numel(), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            logp = logits[rows[part], cols[part]].float().div_(ctx.temperature).sub_(lse[part, None])  # (C, V)
            if grad_entropy is None:
                g = logp.exp_().mul_(-grad_logprob[part, None])  # in place: one work tensor
            else:
                p = logp.exp()
                g = logp.add_(entropy[part, None]).mul_(p).mul_(-grad_entropy[part, None])
                if grad_logprob is not None:
                    g.addcmul_(p, grad_logprob[part, None], value=-1.0)
                del p
            if grad_logprob is not None:
                g.scatter_add_(-1, token_ids[part, None], grad_logprob[part, None].contiguous())
            grad.index_put_((rows[part], cols[part]), g.div_(ctx.temperature).to(grad.dtype), accumulate=True)
        return grad, None, None, None, None, None


def response_logprobs(
    logits: torch.Tensor,
    response_index: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
    entropy_grad: bool = False,
    chunk_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (B, T) of each response token and the policy's entropy (B, T), both fp32, from logits (B, L, V).

    The logits at position p predict token p + 1, so token t of row b is scored by logits[b, response_index - 1].
    Memory: no full-vocabulary copy of the logits is made (see `_SelectedLogSoftmax`; issue 14: at Qwen's 151,936
    vocabulary a 65,536-token micro-batch has 40 GB of fp32 logits per copy). The entropy is differentiable only
    with `entropy_grad` (for an entropy bonus). Tokens go in chunks of `chunk_bytes` of fp32 vocabulary rows;
    default: `LOGPROB_CHUNK_BYTES`, or 1/`LOGPROB_CHUNK_SHARE` of the logits' size where that is smaller.
    """
    batch, width = response_ids.shape
    rows = torch.arange(batch, device=logits.device)[:, None].expand(batch, width).flatten()
    if chunk_bytes is None:
        chunk_bytes = min(LOGPROB_CHUNK_BYTES, logits.numel() * logits.element_size() // LOGPROB_CHUNK_SHARE)
    chunk = max(1, chunk_bytes // (4 * logits.shape[-1]))
    logprob, entropy = _SelectedLogSoftmax.apply(
        logits, rows, (response_index - 1).flatten(), response_ids.flatten(), float(temperature), chunk
    )
    entropy = entropy if entropy_grad else entropy.detach()
    return logprob.view(batch, width), entropy.view(batch, width)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_index: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (B, T) of each response token under the model at `temperature`, and the policy's entropy (B, T)
    (differentiable only with `entropy_grad`, for an entropy bonus); see `response_logprobs`."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return response_logprobs(logits, response_index, response_ids, temperature, entropy_grad)


class PolicyTrainer:
    """The DeepSpeed engine over the policy: built for one iteration's update, or kept resident across iterations
    by the caller (`next_iteration`), which then holds exactly the weights and optimizer state it would load."""

    def __init__(self, base_model_dir: Path, config: UpdateConfig, resume_from: Path | None = None):
        init_distributed()
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.config = config
        self.base_model_dir = Path(base_model_dir)
        self.precision = resolve_precision(config.precision)
        # bf16 weights from the start (DeepSpeed keeps fp32 master copies in the optimizer): half the host memory
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
        model.config.use_cache = False
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ds_config = deepspeed_config(config, self.world_size, self.precision, torch.cuda.is_available())
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        self.device = self.engine.device
        self.reference = None
        if config.kl_coef > 0:  # the frozen base policy, loaded only when a KL penalty is asked for
            self.reference = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype).to(self.device).eval()
            self.reference.requires_grad_(False)
        if resume_from is not None:
            path, _ = self.engine.load_checkpoint(str(resume_from), tag=CHECKPOINT_TAG)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint in {resume_from}")
        self.next_iteration(config)

    def next_iteration(self, config: UpdateConfig) -> None:
        """Start an iteration's update on this engine: take its settings (only the seed may differ from the ones the
        engine was built with) and seed torch's generators with its seed. Seeded here, after the engine is built and
        its checkpoint loaded, so that a fresh engine and one kept resident from the previous iteration draw the same
        random numbers (dropout) whatever building one consumed."""
        if dataclasses.replace(config, seed=self.config.seed) != self.config:
            raise ValueError("a resident trainer's settings other than the seed cannot change between iterations")
        self.config = config
        torch.manual_seed(config.seed)

    def copy_weights_to(self, model: torch.nn.Module) -> None:
        """Copy the policy's weights into `model` (the same architecture, in its own dtype and device): the weights
        `save` exports to the HF folder, without the trip through the disk (ZeRO stage 0-2: whole on every rank)."""
        if self.config.zero_stage == 3:
            raise ValueError("copy_weights_to needs ZeRO stage 0-2 (stage 3 partitions the parameters)")
        with torch.no_grad():
            model.load_state_dict(self.engine.module.state_dict())

    @torch.no_grad()
    def old_logprobs(self, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs and entropies (N, T) of the rollouts' response tokens under the policy before the update, and
        the frozen reference policy's log-probs (N, T) when a KL penalty is configured (else None).

        One forward pass serves the PPO ratio's denominator, the entropy metrics and the `high_entropy` estimator.
        """
        self.engine.module.eval()
        n, width = rollouts.response_ids.shape
        logprob, entropy = torch.zeros(n, width), torch.zeros(n, width)
        reference = torch.zeros(n, width) if self.reference is not None else None
        for index in self._micro_batches(torch.arange(n), rollouts.lengths):
            ids, attn, resp_index, resp_ids, resp_mask = (t.to(self.device) for t in rollouts.rows(index))
            lp, ent = token_logprobs(self.engine.module, ids, attn, resp_index, resp_ids, self.config.temperature)
            logprob[index, : lp.shape[1]] = (lp * resp_mask).cpu()
            entropy[index, : ent.shape[1]] = (ent * resp_mask).cpu()
            if reference is not None:
                ref, _ = token_logprobs(self.reference, ids, attn, resp_index, resp_ids, self.config.temperature)
                reference[index, : ref.shape[1]] = (ref * resp_mask).cpu()
        return logprob, entropy, reference

    def update(
        self,
        rollouts: Rollouts,
        advantages: torch.Tensor,
        old_logprob: torch.Tensor,
        ref_logprob: torch.Tensor | None = None,
        on_step: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Clipped policy-gradient steps over the rollouts; advantages, old_logprob, ref_logprob are (N, T).

        Each optimizer step takes up to `mini_batch_size` sequences in shuffled order (seeded), cut into micro-batches
        (by count, or by token budget) whose losses are normalised by the step's global token and sequence counts;
        the last micro-batch of a step is the gradient accumulation boundary, so a short step (fewer rows) is still
        one exact optimizer step, whatever the cut.
        Returns one dict of metrics per optimizer step.
        """
        cfg = self.config
        self.engine.module.train()
        generator = torch.Generator().manual_seed(cfg.seed)
        steps = []
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(rollouts), generator=generator)
            for start in range(0, len(rollouts), cfg.mini_batch_size):
                mini = order[start : start + cfg.mini_batch_size]
                global_tokens = int(rollouts.response_mask[mini].sum())
                totals = dict.fromkeys(("loss", "pg_loss", "clipped", "kl", "ref_kl", "entropy"), 0.0)
                chunks = self._rank_micro_batches(mini, rollouts.lengths)
                for k, (index, weight) in enumerate(chunks):
                    self.engine.set_gradient_accumulation_boundary(k == len(chunks) - 1)
                    parts = self._micro_loss(
                        rollouts, index, advantages, old_logprob, ref_logprob, global_tokens, len(mini)
                    )
                    # DeepSpeed averages gradients over ranks; scale so they sum to the one-rank gradient
                    self.engine.backward(parts["loss"] * (weight * self.world_size), scale_wrt_gas=False)
                    for key, value in parts.items():
                        totals[key] += float(value.detach()) * weight
                totals = self._sum_over_ranks(totals)
                grad_norm = self._step()
                metrics = {
                    "step": len(steps),
                    "epoch": epoch,
                    "loss": totals["loss"],
                    "pg_loss": totals["pg_loss"],
                    "clip_fraction": totals["clipped"],
                    "approx_kl": totals["kl"],
                    "ref_kl": totals["ref_kl"] if ref_logprob is not None else None,
                    "entropy": totals["entropy"],
                    "grad_norm": grad_norm,
                    "lr": float(self.engine.get_lr()[0]),
                    "num_sequences": len(mini),
                    "num_tokens": global_tokens,
                }
                steps.append(metrics)
                if on_step:
                    on_step(metrics)
        return steps

    def _micro_batches(self, rows: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """`rows` (K,) cut into micro-batches: by token budget when `micro_batch_tokens` is set, else by count."""
        cfg = self.config
        if cfg.micro_batch_tokens is not None:
            return pack_by_tokens(rows, lengths, cfg.micro_batch_tokens, cfg.micro_batch_size)
        return list(rows.split(cfg.micro_batch_size))

    def _rank_micro_batches(self, mini: torch.Tensor, lengths: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """This rank's micro-batches of a mini-batch: rows rank, rank + W, ... cut into micro-batches, each with a
        weight (1, or 0 for a stand-in row when this rank has fewer micro-batches than another: every rank must run
        the same number of backward passes). Every rank cuts every rank's rows, so they agree on that number."""
        per_rank = [self._micro_batches(mini[r :: self.world_size], lengths) for r in range(self.world_size)]
        count = max(1, max(len(chunks) for chunks in per_rank))
        mine = per_rank[self.rank]
        return [(mine[k], 1.0) if k < len(mine) else (mini[:1], 0.0) for k in range(count)]

    def _step(self) -> float:
        """The optimizer step; returns the L2 norm of its gradient before clipping: from the gradients where the
        module holds them (ZeRO 0-1), else the norm DeepSpeed computed in the step (ZeRO 2-3 partition them; read
        before the step, DeepSpeed's norm is the previous step's)."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        self.engine.step()
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def _sum_over_ranks(self, totals: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return totals
        values = torch.tensor(list(totals.values()), dtype=torch.float64)
        torch.distributed.all_reduce(values)
        return dict(zip(totals, values.tolist(), strict=True))

    def _micro_loss(self, rollouts, index, advantages, old_logprob, ref_logprob, global_tokens, global_sequences):
        """The loss of one micro-batch (its share of the step's loss) and its share of each step metric."""
        cfg = self.config
        ids, attn, resp_index, resp_ids, mask = (t.to(self.device) for t in rollouts.rows(index))
        width = resp_ids.shape[1]
        logprob, entropy = token_logprobs(
            self.engine, ids, attn, resp_index, resp_ids, cfg.temperature, entropy_grad=cfg.entropy_coef > 0
        )
        old = old_logprob[index, :width].to(self.device)
        per_token, clipped = clipped_policy_loss(
            logprob, old, advantages[index, :width].to(self.device), cfg.clip_low, cfg.clip_high, cfg.dual_clip
        )

        def aggregate(values: torch.Tensor) -> torch.Tensor:
            return aggregate_loss(values, mask, cfg.loss_agg, global_tokens, global_sequences, cfg.norm_length)

        pg_loss = aggregate(per_token)
        loss = pg_loss
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(entropy)
        ref_kl = torch.zeros(())
        if ref_logprob is not None:
            kl = kl_penalty(logprob, ref_logprob[index, :width].to(self.device), cfg.kl_estimator)
            loss = loss + cfg.kl_coef * aggregate(kl)
            ref_kl = masked_mean(kl.detach(), mask)
        share = float(mask.sum()) / max(global_tokens, 1)
        return {
            "loss": loss,
            "pg_loss": pg_loss.detach(),
            "clipped": masked_mean(clipped, mask) * share,
            "kl": masked_mean(0.5 * (logprob.detach() - old) ** 2, mask) * share,
            "ref_kl": ref_kl * share,
            "entropy": masked_mean(entropy.detach(), mask) * share,
        }

    def save(self, deepspeed_dir: Path, hf_dir: Path, client_state: dict | None = None) -> None:
        """Write the DeepSpeed checkpoint (weights and optimizer; every rank takes part) and, from rank 0, an HF-format
        folder that generators load."""
        self.engine.save_checkpoint(str(deepspeed_dir), tag=CHECKPOINT_TAG, client_state=client_state or {})
        module = self.engine.module
        if self.config.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if self.rank == 0:
                    module.save_pretrained(hf_dir)
        elif self.rank == 0:
            module.save_pretrained(hf_dir)
        if self.rank != 0:
            return
        AutoTokenizer.from_pretrained(self.base_model_dir).save_pretrained(hf_dir)
        if (self.base_model_dir / "generation_config.json").is_file():
            (hf_dir / "generation_config.json").write_bytes(
                (self.base_model_dir / "generation_config.json").read_bytes()
            )
