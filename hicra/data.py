"""Problem datasets, the one loader that training prompts and evaluation suites share, and the prompt choice.

Readers: JSONL, a JSON list, Parquet (verl's RL layout among others), a Hugging Face `datasets` folder written by
`save_to_disk`, and `hf:NAME[:SPLIT]` from the hub. Every row becomes a `Problem`; a bad row is a `DataError` that
names the file, the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from hicra.generate import derive_seed
from schemas.config import DataSection, DataSource, SourceFields


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Problem:
    """One problem: its text (a chat's last user message), the references the verifier accepts (the answer first),
    and the source's chat messages when it has them (verl and TRL conversational prompts)."""

    id: str
    problem: str
    references: tuple[str, ...]
    messages: tuple[dict[str, str], ...] | None = None
    source: str = ""  # the mixture source it came from ("" for the single-source form)

    @property
    def answer(self) -> str:
        return self.references[0]


@dataclass(frozen=True)
class Fields:
    """Row fields of a problem dataset (dotted paths reach into structs); None takes the first of the field's
    candidates (`CANDIDATES`) that the first row has."""

    id: str | None = None
    problem: str | None = None
    answer: str | None = None
    alternatives: str = "answer_alternatives"


Candidates = dict[str, tuple[str, ...]]
CANDIDATES: Candidates = {
    "id": ("id", "extra_info.index"),
    "problem": ("problem", "question", "prompt"),
    "answer": ("answer", "reward_model.ground_truth", "solution"),
}
"""Fields tried in order when a `Fields` entry is None: this project's layout, verl's, then TRL's `solution`."""

TRL_CANDIDATES: Candidates = {**CANDIDATES, "problem": ("prompt", "problem", "question")}
"""A TRL-style dataset: its `prompt` (a string or chat messages) first."""

VERL_FIELDS = Fields(id="extra_info.index", problem="prompt", answer="reward_model.ground_truth")
"""verl's RL Parquet layout (its examples/data_preprocess scripts): chat messages in `prompt`, the answer in
`reward_model.ground_truth`, the index in `extra_info.index` (when a row has none, its row number)."""

Rows = list[tuple[int, dict]]
"""(number, row) pairs: the line of a JSONL file, else the row counted from 1."""


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a missing file, a line that is not JSON or not
    an object is a `DataError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON: {err.msg}") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield number, row


def read_rows(spec: str | Path, kind: Literal["auto", "jsonl", "parquet"] = "auto", split: str = "train") -> Rows:
    """The rows of a dataset: `hf:NAME[:SPLIT]` (the hub, split `split` by default; needs `datasets` and network),
    a `datasets` folder (`save_to_disk`), a `.parquet` file, a `.json` file (a list of rows, or JSON lines), any
    other file as JSON lines. `kind` forces a file format."""
    text = str(spec)
    if kind == "auto" and text.startswith("hf:"):
        name, _, hub_split = text[3:].partition(":")
        datasets = _datasets(text)
        try:
            dataset = datasets.load_dataset(name, split=hub_split or split)
        except Exception as err:  # offline, unknown name or split: the hub's own message says which
            raise DataError(f"could not load Hugging Face dataset {name!r} (offline?): {err}") from err
        return list(enumerate(dataset.to_list(), start=1))
    path = Path(spec).expanduser()
    if kind == "auto" and path.is_dir():
        return list(enumerate(_load_from_disk(path).to_list(), start=1))
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    if kind == "parquet" or (kind == "auto" and path.suffix == ".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file: {err}") from err
    if kind == "auto" and path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                return list(enumerate(json.loads(text), start=1))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not a valid JSON list: {err}") from err
    return list(read_jsonl(path))


def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"{what} needs the `datasets` package (pip install 'hicra[hub]')") from err
    return datasets


def _load_from_disk(path: Path) -> Any:
    """A dataset folder written by `Dataset.save_to_disk`; a `DatasetDict` folder names its splits."""
    datasets = _datasets(f"the dataset folder {path}")
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path}: not a Hugging Face dataset folder (written by save_to_disk): {err}") from err
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(f"{path / name}" for name in dataset)
        raise DataError(f"{path} holds several splits: name one of their folders ({splits})")
    return dataset


def _lookup(row: dict, dotted: str) -> Any:
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _pick(row: dict, kind: str, chosen: str | None, candidates: Candidates) -> str | None:
    """The field that holds `kind`: the configured one, else the first candidate present in `row`."""
    if chosen is not None:
        return chosen
    return next((name for name in candidates[kind] if _lookup(row, name) is not None), None)


def _messages(value: Any) -> tuple[dict[str, str], ...] | None:
    """Chat messages ({role, content} with string content) of a conversational prompt, else None."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(m, dict) and {type(m.get("role")), type(m.get("content"))} == {str} for m in value):
        return None
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def _text(value: Any, messages: tuple[dict[str, str], ...] | None) -> str | None:
    """Problem text from a string or from a chat: its last user message."""
    if messages is not None:
        users = [m["content"] for m in messages if m["role"] == "user"]
        value = users[-1] if users else None
    return value if isinstance(value, str) and value.strip() else None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in items if item is not None and str(item).strip()]


def problems_from_rows(
    rows: Rows, source: str, fields: Fields | None = None, candidates: Candidates = CANDIDATES
) -> list[Problem]:
    """Problems from numbered rows; a row without problem text or answer, or a duplicate id, is a `DataError`.

    The id is the id field's value, else the row's position from 0 (verl's `extra_info.index` convention).
    """
    fields = fields or Fields()
    if not rows:
        raise DataError(f"{source}: no rows")
    for number, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{source}: row {number}: expected an object with fields")
    first = rows[0][1]
    id_field = _pick(first, "id", fields.id, candidates)
    problem_field = _pick(first, "problem", fields.problem, candidates)
    answer_field = _pick(first, "answer", fields.answer, candidates)
    problems, seen = [], set()
    for position, (number, row) in enumerate(rows):
        raw = _lookup(row, problem_field) if problem_field else None
        messages = _messages(raw)
        text = _text(raw, messages)
        references = list(dict.fromkeys(_strings(_lookup(row, answer_field) if answer_field else None)))
        if text is None:
            raise DataError(f"{source}: row {number}: no problem text in '{problem_field or candidates['problem'][0]}'")
        if not references:
            raise DataError(f"{source}: row {number}: no '{answer_field or candidates['answer'][0]}'")
        references += [a for a in _strings(_lookup(row, fields.alternatives)) if a not in references]
        raw_id = _lookup(row, id_field) if id_field else None
        problem_id = str(raw_id) if raw_id is not None else str(position)
        if problem_id in seen:
            raise DataError(f"{source}: row {number}: duplicate {id_field or 'id'} {problem_id!r}")
        seen.add(problem_id)
        problems.append(Problem(problem_id, text, tuple(references), messages))
    return problems


def _check_verl(rows: Rows, path: str) -> None:
    """verl's layout: every row has `prompt` and `reward_model` (the first row tells a wrong file early)."""
    missing = [column for column in ("prompt", "reward_model") if column not in rows[0][1]] if rows else []
    if missing:
        raise DataError(
            f"{path}: not verl's RL Parquet layout: no column {', '.join(repr(c) for c in missing)} "
            "(expected data_source, prompt, ability, reward_model, extra_info)"
        )


def load_source(spec: SourceFields, seed: int) -> list[Problem]:
    """The problems of one training dataset (see `SourceFields`' field help for each reader's default fields)."""
    fields = Fields(spec.id_field, spec.problem_field, spec.answer_field)
    if spec.source == "synthetic":
        from hicra.tiny import synthetic_problems

        rows = list(enumerate(synthetic_problems(spec.synthetic_size, seed), start=1))
        return problems_from_rows(rows, "synthetic", fields)
    assert spec.path is not None  # the config requires it for every other source
    if spec.source == "jsonl":
        return problems_from_rows(read_rows(spec.path, "jsonl"), spec.path, fields)
    if spec.source == "verl":
        rows = read_rows(spec.path, "parquet")
        _check_verl(rows, spec.path)
        preset = VERL_FIELDS
        fields = Fields(fields.id or preset.id, fields.problem or preset.problem, fields.answer or preset.answer)
        return problems_from_rows(rows, spec.path, fields)
    return problems_from_rows(read_rows(spec.path, split="train"), spec.path, fields, TRL_CANDIDATES)


@dataclass(frozen=True)
class Source:
    """One loaded source of the training mixture: its name ("" for the single-source form), weight and problems
    (ids prefixed `NAME/`, `Problem.source` set, for a named source)."""

    name: str
    weight: float
    problems: tuple[Problem, ...]


def load_training_mixture(data: DataSection, seed: int) -> list[Source]:
    """The training sources `data` names: its `sources`, else its one dataset as one unnamed source."""
    specs: list[SourceFields] = list(data.sources) or [data]
    mixture = []
    for spec in specs:
        problems = load_source(spec, seed)
        if isinstance(spec, DataSource):
            problems = [replace(p, id=f"{spec.name}/{p.id}", source=spec.name) for p in problems]
        mixture.append(Source(getattr(spec, "name", ""), getattr(spec, "weight", 1.0), tuple(problems)))
    return mixture


def load_training_problems(data: DataSection, seed: int) -> list[Problem]:
    """Every training problem `data` names, source after source."""
    return [p for source in load_training_mixture(data, seed) for p in source.problems]


def source_slots(weights: Sequence[float], slots: int) -> list[int]:
    """The source of each of the first `slots` prompt slots of a mixture: slot k goes to the source furthest below
    its share of k+1 slots, (k+1) * w / sum(w) minus the slots it has (ties: the first listed). Deterministic, and
    every source's count stays within one slot of its share at every k, so any `count` consecutive slots (one
    iteration's) hold each source in proportion to its weight, to within a slot or two."""
    total, taken, chosen = sum(weights), [0] * len(weights), []
    for k in range(slots):
        behind = [(k + 1) * w / total - n for w, n in zip(weights, taken, strict=True)]
        source = max(range(len(weights)), key=lambda s: (behind[s], -s))
        taken[source] += 1
        chosen.append(source)
    return chosen


def mixture_position(sizes: Mapping[str, int], weights: Mapping[str, float], count: int, run_id: str, seed: int,
                     iteration: int) -> dict:  # fmt: skip
    """Where iteration `iteration` starts reading each source (`data_position` per source, the cursor counting the
    source's slots before the iteration): a function of (run, seed, iteration), the weights and the sources' sizes.
    The single-source form's position is `data_position`'s, unchanged."""
    if list(sizes) == [""]:
        return data_position(sizes[""], count, run_id, seed, iteration)
    names = list(sizes)
    before = source_slots([weights[n] for n in names], iteration * count)
    sources = {}
    for index, name in enumerate(names):
        cursor = before.count(index)
        epoch, offset = divmod(cursor, sizes[name])
        sources[name] = {"cursor": cursor, "epoch": epoch, "offset": offset, "dataset_size": sizes[name]}
    return {
        "run_id": run_id, "seed": seed, "iteration": iteration, "cursor": iteration * count,
        "dataset_size": sum(sizes.values()), "prompts_per_iteration": count, "sources": sources,
    }  # fmt: skip


def mixture_prompts(mixture: Sequence[Source], count: int, run_id: str, seed: int, iteration: int) -> list[Problem]:
    """The prompts of one iteration of a mixture, a function of (run, seed, iteration) alone: slots
    iteration*count..(iteration+1)*count-1 (`source_slots`), each the next prompt of its source's own walk
    (`prompts_for_iteration`'s epochs, seeded by the source's name too). One unnamed source: `prompts_for_iteration`."""
    if [s.name for s in mixture] == [""]:
        return prompts_for_iteration(mixture[0].problems, count, run_id, seed, iteration)
    slots = source_slots([s.weight for s in mixture], (iteration + 1) * count)
    cursors = [slots[: iteration * count].count(index) for index in range(len(mixture))]
    chosen = []
    for index in slots[iteration * count :]:
        source = mixture[index]
        chosen.append(_walk(source.problems, cursors[index], ("prompts", run_id, seed, source.name)))
        cursors[index] += 1
    return chosen


def refill_prompts(mixture: Sequence[Source], count: int, run_id: str, seed: int, iteration: int, round_: int,
                   exclude: Collection[str]) -> list[Problem]:  # fmt: skip
    """`count` more prompts for generation round `round_` (from 1) of an iteration (DAPO's dynamic sampling refill):
    a function of (run, seed, iteration, round) and `exclude` (the ids the iteration drew before, skipped). The
    slots are split as an iteration's (`source_slots`); each source is read in a permutation seeded by (run, seed,
    iteration, round, source). A source with no prompt left outside `exclude` fills no more slots."""
    orders = [
        [p for p in _permuted(s.problems, derive_seed("refill", run_id, seed, iteration, round_, s.name))
         if p.id not in exclude]
        for s in mixture
    ]  # fmt: skip
    taken = [0] * len(mixture)
    chosen = []
    for index in source_slots([s.weight for s in mixture], count):
        if taken[index] < len(orders[index]):
            chosen.append(orders[index][taken[index]])
            taken[index] += 1
    return chosen


def _permuted(problems: Sequence[Problem], seed: int) -> list[Problem]:
    return [problems[int(k)] for k in _epoch_order(len(problems), seed)]


def _walk(problems: Sequence[Problem], position: int, key: tuple) -> Problem:
    """The problem at `position` of the walk through `problems` in epochs, each permuted by the seed (*key, epoch)."""
    epoch, offset = divmod(position, len(problems))
    return problems[int(_epoch_order(len(problems), derive_seed(*key, epoch))[offset])]


def prompts_for_iteration(
    problems: Sequence[Problem], count: int, run_id: str, seed: int, iteration: int
) -> list[Problem]:
    """The prompts of one iteration, a function of (run, seed, iteration) alone.

    The dataset is walked in epochs, each a permutation seeded by (run, seed, epoch), and iteration i takes the
    next `count` positions, so no prompt repeats within an epoch and a resumed run sees the same prompts.
    """
    start = data_position(len(problems), count, run_id, seed, iteration)["cursor"]
    return [_walk(problems, position, ("prompts", run_id, seed)) for position in range(start, start + count)]


def data_position(dataset_size: int, count: int, run_id: str, seed: int, iteration: int) -> dict:
    """Where iteration `iteration` starts reading the dataset: the cursor (positions consumed before it), its epoch
    and offset in that epoch's permutation, with the (run, seed) that seed the permutations. A function of
    (run, seed, iteration) and the dataset's size alone; saved with each checkpoint for the next iteration."""
    cursor = iteration * count
    epoch, offset = divmod(cursor, dataset_size)
    return {
        "run_id": run_id, "seed": seed, "iteration": iteration, "cursor": cursor, "epoch": epoch, "offset": offset,
        "dataset_size": dataset_size, "prompts_per_iteration": count,
    }  # fmt: skip


@lru_cache(maxsize=16)
def _epoch_order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
