"""`hicra export`: a run's scored rollouts (the `scored_rollouts` view) as JSONL or a Hugging Face `datasets` folder.

Both formats are written beside the target under a temporary name and renamed into place when complete, so an
interrupted export never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa

from warehouse.catalog import connect

EXPORT_FORMATS = ("jsonl", "hf")

_QUERY = """
SELECT * FROM scored_rollouts
WHERE run_id = $run AND ($iteration::INTEGER IS NULL OR iteration = $iteration)
ORDER BY iteration, group_index, sample_index
"""


class ExportError(ValueError):
    """Nothing to export (an unknown run or iteration), or a target that would overwrite a folder."""


def _batches(root: str | Path, run_id: str, iteration: int | None) -> Iterator[pa.RecordBatch]:
    """The run's scored rollouts in (iteration, group, sample) order, a batch at a time; an error names what exists."""
    with connect(root, read_only=True) as con:
        reader = con.sql(_QUERY, params={"run": run_id, "iteration": iteration}).to_arrow_reader(1024)
        empty = True
        for batch in reader:
            empty = empty and batch.num_rows == 0
            yield batch
        if empty:
            runs = [r[0] for r in con.sql("SELECT DISTINCT run_id FROM scores ORDER BY 1").fetchall()]
            if run_id not in runs:
                raise ExportError(f"run {run_id!r} has no scored rollouts in {root} (runs with some: {runs or 'none'})")
            found = "SELECT DISTINCT iteration FROM scores WHERE run_id = $run ORDER BY 1"
            iterations = [r[0] for r in con.sql(found, params={"run": run_id}).fetchall()]
            raise ExportError(f"run {run_id!r} has no scored rollouts in iteration {iteration} (it has {iterations})")


def _temporary(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def export_rollouts(
    root: str | Path, run_id: str, fmt: Literal["jsonl", "hf"], out: str | Path, iteration: int | None = None
) -> int:
    """Write the scored rollouts of `run_id` (one `iteration`, or all) to `out`; returns the number of rows.

    `jsonl`: one JSON object per rollout (an existing file is replaced). `hf`: `Dataset.save_to_disk` into the
    folder `out`, which must not exist or be empty (needs the `datasets` package); `datasets.load_from_disk` reads
    it back with the warehouse's column types.
    """
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")
    if fmt == "hf" and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        raise ExportError(f"{out} exists and is not an empty folder: remove it or choose another --out")
    tmp = _temporary(out)
    try:
        if fmt == "jsonl":
            rows = 0
            with tmp.open("w", encoding="utf-8") as fh:
                for batch in _batches(root, run_id, iteration):
                    fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist())
                    rows += batch.num_rows
            os.replace(tmp, out)
            return rows
        table = pa.Table.from_batches(list(_batches(root, run_id, iteration)))
        _save_dataset(table, tmp)
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        return table.num_rows
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        tmp.unlink(missing_ok=True)


def _save_dataset(table: pa.Table, folder: Path) -> None:
    try:
        import datasets
        from datasets.table import InMemoryTable
    except ImportError as err:
        raise ExportError("--format hf needs the `datasets` package (pip install 'hicra[hub]')") from err
    datasets.Dataset(InMemoryTable(table)).save_to_disk(str(folder))
