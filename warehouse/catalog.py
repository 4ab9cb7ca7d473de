"""DuckDB over the warehouse: in-memory views, rebuilt on every connect from `views.sql`, so nothing locks.

Each table's base relation reads only the Parquet files named in commit records at connect time: a connection is
a consistent snapshot of committed data, and any number of readers can query while a run writes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from schemas.tables import TABLES, arrow_schema
from warehouse.store import Warehouse

_COMMIT_COLUMNS = {
    "run_id": "VARCHAR",
    "iteration": "INTEGER",
    "stage": "VARCHAR",
    "committed_at": "TIMESTAMPTZ",
    "files": "INTEGER",
    "rows": "BIGINT",
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


def init_sql(root: str | Path) -> str:
    """The SQL that defines every view over the committed data of the warehouse at `root`, as of now."""
    store = Warehouse(root)
    commits = store.commits()
    statements = []
    for table, model in TABLES.items():
        files = [str(store.root / f["path"]) for c in commits for f in c.files if f["table"] == table]
        if files:
            listing = "[" + ", ".join(_quote(f) for f in files) + "]"
            relation = f"SELECT * FROM read_parquet({listing}, union_by_name = true)"
        else:
            relation = _empty_relation({f.name: _duckdb_type(f.type) for f in arrow_schema(model)})
        statements.append(f"CREATE OR REPLACE VIEW _{table} AS {relation};")
    if commits:
        values = ", ".join(
            f"({_quote(c.run_id)}, {c.iteration}, {_quote(c.stage)}, {_quote(c.committed_at)}::TIMESTAMPTZ, "
            f"{len(c.files)}, {sum(f['rows'] for f in c.files)})"
            for c in commits
        )
        names = ", ".join(_COMMIT_COLUMNS)
        statements.append(f"CREATE OR REPLACE VIEW _commits AS SELECT * FROM (VALUES {values}) AS t({names});")
    else:
        statements.append(f"CREATE OR REPLACE VIEW _commits AS {_empty_relation(_COMMIT_COLUMNS)};")
    views = resources.files("warehouse").joinpath("views.sql").read_text()
    return "\n".join(statements) + "\n\n" + views


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the warehouse's views, a snapshot of what is committed now."""
    con = duckdb.connect(":memory:")
    con.execute(init_sql(root))
    return con


def query(root: str | Path, sql: str) -> pa.Table:
    """Run one query over the warehouse and return the result as an Arrow table."""
    with connect(root) as con:
        return con.sql(sql).to_arrow_table()
