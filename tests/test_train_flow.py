"""The training flow end to end on the CPU: committed tables, HICRA advantages, resume after SIGKILL, config guard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows.cli import main as hicra_main
from flows.train import train
from schemas.config import load_config
from tasks.common import RunConfigMismatch
from tests.conftest import ROOT, child_env, small_config
from warehouse.catalog import query
from warehouse.store import Warehouse

PER_TOKEN = ["rollouts", "scores", "planning", "advantages"]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def trained(small_run):
    return small_run


def table_rows(root: Path, table: str, drop: tuple[str, ...] = ("verify_seconds", "created_at")) -> list[dict]:
    rows = query(root, f"select * from {table} order by all").to_pylist()
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def test_every_stage_commits_one_copy_of_every_row(trained):
    root, _, summaries = trained
    assert [s["iteration"] for s in summaries] == [0, 1]
    counts = query(
        root, "select iteration, count(*) n, count(distinct rollout_id) d from rollouts group by 1 order by 1"
    )
    assert counts.to_pylist() == [{"iteration": 0, "n": 32, "d": 32}, {"iteration": 1, "n": 32, "d": 32}]
    for table in PER_TOKEN[1:]:
        n = query(root, f"select count(*) n, count(distinct rollout_id) d from {table}").to_pylist()[0]
        assert n == {"n": 64, "d": 64}, table
    assert query(root, "select count(*) n from train_steps").to_pylist()[0]["n"] == 4  # 32 rollouts / 16 per step
    stages = query(root, "select iteration, list(stage order by stage) s from commits group by 1 order by 1")
    assert [r["s"] for r in stages.to_pylist()] == [["annotate", "rollout", "update", "verify"]] * 2
    checkpoints = query(root, "select hf_path from checkpoints order by iteration").to_pylist()
    assert all((root / c["hf_path"] / "config.json").is_file() for c in checkpoints)


def test_per_token_columns_line_up(trained):
    root, _, _ = trained
    misaligned = query(
        root,
        """select count(*) n from rollouts r join planning p using (run_id, iteration, rollout_id)
           join advantages a using (run_id, iteration, rollout_id)
           where len(r.response_token_ids) <> len(p.planning_mask) or len(p.planning_mask) <> len(a.advantage)
              or len(a.advantage) <> r.response_length""",
    )
    assert misaligned.to_pylist()[0]["n"] == 0


def test_advantages_are_hicra_of_group_centred_rewards(trained):
    """Planning tokens get A + 0.2|A|, others A, where A = reward - mean reward of the group (the paper's Eq. 3)."""
    root, _, _ = trained
    tokens = query(
        root,
        """with g as (
             select s.run_id, s.iteration, r.group_index, avg(s.reward) mean_reward
             from scores s join rollouts r using (run_id, iteration, rollout_id) group by all)
           select s.reward - g.mean_reward as a, unnest(p.planning_mask) as planning, unnest(a.advantage) as adv
           from scores s join rollouts r using (run_id, iteration, rollout_id)
           join g using (run_id, iteration, group_index)
           join planning p using (run_id, iteration, rollout_id)
           join advantages a using (run_id, iteration, rollout_id)""",
    ).to_pylist()
    changed = 0
    for t in tokens:
        expected = t["a"] + 0.2 * abs(t["a"]) if t["planning"] else t["a"]
        assert t["adv"] == pytest.approx(expected, abs=1e-6)
        changed += bool(t["planning"] and t["a"] != 0)
    assert changed > 0, "no planning token had a non-zero advantage: the check above proved nothing"


def test_rerun_is_a_no_op_and_sql_cli_reads_it(trained, capsys):
    root, config, _ = trained
    before = {t: table_rows(root, t) for t in PER_TOKEN}
    train(config_path=str(config))
    assert {t: table_rows(root, t) for t in PER_TOKEN} == before
    assert (
        hicra_main(["sql", "--warehouse", str(root), "select iteration, avg(reward) from scores group by 1 order by 1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "avg(reward)" in out and out.count("│ 0 ") + out.count("│ 1 ") >= 2


def test_changed_config_is_refused_unless_forced(trained, tmp_path):
    root, config, _ = trained
    changed = yaml.safe_load(config.read_text())
    changed["algorithm"] = {"alpha": 0.5}
    changed_path = write_config(tmp_path / "changed.yaml", changed)
    with pytest.raises(RunConfigMismatch, match=r"algorithm\.alpha"):
        train(config_path=str(changed_path))
    assert Warehouse(root).frozen_config("t")[1] == load_config(config).config_hash()


def test_bad_dataset_row_stops_before_anything_is_committed(tmp_path, prefect_server):
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        json.dumps({"id": "a", "problem": "2+2", "answer": "4"}) + "\n" + json.dumps({"id": "b", "problem": "1+1"})
    )
    config = write_config(
        tmp_path / "c.yaml", small_config(tmp_path / "wh", data={"source": "jsonl", "path": str(data)})
    )
    with pytest.raises(ValueError, match=r"prompts\.jsonl: row 2: no 'answer'"):
        train(config_path=str(config))
    assert Warehouse(tmp_path / "wh").commits() == []
    attempts = query(tmp_path / "wh", "select stage, status, error from stage_attempts").to_pylist()
    assert len(attempts) == 1, "a data error must not be retried"
    assert attempts[0]["stage"] == "rollout" and attempts[0]["status"] == "failed"
    assert "row 2: no 'answer'" in attempts[0]["error"]


def _wait_for(folder: Path, pattern: str, process: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until a file matching `pattern` appears in `folder` (an attempt record: the stage has started)."""
    deadline = time.monotonic() + timeout
    while not any(folder.glob(pattern)):
        assert process.poll() is None, "the run ended before the stage started"
        assert time.monotonic() < deadline, "timed out waiting for the stage to start"
        time.sleep(0.02)


def test_sigkill_inside_stages_then_resume_equals_uninterrupted_run(trained, tmp_path, prefect_server):
    """Kill the CLI with SIGKILL inside verify, update and rollout in turn; the resumed run equals the baseline."""
    baseline_root, baseline_config, _ = trained
    root = tmp_path / "wh"
    config = write_config(tmp_path / "run.yaml", {**yaml.safe_load(baseline_config.read_text()), "run": {
        **yaml.safe_load(baseline_config.read_text())["run"], "warehouse": str(root)}})  # fmt: skip
    store = Warehouse(root)
    env = child_env(PREFECT_API_URL=prefect_server, HICRA_DEBUG="1")
    command = [sys.executable, "-m", "flows.cli", "train", "--config", str(config)]
    # (iteration, stage, seconds after the stage's attempt started): the kill lands inside that stage
    kills = [(0, "verify", 0.2), (0, "update", 0.3), (1, "rollout", 0.3)]
    for iteration, stage, delay in kills:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        attempts = root / "_attempts" / "run_id=t" / f"iteration={iteration}"
        try:
            _wait_for(attempts, f"{stage}-*.json", process)
            time.sleep(delay)
            assert not store.is_committed("t", iteration, stage), f"{stage} finished before the kill: lower the delay"
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for table in PER_TOKEN:
        assert table_rows(root, table) == table_rows(baseline_root, table), table
    drop = ("created_at", "hf_path", "deepspeed_path")
    assert table_rows(root, "checkpoints", drop) == table_rows(baseline_root, "checkpoints", drop)
    assert len(table_rows(root, "train_steps")) == len(table_rows(baseline_root, "train_steps"))
    assert not list((root / "_staging").rglob("*.parquet"))
    interrupted = query(root, "select iteration, stage from stage_attempts where status = 'interrupted' order by all")
    assert interrupted.to_pylist() == [
        {"iteration": 0, "stage": "update"},
        {"iteration": 0, "stage": "verify"},
        {"iteration": 1, "stage": "rollout"},
    ]
    for commit in store.commits():
        for f in commit.files:
            assert pq.read_metadata(root / f["path"]).num_rows == f["rows"]


def test_runs_and_status_commands(trained, capsys):
    root, _, _ = trained
    from warehouse.runs import runs, status

    (row,) = runs(str(root))
    assert (row["run_id"], row["last_iteration"], row["last_stage"], row["failed"]) == ("t", 1, "update", 0)
    assert [r["iteration"] for r in status(str(root), "t")] == [0, 1]
    assert all(r["update"] is not None for r in status(str(root), "t"))
    assert hicra_main(["status", "t", "--warehouse", str(root)]) == 0
    assert "rollout" in capsys.readouterr().out
