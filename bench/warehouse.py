"""Benchmark: rollout write speed through `Warehouse.commit_stage`, and `iteration_summary` against a plain scan.

Writes synthetic rollouts with realistic token lists (300-1500 int32 token ids and float32 sampler logprobs each, a
response text of about 4 characters per token, a 100-300 token prompt) and their scores, one commit per iteration
(`--rows-per-iteration`, so memory stays bounded), then times, over the same committed files:
  (a) `SELECT * FROM iteration_summary` through a `warehouse.catalog` connection (views rebuilt from commit records);
  (b) a plain `read_parquet` scan of the rollout files: rows per iteration.
It also prints the Parquet layout the warehouse wrote (codec, token list type, row groups).

Run: `python bench/warehouse.py --rows 1000000` (about 10 GB of Arrow data, written 20,000 rows at a time; several
GB on disk, removed afterwards unless --keep) or `python bench/warehouse.py --rows 20000` for a quick run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.tables import RolloutRow, ScoreRow, arrow_schema  # noqa: E402
from warehouse.catalog import connect  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402

VOCAB = 151_000  # a Qwen-sized vocabulary
WORDS = ["the", "of", "and", "to", "is", "we", "that", "value", "sum", "equation", "first", "then", "so", "answer"]


def token_lists(rng: np.random.Generator, lengths: np.ndarray, dtype: type, values) -> pa.ListArray:
    """One list per row, of the given lengths, filled by `values(n)` (a flat array of n items)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values(int(offsets[-1])).astype(dtype)))


def synthetic_iteration(rng: np.random.Generator, run: str, iteration: int, rows: int, corpus: str) -> pa.Table:
    """`rows` rollouts of one iteration with the warehouse's rollout schema; token ids follow a power law."""

    def zipf_ids(n: int) -> np.ndarray:
        return (VOCAB * rng.random(n) ** 4).astype(np.int32)

    def logprobs(n: int) -> np.ndarray:
        return -rng.exponential(0.7, n)

    response_lengths = rng.integers(300, 1501, rows)
    prompt_lengths = rng.integers(100, 301, rows)
    starts = rng.integers(0, len(corpus) - 6001, rows)
    ids = [f"{run}/{iteration}/{i // 8}/{i % 8}" for i in range(rows)]
    columns = {
        "run_id": pa.array([run] * rows),
        "iteration": pa.array(np.full(rows, iteration, np.int32)),
        "rollout_id": pa.array(ids),
        "prompt_id": pa.array([f"p{i // 8}" for i in range(rows)]),
        "group_index": pa.array((np.arange(rows) // 8).astype(np.int32)),
        "sample_index": pa.array((np.arange(rows) % 8).astype(np.int32)),
        "prompt": pa.array([corpus[s : s + 4 * n] for s, n in zip(starts, prompt_lengths, strict=True)]),
        "reference": pa.array([str(i % 997) for i in range(rows)]),
        "prompt_token_ids": token_lists(rng, prompt_lengths, np.int32, zipf_ids),
        "response": pa.array([corpus[s : s + 4 * n] for s, n in zip(starts, response_lengths, strict=True)]),
        "response_token_ids": token_lists(rng, response_lengths, np.int32, zipf_ids),
        "sampler_logprobs": token_lists(rng, response_lengths, np.float32, logprobs),
        "finish_reason": pa.array(np.where(response_lengths == 1500, "length", "stop")),
        "response_length": pa.array(response_lengths.astype(np.int32)),
        "seed": pa.array(np.arange(rows, dtype=np.int64)),
        "policy_iteration": pa.array(np.full(rows, iteration - 1, np.int32)),
    }
    return pa.table(columns, schema=arrow_schema(RolloutRow))


def synthetic_scores(rng: np.random.Generator, rollouts: pa.Table) -> pa.Table:
    rows = rollouts.num_rows
    correct = rng.random(rows) < 0.4
    columns = {
        "run_id": rollouts["run_id"],
        "iteration": rollouts["iteration"],
        "rollout_id": rollouts["rollout_id"],
        "reward": pa.array(correct.astype(np.float64)),
        "correct": pa.array(correct),
        "status": pa.array(np.where(correct, "ok", "no_answer")),
        "extracted": pa.nulls(rows, pa.string()),
        "detail": pa.nulls(rows, pa.string()),
        "verify_seconds": pa.array(rng.random(rows) / 100),
    }
    return pa.table(columns, schema=arrow_schema(ScoreRow))


def timed(fn, repeat: int = 3) -> float:
    """The best of `repeat` wall-clock times of `fn()` (the first run also warms the OS page cache)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rollouts to write in all")
    parser.add_argument("--rows-per-iteration", type=int, default=20_000, help="rollouts per iteration (one commit)")
    parser.add_argument("--root", help="warehouse root (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the warehouse afterwards")
    args = parser.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="hicra-bench-wh-"))
    store, rng, run = Warehouse(root), np.random.default_rng(0), "bench"
    corpus = " ".join(rng.choice(WORDS, 2_000_000))
    print(f"machine: {os.cpu_count()} cores; warehouse at {root}")
    written = arrow_bytes = disk_bytes = 0
    write_seconds = 0.0
    iteration = 0
    while written < args.rows:
        n = min(args.rows_per_iteration, args.rows - written)
        rollouts = synthetic_iteration(rng, run, iteration, n, corpus)
        start = time.perf_counter()
        record = store.commit_stage(run, iteration, "rollout", {"rollouts": rollouts})
        write_seconds += time.perf_counter() - start
        store.commit_stage(run, iteration, "verify", {"scores": synthetic_scores(rng, rollouts)})
        arrow_bytes += rollouts.nbytes
        disk_bytes += sum((root / f["path"]).stat().st_size for f in record.files)
        written, iteration = written + n, iteration + 1
        del rollouts
    mib = 1 << 20
    print(
        f"write: {written:,} rollouts in {iteration} commits, {write_seconds:.1f}s: {written / write_seconds:,.0f} "
        f"rows/s, {arrow_bytes / mib / write_seconds:,.0f} MB/s of Arrow data ({arrow_bytes / mib:,.0f} MiB), "
        f"{disk_bytes / mib / write_seconds:,.0f} MB/s on disk ({disk_bytes / mib:,.0f} MiB, "
        f"{arrow_bytes / disk_bytes:.1f}x compression)"
    )

    files = [str(p) for p in store.committed_files("rollouts", run)]
    meta = pq.ParquetFile(files[0]).metadata
    tokens = meta.schema.to_arrow_schema().field("response_token_ids").type
    print(
        f"parquet: codec {meta.row_group(0).column(0).compression}, response_token_ids {tokens}, "
        f"{meta.num_row_groups} row groups of about {meta.num_rows // meta.num_row_groups:,} rows in a "
        f"{meta.num_rows:,}-row file"
    )

    with connect(root) as con:
        summary = timed(lambda: con.sql("SELECT * FROM iteration_summary").fetchall())
        listing = "[" + ", ".join(f"'{f}'" for f in files) + "]"
        plain_sql = f"SELECT iteration, count(*) FROM read_parquet({listing}) GROUP BY 1"
        plain = timed(lambda: con.sql(plain_sql).fetchall())
        assert len(con.sql("SELECT * FROM iteration_summary").fetchall()) == iteration
    print(f"query: iteration_summary {summary:.3f}s, plain count scan {plain:.3f}s, ratio {summary / plain:.1f}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
