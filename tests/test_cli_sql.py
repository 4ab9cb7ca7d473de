"""`hicra sql`'s output (cli/sql.py): DuckDB's box fitted to the terminal at 80 and 200 columns, and the text formats
csv, json, markdown and line. Statements, errors and read-only rules: tests/test_warehouse_product.py."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from cli.main import main as hicra
from cli.sql import write_result
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.test_warehouse import rollout, score
from warehouse.store import Warehouse


@pytest.fixture
def root(tmp_path) -> str:
    """A warehouse with one committed iteration (rollout and verify): `iteration_summary` has one wide row."""
    store = Warehouse(tmp_path / "wh")
    rows = [rollout("r", 0, g, s) for g in (0, 1) for s in (0, 1)]
    store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, rows)})
    scores = [score("r", 0, g, s, float(g == s == 0)) for g in (0, 1) for s in (0, 1)]
    store.commit_stage("r", 0, "verify", {"scores": to_table(ScoreRow, scores)})
    return str(store.root)


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
