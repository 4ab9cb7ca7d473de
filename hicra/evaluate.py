"""Benchmark evaluation: load a suite, sample answers from a checkpoint under a fixed protocol, grade them.

The paper's protocol (arXiv 2509.03646, after DeepSeek-R1): temperature 0.6, top-p 0.95, the mean reward over
32 samples on AIME24/25 and 4 on AMC23 (one elsewhere), strict matching of the last `\\boxed{}`. Every sample's seed
derives from (suite, problem, sample, protocol seed), so an evaluation is reproducible whatever the batching, and
every checkpoint is sampled with the same random numbers (common random numbers): two checkpoints' accuracies differ
by what the policies do, not by which seeds they drew, and one policy evaluated in two runs scores the same.
`SuiteSettings.digest()` names everything that decides a suite's results, the problems evaluated included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hicra.data import Fields, Problem, problems_from_rows, read_rows
from hicra.generate import Generation, HFGenerator, derive_seed
from hicra.prompts import render_prompt
from hicra.tiny import synthetic_problems
from hicra.verifier import FULL_CHAIN, Verifier, VerifyResult
from schemas.config import EvalProtocol

BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k")
"""Suites shipped in the shared data folder as `data/benchmarks/<name>.jsonl`."""

SYNTHETIC = "synthetic"
SYNTHETIC_SIZE = 200
"""`synthetic` is the first 200 problems of the tiny task's eval split (`synthetic:N` for another size)."""

DEFAULT_MAX_NEW_TOKENS = 1024
"""Response limit for a model folder outside any run when the protocol sets none."""


@dataclass(frozen=True)
class Suite:
    name: str
    problems: tuple[Problem, ...]
    limit: int | None = None  # the problems are the first `limit` of the source

    def digest(self) -> str:
        """sha256 of the problems as evaluated, so a changed file or slice never reuses old results."""
        problems = [{"id": p.id, "problem": p.problem, "references": p.references} for p in self.problems]
        text = json.dumps(problems, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def shared_root() -> Path:
    """The shared folder: `$HICRA_SHARED`, else `shared/` beside the repository (as hicra.grams resolves it)."""
    shared = os.environ.get("HICRA_SHARED")
    return Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"


def load_suite(spec: str, limit: int | None = None, fields: Fields | None = None) -> Suite:
    """A suite's problems (the first `limit` when given); a missing file or a bad row is a `DataError`.

    `spec`: a name in BENCHMARKS (from the shared folder), `synthetic` or `synthetic:N` (the tiny task's eval split,
    never trained on), a `.jsonl`/`.json`/`.parquet` file or a `datasets` folder, or `hf:NAME[:SPLIT]` (a Hugging
    Face dataset, split `test` by default; needs the `datasets` package and network). Rows are read by
    `hicra.data`, the loader training prompts use too.
    """
    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        size = int(spec.partition(":")[2] or SYNTHETIC_SIZE)
        rows = list(enumerate(synthetic_problems(min(size, limit or size), seed=0, split="eval"), start=1))
        name, source = SYNTHETIC if size == SYNTHETIC_SIZE else spec, spec
    elif spec.startswith("hf:"):
        name, source, rows = _name(spec[3:]), spec, read_rows(spec, split="test")
    else:
        path = shared_root() / "data" / "benchmarks" / f"{spec}.jsonl" if spec in BENCHMARKS else Path(spec)
        name, source, rows = (spec if spec in BENCHMARKS else _name(path.stem)), str(path), read_rows(path)
    problems = problems_from_rows(rows[:limit] if limit else rows, source, fields)
    return Suite(name, tuple(problems), limit)


def _name(text: str) -> str:
    """A suite name fit for a stage name and a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "suite"


@dataclass(frozen=True)
class SuiteSettings:
    """Everything that decides a suite's results; its digest is the protocol hash of the stored rows."""

    suite: str
    problems: str  # Suite.digest(): the data and the slice
    limit: int | None
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    prompt: str
    template: str | None
    extractors: tuple[str, ...]
    seed: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def suite_settings(protocol: EvalProtocol, suite: Suite, default_max_new_tokens: int) -> SuiteSettings:
    """The protocol as it applies to one suite (its sample count; the response limit resolved)."""
    return SuiteSettings(
        suite=suite.name,
        problems=suite.digest(),
        limit=suite.limit,
        samples=protocol.samples_for(suite.name),
        temperature=protocol.temperature,
        top_p=protocol.top_p,
        max_new_tokens=protocol.max_new_tokens or default_max_new_tokens,
        prompt=protocol.prompt,
        template=protocol.template,
        extractors=tuple(protocol.extractors or FULL_CHAIN),
        seed=protocol.seed,
    )


def render(problem: str, tokenizer: Any, settings: SuiteSettings) -> str:
    """The prompt text: the chat template (`auto`: when the tokenizer has one) or the plain template."""
    chat = settings.prompt == "chat" or (settings.prompt == "auto" and bool(getattr(tokenizer, "chat_template", None)))
    return render_prompt(problem, tokenizer, settings.template, use_chat_template=chat)


@dataclass(frozen=True)
class EvalSample:
    """One graded answer: which problem and sample, its seed, what was generated and the verifier's verdict."""

    problem: Problem
    sample_index: int
    seed: int
    generation: Generation
    result: VerifyResult


def evaluate_suite(
    generator: HFGenerator,
    verifier: Verifier,
    suite: Suite,
    settings: SuiteSettings,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> list[EvalSample]:
    """Sample `settings.samples` answers per problem and grade each against all of the problem's references."""
    if verifier.extractors != settings.extractors:
        raise ValueError(
            f"the verifier extracts with {verifier.extractors}, the protocol asks for {settings.extractors}"
        )
    prompt_ids = generator.encode_prompts([render(p.problem, generator.tokenizer, settings) for p in suite.problems])
    jobs = [(problem, s) for problem in range(len(suite.problems)) for s in range(settings.samples)]
    seeds = [derive_seed("eval", suite.name, suite.problems[p].id, s, settings.seed) for p, s in jobs]
    outputs = generator.generate(
        [prompt_ids[p] for p, _ in jobs],
        seeds,
        settings.max_new_tokens,
        settings.temperature,
        settings.top_p,
        batch_size,
        progress,
    )
    results = verifier.score([out.text for out in outputs], [list(suite.problems[p].references) for p, _ in jobs])
    return [
        EvalSample(suite.problems[p], s, seed, out, result)
        for (p, s), seed, out, result in zip(jobs, seeds, outputs, results, strict=True)
    ]


def mean_reward(samples: Sequence[EvalSample]) -> float:
    """avg@k, the paper's Pass@1: the mean reward over every sample of every problem."""
    return sum(s.result.reward for s in samples) / max(len(samples), 1)
