"""cli/sql.py: `hicra sql` (DuckDB's box fitted to the terminal at 80 and 200 columns, the text formats, one SELECT
only, one-line errors, the read-only connection, --init-file) and `hicra warehouse check|gc`."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main as hicra
from cli.sql import write_result
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.conftest import rollout, score
from warehouse.catalog import ReadOnlyError, connect, query
from warehouse.store import Warehouse

OLD = time.time() - 7200  # an mtime older than gc's default --min-age


@pytest.fixture
def root(store) -> str:
    """The root of `store`: one committed iteration (rollout and verify), so `iteration_summary` has one wide row."""
    return str(store.root)


def run_sql(store: Warehouse, *argv: str) -> int:
    return hicra(["sql", "--warehouse", str(store.root), *argv])


def sql(root: str, capsys, columns: int, *argv: str, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert hicra(["sql", "--warehouse", root, *argv]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.parametrize("columns", [80, 200])
def test_a_wide_summary_fits_the_terminal_with_elided_columns_noted(root, capsys, monkeypatch, columns):
    lines = sql(root, capsys, columns, "select * from iteration_summary", monkeypatch=monkeypatch)
    assert max(len(line) for line in lines) <= columns
    header = lines[1]
    assert "run_id" in header and "iteration" in header  # the first columns whole, never squeezed to nothing
    assert "…" in header  # iteration_summary has 32 columns: some are elided, and the footer says so, on one line
    assert lines[-1].split()[:2] == ["1", "rows"] and lines[-1].endswith(
        "32 columns (6 shown)" if columns == 80 else ")"
    )


def test_many_rows_are_elided_in_the_middle_and_counted(root, capsys, monkeypatch):
    lines = sql(root, capsys, 80, "select range as n from range(100)", "--max-rows", "10", monkeypatch=monkeypatch)
    assert "│" in lines[4] and any("·" in line for line in lines)
    assert lines[-2].strip() == "100 rows" and lines[-1].strip() == "(10 shown)"
    assert max(len(line) for line in lines) <= 80


def test_text_formats():
    result = pa.table({"a": [1, None], "b": ["x|y", "z"], "c": [[1, 2], []]})

    def render(fmt: str) -> str:
        out = io.StringIO()
        write_result(result, fmt, out)
        return out.getvalue()

    assert render("markdown").splitlines() == [
        "| a | b | c |",
        "| --- | --- | --- |",
        "| 1 | x\\|y | [1, 2] |",
        "| NULL | z | [] |",
    ]
    assert render("line") == "a = 1\nb = x|y\nc = [1, 2]\n\na = NULL\nb = z\nc = []\n"
    assert render("csv").splitlines() == ["a,b,c", '1,x|y,"[1, 2]"', ",z,[]"]
    assert json.loads(render("json")) == result.to_pylist()
    box = render("box").splitlines()
    assert box[1].split() == ["│", "a", "│", "b", "│", "c", "│"] and "NULL" in box[5]


def test_old_table_format_is_box_with_a_warning(root, capsys, monkeypatch):
    with pytest.warns(FutureWarning, match="--format table is deprecated"):
        lines = sql(root, capsys, 80, "--format", "table", "select 1 as one", monkeypatch=monkeypatch)
    assert lines[0].startswith("┌") and "one" in lines[1]


# ---- hicra sql -----------------------------------------------------------------------------------------------------
def test_sql_formats(store, tmp_path, capsys):
    statement = "SELECT rollout_id, response_token_ids, reward FROM rollouts JOIN scores USING (rollout_id) ORDER BY 1"
    assert run_sql(store, statement) == 0
    assert "r/0/0/0" in capsys.readouterr().out
    assert run_sql(store, "--format", "csv", statement) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["rollout_id,response_token_ids,reward", 'r/0/0/0,"[3, 4, 5]",1.0'] and len(lines) == 5
    assert run_sql(store, "--format", "json", statement) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"rollout_id": "r/0/0/0", "response_token_ids": [3, 4, 5], "reward": 1.0} and len(rows) == 4
    out = tmp_path / "result.parquet"
    assert run_sql(store, "--format", "parquet", "--out", str(out), statement) == 0
    assert pq.read_table(out).to_pylist() == rows
    assert run_sql(store, "--format", "parquet", statement) == 2
    assert "--format parquet needs --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW rollouts",
        "ALTER VIEW rollouts RENAME TO x",
        "COPY (SELECT 1) TO 'x.csv'",
        "ATTACH 'x.db'",
        "DETACH x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "PRAGMA version",
        "EXPORT DATABASE 'x'",
        "IMPORT DATABASE 'x'",
        "CALL pragma_version()",
        "SELECT 1; SELECT 2",
    ],
)
def test_sql_refuses_anything_but_one_select(store, statement, capsys):
    assert run_sql(store, statement) == 2
    err = capsys.readouterr().err
    assert err.startswith("hicra: error: ") and err.count("\n") == 1
    with pytest.raises(ReadOnlyError):
        query(store.root, statement, read_only=True)


@pytest.mark.parametrize(
    ("statement", "message"),
    [("SELEC 1", "Parser Error"), ("SELECT * FROM nosuch", "nosuch"), ("SELECT nosuch FROM rollouts", "nosuch")],
)
def test_sql_errors_are_one_line(store, statement, message, capsys):
    assert run_sql(store, statement) == 2
    err = capsys.readouterr().err
    assert err.startswith("hicra: error: ") and message in err and err.count("\n") == 1


def test_read_only_connection_reads_committed_files_only(store, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    with connect(store.root, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM rollouts").fetchone() == (4,)
        for statement in (
            f"SELECT * FROM read_csv('{outside}')",
            f"COPY (SELECT 1) TO '{store.path('x.csv')}'",
            f"SELECT * FROM read_parquet('{store.root}/*/*/*/*.parquet')",
            "SET enable_external_access = true",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(statement)
    assert not Path(store.path("x.csv")).exists()


def test_init_file_runs_in_a_plain_duckdb(store, capsys):
    assert run_sql(store, "--init-file") == 0
    con = duckdb.connect()
    con.execute(capsys.readouterr().out)
    summary = "SELECT * FROM iteration_summary"
    assert con.sql(summary).to_arrow_table() == query(store.root, summary)


def test_missing_warehouse_is_an_error(tmp_path, capsys):
    assert hicra(["sql", "--warehouse", str(tmp_path / "none"), "SELECT 1"]) == 2
    assert "no warehouse at" in capsys.readouterr().err


# ---- hicra warehouse check | gc ------------------------------------------------------------------------------------
def check(store: Warehouse, capsys, *argv: str) -> tuple[int, str]:
    code = hicra(["warehouse", "check", "--warehouse", str(store.root), *argv])
    return code, capsys.readouterr().out


def test_check_reports_missing_altered_truncated_and_extra_files(store, capsys):
    assert check(store, capsys) == (0, "2 committed files checked, 0 problems\n")
    store.commit_stage("r", 1, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 1, 0, 0)])})
    store.commit_stage("r", 1, "verify", {"scores": to_table(ScoreRow, [score("r", 1, 0, 0, 1.0)])})
    rollouts0, scores0, rollouts1, scores1 = [Path(store.path(f["path"])) for c in store.commits() for f in c.files]
    data = bytearray(rollouts0.read_bytes())
    data[10] ^= 0xFF  # one flipped byte in the first column chunk: the footer still reads
    rollouts0.write_bytes(bytes(data))
    scores0.write_bytes(scores0.read_bytes()[:-100])
    rollouts1.unlink()
    stray = Path(store.partition("scores", "r", 1), "verify-0badc0ffee00.parquet")
    stray.write_bytes(scores1.read_bytes())
    code, out = check(store, capsys)
    assert code == 1
    found = {line.split()[0]: line.split()[1].rstrip(":") for line in out.splitlines()[:-1]}
    root = Path(store.root)
    assert found == {
        "altered": str(rollouts0.relative_to(root)),
        "truncated": str(scores0.relative_to(root)),
        "missing": str(rollouts1.relative_to(root)),
        "extra": str(stray.relative_to(root)),
    }
    assert out.splitlines()[-1] == "4 committed files checked, 4 problems"
    assert check(store, capsys, "--run", "other") == (0, "0 committed files checked, 0 problems\n")


def test_gc_removes_old_uncommitted_files_only(store, capsys):
    root = Path(store.root)
    committed = sorted(p for p in root.rglob("*.parquet"))
    old_stray = Path(store.partition("scores", "r", 0), "verify-0ld0ld0ld0ld.parquet")
    young_stray = Path(store.partition("scores", "r", 0), "verify-y0ungy0ungy0.parquet")
    old_staging = Path(store.staging_dir("r", 1, "rollout"))
    export = root / "export.parquet"  # someone's file outside the partition layout: reported, never removed
    for path in (old_stray, young_stray, old_staging / "rollouts.parquet", export):
        path.write_bytes(committed[0].read_bytes())
    for path in (old_stray, old_staging / "rollouts.parquet", old_staging, export):
        os.utime(path, (OLD, OLD))
    assert hicra(["warehouse", "gc", "--dry-run", "--warehouse", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "would remove 2 uncommitted paths older than 3600s" in out and young_stray.name in out
    assert old_stray.exists() and old_staging.exists()
    assert hicra(["warehouse", "gc", "--warehouse", str(store.root)]) == 0
    assert not old_stray.exists() and not old_staging.exists() and young_stray.exists()
    assert sorted(p for p in root.rglob("*.parquet")) == sorted([*committed, young_stray, export])
    assert check(store, capsys)[1].count("extra") == 2
    young_stray.unlink()
    export.unlink()
    assert check(store, capsys)[0] == 0
