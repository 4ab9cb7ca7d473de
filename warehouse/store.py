"""The warehouse's file layout and its commit protocol, on a local or shared folder or on S3-compatible storage.

    <root>/<table>/run_id=<run>/iteration=<i>/<stage>-<attempt>.parquet
    <root>/_commits/run_id=<run>/iteration=<i>/<stage>.json      written last: the only proof a stage is done
    <root>/_staging/...                                          files being written (never read)
    <root>/_attempts/..., <root>/_locks/...                       attempt records; locks of running runs and stages
    <root>/checkpoints/<run>/iteration=<i>/{hf,deepspeed}        policy checkpoints
    <root>/runs/<run>/config.yaml                                the frozen config; its hash guards resume

The root is a folder or an fsspec URL such as `s3://bucket/prefix` (s3fs; endpoint and credentials from the standard
AWS_* variables or fsspec's config); one code path serves both through an fsspec filesystem. A stage writes its Parquet
files into `_staging`, moves them into their partitions, then writes its commit record (a JSON file: on a folder by
an atomic rename, on an object store by one PUT). Readers use only files named in commit records, so a kill at any
moment leaves at most uncommitted files, which the stage's next attempt removes before it writes.

On an object store a move is a copy then a delete, so a kill can leave a partial set of partition files and staged
copies behind: they are uncommitted, hence invisible and removed like any leftover. The protocol stays safe because it
never relies on the move being atomic: the commit record is the only proof, it is written after every file it names
is complete, and an object PUT is atomic (a reader gets the whole record or none); the sha256 and row count it holds
let `check_files` prove each named file is the one written.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from schemas.config import STAGES
from schemas.tables import SCHEMA_VERSION

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
    """Something `Warehouse.check_files` found wrong: `kind` is missing, truncated, altered or extra."""

    path: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Sweep:
    """What `Warehouse.gc` removed (or would remove), and the uncommitted paths it kept because they are recent."""

    removed: list[str]
    kept_recent: list[str]


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


class Warehouse:
    """One warehouse root: a local (or shared) folder, or an object-store prefix such as `s3://bucket/prefix`.

    Paths it takes and returns are the filesystem's own (`/abs/folder/...` locally, `bucket/prefix/...` on S3), under
    `root`; commit records store them relative to the root. `url` is the root as users and DuckDB name it.
    """

    def __init__(self, root: str | os.PathLike):
        # Listings are never cached: other processes commit to the same root (a resumed run, `hicra runs`).
        self.fs, self.root = fsspec.url_to_fs(str(root), use_listings_cache=False)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.url = self.location(self.root)

    # ---- layout -------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path under the root from its parts."""
        return "/".join((self.root, *parts))

    def relative(self, path: str) -> str:
        """A path under the root as commit records and messages show it: relative to the root."""
        return posixpath.relpath(path, self.root)

    def location(self, path: str) -> str:
        """The name DuckDB and users read a path by: the local path, or the URL (`s3://bucket/...`)."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def partition(self, table: str, run_id: str, iteration: int) -> str:
        return self.path(table, f"run_id={run_id}", f"iteration={iteration}")

    def commit_path(self, run_id: str, iteration: int, stage: str) -> str:
        return self.path("_commits", f"run_id={run_id}", f"iteration={iteration}", f"{stage}.json")

    def checkpoint_dir(self, run_id: str, iteration: int) -> str:
        return self.path("checkpoints", run_id, f"iteration={iteration}")

    def run_dir(self, run_id: str) -> str:
        return self.path("runs", run_id)

    # ---- files --------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the root holds anything (a folder; on an object store, any object under the prefix)."""
        return self.fs.isdir(self.root)

    def read_text(self, path: str) -> str | None:
        """A small file's text, or None if it does not exist."""
        try:
            return self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return None

    def _read_json(self, pattern: str) -> list[dict]:
        """Every JSON record matching a glob pattern under the root (fetched concurrently from an object store)."""
        paths = self.fs.glob(self.path(pattern))
        return [json.loads(data) for data in self.fs.cat(paths).values()] if paths else []

    def _write_atomic(self, path: str, text: str) -> None:
        """Write a small file so that readers see either nothing or all of it: a synced temporary file renamed into
        place on a folder; on an object store one PUT, which is atomic."""
        if not self.local:
            self.fs.pipe_file(path, text.encode())
            return
        self._make_folder(posixpath.dirname(path))
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _make_folder(self, path: str) -> None:
        """Create a folder and its parents on a local root; object stores have no folders (and s3fs's `makedirs`
        would create a missing bucket rather than fail)."""
        if self.local:
            os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        """Remove a file or a folder tree (every object under a prefix), if it exists."""
        with suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def _sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _newest_mtime(self, path: str) -> float:
        """The latest modification time in a file or folder tree; infinity if it vanished meanwhile (so it is kept).
        A local folder counts itself (a new, empty staging folder is recent); object stores have no folders."""
        try:
            return max(self.fs.modified(p).timestamp() for p in self.fs.find(path, withdirs=self.local))
        except (FileNotFoundError, ValueError):  # vanished, or an object-store folder emptied meanwhile
            return float("inf")

    # ---- commits ------------------------------------------------------------------------------------------------
    def is_committed(self, run_id: str, iteration: int, stage: str) -> bool:
        return self.fs.isfile(self.commit_path(run_id, iteration, stage))

    def read_commit(self, run_id: str, iteration: int, stage: str) -> StageCommit | None:
        text = self.read_text(self.commit_path(run_id, iteration, stage))
        return StageCommit(**json.loads(text)) if text is not None else None

    def commits(self, run_id: str | None = None, iteration: int | None = None, stage: str = "*") -> list[StageCommit]:
        """Every commit record (of one run, or all; of one iteration, or all; of one stage, or all), in (run,
        iteration, stage) order."""
        where = f"run_id={run_id or '*'}/iteration={'*' if iteration is None else iteration}/{stage}.json"
        records = [StageCommit(**r) for r in self._read_json(f"_commits/{where}")]
        order = {s: i for i, s in enumerate(STAGES)}
        return sorted(records, key=lambda c: (c.run_id, c.iteration, order.get(c.stage, len(order)), c.stage))

    def committed_files(self, table: str, run_id: str | None = None) -> list[str]:
        """Paths of the committed Parquet files of one table."""
        return [self.path(f["path"]) for c in self.commits(run_id) for f in c.files if f["table"] == table]

    def discard_uncommitted(self, run_id: str, iteration: int, stage: str) -> list[str]:
        """Remove what an earlier, killed attempt of this stage left behind; returns the removed paths."""
        if self.is_committed(run_id, iteration, stage):
            raise AlreadyCommitted(f"{run_id}/{iteration}/{stage} is committed; refusing to discard its files")
        removed = self.fs.glob(self.path("_staging", run_id, str(iteration), f"{stage}-*"))
        removed += self.fs.glob(self.path("*", f"run_id={run_id}", f"iteration={iteration}", f"{stage}-*.parquet"))
        for path in removed:
            self.remove(path)
        return removed

    def staging_dir(self, run_id: str, iteration: int, stage: str) -> str:
        """A new, empty folder for one attempt of a stage; `discard_uncommitted` removes it if the attempt dies."""
        path = self.path("_staging", run_id, str(iteration), f"{stage}-{uuid.uuid4().hex[:12]}")
        self._make_folder(path)
        return path

    def commit_stage(
        self, run_id: str, iteration: int, stage: str, tables: dict[str, pa.Table], info: dict | None = None
    ) -> StageCommit:
        """Write a stage's tables and commit them: stage, move into place, then write the commit record last."""
        if self.is_committed(run_id, iteration, stage):
            raise AlreadyCommitted(f"{run_id}/{iteration}/{stage} is already committed")
        staging = self.staging_dir(run_id, iteration, stage)
        attempt = posixpath.basename(staging)
        staged = []
        for table, data in tables.items():
            path = f"{staging}/{table}.parquet"
            row_group = min(1 << 20, max(1, data.num_rows * ROW_GROUP_BYTES // max(data.nbytes, 1)))
            pq.write_table(data, path, filesystem=self.fs, compression="zstd", row_group_size=row_group)
            if self.local:
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
            staged.append((table, path, data.num_rows))
        files = []
        for table, path, rows in staged:
            partition = self.partition(table, run_id, iteration)
            final = f"{partition}/{attempt}.parquet"
            digest = self._sha256(path)
            self._make_folder(partition)
            self.fs.mv(path, final)  # a rename on a folder; a copy, then a delete, on an object store
            files.append({"table": table, "path": self.relative(final), "rows": rows, "sha256": digest})
        record = StageCommit(
            run_id=run_id,
            iteration=iteration,
            stage=stage,
            files=files,
            info={"schema_version": SCHEMA_VERSION, "host": socket.gethostname(), **(info or {})},
            committed_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        self._write_atomic(self.commit_path(run_id, iteration, stage), record.to_json())
        self.remove(staging)
        return record

    # ---- checkpoints --------------------------------------------------------------------------------------------
    @contextmanager
    def local_staging(self, run_id: str, iteration: int, stage: str) -> Iterator[Path]:
        """A new local folder for an attempt's working files (the update's checkpoint), removed when done: the
        attempt's `_staging` folder on a folder root (results are renamed into place, no copies), a temporary folder
        when the root is remote (results are uploaded)."""
        if self.local:
            path = self.staging_dir(run_id, iteration, stage)
            try:
                yield Path(path)
            finally:
                shutil.rmtree(path, ignore_errors=True)
        else:
            with tempfile.TemporaryDirectory(prefix=f"hicra-{stage}-") as path:
                yield Path(path)

    def put_dir(self, local: Path, path: str) -> None:
        """Place a finished local folder at `path` under the root: renamed on a folder root, uploaded otherwise."""
        if self.local:
            self._make_folder(posixpath.dirname(path))
            os.replace(local, path)
            return
        files = sorted(str(p) for p in local.rglob("*") if p.is_file())
        self.fs.put(files, [f"{path}/{Path(f).relative_to(local).as_posix()}" for f in files])

    def local_checkpoint(self, run_id: str, iteration: int, part: str, cache: Path) -> Path:
        """A local folder holding part `hf` or `deepspeed` of iteration i's committed checkpoint: the folder itself on
        a folder root; from a remote root a copy downloaded once into `cache`, complete or absent, keyed by the root,
        run, iteration and commit time (a rerun iteration gets a fresh copy)."""
        path = f"{self.checkpoint_dir(run_id, iteration)}/{part}"
        if self.local:
            return Path(path)
        commit = self.read_commit(run_id, iteration, "update")
        if commit is None:
            raise FileNotFoundError(f"run {run_id!r} has no committed checkpoint at iteration {iteration}: {self.url}")
        key = hashlib.sha256(f"{self.url}\n{commit.committed_at}".encode()).hexdigest()[:12]
        target = cache / run_id / f"iteration={iteration}-{key}" / part
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{part}-", dir=target.parent) as tmp:
            files = self.fs.find(path)
            if not files:
                raise FileNotFoundError(f"checkpoint {self.location(path)} is committed but holds no files")
            self.fs.get(files, [str(Path(tmp, "copy", posixpath.relpath(f, path))) for f in files])
            try:
                os.replace(Path(tmp, "copy"), target)  # complete or absent
            except OSError:  # another process placed its copy first
                if not target.is_dir():
                    raise
        return target

    # ---- locks --------------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, *name: str | int, what: str = "locked") -> Iterator[None]:
        """Hold `<root>/_locks/<name...>.lock` exclusively, or at once raise `Busy`: `what`, and who holds it.

        An OS file lock (flock): the kernel drops it when the holder exits, even by SIGKILL, so a killed run is never
        locked out of its resume; on shared storage it needs a file system with working flock (NFSv4, Lustre with
        `-o flock`). Object storage has no locks: for a remote root they are local files, which guard this machine only.
        """
        path = self._lock_folder().joinpath(*map(str, name[:-1]), f"{name[-1]}.lock")
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

    def _lock_folder(self) -> Path:
        """`<root>/_locks` on a folder root; for a remote root a local folder named by the root's URL."""
        if self.local:
            return Path(self.root) / "_locks"
        cache = Path(os.environ.get("HICRA_CACHE") or Path.home() / ".cache" / "hicra")
        return cache / "locks" / hashlib.sha256(self.url.encode()).hexdigest()[:16]

    # ---- attempts -----------------------------------------------------------------------------------------------
    def start_attempt(self, run_id: str, iteration: int, stage: str) -> str:
        """Record that an attempt of a stage started; an attempt never ended was killed (or is running)."""
        started = dt.datetime.now(dt.UTC)
        name = f"{stage}-{started.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}.json"
        path = self.path("_attempts", f"run_id={run_id}", f"iteration={iteration}", name)
        record = {
            "run_id": run_id, "iteration": iteration, "stage": stage, "status": "running",
            "started_at": started.isoformat(), "ended_at": None, "host": socket.gethostname(), "pid": os.getpid(),
            "error": None, "traceback": None,
        }  # fmt: skip
        self._write_atomic(path, json.dumps(record))
        return path

    def end_attempt(self, path: str, status: str, error: str | None = None, traceback: str | None = None) -> None:
        """Close an attempt record: status `ok` or `failed` (with the error and its traceback)."""
        record = json.loads(self.fs.cat_file(path))
        record.update(status=status, ended_at=dt.datetime.now(dt.UTC).isoformat(), error=error, traceback=traceback)
        self._write_atomic(path, json.dumps(record))

    def attempts(self, run_id: str | None = None) -> list[dict]:
        """Every attempt record (of one run, or all), oldest first; `running` ones whose stage later committed or
        that a later attempt followed were interrupted (killed)."""
        return sorted(self._read_json(f"_attempts/run_id={run_id or '*'}/*/*.json"), key=lambda r: r["started_at"])

    # ---- integrity ----------------------------------------------------------------------------------------------
    def uncommitted_files(self, run_id: str | None = None) -> list[str]:
        """Parquet files outside `_staging` that no commit record names: failed attempts, or a stage writing now."""
        named = {self.path(f["path"]) for c in self.commits() for f in c.files}
        found = []
        for path in sorted(p for p in self.fs.find(self.root) if p.endswith(".parquet")):
            parts = self.relative(path).split("/")
            if parts[0] != "_staging" and (run_id is None or f"run_id={run_id}" in parts) and path not in named:
                found.append(path)
        return found

    def check_files(self, run_id: str | None = None) -> list[FileProblem]:
        """Check every committed file against its commit record (exists, row count, sha256) and list extra files."""
        problems = []
        for c in self.commits(run_id):
            for f in c.files:
                path, where = self.path(f["path"]), f"committed by {c.run_id}/{c.iteration}/{c.stage}"
                if not self.fs.isfile(path):
                    problems.append(FileProblem(f["path"], "missing", where))
                    continue
                try:
                    rows = pq.read_metadata(path, filesystem=self.fs).num_rows
                except (pa.ArrowInvalid, OSError) as err:
                    problems.append(FileProblem(f["path"], "truncated", f"not a readable Parquet file: {err}"))
                    continue
                if rows != f["rows"]:
                    problems.append(FileProblem(f["path"], "altered", f"{rows} rows, {f['rows']} {where}"))
                elif self._sha256(path) != f["sha256"]:
                    problems.append(FileProblem(f["path"], "altered", f"sha256 differs from the one {where}"))
        for path in self.uncommitted_files(run_id):
            detail = "named by no commit record (a failed attempt, or a stage writing now)"
            problems.append(FileProblem(self.relative(path), "extra", detail))
        return problems

    def gc(self, min_age: float = 3600.0, dry_run: bool = False) -> Sweep:
        """Remove `_staging` leftovers and uncommitted partition files older than `min_age` seconds, never a
        committed file (nor a Parquet file outside the partition layout); younger ones may belong to a stage being
        written right now, so they are kept."""
        now = time.time()
        staged = [p for p in self.fs.glob(self.path("_staging", "*", "*", "*")) if self.fs.isdir(p)]
        partitions = set(self.fs.glob(self.path("*", "run_id=*", "iteration=*")))
        candidates = staged + [p for p in self.uncommitted_files() if posixpath.dirname(p) in partitions]
        old = [p for p in candidates if now - self._newest_mtime(p) >= min_age]
        if not dry_run:
            for path in old:
                self.remove(path)
                if self.local:  # drop partition and staging folders left empty (object stores have no folders)
                    parent = posixpath.dirname(path)
                    while parent != self.root and not os.listdir(parent):
                        os.rmdir(parent)
                        parent = posixpath.dirname(parent)
        return Sweep(removed=old, kept_recent=[p for p in candidates if p not in old])

    # ---- reading ------------------------------------------------------------------------------------------------
    def read_table(self, table: str, run_id: str, iteration: int) -> pa.Table:
        """The committed rows of one table for one iteration (all stages that wrote it)."""
        files = [
            self.path(f["path"])
            for c in self.commits(run_id)
            if c.iteration == iteration
            for f in c.files
            if f["table"] == table
        ]
        if not files:
            raise FileNotFoundError(f"no committed '{table}' rows for run {run_id!r} iteration {iteration}")
        return pa.concat_tables([pq.read_table(p, filesystem=self.fs) for p in files])

    # ---- run config ---------------------------------------------------------------------------------------------
    def frozen_config(self, run_id: str) -> tuple[str, str] | None:
        """(config YAML, config hash) frozen at the run's first start, or None for a new run."""
        config = self.read_text(f"{self.run_dir(run_id)}/config.yaml")
        digest = self.read_text(f"{self.run_dir(run_id)}/config.hash")
        if config is None or digest is None:
            return None
        return config, digest.strip()

    def freeze_config(self, run_id: str, config_yaml: str, config_hash: str, note: str | None = None) -> None:
        """Record the run's config (hash last, so a half-written pair reads as absent); `note` logs an override."""
        run_dir = self.run_dir(run_id)
        self._write_atomic(f"{run_dir}/config.yaml", config_yaml)
        self._write_atomic(f"{run_dir}/config.hash", config_hash + "\n")
        if note:  # read, then rewrite: object stores cannot append
            log = f"{run_dir}/overrides.log"
            self._write_atomic(log, (self.read_text(log) or "") + f"{dt.datetime.now(dt.UTC).isoformat()} {note}\n")
