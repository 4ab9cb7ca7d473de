"""The warehouse: staged writes, commit records, cleanup of killed attempts, views of committed data only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from schemas.tables import TABLES, RolloutRow, ScoreRow, arrow_schema, to_table
from tests.conftest import ROOT, rollout, score
from warehouse.catalog import connect, init_sql
from warehouse.store import AlreadyCommitted, Busy, Warehouse


def test_every_table_schema_derives_and_has_keys():
    for name, model in TABLES.items():
        schema = arrow_schema(model)
        assert schema.names[:2] == ["run_id", "iteration"], name
    assert str(arrow_schema(RolloutRow).field("response_token_ids").type) == "list<item: int32>"


def test_empty_warehouse_has_typed_views(tmp_path):
    con = connect(tmp_path)
    for view in (
        "rollouts",
        "scores",
        "planning",
        "advantages",
        "train_steps",
        "metrics",
        "commits",
        "iteration_summary",
    ):
        assert con.execute(f"select count(*) from {view}").fetchone() == (0,)


def test_commit_then_query(tmp_path):
    store = Warehouse(tmp_path)
    rows = [rollout("r", 0, g, s) for g in range(2) for s in range(2)]
    record = store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, rows)})
    assert record.files[0]["rows"] == 4 and len(record.files[0]["sha256"]) == 64
    rewards = [1.0, 0.0, 0.0, 0.0]
    scores = [score("r", 0, g, s, rewards[2 * g + s]) for g in range(2) for s in range(2)]
    store.commit_stage("r", 0, "verify", {"scores": to_table(ScoreRow, scores)})
    con = connect(tmp_path)
    summary = con.execute("select rollouts, groups, reward, accuracy, pass_at_group from iteration_summary").fetchall()
    assert summary == [(4, 2, 0.25, 0.25, 0.5)]
    assert con.execute("select stage from commits order by stage").fetchall() == [("rollout",), ("verify",)]
    with pytest.raises(AlreadyCommitted):
        store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, rows)})


def test_uncommitted_files_are_invisible_and_discarded(tmp_path):
    store = Warehouse(tmp_path)
    store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 0, 0, 0)])})
    # a killed verify attempt: a staged file and a file renamed into its partition, but no commit record
    staging = Path(store.staging_dir("r", 0, "verify"))
    (staging / "scores.parquet").write_bytes(b"partial")
    leftover = Path(store.partition("scores", "r", 0), "verify-deadbeef.parquet")
    leftover.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(to_table(ScoreRow, [score("r", 0, 0, 0, 1.0)]), leftover)
    assert connect(tmp_path).execute("select count(*) from scores").fetchone() == (0,)
    removed = store.discard_uncommitted("r", 0, "verify")
    assert sorted(Path(p).name for p in removed) == sorted([staging.name, leftover.name])
    assert not leftover.exists() and not staging.exists()
    assert store.read_table("rollouts", "r", 0).num_rows == 1
    with pytest.raises(AlreadyCommitted):
        store.discard_uncommitted("r", 0, "rollout")


def test_init_sql_runs_in_a_plain_duckdb(tmp_path):
    store = Warehouse(tmp_path)
    store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 0, 0, 0)])})
    con = duckdb.connect()
    con.execute(init_sql(tmp_path))
    assert con.execute("select response_token_ids from rollouts").fetchone() == ([3, 4, 5],)


def test_frozen_config_roundtrip(tmp_path):
    store = Warehouse(tmp_path)
    assert store.frozen_config("r") is None
    store.freeze_config("r", "a: 1\n", "abc")
    assert store.frozen_config("r") == ("a: 1\n", "abc")


def test_lock_refuses_a_second_holder_and_a_killed_holder_frees_it(tmp_path):
    store = Warehouse(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from warehouse.store import Warehouse\n"
         f"with Warehouse({str(tmp_path)!r}).lock('r', 0, 'verify'):\n print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"stage busy: .*_locks/r/0/verify\.lock is held by host \S+ pid {holder.pid} since "
        with pytest.raises(Busy, match=busy), store.lock("r", 0, "verify", what="stage busy"):
            pass
        with store.lock("r", 1, "verify"):  # another name: free
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    with store.lock("r", 0, "verify"):
        pass
