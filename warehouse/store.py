"""The warehouse's file layout and its commit protocol.

    <root>/<table>/run_id=<run>/iteration=<i>/<stage>-<attempt>.parquet
    <root>/_commits/run_id=<run>/iteration=<i>/<stage>.json      written last: the only proof a stage is done
    <root>/_staging/...                                          files being written (never read)
    <root>/checkpoints/<run>/iteration=<i>/{hf,deepspeed}        policy checkpoints
    <root>/runs/<run>/config.yaml                                the frozen config; its hash guards resume

A stage writes its Parquet files into `_staging`, renames them into their partitions, then writes its commit record
(a JSON file, by an atomic rename). Readers use only files named in commit records, so a kill at any moment leaves
at most uncommitted files, which the stage's next attempt removes before it writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import SCHEMA_VERSION

STAGES = ("rollout", "verify", "annotate", "update")


class AlreadyCommitted(RuntimeError):
    """A stage that is already committed was asked to write again."""


@dataclass(frozen=True)
class StageCommit:
    """What a commit record says: the files a stage wrote, with their row counts and sha256."""

    run_id: str
    iteration: int
    stage: str
    files: list[dict]
    info: dict
    committed_at: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Warehouse:
    """One warehouse root on the local (or a shared) file system."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # ---- layout -------------------------------------------------------------------------------------------------
    def partition(self, table: str, run_id: str, iteration: int) -> Path:
        return self.root / table / f"run_id={run_id}" / f"iteration={iteration}"

    def commit_path(self, run_id: str, iteration: int, stage: str) -> Path:
        return self.root / "_commits" / f"run_id={run_id}" / f"iteration={iteration}" / f"{stage}.json"

    def checkpoint_dir(self, run_id: str, iteration: int) -> Path:
        return self.root / "checkpoints" / run_id / f"iteration={iteration}"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # ---- commits ------------------------------------------------------------------------------------------------
    def is_committed(self, run_id: str, iteration: int, stage: str) -> bool:
        return self.commit_path(run_id, iteration, stage).is_file()

    def read_commit(self, run_id: str, iteration: int, stage: str) -> StageCommit | None:
        path = self.commit_path(run_id, iteration, stage)
        return StageCommit(**json.loads(path.read_text())) if path.is_file() else None

    def commits(self, run_id: str | None = None) -> list[StageCommit]:
        """Every commit record (of one run, or all), in (run, iteration, stage order)."""
        pattern = f"run_id={run_id}/*/*.json" if run_id else "run_id=*/*/*.json"
        records = [StageCommit(**json.loads(p.read_text())) for p in (self.root / "_commits").glob(pattern)]
        order = {s: i for i, s in enumerate(STAGES)}
        return sorted(records, key=lambda c: (c.run_id, c.iteration, order.get(c.stage, len(order)), c.stage))

    def committed_files(self, table: str, run_id: str | None = None) -> list[Path]:
        """Absolute paths of the committed Parquet files of one table."""
        return [self.root / f["path"] for c in self.commits(run_id) for f in c.files if f["table"] == table]

    def discard_uncommitted(self, run_id: str, iteration: int, stage: str) -> list[Path]:
        """Remove what an earlier, killed attempt of this stage left behind; returns the removed paths."""
        if self.is_committed(run_id, iteration, stage):
            raise AlreadyCommitted(f"{run_id}/{iteration}/{stage} is committed; refusing to discard its files")
        removed = list((self.root / "_staging" / run_id / str(iteration)).glob(f"{stage}-*"))
        removed += list(self.root.glob(f"*/run_id={run_id}/iteration={iteration}/{stage}-*.parquet"))
        for path in removed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return removed

    def staging_dir(self, run_id: str, iteration: int, stage: str) -> Path:
        """A new, empty folder for one attempt of a stage; `discard_uncommitted` removes it if the attempt dies."""
        path = self.root / "_staging" / run_id / str(iteration) / f"{stage}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    def commit_stage(
        self, run_id: str, iteration: int, stage: str, tables: dict[str, pa.Table], info: dict | None = None
    ) -> StageCommit:
        """Write a stage's tables and commit them: stage, rename into place, then write the commit record last."""
        if self.is_committed(run_id, iteration, stage):
            raise AlreadyCommitted(f"{run_id}/{iteration}/{stage} is already committed")
        staging = self.staging_dir(run_id, iteration, stage)
        attempt = staging.name
        staged = []
        for table, data in tables.items():
            path = staging / f"{table}.parquet"
            pq.write_table(data, path, compression="zstd")
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
            staged.append((table, path, data.num_rows))
        files = []
        for table, path, rows in staged:
            final = self.partition(table, run_id, iteration) / f"{attempt}.parquet"
            final.parent.mkdir(parents=True, exist_ok=True)
            digest = _sha256(path)
            os.replace(path, final)
            files.append({"table": table, "path": str(final.relative_to(self.root)), "rows": rows, "sha256": digest})
        record = StageCommit(
            run_id=run_id,
            iteration=iteration,
            stage=stage,
            files=files,
            info={"schema_version": SCHEMA_VERSION, "host": socket.gethostname(), **(info or {})},
            committed_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        _write_atomic(self.commit_path(run_id, iteration, stage), record.to_json())
        shutil.rmtree(staging, ignore_errors=True)
        return record

    # ---- reading ------------------------------------------------------------------------------------------------
    def read_table(self, table: str, run_id: str, iteration: int) -> pa.Table:
        """The committed rows of one table for one iteration (all stages that wrote it)."""
        files = [
            self.root / f["path"]
            for c in self.commits(run_id)
            if c.iteration == iteration
            for f in c.files
            if f["table"] == table
        ]
        if not files:
            raise FileNotFoundError(f"no committed '{table}' rows for run {run_id!r} iteration {iteration}")
        return pa.concat_tables([pq.read_table(p) for p in files])

    # ---- run config ---------------------------------------------------------------------------------------------
    def frozen_config(self, run_id: str) -> tuple[str, str] | None:
        """(config YAML, config hash) frozen at the run's first start, or None for a new run."""
        config, digest = self.run_dir(run_id) / "config.yaml", self.run_dir(run_id) / "config.hash"
        if not (config.is_file() and digest.is_file()):
            return None
        return config.read_text(), digest.read_text().strip()

    def freeze_config(self, run_id: str, config_yaml: str, config_hash: str, note: str | None = None) -> None:
        """Record the run's config (hash last, so a half-written pair reads as absent); `note` logs an override."""
        run_dir = self.run_dir(run_id)
        _write_atomic(run_dir / "config.yaml", config_yaml)
        _write_atomic(run_dir / "config.hash", config_hash + "\n")
        if note:
            with (run_dir / "overrides.log").open("a") as fh:
                fh.write(f"{dt.datetime.now(dt.UTC).isoformat()} {note}\n")
