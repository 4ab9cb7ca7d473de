"""Benchmark evaluation: load a suite, sample answers from a checkpoint under a fixed protocol, grade them.

The paper's protocol (ALGORITHM.md section 6, after DeepSeek-R1): temperature 0.6, top-p 0.95, the mean reward over
32 samples on AIME24/25 and 4 on AMC23 (one elsewhere), strict matching of the last `\\boxed{}`. Every sample's seed
derives from (checkpoint, suite, problem, sample), so an evaluation is reproducible whatever the batching.
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

from hicra.data import DataError
from hicra.generate import Generation, HFGenerator, derive_seed
from hicra.prompts import render_prompt
from hicra.tiny import synthetic_problems
from hicra.verifier import Verifier, VerifyResult
from schemas.config import EvalProtocol

BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k")
"""Suites shipped in the shared data folder as `data/benchmarks/<name>.jsonl`."""

SYNTHETIC = "synthetic"
SYNTHETIC_SIZE = 200
"""`synthetic` is the first 200 problems of the tiny task's eval split (`synthetic:N` for another size)."""

DEFAULT_MAX_NEW_TOKENS = 1024
"""Response limit for a model folder outside any run when the protocol sets none."""

_CANDIDATES = {
    "id": ("id", "extra_info.index"),
    "problem": ("problem", "question", "prompt"),
    "answer": ("answer", "reward_model.ground_truth"),
}
"""Row fields tried in order when a `Fields` entry is None: this project's layout, then verl's prompt Parquet."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    references: tuple[str, ...]  # the answer first, then accepted alternatives (all go to the verifier)


@dataclass(frozen=True)
class Suite:
    name: str
    problems: tuple[Problem, ...]
    limit: int | None = None  # the problems are the first `limit` of the source

    def digest(self) -> str:
        """sha256 of the problems as evaluated, so a changed file or slice never reuses old results."""
        text = json.dumps([asdict(p) for p in self.problems], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Fields:
    """Row fields of a problem file (dotted paths reach into structs); None tries `_CANDIDATES` in order."""

    id: str | None = None
    problem: str | None = None
    answer: str | None = None
    alternatives: str = "answer_alternatives"


def shared_root() -> Path:
    """The shared folder: `$HICRA_SHARED`, else `shared/` beside the repository (as hicra.grams resolves it)."""
    shared = os.environ.get("HICRA_SHARED")
    return Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"


def load_suite(spec: str, limit: int | None = None, fields: Fields | None = None) -> Suite:
    """A suite's problems (the first `limit` when given); a missing file or a bad row is a `DataError`.

    `spec`: a name in BENCHMARKS (from the shared folder), `synthetic` or `synthetic:N` (the tiny task's eval split,
    never trained on), a `.jsonl`/`.json`/`.parquet` file, or `hf:NAME[:SPLIT]` (a Hugging Face dataset, split
    `test` by default; needs the `datasets` package and network).
    """
    fields = fields or Fields()
    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        size = int(spec.partition(":")[2] or SYNTHETIC_SIZE)
        rows = synthetic_problems(min(size, limit or size), seed=0, split="eval")
        name, source = SYNTHETIC if size == SYNTHETIC_SIZE else spec, spec
    elif spec.startswith("hf:"):
        name, source, rows = _name(spec[3:]), spec, _read_hf(spec[3:])
    else:
        path = shared_root() / "data" / "benchmarks" / f"{spec}.jsonl" if spec in BENCHMARKS else Path(spec)
        name, source, rows = (spec if spec in BENCHMARKS else _name(path.stem)), str(path), _read_file(path)
    problems = _problems(rows[:limit] if limit else rows, source, fields)
    return Suite(name, tuple(problems), limit)


def _name(text: str) -> str:
    """A suite name fit for a stage name and a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "suite"


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"suite file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON: {err.msg}") from err
    return rows


def _read_hf(spec: str) -> list[dict]:
    """Rows of a Hugging Face dataset `NAME[:SPLIT]`."""
    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"suite hf:{spec} needs the `datasets` package (pip install 'hicra[hub]')") from err
    try:
        return list(datasets.load_dataset(name, split=split or "test"))
    except Exception as err:  # offline, unknown name or split: the hub's own message says which
        raise DataError(f"could not load Hugging Face dataset {name!r} (offline?): {err}") from err


def _lookup(row: dict, dotted: str) -> Any:
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _pick(rows: list[dict], kind: str, chosen: str | None) -> str | None:
    """The field that holds `kind`: the configured one, else the first candidate present in the first row."""
    if chosen is not None:
        return chosen
    return next((name for name in _CANDIDATES[kind] if _lookup(rows[0], name) is not None), None)


def _text(value: Any) -> str | None:
    """Problem text from a string or from a chat (verl's `prompt`: the last user message)."""
    if isinstance(value, list):
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        value = users[-1] if users else None
    return value if isinstance(value, str) and value.strip() else None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in items if item is not None and str(item).strip()]


def _problems(rows: list[dict], source: str, fields: Fields) -> list[Problem]:
    if not rows:
        raise DataError(f"{source}: no rows")
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{source}: every row must be an object")
    id_field, problem_field = _pick(rows, "id", fields.id), _pick(rows, "problem", fields.problem)
    answer_field = _pick(rows, "answer", fields.answer)
    problems, seen = [], set()
    for number, row in enumerate(rows, start=1):
        text = _text(_lookup(row, problem_field)) if problem_field else None
        references = list(dict.fromkeys(_strings(_lookup(row, answer_field) if answer_field else None)))
        if text is None:
            raise DataError(f"{source}: row {number} has no problem text in '{problem_field or 'problem'}'")
        if not references:
            raise DataError(f"{source}: row {number} has no '{answer_field or 'answer'}'")
        references += [a for a in _strings(_lookup(row, fields.alternatives)) if a not in references]
        raw_id = _lookup(row, id_field) if id_field else None
        problem_id = str(raw_id) if raw_id is not None else str(number - 1)
        if problem_id in seen:
            raise DataError(f"{source}: row {number}: duplicate id {problem_id!r}")
        seen.add(problem_id)
        problems.append(Problem(problem_id, text, tuple(references)))
    return problems


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
    fallbacks: tuple[str, ...]
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
        fallbacks=tuple(protocol.fallbacks),
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
    checkpoint_id: str,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[EvalSample]:
    """Sample `settings.samples` answers per problem and grade each against all of the problem's references."""
    if tuple(verifier.fallbacks) != settings.fallbacks:
        raise ValueError(f"the verifier extracts with {verifier.fallbacks}, the protocol asks for {settings.fallbacks}")
    prompt_ids = generator.encode_prompts([render(p.problem, generator.tokenizer, settings) for p in suite.problems])
    jobs = [(problem, s) for problem in range(len(suite.problems)) for s in range(settings.samples)]
    seeds = [derive_seed("eval", checkpoint_id, suite.name, suite.problems[p].id, s, settings.seed) for p, s in jobs]
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
