"""Training prompts: loading (the synthetic task or a JSONL file) and the deterministic choice per iteration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from hicra.generate import derive_seed


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Prompt:
    id: str
    problem: str
    answer: str


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


def load_jsonl_prompts(path: str | Path, id_field="id", problem_field="problem", answer_field="answer") -> list[Prompt]:
    """Prompts from a JSONL file; a missing file, a bad line, a missing field or a duplicate id is a `DataError`."""
    path = Path(path)
    prompts, seen = [], set()
    for number, row in read_jsonl(path):
        for field in (problem_field, answer_field):
            if row.get(field) is None or str(row[field]).strip() == "":
                raise DataError(f"{path}:{number}: row has no '{field}'")
        prompt_id = str(row.get(id_field, f"{path.stem}-{number}"))
        if prompt_id in seen:
            raise DataError(f"{path}:{number}: duplicate {id_field} {prompt_id!r}")
        seen.add(prompt_id)
        prompts.append(Prompt(prompt_id, str(row[problem_field]), str(row[answer_field])))
    if not prompts:
        raise DataError(f"{path}: no rows")
    return prompts


def prompts_for_iteration(prompts: list[Prompt], count: int, run_id: str, seed: int, iteration: int) -> list[Prompt]:
    """The prompts of one iteration, a function of (run, seed, iteration) alone.

    The dataset is walked in epochs, each a permutation seeded by (run, seed, epoch), and iteration i takes the
    next `count` positions, so no prompt repeats within an epoch and a resumed run sees the same prompts.
    """
    chosen = []
    start = data_position(len(prompts), count, run_id, seed, iteration)["cursor"]
    for position in range(start, start + count):
        epoch, offset = divmod(position, len(prompts))
        order = _epoch_order(len(prompts), derive_seed("prompts", run_id, seed, epoch))
        chosen.append(prompts[int(order[offset])])
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
