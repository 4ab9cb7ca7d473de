"""DuckDB over the warehouse: in-memory views, rebuilt on every connect from `views.sql`, so nothing locks.

Each table's base relation reads only the Parquet files named in commit records at connect time: a connection is
a consistent snapshot of committed data, and any number of readers can query while a run writes. A remote root
(`s3://...`) is read through the warehouse's own fsspec filesystem, registered with the connection; DuckDB never
installs or loads an extension by itself (httpfs would be a download at run time).
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from schemas.tables import TABLES, arrow_schema
from warehouse.store import StageCommit, Warehouse

_COMMIT_COLUMNS = {
    "run_id": "VARCHAR",
    "iteration": "INTEGER",
    "stage": "VARCHAR",
    "committed_at": "TIMESTAMPTZ",
    "files": "INTEGER",
    "rows": "BIGINT",
    "schema_version": "INTEGER",
}
_ATTEMPT_COLUMNS = {
    "run_id": "VARCHAR",
    "iteration": "INTEGER",
    "stage": "VARCHAR",
    "status": "VARCHAR",
    "started_at": "TIMESTAMPTZ",
    "ended_at": "TIMESTAMPTZ",
    "host": "VARCHAR",
    "pid": "INTEGER",
    "error": "VARCHAR",
    "traceback": "VARCHAR",
}


def _duckdb_type(arrow: pa.DataType) -> str:
    """The DuckDB spelling of an Arrow type, for the typed empty relation of a table with no data yet."""
    if pa.types.is_list(arrow):
        return _duckdb_type(arrow.value_type) + "[]"
    if pa.types.is_struct(arrow):
        return "STRUCT(" + ", ".join(f'"{f.name}" {_duckdb_type(f.type)}' for f in arrow) + ")"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMPTZ" if arrow.tz else "TIMESTAMP"
    names = {
        pa.string(): "VARCHAR",
        pa.int8(): "TINYINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
    }
    return names[arrow]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_relation(columns: dict[str, str]) -> str:
    return "SELECT " + ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in columns.items()) + " WHERE false"


def _literal(value: object, sql_type: str) -> str:
    if value is None:
        return f"CAST(NULL AS {sql_type})"
    if isinstance(value, str):
        return f"CAST({_quote(value)} AS {sql_type})"
    return f"CAST({value} AS {sql_type})"


def _values_relation(rows: list[dict], columns: dict[str, str]) -> str:
    """A typed relation of small metadata rows (commit and attempt records) as a VALUES list."""
    if not rows:
        return _empty_relation(columns)
    values = ", ".join("(" + ", ".join(_literal(row[c], t) for c, t in columns.items()) + ")" for row in rows)
    return f"SELECT * FROM (VALUES {values}) AS t({', '.join(columns)})"


def _tokenizer_files(store: Warehouse, commits: list[StageCommit]) -> dict[str, str]:
    """Each run's tokenizer.json (as DuckDB names it), from its latest committed checkpoint still stored (all of a
    run's checkpoints share one tokenizer, and retention removes the oldest first)."""
    found: dict[str, str] = {}
    for c in commits:
        path = f"{store.checkpoint_dir(c.run_id, c.iteration)}/hf/tokenizer.json"
        if any(f["table"] == "checkpoints" for f in c.files) and store.fs.isfile(path):
            found[c.run_id] = store.location(path)
    return found


def _init_sql(store: Warehouse, commits: list[StageCommit], attempts: list[dict]) -> str:
    statements = []
    for table, model in TABLES.items():
        # The typed empty relation first: every column of the row model, NULL in files written before it existed.
        relation = _empty_relation({f.name: _duckdb_type(f.type) for f in arrow_schema(model)})
        files = [store.location(store.path(f["path"])) for c in commits for f in c.files if f["table"] == table]
        if files:
            listing = "[" + ", ".join(_quote(f) for f in files) + "]"
            relation += f" UNION ALL BY NAME SELECT * FROM read_parquet({listing}, union_by_name = true)"
        statements.append(f"CREATE OR REPLACE VIEW _{table} AS {relation};")
    tokenizers = [
        f"SELECT {_quote(run)} AS run_id, content AS tokenizer FROM read_text({_quote(path)})"
        for run, path in _tokenizer_files(store, commits).items()
    ]
    relation = " UNION ALL ".join(tokenizers) or _empty_relation({"run_id": "VARCHAR", "tokenizer": "VARCHAR"})
    statements.append(f"CREATE OR REPLACE VIEW _tokenizers AS {relation};")
    commit_rows = [
        {**{k: getattr(c, k) for k in ("run_id", "iteration", "stage", "committed_at")}, "files": len(c.files),
         "rows": sum(f["rows"] for f in c.files), "schema_version": c.info.get("schema_version")}
        for c in commits
    ]  # fmt: skip
    statements.append(f"CREATE OR REPLACE VIEW _commits AS {_values_relation(commit_rows, _COMMIT_COLUMNS)};")
    attempt_rows = [{k: a[k] for k in _ATTEMPT_COLUMNS} for a in attempts]
    statements.append(f"CREATE OR REPLACE VIEW _stage_attempts AS {_values_relation(attempt_rows, _ATTEMPT_COLUMNS)};")
    views = resources.files("warehouse").joinpath("views.sql").read_text()
    return "\n".join(statements) + "\n\n" + views


def init_sql(root: str | Path) -> str:
    """The SQL that defines every view over the committed data of the warehouse at `root`, as of now."""
    store = Warehouse(root)
    return _init_sql(store, store.commits(), store.attempts())


class ReadOnlyError(ValueError):
    """A statement that would write, attach, load or configure something was given where only reading is allowed."""


def check_read_only(sql: str) -> None:
    """Refuse anything but one SELECT (DESCRIBE, SHOW, SUMMARIZE, FROM ... are SELECTs), as DuckDB's parser sees it."""
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise ReadOnlyError(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ReadOnlyError(f"the warehouse is read-only here: a {kind.name} statement is refused; use SELECT")


def connect(root: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the warehouse's views, a snapshot of what is committed now.

    `read_only` locks the connection down: it may read the snapshot's files and nothing else (no other file, no
    network, no extension install, no setting change), so even a statement that slips past a check cannot write.
    """
    store = Warehouse(root)
    commits = store.commits()
    con = _connection(store)
    con.execute(_init_sql(store, commits, store.attempts()))
    if read_only:
        readable = [store.location(store.path(f["path"])) for c in commits for f in c.files]
        readable += list(_tokenizer_files(store, commits).values())
        con.execute("SET allowed_paths = " + "[" + ", ".join(_quote(p) for p in readable) + "]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def _connection(store: Warehouse) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    if not store.local:
        con.register_filesystem(store.fs)
    return con


def connect_iteration(root: str | Path, run_id: str, iteration: int) -> duckdb.DuckDBPyConnection:
    """A connection like `connect`'s whose views hold one iteration of one run: its committed files, and the update
    metrics of the run's earlier iterations (the first one's perplexities are `iteration_summary`'s denominators);
    no stage attempts. What a summary of the iteration needs, read without scanning the rest of the warehouse."""
    store = Warehouse(root)
    earlier = [c for c in store.commits(run_id, stage="update") if c.iteration < iteration]
    metrics = [replace(c, files=[f for f in c.files if f["table"] == "metrics"]) for c in earlier]
    con = _connection(store)
    con.execute(_init_sql(store, metrics + store.commits(run_id, iteration), []))
    return con


def query(root: str | Path, sql: str, read_only: bool = False) -> pa.Table:
    """Run one query over the warehouse and return the result as an Arrow table (`read_only`: one SELECT only)."""
    if read_only:
        check_read_only(sql)
    with connect(root, read_only=read_only) as con:
        return con.sql(sql).to_arrow_table()
