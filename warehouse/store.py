"""The warehouse's file layout and its commit protocol.

    <root>/<table>/run_id=<run>/iteration=<i>/<stage>-<attempt>.parquet
    <root>/_commits/run_id=<run>/iteration=<i>/<stage>.json      written last: the only proof a stage is done
    <root>/_staging/...                                          files being written (never read)
    <root>/_attempts/..., <root>/_locks/...                       attempt records; locks of running runs and stages
    <root>/checkpoints/<run>/iteration=<i>/{hf,deepspeed}        policy checkpoints
    <root>/runs/<run>/config.yaml                                the frozen config; its hash guards resume

A stage writes its Parquet files into `_staging`, renames them into their partitions, then writes its commit record
(a JSON file, by an atomic rename). Readers use only files named in commit records, so a kill at any moment leaves
at most uncommitted files, which the stage's next attempt removes before it writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import SCHEMA_VERSION

STAGES = ("rollout", "verify", "annotate", "update")
DEFAULT_ROOT = "warehouse-data"
ROOT_HELP = f"warehouse root (default: $HICRA_WAREHOUSE or ./{DEFAULT_ROOT})"


def default_root(explicit: str | os.PathLike | None = None) -> str:
    """The warehouse root a command uses: the one given, else $HICRA_WAREHOUSE, else ./warehouse-data."""
    return str(explicit or os.environ.get("HICRA_WAREHOUSE") or DEFAULT_ROOT)


ROW_GROUP_BYTES = 64 << 20
"""About this much Arrow data per Parquet row group: big enough for fast scans, small enough that DuckDB reads a
big commit (thousands of long rollouts) with several threads."""


@dataclass(frozen=True)
class FileProblem:
    """Something `Warehouse.verify` found wrong: `kind` is missing, truncated, altered or extra."""

    path: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Sweep:
    """What `Warehouse.gc` removed (or would remove), and the uncommitted paths it kept because they are recent."""

    removed: list[Path]
    kept_recent: list[Path]


class AlreadyCommitted(RuntimeError):
    """A stage that is already committed was asked to write again."""


class Busy(RuntimeError):
    """Another live process holds the lock of a run or a stage (the message names its host, PID and start)."""


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


def _newest_mtime(path: Path) -> float:
    """The latest modification time in a file or folder tree; infinity if it vanished meanwhile (so it is kept)."""
    try:
        return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")])
    except FileNotFoundError:
        return math.inf


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
            row_group = min(1 << 20, max(1, data.num_rows * ROW_GROUP_BYTES // max(data.nbytes, 1)))
            pq.write_table(data, path, compression="zstd", row_group_size=row_group)
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

    # ---- locks --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *name: str | int, what: str = "locked") -> Iterator[None]:
        """Hold `<root>/_locks/<name...>.lock` exclusively, or at once raise `Busy`: `what`, and who holds it.

        An OS file lock (flock): the kernel drops it when the holder exits, even by SIGKILL, so a killed run is never
        locked out of its resume; on shared storage it needs a file system with working flock (NFSv4, Lustre with
        `-o flock`).
        """
        path = self.root / "_locks" / Path(*map(str, name[:-1])) / f"{name[-1]}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise Busy(f"{what}: {path} is held by {fh.read().strip() or 'another process'}") from None
            fh.truncate(0)
            fh.write(f"host {socket.gethostname()} pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat()}")
            fh.flush()
            try:
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- attempts -----------------------------------------------------------------------------------------------
    def start_attempt(self, run_id: str, iteration: int, stage: str) -> Path:
        """Record that an attempt of a stage started; an attempt never ended was killed (or is running)."""
        started = dt.datetime.now(dt.UTC)
        path = self.root / "_attempts" / f"run_id={run_id}" / f"iteration={iteration}"
        path = path / f"{stage}-{started.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}.json"
        record = {
            "run_id": run_id, "iteration": iteration, "stage": stage, "status": "running",
            "started_at": started.isoformat(), "ended_at": None, "host": socket.gethostname(), "pid": os.getpid(),
            "error": None, "traceback": None,
        }  # fmt: skip
        _write_atomic(path, json.dumps(record))
        return path

    def end_attempt(self, path: Path, status: str, error: str | None = None, traceback: str | None = None) -> None:
        """Close an attempt record: status `ok` or `failed` (with the error and its traceback)."""
        record = json.loads(path.read_text())
        record.update(status=status, ended_at=dt.datetime.now(dt.UTC).isoformat(), error=error, traceback=traceback)
        _write_atomic(path, json.dumps(record))

    def attempts(self, run_id: str | None = None) -> list[dict]:
        """Every attempt record (of one run, or all), oldest first; `running` ones whose stage later committed or
        that a later attempt followed were interrupted (killed)."""
        pattern = f"run_id={run_id}/*/*.json" if run_id else "run_id=*/*/*.json"
        records = [json.loads(p.read_text()) for p in (self.root / "_attempts").glob(pattern)]
        return sorted(records, key=lambda r: r["started_at"])

    # ---- integrity ----------------------------------------------------------------------------------------------
    def uncommitted_files(self, run_id: str | None = None) -> list[Path]:
        """Parquet files outside `_staging` that no commit record names: failed attempts, or a stage writing now."""
        named = {self.root / f["path"] for c in self.commits() for f in c.files}
        found = []
        for path in sorted(self.root.rglob("*.parquet")):
            parts = path.relative_to(self.root).parts
            if parts[0] != "_staging" and (run_id is None or f"run_id={run_id}" in parts) and path not in named:
                found.append(path)
        return found

    def verify(self, run_id: str | None = None) -> list[FileProblem]:
        """Check every committed file against its commit record (exists, row count, sha256) and list extra files."""
        problems = []
        for c in self.commits(run_id):
            for f in c.files:
                path, where = self.root / f["path"], f"committed by {c.run_id}/{c.iteration}/{c.stage}"
                if not path.is_file():
                    problems.append(FileProblem(f["path"], "missing", where))
                    continue
                try:
                    rows = pq.ParquetFile(path).metadata.num_rows
                except (pa.ArrowInvalid, OSError) as err:
                    problems.append(FileProblem(f["path"], "truncated", f"not a readable Parquet file: {err}"))
                    continue
                if rows != f["rows"]:
                    problems.append(FileProblem(f["path"], "altered", f"{rows} rows, {f['rows']} {where}"))
                elif _sha256(path) != f["sha256"]:
                    problems.append(FileProblem(f["path"], "altered", f"sha256 differs from the one {where}"))
        for path in self.uncommitted_files(run_id):
            detail = "named by no commit record (a failed attempt, or a stage writing now)"
            problems.append(FileProblem(str(path.relative_to(self.root)), "extra", detail))
        return problems

    def gc(self, min_age: float = 3600.0, dry_run: bool = False) -> Sweep:
        """Remove `_staging` leftovers and uncommitted partition files older than `min_age` seconds, never a
        committed file (nor a Parquet file outside the partition layout); younger ones may belong to a stage being
        written right now, so they are kept."""
        now = time.time()
        staged = [p for p in (self.root / "_staging").glob("*/*/*") if p.is_dir()]
        partitions = set(self.root.glob("*/run_id=*/iteration=*"))
        candidates = staged + [p for p in self.uncommitted_files() if p.parent in partitions]
        old = [p for p in candidates if now - _newest_mtime(p) >= min_age]
        if not dry_run:
            for path in old:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                for parent in path.parents:  # drop partition and staging folders left empty
                    if parent == self.root or any(parent.iterdir()):
                        break
                    parent.rmdir()
        return Sweep(removed=old, kept_recent=[p for p in candidates if p not in old])

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
