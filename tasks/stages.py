"""The stage tasks of one iteration: rollout -> verify -> annotate -> update, each committed atomically."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import AutoTokenizer

from hicra.cache import resolve_model_path
from hicra.core_algos import AdvantageConfig, group_advantage, mixed_groups
from hicra.data import (
    DataError,
    Problem,
    Source,
    load_training_mixture,
    mixture_position,
    mixture_prompts,
    refill_prompts,
)
from hicra.generate import Generator, HFGenerator, VLLMGenerator, derive_seed
from hicra.grams import GramMatcher, annotate, grams_version
from hicra.metrics import conditional_entropy, fork_overlap, semantic_entropy, token_class_stats
from hicra.prompts import render_prompt
from hicra.rewards import RewardConfig, shaped_reward
from hicra.smollm2 import smollm2_policy
from hicra.tiny import build_tiny_policy, strategy_of
from hicra.trainer import UpdateConfig
from hicra.update import NodeLaunch, UpdateRequest, open_trainer, run_update, run_update_distributed
from schemas.config import ConfigError, RunConfig, from_sections
from schemas.tables import (
    AdvantageRow,
    CheckpointRow,
    MetricRow,
    PlanningRow,
    RolloutRow,
    ScoreRow,
    TrainStepRow,
    to_table,
)
from tasks.common import console, local_checkpoint, policy_dir, progress_bar, shared_verifier, stage_task
from tasks.mining import planning_grams, planning_strategies, run_placebo_grams
from tasks.resident import resident
from warehouse.store import Warehouse


@task(name="prepare-policy", task_run_name="{config.run.id}-prepare-policy", cache_policy=NO_CACHE)
def prepare_policy(config: RunConfig) -> str:
    """The base model folder: the embedded tiny policy or SmolLM2 (built once, then cached), the configured HF folder,
    or a hub id's snapshot (downloaded here, at run time, into the HF cache)."""
    if config.model.kind == "hf":
        return str(resolve_model_path(config.model.path))
    if config.model.kind == "smollm2":
        with console.status("converting SmolLM2-135M-Instruct from GGUF (first run only, then cached)"):
            return str(smollm2_policy())
    with console.status("building the tiny policy (first run only, then cached)") as status:

        def progress(step: int, total: int, loss: float) -> None:
            status.update(f"warming up the tiny policy: step {step}/{total}, loss {loss:.3f}")

        tiny = config.model.tiny
        seed = config.run.seed if tiny.seed is None else tiny.seed
        path = build_tiny_policy(**tiny.model_dump(exclude={"seed"}), seed=seed, progress=progress)
    return str(path)


def _data_position(config: RunConfig, sizes: dict[str, int], iteration: int) -> dict:
    """Where iteration `iteration` starts reading each training source (hicra.data.mixture_position)."""
    run, weights = config.run, {s.name: s.weight for s in config.data.sources} or {"": 1.0}
    return mixture_position(sizes, weights, config.rollout.prompts_per_iteration, config.order_key, run.seed, iteration)


def _check_data_position(store: Warehouse, config: RunConfig, iteration: int, sizes: dict[str, int]) -> None:
    """The data position saved with the previous checkpoint must be the one (run, iteration, seed) give now: else
    a dataset changed size since, and the run would not draw the prompts its first start would have."""
    saved = store.read_commit(config.run.id, iteration - 1, "update") if iteration > 0 else None
    expected = _data_position(config, sizes, iteration)
    position = saved.info.get("data_position") if saved else None
    if position is not None and {k: position.get(k) for k in expected} != expected:
        raise DataError(
            f"run {config.run.id!r} iteration {iteration}: the checkpoint of iteration {iteration - 1} saved data "
            f"position {position['cursor']} of {position['dataset_size']} prompts, but the dataset now has "
            f"{sum(sizes.values())} prompts (it changed since the run started); use a new run id"
        )


def _context_limit(store: Warehouse, config: RunConfig, iteration: int) -> int:
    """This iteration's response limit: rollout.max_new_tokens, or with context growth rollout.grow_max_new_tokens
    from the iteration after one whose clip rate (share of responses with finish_reason `length`) exceeded
    rollout.grow_clip_rate. Read from the previous iteration's committed rollouts, so a resumed run gets the same."""
    ro = config.rollout
    if ro.grow_max_new_tokens is None or iteration == 0:
        return ro.max_new_tokens
    if store.read_commit(config.run.id, iteration - 1, "rollout").info.get("max_new_tokens") == ro.grow_max_new_tokens:
        return ro.grow_max_new_tokens
    reasons = store.read_table("rollouts", config.run.id, iteration - 1).column("finish_reason").to_pylist()
    clipped = sum(r == "length" for r in reasons) / max(len(reasons), 1)
    return ro.grow_max_new_tokens if clipped > ro.grow_clip_rate else ro.max_new_tokens


def _used_limit(store: Warehouse, config: RunConfig, iteration: int) -> int:
    """The response limit the iteration's rollout used (recorded in its commit; older rollouts: the config's)."""
    info = store.read_commit(config.run.id, iteration, "rollout").info
    return info.get("max_new_tokens", config.rollout.max_new_tokens)


@stage_task("rollout", gpu=True)
def rollout(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> str:
    """Sample G responses for each of the iteration's prompts with the previous iteration's policy (more rounds of
    prompts with DAPO's refill, see `_generate_rounds`), at this iteration's response limit (`_context_limit`)."""
    run = config.run
    mixture = _training_mixture(config)
    sizes = {source.name: len(source.problems) for source in mixture}
    _check_data_position(store, config, iteration, sizes)
    limit = _context_limit(store, config, iteration)
    generator = _generator(store, config, iteration, base_model_dir)
    rows, rounds = _generate_rounds(config, iteration, generator, mixture, limit)
    clip_rate = sum(r.finish_reason == "length" for r in rows) / len(rows)
    metrics = {"max_new_tokens": float(limit), "clip_rate": clip_rate, "generation_rounds": float(rounds)}
    # dataset sizes: for the data position the update saves (no second dataset load); the limit: for verify, update
    info = {"dataset_size": sum(sizes.values()), "dataset_sizes": sizes, "max_new_tokens": limit, "rounds": rounds}
    tables = {"rollouts": to_table(RolloutRow, rows), "metrics": _metrics_table(config, iteration, "rollout", metrics)}
    store.commit_stage(run.id, iteration, "rollout", tables, info)
    return f"{len(rows)} responses, {sum(r.response_length for r in rows)} tokens"


def _training_mixture(config: RunConfig) -> list[Source]:
    """The run's training sources: loaded here, or once per run where the training flow keeps them resident."""

    def load() -> list[Source]:
        return load_training_mixture(config.data, config.run.seed)

    held = resident(config)
    return load() if held is None else held.training_mixture(load)


def _generate_rounds(
    config: RunConfig, iteration: int, generator: Generator, mixture: list[Source], limit: int
) -> tuple[list[RolloutRow], int]:
    """The iteration's rollouts and the number of generation rounds they took.

    Round 1 samples the iteration's prompts. With DAPO's refill (algorithm.dynamic_sampling_rounds > 1) each round
    is scored here and, while fewer than prompts_per_iteration groups have mixed rewards, round r + 1 samples
    `refill_prompts` for round r (seeded by run, seed, iteration, round; none drawn before in the iteration). Group g
    came from round g // prompts_per_iteration + 1; every round's rollouts are kept (the update drops equal groups).
    """
    run, ro, rounds = config.run, config.rollout, config.algorithm.dynamic_sampling_rounds
    prompts = mixture_prompts(mixture, ro.prompts_per_iteration, config.order_key, run.seed, iteration)
    rows: list[RolloutRow] = []
    rewards: list[float] = []
    for round_ in range(1, rounds + 1):
        rows += _sample(config, iteration, generator, prompts, len(rows) // ro.group_size, limit)
        if round_ == rounds:
            break
        new = to_table(RolloutRow, rows[len(rewards) :]).to_pydict()
        rewards += [score.reward for score in _score(config, iteration, new, limit)]
        groups = torch.tensor([r.group_index for r in rows])
        if len(groups[mixed_groups(torch.tensor(rewards), groups)].unique()) >= ro.prompts_per_iteration:
            break
        used = {r.prompt_id for r in rows}
        prompts = refill_prompts(mixture, ro.prompts_per_iteration, config.order_key, run.seed, iteration, round_, used)
        if not prompts:
            break
    return rows, round_


def _sample(
    config: RunConfig, iteration: int, generator: Generator, prompts: list[Problem], first_group: int, limit: int
) -> list[RolloutRow]:
    """G responses to each prompt, as rollouts of groups first_group, first_group + 1, ..."""
    run, ro = config.run, config.rollout
    texts = [
        render_prompt(
            p.problem, generator.tokenizer, config.data.template_for(p.source), config.data.use_chat_template,
            p.messages,
        )
        for p in prompts
    ]  # fmt: skip
    prompt_ids = generator.encode_prompts(texts)
    jobs = [(g, s) for g in range(len(prompts)) for s in range(ro.group_size)]
    seeds = [derive_seed("sample", run.id, run.seed, iteration, prompts[g].id, s) for g, s in jobs]
    with progress_bar(f"iteration {iteration} rollout", len(jobs), "responses") as advance:

        def progress(done: int, tokens: int) -> None:
            advance(done, f"{tokens} tokens")

        outputs = generator.generate(
            [prompt_ids[g] for g, _ in jobs], seeds, limit, ro.temperature, ro.top_p, ro.batch_size, progress
        )
    return [
        RolloutRow(
            run_id=run.id,
            iteration=iteration,
            rollout_id=f"{run.id}/{iteration}/{first_group + g}/{s}",
            prompt_id=prompts[g].id,
            group_index=first_group + g,
            sample_index=s,
            prompt=texts[g],
            reference=prompts[g].answer,
            prompt_token_ids=prompt_ids[g],
            response=out.text,
            response_token_ids=out.token_ids,
            sampler_logprobs=out.logprobs,
            finish_reason=out.finish_reason,
            response_length=len(out.token_ids),
            seed=seed,
            policy_iteration=iteration - 1,
        )
        for (g, s), seed, out in zip(jobs, seeds, outputs, strict=True)
    ]


def _generator(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> Generator:
    """The configured rollout backend over the policy that generates iteration `iteration` (`policy_dir`); the
    transformers one kept resident across iterations when the training flow holds the policy (tasks.resident)."""
    ro, model_dir = config.rollout, policy_dir(store, config, iteration, base_model_dir)
    held = resident(config)
    if ro.backend == "hf" and held is not None:
        update = store.read_commit(config.run.id, iteration - 1, "update") if iteration > 0 else None
        return held.generator(update, lambda: HFGenerator(model_dir))
    if ro.backend == "vllm":
        return VLLMGenerator(
            model_dir,
            python=ro.python,
            tensor_parallel_size=ro.tensor_parallel_size,
            gpu_memory_utilization=ro.gpu_memory_utilization,
            dtype=ro.dtype,
            enforce_eager=ro.enforce_eager,
            env=ro.worker_env,
            timeout_s=ro.worker_timeout_s,
        )
    return HFGenerator(model_dir)


@stage_task("verify")
def verify(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> str:
    """Score every rollout against its reference with math-verify in worker processes under a deadline."""
    rollouts = store.read_table("rollouts", config.run.id, iteration).to_pydict()
    rows = _score(config, iteration, rollouts, _used_limit(store, config, iteration))
    store.commit_stage(config.run.id, iteration, "verify", {"scores": to_table(ScoreRow, rows)})
    return f"{len(rows)} scored, {sum(r.status != 'ok' for r in rows)} not ok"


def _score(config: RunConfig, iteration: int, rollouts: dict[str, list], max_length: int) -> list[ScoreRow]:
    """The verifier's verdicts and shaped rewards of rollouts (columns rollout_id, response, reference and
    response_length)."""
    vc = config.verifier
    verifier = shared_verifier(vc.workers, vc.timeout_s, tuple(vc.extractors))
    with progress_bar(f"iteration {iteration} verify", len(rollouts["response"]), "graded") as advance:
        results = verifier.score(rollouts["response"], rollouts["reference"], advance)
    shaping = from_sections(RewardConfig, config.reward)
    return [
        ScoreRow(
            run_id=config.run.id,
            iteration=iteration,
            rollout_id=rid,
            reward=shaped_reward(r.reward > 0, r.extracted is not None, length, max_length, shaping),
            correct=r.reward > 0,
            status=r.status,
            extracted=r.extracted,
            detail=r.detail,
            verify_seconds=r.seconds,
        )
        for rid, r, length in zip(rollouts["rollout_id"], results, rollouts["response_length"], strict=True)
    ]


@stage_task("annotate")
def annotate_planning(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> str:
    """Mark planning tokens: Strategic Gram matches in the decoded response, mapped to tokens by character spans."""
    rollouts = store.read_table("rollouts", config.run.id, iteration).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    grams = planning_grams(config.planning, store)
    matcher, version = GramMatcher(grams), grams_version(grams)
    rows = [
        PlanningRow(
            run_id=config.run.id,
            iteration=iteration,
            rollout_id=rid,
            planning_mask=mask,
            spans=[{"start": s.start, "end": s.end, "gram": s.gram} for s in spans],
            num_planning_tokens=sum(mask),
            grams_version=version,
            strategy=strategy_of(text) if _is_synthetic(config, pid) else None,
        )
        for rid, pid, text, (spans, mask) in zip(
            rollouts["rollout_id"],
            rollouts["prompt_id"],
            rollouts["response"],
            _annotate_all(rollouts, tokenizer, matcher),
            strict=True,
        )  # fmt: skip
    ]
    texts = rollouts["response"]
    span_lists = [[(s["start"], s["end"], s["gram"]) for s in row.spans] for row in rows]
    metrics = {
        "semantic_entropy": semantic_entropy(span_lists, planning_strategies(config.planning, store)),
        "conditional_entropy": conditional_entropy(texts, span_lists),
    }
    tables = {
        "planning": to_table(PlanningRow, rows),
        "metrics": _metrics_table(config, iteration, "annotate", metrics),
    }
    store.commit_stage(config.run.id, iteration, "annotate", tables)
    share = sum(r.num_planning_tokens for r in rows) / max(1, sum(len(r.planning_mask) for r in rows))
    return f"planning-token share {share:.3f}"


def _annotate_all(rollouts: dict, tokenizer, matcher: GramMatcher) -> list[tuple[list, list[int]]]:
    """Each rollout's gram matches and 0/1 mask over its response tokens (a final eos is never marked)."""
    eos = tokenizer.eos_token_id
    out = []
    for ids in rollouts["response_token_ids"]:
        text_ids = ids[:-1] if ids and ids[-1] == eos else ids
        _, spans, mask = annotate(text_ids, tokenizer, matcher)
        out.append((spans, list(mask) + [0] * (len(ids) - len(text_ids))))
    return out


def _is_synthetic(config: RunConfig, prompt_id: str) -> bool:
    """Whether a prompt is the tiny task's (whose responses announce a strategy): ids of a named source of a mixture
    are `NAME/...`, of the single-source form the dataset's own."""
    if config.data.sources:
        name = prompt_id.partition("/")[0]
        return any(s.name == name and s.source == "synthetic" for s in config.data.sources)
    return config.data.source == "synthetic"


def _by_rollout(table: pa.Table, column: str) -> dict:
    """One column of a per-rollout table as a dict keyed by rollout_id."""
    data = table.select(["rollout_id", column]).to_pydict()
    return dict(zip(data["rollout_id"], data[column], strict=True))


@stage_task("update", gpu=True)
def update(store: Warehouse, config: RunConfig, iteration: int, base_model_dir: str) -> str:
    """Compute advantages and run the DeepSpeed policy update; save the checkpoint and its HF export."""
    run, algo = config.run, config.algorithm
    rollouts = store.read_table("rollouts", run.id, iteration).to_pydict()
    ids = rollouts["rollout_id"]
    reward = _by_rollout(store.read_table("scores", run.id, iteration), "reward")
    planning = _by_rollout(store.read_table("planning", run.id, iteration), "planning_mask")
    # saved with the checkpoint: the next iteration's data position, and the prompts this iteration consumed
    consumed = [p for p, s in zip(rollouts["prompt_id"], rollouts["sample_index"], strict=True) if s == 0]
    info = store.read_commit(run.id, iteration, "rollout").info
    sizes = info.get("dataset_sizes") or {"": info.get("dataset_size")}
    if sizes == {"": None}:  # a rollout committed before rollouts recorded it
        sizes = {source.name: len(source.problems) for source in load_training_mixture(config.data, run.seed)}
    position = {**_data_position(config, sizes, iteration + 1), "consumed_prompt_ids": consumed}
    final = store.checkpoint_dir(run.id, iteration)
    nodes = config.trainer.nodes
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    strategic = [planning[r] for r in ids]
    amplify = strategic  # the mask the estimator credits: planning tokens, or for `placebo` the placebo set's matches
    if algo.advantage == "placebo":
        placebo = GramMatcher(run_placebo_grams(store, config))
        amplify = [mask for _, mask in _annotate_all(rollouts, tokenizer, placebo)]
    held, trainer = resident(config), None
    if held is not None:  # the engine kept since the previous update, if it committed in this process
        trainer = held.take_trainer(store.read_commit(run.id, iteration - 1, "update") if iteration > 0 else None)
    resume = None
    if iteration > 0 and trainer is None:
        resume = str(local_checkpoint(store, run.id, iteration - 1, "deepspeed"))
    with _update_staging(store, config, iteration) as staging:
        request = UpdateRequest(
            base_model_dir=base_model_dir,
            resume_from=resume,
            save_to=str(staging / "checkpoint"),
            prompt_ids=rollouts["prompt_token_ids"],
            response_ids=rollouts["response_token_ids"],
            planning=amplify,
            rewards=[reward[r] for r in ids],
            group_index=rollouts["group_index"],
            pad_id=tokenizer.pad_token_id or 0,
            advantage=algo.advantage,
            advantage_config=from_sections(AdvantageConfig, algo),
            trainer=_update_config(config, iteration),
            dynamic_sampling=algo.dynamic_sampling,
            max_groups=config.rollout.prompts_per_iteration if algo.dynamic_sampling_rounds > 1 else None,
            client_state={"run_id": run.id, "iteration": iteration, "data_position": position},
        )
        processes, launch = config.trainer.num_processes, None
        if nodes.count > 1:
            launch = NodeLaunch(nodes.count, 0, nodes.master)
        if processes == 1 and launch is None:
            trainer = trainer or open_trainer(request)
            result = run_update(request, trainer)
        else:
            result = run_update_distributed(request, processes, staging, launch)
        store.remove(final)  # a killed attempt may have placed its checkpoint there, uncommitted
        store.put_dir(staging / "checkpoint", final)  # renamed into place, or uploaded before the commit

    lengths = result.response_mask.sum(-1).long().tolist()
    rewards, group_index = torch.tensor(request.rewards), torch.tensor(request.group_index)
    sequence_adv = group_advantage(rewards, group_index, algo.adv_norm)
    adv_rows = [
        AdvantageRow(
            run_id=run.id,
            iteration=iteration,
            rollout_id=rid,
            in_update=bool(result.keep[k]),
            sequence_advantage=float(sequence_adv[k]),
            advantage=result.advantages[k, :n].tolist(),
            amplified_mask=result.amplified[k, :n].to(torch.int8).tolist(),
            old_logprob=result.old_logprob[k, :n].tolist(),
            entropy=result.entropy[k, :n].tolist(),
        )
        for k, (rid, n) in enumerate(zip(ids, lengths, strict=True))
    ]
    planning_mask = torch.zeros_like(result.response_mask)  # the Strategic Gram tokens, whatever was amplified
    for row, mask in enumerate(strategic):
        planning_mask[row, : len(mask)] = torch.tensor(mask, dtype=planning_mask.dtype)
    metrics = {
        **token_class_stats(result.entropy, result.old_logprob, planning_mask, result.response_mask),
        **fork_overlap(result.entropy, planning_mask, result.response_mask, algo.entropy_fraction),
        "dropped_groups": float(len(set(group_index[~result.keep].tolist()))),
    }
    checkpoint = CheckpointRow(
        run_id=run.id,
        iteration=iteration,
        hf_path=store.relative(f"{final}/hf"),
        deepspeed_path=store.relative(f"{final}/deepspeed"),
        global_step=result.global_step,
        created_at=dt.datetime.now(dt.UTC),
    )
    steps = [TrainStepRow(run_id=run.id, iteration=iteration, **s) for s in result.steps]
    tables = {
        "advantages": to_table(AdvantageRow, adv_rows),
        "train_steps": to_table(TrainStepRow, steps),
        "checkpoints": to_table(CheckpointRow, [checkpoint]),
        "metrics": _metrics_table(config, iteration, "update", metrics),
    }
    commit = store.commit_stage(run.id, iteration, "update", tables, {"data_position": position})
    if held is not None:
        held.keep_trainer(trainer, commit)
    loss = sum(s.loss for s in steps) / max(len(steps), 1)
    return f"{len(steps)} optimizer steps, loss {loss:.4f}"


@contextmanager
def _update_staging(store: Warehouse, config: RunConfig, iteration: int) -> Iterator[Path]:
    """The update attempt's working folder: on several nodes, a new folder in `trainer.nodes.shared_dir` (every node
    sees it; removed when done), or the warehouse's own staging folder on a folder root; else a local one."""
    nodes = config.trainer.nodes
    if nodes.count == 1 or not nodes.shared_dir:
        if nodes.count > 1 and not store.local:
            raise ConfigError("trainer.nodes.count > 1 with an object-store warehouse needs trainer.nodes.shared_dir")
        with store.local_staging(config.run.id, iteration, "update") as staging:
            yield staging
        return
    staging = Path(nodes.shared_dir) / config.run.id / f"iteration={iteration}" / f"update-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _update_config(config: RunConfig, iteration: int) -> UpdateConfig:
    """The trainer's settings from the run config (the trainer knows nothing of the advantage estimator)."""
    run = config.run
    seed = derive_seed("update", run.id, run.seed, iteration)
    return from_sections(
        UpdateConfig, config.trainer, config.algorithm, config.rollout, norm_length=config.rollout.max_new_tokens,
        seed=seed,
    )  # fmt: skip


def _metrics_table(config: RunConfig, iteration: int, stage: str, values: dict[str, float]) -> pa.Table:
    rows = [
        MetricRow(run_id=config.run.id, iteration=iteration, stage=stage, name=name, value=value)
        for name, value in values.items()
    ]
    return to_table(MetricRow, rows)
