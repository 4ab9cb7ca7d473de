"""The warehouse as a product: `hicra sql`, the `tokens` view, the SQL cookbook, `hicra warehouse check|gc`,
readers during a run, and reading partitions written with an older schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from cli.main import main as hicra
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.conftest import ROOT, child_env, small_config
from tests.test_warehouse import rollout, score
from warehouse.catalog import ReadOnlyError, connect, query
from warehouse.store import Warehouse

COOKBOOK = ROOT / "docs" / "sql-cookbook.md"
RECIPES = re.findall(r"^### (.+?)\n.*?^```sql\n(.*?)^```", COOKBOOK.read_text(), re.S | re.M)
OLD = time.time() - 7200  # an mtime older than gc's default --min-age


@pytest.fixture
def store(tmp_path) -> Warehouse:
    """A warehouse with one committed iteration: 4 rollouts (2 groups) and their scores."""
    wh = Warehouse(tmp_path / "wh")
    wh.commit_stage(
        "r", 0, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 0, g, s) for g in (0, 1) for s in (0, 1)])}
    )
    scores = [score("r", 0, g, s, float(g == s == 0)) for g in (0, 1) for s in (0, 1)]
    wh.commit_stage("r", 0, "verify", {"scores": to_table(ScoreRow, scores)})
    return wh


def sql(store: Warehouse, *argv: str) -> int:
    return hicra(["sql", "--warehouse", str(store.root), *argv])


# ---- hicra sql -----------------------------------------------------------------------------------------------------
def test_sql_formats(store, tmp_path, capsys):
    statement = "SELECT rollout_id, response_token_ids, reward FROM rollouts JOIN scores USING (rollout_id) ORDER BY 1"
    assert sql(store, statement) == 0
    assert "r/0/0/0" in capsys.readouterr().out
    assert sql(store, "--format", "csv", statement) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["rollout_id,response_token_ids,reward", 'r/0/0/0,"[3, 4, 5]",1.0'] and len(lines) == 5
    assert sql(store, "--format", "json", statement) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"rollout_id": "r/0/0/0", "response_token_ids": [3, 4, 5], "reward": 1.0} and len(rows) == 4
    out = tmp_path / "result.parquet"
    assert sql(store, "--format", "parquet", "--out", str(out), statement) == 0
    assert pq.read_table(out).to_pylist() == rows
    assert sql(store, "--format", "parquet", statement) == 2
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
    assert sql(store, statement) == 2
    err = capsys.readouterr().err
    assert err.startswith("hicra: error: ") and err.count("\n") == 1
    with pytest.raises(ReadOnlyError):
        query(store.root, statement, read_only=True)


@pytest.mark.parametrize(
    ("statement", "message"),
    [("SELEC 1", "Parser Error"), ("SELECT * FROM nosuch", "nosuch"), ("SELECT nosuch FROM rollouts", "nosuch")],
)
def test_sql_errors_are_one_line(store, statement, message, capsys):
    assert sql(store, statement) == 2
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
    assert sql(store, "--init-file") == 0
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


# ---- schema evolution ----------------------------------------------------------------------------------------------
def test_views_read_partitions_of_an_older_schema(store):
    """Iteration 1's scores were written before `detail` and `verify_seconds` existed: NULL there, data elsewhere."""
    store.commit_stage("r", 1, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 1, 0, 0)])})
    old = to_table(ScoreRow, [score("r", 1, 0, 0, 1.0)]).drop_columns(["detail", "verify_seconds"])
    store.commit_stage("r", 1, "verify", {"scores": old}, info={"schema_version": 0})
    rows = query(store.root, "SELECT iteration, verify_seconds, status FROM scores ORDER BY iteration").to_pylist()
    assert [r["verify_seconds"] for r in rows] == [0.01] * 4 + [None] and rows[-1]["status"] == "ok"
    summary = query(store.root, "SELECT iteration, accuracy FROM iteration_summary ORDER BY 1").to_pylist()
    assert summary == [{"iteration": 0, "accuracy": 0.25}, {"iteration": 1, "accuracy": 1.0}]
    versions = query(store.root, "SELECT iteration, stage, schema_version FROM commits ORDER BY 1, 2").to_pylist()
    assert [v["schema_version"] for v in versions] == [1, 1, 1, 0]


def test_a_column_no_file_has_yet_reads_as_null(tmp_path):
    store = Warehouse(tmp_path)
    old = to_table(ScoreRow, [score("r", 0, 0, 0, 1.0)]).drop_columns(["detail"])
    store.commit_stage("r", 0, "verify", {"scores": old})
    assert query(tmp_path, "SELECT detail, reward FROM scores").to_pylist() == [{"detail": None, "reward": 1.0}]


# ---- the real run: tokens view, cookbook, check ------------------------------------------------------------------
def test_tokens_view_lines_up_with_the_rollouts(small_run):
    root, _, _ = small_run
    per_rollout = query(
        root,
        """SELECT t.rollout_id, count(*) AS n, any_value(r.response_length) AS length,
                  count(*) FILTER (WHERE t.is_planning) AS planning, any_value(p.num_planning_tokens) AS expected,
                  count(t.advantage) AS advantages, count(t.token_text) AS texts,
                  string_agg(t.token_text, '' ORDER BY t.position) FILTER (WHERE t.token_text NOT LIKE '<|%|>') AS text,
                  any_value(r.response) AS response, max(t.position) AS last
           FROM tokens t JOIN rollouts r USING (run_id, iteration, rollout_id)
           JOIN planning p USING (run_id, iteration, rollout_id) GROUP BY t.rollout_id""",
    ).to_pylist()
    assert len(per_rollout) == 64
    for row in per_rollout:
        assert row["n"] == row["length"] == row["advantages"] == row["last"] + 1, row["rollout_id"]
        assert row["planning"] == row["expected"], row["rollout_id"]
        if row["texts"] == row["n"]:  # every token is whole UTF-8: the tokens spell the response
            assert row["text"] == row["response"], row["rollout_id"]
    assert sum(row["texts"] == row["n"] for row in per_rollout) > len(per_rollout) // 2


def test_cookbook_has_ten_queries_and_each_runs(small_run):
    root, _, _ = small_run
    assert len(RECIPES) >= 10
    with connect(root, read_only=True) as con:
        views = {v for (v,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        for title, statement in RECIPES:
            if "eval_summary" in statement and "eval_summary" not in views:
                continue  # the eval views come with the evaluation flow; until then the recipe cannot run
            rows = con.sql(statement).fetchall()
            if "zero advantage" in title:  # as many groups as the summary counts, which may be none
                [(expected,)] = con.sql(
                    "SELECT sum(round(zero_adv_group_share * groups)) FROM iteration_summary"
                ).fetchall()
                assert len(rows) == expected, title
            elif "eval_summary" not in statement:  # the small run has no evaluation, so no rows there
                assert rows, title


def test_check_passes_on_a_real_run(small_run, capsys):
    root, _, _ = small_run
    assert hicra(["warehouse", "check", "--warehouse", str(root)]) == 0
    assert "0 problems" in capsys.readouterr().out


# ---- readers while a run writes ------------------------------------------------------------------------------------
READER_SQL = """
SELECT r.iteration, r.n AS rollouts, s.n AS scores, p.n AS planning, a.n AS advantages
FROM (SELECT iteration, count(*) AS n FROM rollouts GROUP BY 1) r
LEFT JOIN (SELECT iteration, count(*) AS n FROM scores GROUP BY 1) s USING (iteration)
LEFT JOIN (SELECT iteration, count(*) AS n FROM planning GROUP BY 1) p USING (iteration)
LEFT JOIN (SELECT iteration, count(*) AS n FROM advantages GROUP BY 1) a USING (iteration)
ORDER BY 1
"""


@pytest.mark.slow
def test_readers_see_whole_iterations_while_a_run_writes(tmp_path, prefect_server):
    """Query in a loop while a run writes in a subprocess: no error, no half-visible stage, counts never go down."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path / "wh", rollout={"prompts_per_iteration": 4})))
    env = child_env(PREFECT_API_URL=prefect_server)
    command = [sys.executable, "-m", "cli", "train", "--config", str(config)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: list[dict[int, tuple]] = []
    deadline = time.monotonic() + 600
    try:
        while process.poll() is None:
            assert time.monotonic() < deadline, "the run took over 10 minutes"
            with connect(tmp_path / "wh", read_only=True) as con:
                rows = con.sql(READER_SQL).fetchall()
                con.sql("SELECT * FROM iteration_summary").fetchall()
            for iteration, *counts in rows:
                assert all(n in (None, counts[0]) for n in counts), f"iteration {iteration} half visible: {counts}"
            state = {row[0]: tuple(n or 0 for n in row[1:]) for row in rows}
            if seen:
                assert set(seen[-1]) <= set(state), "an iteration disappeared"
                assert all(state[i] >= c for i, c in seen[-1].items()), "a count went down"
            seen.append(state)
            time.sleep(0.3)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.communicate()[1].decode()
    assert process.returncode == 0, stderr[-3000:]
    assert query(tmp_path / "wh", READER_SQL).to_pylist() == [
        {"iteration": i, "rollouts": 16, "scores": 16, "planning": 16, "advantages": 16} for i in (0, 1)
    ]
    assert len({tuple(sorted(s.items())) for s in seen}) >= 3, "the reader saw too few states to mean anything"
