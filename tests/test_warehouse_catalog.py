"""The warehouse's DuckDB views (warehouse/catalog.py): the `tokens` view, the SQL cookbook, readers during a run, and
reading partitions written with an older schema. `hicra sql` and `hicra warehouse check|gc`: tests/test_cli_sql.py."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml

from cli.main import main as hicra
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.conftest import ROOT, child_env, rollout, score, small_config
from warehouse.catalog import connect, query
from warehouse.store import Warehouse

COOKBOOK = ROOT / "docs" / "sql-cookbook.md"
RECIPES = re.findall(r"^### (.+?)\n.*?^```sql\n(.*?)^```", COOKBOOK.read_text(), re.S | re.M)


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
