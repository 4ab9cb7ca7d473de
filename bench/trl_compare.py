"""Bench: hicra's iteration side by side with TRL's `GRPOTrainer` (trl 1.16), same model, prompts and settings.

    python bench/trl_compare.py [--model tiny|random] [--rounds 4] [--warmup 1] [--prompts 16] [--group 4]
                                [--max-new-tokens 128]

Both sides run on the CPU in this one process, in alternating rounds (hicra, TRL, hicra, TRL, ...), so machine
load hits both alike; each round is one iteration: `prompts` x `group` responses (temperature 1, no top-p/top-k),
rewards from hicra's verifier (the same warm worker pool for both), then 2 optimizer steps of 32 sequences
(micro-batches of 16) with clip-higher (eps 0.2 / 0.28), token-mean loss (TRL: `loss_type="dapo"`), mean-centred
group advantages (TRL: `scale_rewards="none"`), no KL (beta 0), AdamW at lr 1e-4, constant.

The model (`--model`): `tiny` is the embedded tiny policy itself (hicra.tiny.build_tiny_policy(), warmed up: its
responses end and get mixed rewards, so advantages and losses are non-zero); `random` is a Llama of the same config
and tokenizer, freshly initialised (seed 0): every response runs to max-new-tokens and every reward is 0.

What is timed. hicra: its real code path in process, what the rollout, verify and update stages run, without the
warehouse: `HFGenerator` loaded from the last checkpoint's HF folder ("load policy"), its `generate` ("generate"),
`Verifier.score` + `shaped_reward` ("reward"), then `hicra.update.run_update` with the "grpo" estimator (the DeepSpeed
engine built and resumed from the last checkpoint, the old-policy pass, the optimizer steps, the checkpoint save;
PolicyTrainer's methods are timed by a subclass put in its place for the bench). TRL: one trainer for all rounds
(`trainer.train()` once, max_steps = 2 x rounds), a round is the wall time from the end of its previous round's last
optimizer step to the end of its own (its hicra round between them is not counted): "generate" is `_generate`
(tokenise, `model.generate`, decode), "reward" `_calculate_rewards`, "old log-probs" its no-grad pass, and
"optimizer steps" the rest of the round (forward, backward and step of the 4 micro-batches, the Trainer's loop).
"train step" is one optimizer step (optimizer steps / 2); "update" is all but load, generate and reward.

Loss agreement: TRL's first batch (its completions, rewards and old log-probs) is fed to hicra's trainer
(hicra.trainer.PolicyTrainer over the same initial weights, its loss `core_algos.clipped_policy_loss` and its
`aggregate_loss` normalisation): hicra's loss of TRL's first optimizer step (the same rows) must equal TRL's. TRL's
"dapo" normaliser is the generation batch's token count x grad-accumulation / steps-per-generation (the mean tokens
of an optimizer step), hicra's the step's own token count; the check compares at TRL's normaliser and prints both.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM, PrinterCallback, TrainerCallback  # noqa: E402

import hicra.update  # noqa: E402
from hicra.core_algos import AdvantageConfig, get_advantage_fn  # noqa: E402
from hicra.generate import HFGenerator, derive_seed  # noqa: E402
from hicra.prompts import render_prompt  # noqa: E402
from hicra.rewards import RewardConfig, shaped_reward  # noqa: E402
from hicra.tiny import build_tiny_policy, synthetic_problems  # noqa: E402
from hicra.trainer import PolicyTrainer, Rollouts, UpdateConfig  # noqa: E402
from hicra.update import UpdateRequest, run_update  # noqa: E402
from hicra.verifier import Verifier  # noqa: E402
from schemas.config import VerifierSection  # noqa: E402

RewardFn = Callable[[list[str], list[list[int]], list[str]], list[float]]
"""(completion texts, completion token ids, reference answers) -> one reward per completion."""


@dataclass(frozen=True)
class Settings:
    """What both sides share: batch shape, sampling and the loss's settings."""

    prompts: int = 16
    group: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    mini_batch: int = 32  # sequences per optimizer step
    micro_batch: int = 16  # sequences per forward/backward
    lr: float = 1e-4
    clip_low: float = 0.2
    clip_high: float = 0.28
    seed: int = 0

    @property
    def sequences(self) -> int:
        return self.prompts * self.group

    @property
    def steps(self) -> int:
        """Optimizer steps per iteration."""
        return -(-self.sequences // self.mini_batch)

    def update_config(self, seed: int) -> UpdateConfig:
        """hicra's trainer settings (its defaults are token-mean, no KL, no entropy bonus)."""
        return UpdateConfig(
            lr=self.lr, mini_batch_size=self.mini_batch, micro_batch_size=self.micro_batch, clip_low=self.clip_low,
            clip_high=self.clip_high, loss_agg="token-mean", kl_coef=0.0, temperature=self.temperature,
            norm_length=self.max_new_tokens, seed=seed,
        )  # fmt: skip


def random_policy(source: Path, folder: Path, seed: int) -> Path:
    """A freshly initialised Llama with the config and tokenizer of the policy in `source`, saved in `folder`."""
    torch.manual_seed(seed)
    LlamaForCausalLM(AutoConfig.from_pretrained(source)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def verifier_reward(verifier: Verifier, max_length: int) -> RewardFn:
    """hicra's reward: the verifier's verdict shaped by `shaped_reward` (the default RewardConfig)."""

    def reward(texts: list[str], ids: list[list[int]], answers: list[str]) -> list[float]:
        results = verifier.score(texts, answers)
        return [
            shaped_reward(r.reward > 0, r.extracted is not None, len(t), max_length, RewardConfig())
            for r, t in zip(results, ids, strict=True)
        ]

    return reward


@contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to `seconds[name]` (a defaultdict(float), or a dict that has `name`)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


class TimedTrainer(PolicyTrainer):
    """hicra's PolicyTrainer with the wall time of each of its phases added to `TimedTrainer.seconds`."""

    seconds: dict[str, float] = defaultdict(float)

    def __init__(self, *args, **kwargs):
        with timed(self.seconds, "engine build"):
            super().__init__(*args, **kwargs)

    def old_logprobs(self, rollouts):
        with timed(self.seconds, "old log-probs"):
            return super().old_logprobs(rollouts)

    def update(self, *args, **kwargs):
        with timed(self.seconds, "optimizer steps"):
            return super().update(*args, **kwargs)

    def save(self, *args, **kwargs):
        with timed(self.seconds, "checkpoint save"):
            super().save(*args, **kwargs)


@contextmanager
def timed_update() -> Iterator[dict[str, float]]:
    """Let `run_update` build a TimedTrainer; yields the seconds of its phases."""
    TimedTrainer.seconds = defaultdict(float)
    hicra.update.PolicyTrainer = TimedTrainer
    try:
        yield TimedTrainer.seconds
    finally:
        hicra.update.PolicyTrainer = PolicyTrainer


class HicraIterations:
    """hicra's iterations in this process, chained: each generates with and resumes from the previous checkpoint."""

    def __init__(self, base: Path, settings: Settings, reward: RewardFn, workdir: Path):
        self.base, self.settings, self.reward, self.workdir = base, settings, reward, workdir
        self.policy, self.resume = base, None
        self.rounds: list[dict[str, float]] = []

    def run(self, problems: list[dict]) -> dict[str, float]:
        s, iteration = self.settings, len(self.rounds)
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        generator = HFGenerator(self.policy, device="cpu")
        texts = [render_prompt(p["problem"], generator.tokenizer) for p in problems]
        prompt_ids = generator.encode_prompts(texts)
        jobs = [(g, k) for g in range(len(problems)) for k in range(s.group)]
        seeds = [derive_seed("trl-bench", s.seed, iteration, g, k) for g, k in jobs]
        seconds["load policy"] = time.perf_counter() - started
        with timed(seconds, "generate"):
            outs = generator.generate(
                [prompt_ids[g] for g, _ in jobs], seeds, s.max_new_tokens, s.temperature, 1.0, batch_size=s.sequences
            )
        with timed(seconds, "reward"):
            rewards = self.reward(
                [o.text for o in outs], [o.token_ids for o in outs], [problems[g]["answer"] for g, _ in jobs]
            )
        save_to = self.workdir / f"hicra-{iteration}"
        request = UpdateRequest(
            base_model_dir=str(self.base), resume_from=self.resume, save_to=str(save_to),
            prompt_ids=[prompt_ids[g] for g, _ in jobs], response_ids=[o.token_ids for o in outs],
            planning=[[0] * len(o.token_ids) for o in outs], rewards=rewards, group_index=[g for g, _ in jobs],
            pad_id=generator.pad_id, advantage="grpo", advantage_config=AdvantageConfig(adv_norm="mean"),
            trainer=s.update_config(derive_seed("trl-bench-update", s.seed, iteration)),
        )  # fmt: skip
        del generator
        with timed(seconds, "update"), timed_update() as phases:
            run_update(request)
        seconds.update(phases)
        seconds["iteration"] = time.perf_counter() - started
        self.policy, self.resume = save_to / "hf", str(save_to / "deepspeed")
        self.rounds.append(seconds)
        return seconds


def trl_trainer(model: Path, settings: Settings, problems: list[dict], reward: RewardFn, out: Path, steps: int):
    """A `BenchGRPOTrainer` over `problems` in order (one generation batch of settings.prompts per iteration)."""
    from datasets import Dataset
    from trl import GRPOConfig

    s = settings
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=s.mini_batch // s.micro_batch,
        steps_per_generation=s.sequences // s.micro_batch, num_generations=s.group,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0, top_k=0,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", beta=0.0, epsilon=s.clip_low, epsilon_high=s.clip_high, loss_type="dapo",
        scale_rewards="none", num_iterations=1, max_steps=steps, shuffle_dataset=False, logging_strategy="no",
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [{"prompt": render_prompt(p["problem"], tokenizer), "answer": p["answer"]} for p in problems]

    def verified(prompts, completions, completion_ids, answer, **_):
        return reward(completions, completion_ids, answer)

    trainer = _trainer_class()(
        model=str(model), reward_funcs=[verified], args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary dict
    return trainer


@functools.cache
def _trainer_class() -> type:
    """`BenchGRPOTrainer`, defined on first use so that this module imports without trl."""
    from trl import GRPOTrainer

    class BenchGRPOTrainer(GRPOTrainer):
        """GRPOTrainer timing its phases into `seconds` and keeping its first generation batch and first-step loss.

        `first_batch`: the scored batch (B rows in generation order: prompt_ids/prompt_mask left-padded,
        completion_ids/completion_mask, advantages (B,), old_per_token_logps (B, C) or absent, rewards (B,)).
        `first_step`: (row index, loss) of each micro-batch of the first optimizer step.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seconds: dict[str, float] = defaultdict(float)
            self.first_batch: dict | None = None
            self.first_step: list[tuple[torch.Tensor, float]] = []
            self._rewards: torch.Tensor | None = None

        def _generate(self, prompts):
            with timed(self.seconds, "generate"):
                return super()._generate(prompts)

        def _calculate_rewards(self, *args, **kwargs):
            with timed(self.seconds, "reward"):
                out = super()._calculate_rewards(*args, **kwargs)
            self._rewards = out[:, 0].detach().clone()
            return out

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            started = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            if not torch.is_grad_enabled():
                self.seconds["old log-probs"] += time.perf_counter() - started
            return out

        def _generate_and_score_completions(self, inputs):
            with timed(self.seconds, "generate and score"):
                out = super()._generate_and_score_completions(inputs)
            if self.first_batch is None:
                self.first_batch = {k: v.clone() for k, v in out.items() if isinstance(v, torch.Tensor)}
                self.first_batch["rewards"] = self._rewards
                out["bench_row"] = torch.arange(len(out["advantages"]))  # follows the rows through the shuffle
            return out

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            if "bench_row" in inputs and len(self.first_step) < self.args.gradient_accumulation_steps:
                self.first_step.append((inputs["bench_row"].clone(), float(loss.detach())))
            return loss

    return BenchGRPOTrainer


class Alternate(TrainerCallback):
    """Times TRL's rounds (`steps` optimizer steps each) and runs `between(k)` after round k, outside the timing."""

    def __init__(self, trainer, steps: int, between: Callable[[int], None]):
        self.trainer, self.steps, self.between = trainer, steps, between
        self.rounds: list[dict[str, float]] = []
        self.started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps:
            return
        seconds = dict(self.trainer.seconds)
        seconds["iteration"] = time.perf_counter() - self.started
        seconds["optimizer steps"] = seconds["iteration"] - seconds.pop("generate and score")
        seconds["update"] = seconds["iteration"] - seconds["generate"] - seconds["reward"]
        self.rounds.append(seconds)
        self.trainer.seconds.clear()
        self.between(len(self.rounds))
        self.started = time.perf_counter()


@dataclass
class LossCheck:
    trl: float  # TRL's loss of its first optimizer step (the sum of its micro-batches' losses)
    hicra: float  # hicra's loss of the same rows, at its own normaliser (the step's token count)
    step_tokens: int  # hicra's normaliser
    trl_normaliser: float  # TRL's
    advantage_diff: float  # max |hicra's advantages - TRL's| over the batch
    old_logprob_diff: float | None  # max |hicra's old-policy log-probs - TRL's| (None: TRL computed none)

    @property
    def hicra_at_trl_normaliser(self) -> float:
        return self.hicra * self.step_tokens / self.trl_normaliser

    @property
    def difference(self) -> float:
        return abs(self.hicra_at_trl_normaliser - self.trl)


def hicra_loss_of_trl_step(model: Path, batch: dict, first_step, settings: Settings) -> LossCheck:
    """hicra's trainer on TRL's first batch (same completions, rewards and old log-probs): its first-step loss."""
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    completion_mask = batch["completion_mask"].bool()
    responses = [ids[m].tolist() for ids, m in zip(batch["completion_ids"], completion_mask, strict=True)]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rollouts = Rollouts(prompts, responses, tokenizer.pad_token_id)
    n, width = rollouts.response_ids.shape
    group_index = torch.arange(n) // settings.group  # TRL's sampler repeats each prompt group-size times in a row
    zeros = torch.zeros(n, width)
    advantages, _ = get_advantage_fn("grpo")(
        batch["rewards"].float(), group_index, rollouts.response_mask, zeros, zeros, AdvantageConfig(adv_norm="mean")
    )
    rows = torch.cat([r for r, _ in first_step])
    config = replace(settings.update_config(0), mini_batch_size=len(rows))
    trainer = PolicyTrainer(model, config)
    own_old, _, _ = trainer.old_logprobs(rollouts)
    old, old_diff = own_old, None
    if "old_per_token_logps" in batch:
        trl_old = batch["old_per_token_logps"][:, :width] * completion_mask[:, :width]
        old = torch.zeros(n, width)
        old[:, : trl_old.shape[1]] = trl_old
        old_diff = float((old - own_old).abs().max())
    steps = trainer.update(rollouts.subset(rows), advantages[rows], old[rows])
    trl_advantages = batch["advantages"][:, None] * rollouts.response_mask
    accumulation = settings.mini_batch // settings.micro_batch
    steps_per_generation = settings.sequences // settings.micro_batch
    return LossCheck(
        trl=sum(loss for _, loss in first_step),
        hicra=steps[0]["loss"],
        step_tokens=steps[0]["num_tokens"],
        trl_normaliser=float(completion_mask.sum()) * accumulation / steps_per_generation,
        advantage_diff=float((advantages - trl_advantages).abs().max()),
        old_logprob_diff=old_diff,
    )


def trl_first_step_check(model: Path, settings: Settings, reward: RewardFn, out: Path) -> LossCheck:
    """Run TRL's first optimizer step on `model` and compare its loss with hicra's on the same batch."""
    trainer = trl_trainer(model, settings, synthetic_problems(settings.prompts, settings.seed), reward, out, 1)
    trainer.train()
    return hicra_loss_of_trl_step(model, trainer.first_batch, trainer.first_step, settings)


ROWS = ["load policy", "generate", "reward", "old log-probs", "engine build", "optimizer steps", "checkpoint save",
        "update", "iteration"]  # fmt: skip


def _median(rounds: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def print_table(hicra_rounds, trl_rounds, settings: Settings) -> None:
    """Medians over rounds per phase, and the median over round pairs of hicra/TRL; 80 columns."""
    print(f"{'seconds (median)':22} {'hicra':>9} {'TRL':>9} {'hicra/TRL':>10}")
    steps = settings.steps
    for key in [*ROWS, "train step"]:
        if key == "train step":
            h = [r["optimizer steps"] / steps for r in hicra_rounds]
            t = [r["optimizer steps"] / steps for r in trl_rounds]
        else:
            h = [r.get(key) for r in hicra_rounds]
            t = [r.get(key) for r in trl_rounds]
        hm = statistics.median(h) if None not in h else None
        tm = statistics.median(t) if None not in t else None
        ratio = f"{statistics.median(a / b for a, b in zip(h, t, strict=True)):10.2f}" if hm and tm else f"{'-':>10}"
        cells = [f"{v:9.2f}" if v is not None else f"{'-':>9}" for v in (hm, tm)]
        print(f"{key:22} {cells[0]} {cells[1]} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "random"], default="tiny")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="first rounds per side left out of the medians")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.rounds - args.warmup < 1:
        parser.error("--rounds must exceed --warmup")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, called by TRL
    warnings.filterwarnings("ignore", message="OMP_NUM_THREADS")  # accelerate's note on the thread count
    settings = Settings(prompts=args.prompts, group=args.group, max_new_tokens=args.max_new_tokens)
    tiny = build_tiny_policy()
    problems = synthetic_problems(settings.prompts * args.rounds, settings.seed)
    vs = VerifierSection()
    verifier = Verifier(workers=vs.workers, timeout_s=vs.timeout_s, extractors=vs.extractors)
    reward = verifier_reward(verifier, settings.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="hicra-trl-bench-") as tmp:
        workdir = Path(tmp)
        model = tiny if args.model == "tiny" else random_policy(tiny, workdir / "random", settings.seed)
        hicra_side = HicraIterations(model, settings, reward, workdir)

        def hicra_round(k: int) -> None:
            if k:
                print(f"TRL   round {k - 1}: {alternate.rounds[-1]['iteration']:.2f} s", flush=True)
            if k < args.rounds:
                seconds = hicra_side.run(problems[k * settings.prompts : (k + 1) * settings.prompts])
                print(f"hicra round {k}: {seconds['iteration']:.2f} s", flush=True)

        hicra_round(0)
        trainer = trl_trainer(model, settings, problems, reward, workdir / "trl", settings.steps * args.rounds)
        alternate = Alternate(trainer, settings.steps, hicra_round)
        trainer.add_callback(alternate)
        trainer.train()
        check = hicra_loss_of_trl_step(model, trainer.first_batch, trainer.first_step, settings)
    verifier.close()

    print(f"model: {args.model} ({model.name}), {settings.prompts} prompts x {settings.group}, "
          f"{settings.max_new_tokens} new tokens, {settings.steps} steps of {settings.mini_batch}")  # fmt: skip
    print(f"rounds: {args.rounds} per side, alternating, medians over the last {args.rounds - args.warmup}")
    print_table(hicra_side.rounds[args.warmup :], alternate.rounds[args.warmup :], settings)
    print(f"first step loss: TRL {check.trl:.6f}, hicra {check.hicra:.6f} at its normaliser ({check.step_tokens} "
          f"tokens),")  # fmt: skip
    print(f"  {check.hicra_at_trl_normaliser:.6f} at TRL's ({check.trl_normaliser:g} tokens): "
          f"difference {check.difference:.2e}")  # fmt: skip
    old = "n/a" if check.old_logprob_diff is None else f"{check.old_logprob_diff:.2e}"
    print(f"  max |advantage diff| {check.advantage_diff:.2e}, max |old log-prob diff| {old}")
    assert check.difference <= 1e-5 + 1e-4 * abs(check.trl), "hicra's first-step loss differs from TRL's"


if __name__ == "__main__":
    main()
