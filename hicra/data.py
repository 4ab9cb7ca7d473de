"""Problem datasets, the one loader that training prompts and evaluation suites share, and the prompt choice.

Readers: JSONL, a JSON list, Parquet (verl's RL layout among others), a Hugging Face `datasets` folder written by
`save_to_disk`, and `hf:NAME[:SPLIT]` from the hub. Every row becomes a `Problem`; a bad row is a `DataError` that
names the file, the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from hicra.generate import derive_seed
from schemas.config import DataSection


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


def load_training_problems(data: DataSection, seed: int) -> list[Problem]:
    """The training prompts the `data` section names (see its field help for each source's default fields)."""
    fields = Fields(data.id_field, data.problem_field, data.answer_field)
    if data.source == "synthetic":
        from hicra.tiny import synthetic_problems

        rows = list(enumerate(synthetic_problems(data.synthetic_size, seed), start=1))
        return problems_from_rows(rows, "synthetic", fields)
    assert data.path is not None  # the config requires it for every other source
    if data.source == "jsonl":
        return problems_from_rows(read_rows(data.path, "jsonl"), data.path, fields)
    if data.source == "verl":
        rows = read_rows(data.path, "parquet")
        _check_verl(rows, data.path)
        preset = VERL_FIELDS
        fields = Fields(fields.id or preset.id, fields.problem or preset.problem, fields.answer or preset.answer)
        return problems_from_rows(rows, data.path, fields)
    return problems_from_rows(read_rows(data.path, split="train"), data.path, fields, TRL_CANDIDATES)


def prompts_for_iteration(
    problems: Sequence[Problem], count: int, run_id: str, seed: int, iteration: int
) -> list[Problem]:
    """The prompts of one iteration, a function of (run, seed, iteration) alone.

    The dataset is walked in epochs, each a permutation seeded by (run, seed, epoch), and iteration i takes the
    next `count` positions, so no prompt repeats within an epoch and a resumed run sees the same prompts.
    """
    chosen = []
    start = data_position(len(problems), count, run_id, seed, iteration)["cursor"]
    for position in range(start, start + count):
        epoch, offset = divmod(position, len(problems))
        order = _epoch_order(len(problems), derive_seed("prompts", run_id, seed, epoch))
        chosen.append(problems[int(order[offset])])
    return chosen


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


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
