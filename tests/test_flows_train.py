"""The training flow end to end on the CPU: committed tables, HICRA advantages, resume after SIGKILL, config guard."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from cli.main import main as hicra_main
from flows.train import train
from hicra.data import DataError, data_position, load_training_problems, prompts_for_iteration
from hicra.trainer import CHECKPOINT_TAG
from schemas.config import load_config
from tasks.common import RunConfigMismatch
from tasks.stages import _check_data_position
from tests.conftest import ROOT, child_env, small_config
from warehouse.catalog import query
from warehouse.store import Busy, Warehouse

PER_TOKEN = ["rollouts", "scores", "planning", "advantages"]
TABLES = [*PER_TOKEN, "train_steps", "checkpoints", "metrics", "eval_results"]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def trained(small_run):
    return small_run


def table_rows(
    root: Path, table: str, drop: tuple[str, ...] = ("verify_seconds", "created_at"), where: str = "true"
) -> list[dict]:
    rows = query(root, f"select * from {table} where {where} order by all").to_pylist()
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def assert_same_warehouse(root: Path, baseline: Path, where: str = "true", context: str = "") -> None:
    """Every table of `root` holds the same rows and values as `baseline`'s (timings and timestamps aside)."""
    for table in TABLES:
        assert table_rows(root, table, where=where) == table_rows(baseline, table, where=where), f"{table} {context}"


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
    box = out[out.index("┌") :]  # DuckDB's box of the query, after the training flow's report
    assert "avg(reward)" in box and [line.split()[1] for line in box.splitlines()[4:6]] == ["0", "1"]


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
        time.sleep(0.01)


def _stage_seconds(root: Path) -> dict[tuple[int, str], float]:
    """(iteration, stage) -> seconds its committed attempt took (eval stages as `eval`), from the attempt records."""
    seconds = {}
    for a in Warehouse(root).attempts():
        if a["status"] == "ok":
            took = dt.datetime.fromisoformat(a["ended_at"]) - dt.datetime.fromisoformat(a["started_at"])
            seconds[(a["iteration"], a["stage"].split("-")[0])] = took.total_seconds()
    return seconds


def _committed(store: Warehouse, iteration: int, stage: str) -> bool:
    return any(Path(store.path("_commits", "run_id=t", f"iteration={iteration}")).glob(f"{stage}*.json"))


# (iteration, stage) killed in turn, each in its own start of the run; the last start resumes to the end
KILLS = [(0, "verify"), (0, "annotate"), (0, "update"), (0, "eval"), (1, "rollout")]
EVAL = {"every": 1, "suites": ["synthetic:8"]}


def test_sigkill_inside_every_stage_then_resume_equals_uninterrupted_run(trained, tmp_path, prefect_server):
    """Kill the CLI with SIGKILL inside each stage in turn (rollout, verify, annotate, update, eval), at a random
    point within the stage's duration in the uninterrupted run; the resumed run's warehouse equals that run's.

    Replay a failure with HICRA_KILL_SEED=<seed from the message>. While the last start resumes, a second start of
    the run is refused (the run lock).
    """
    baseline_root, baseline_config, _ = trained
    raw = yaml.safe_load(baseline_config.read_text())
    # the uninterrupted run with evaluation: the baseline, evaluated (eval reads checkpoints and never changes them)
    baseline = Path(shutil.copytree(baseline_root, tmp_path / "baseline"))
    train(config_path=str(write_config(tmp_path / "baseline.yaml", {**raw, "eval": EVAL, "run": {
        **raw["run"], "warehouse": str(baseline)}})))  # fmt: skip
    seconds = _stage_seconds(baseline)
    root = tmp_path / "wh"
    config = write_config(tmp_path / "run.yaml", {**raw, "eval": EVAL, "run": {**raw["run"], "warehouse": str(root)}})
    store = Warehouse(root)
    env = child_env(PREFECT_API_URL=prefect_server, HICRA_DEBUG="1")
    command = [sys.executable, "-m", "cli", "train", "--config", str(config)]
    seed = int(os.environ.get("HICRA_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    # at most a fifth of the stage's shortest duration in the baseline: timings swing on a busy machine
    plan = [
        (i, stage, rng.uniform(0, 0.2) * min(s for (_, n), s in seconds.items() if n == stage)) for i, stage in KILLS
    ]
    replay = f"HICRA_KILL_SEED={seed}, kills (iteration, stage, seconds into the stage): {plan}"
    for iteration, stage, delay in plan:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        attempts = root / "_attempts" / "run_id=t" / f"iteration={iteration}"
        try:
            _wait_for(attempts, f"{stage}-*.json", process)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
        assert not _committed(store, iteration, stage), f"the kill landed after {stage} committed; {replay}"
    resumed = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = root / "_locks" / "t.lock"
    deadline = time.monotonic() + 300
    while f"pid {resumed.pid} " not in lock.read_text() and resumed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the resumed run holds the run lock
    with pytest.raises(Busy, match=rf"run 't' is already running.*held by host \S+ pid {resumed.pid} "):
        train(config_path=str(config))
    _, stderr = resumed.communicate()
    assert resumed.returncode == 0, stderr[-3000:]
    assert_same_warehouse(root, baseline, context=replay)
    assert query(root, "select count(*) n from eval_results").to_pylist() == [{"n": 16}]  # 8 problems, 2 checkpoints
    assert not list((root / "_staging").rglob("*.parquet"))
    interrupted = query(root, "select iteration, split_part(stage, '-', 1) s from stage_attempts "
                              "where status = 'interrupted' order by all")  # fmt: skip
    assert [(r["iteration"], r["s"]) for r in interrupted.to_pylist()] == sorted(KILLS), replay
    for commit in store.commits():
        for f in commit.files:
            assert pq.read_metadata(root / f["path"]).num_rows == f["rows"]
    for iteration in (0, 1):  # the resumed run saved the same data position with its checkpoints
        assert _data_position(root, iteration) == _data_position(baseline, iteration)


def _data_position(root: Path, iteration: int) -> dict:
    """The data position saved in the DeepSpeed checkpoint of `iteration` (its client state); the update's commit
    record holds the same."""
    folder = Warehouse(root).checkpoint_dir("t", iteration)
    path = Path(folder, "deepspeed", CHECKPOINT_TAG, "mp_rank_00_model_states.pt")
    position = torch.load(path, map_location="cpu", weights_only=False)["data_position"]
    assert Warehouse(root).read_commit("t", iteration, "update").info["data_position"] == position
    return position


def test_checkpoint_saves_the_next_data_position(trained):
    """Each checkpoint saves where the next iteration reads the dataset and which prompts its own iteration used;
    the prompts of iteration i are a function of (run, i, seed): recomputed from the position, they are the run's."""
    root, config, _ = trained
    run_config = load_config(config)
    # the small config: 5000 synthetic prompts, 8 per iteration
    dataset = load_training_problems(run_config.data, run_config.run.seed)
    prompts = {
        r["iteration"]: r["ids"]
        for r in query(
            root,
            "select iteration, list(prompt_id order by group_index) ids from rollouts "
            "where sample_index = 0 group by 1",
        ).to_pylist()
    }
    for iteration in (0, 1):
        position = _data_position(root, iteration)
        assert position == {**data_position(5000, 8, "t", 0, iteration + 1), "consumed_prompt_ids": prompts[iteration]}
        assert position["cursor"] == 8 * (iteration + 1) and position["epoch"] == 0
    assert len(dataset) == 5000
    for iteration in (0, 1):
        assert [p.id for p in prompts_for_iteration(dataset, 8, "t", 0, iteration)] == prompts[iteration]


def test_changed_dataset_size_is_refused_at_the_next_rollout(trained):
    """A dataset that changed size since the checkpoint was saved would move every later iteration's prompts."""
    root, config, _ = trained
    run_config = load_config(config)
    _check_data_position(Warehouse(root), run_config, 1, {"": 5000})  # unchanged: fine
    with pytest.raises(DataError, match=r"saved data position 8 of 5000 prompts, but the dataset now has 4999"):
        _check_data_position(Warehouse(root), run_config, 1, {"": 4999})


def test_runs_and_status_commands(trained, capsys):
    root, _, _ = trained
    from warehouse.runs import runs, status

    (row,) = runs(str(root))
    assert (row["run_id"], row["last_iteration"], row["last_stage"], row["failed"]) == ("t", 1, "update", 0)
    assert [r["iteration"] for r in status(str(root), "t")] == [0, 1]
    assert all(r["update"] is not None for r in status(str(root), "t"))
    assert hicra_main(["status", "t", "--warehouse", str(root)]) == 0
    assert "rollout" in capsys.readouterr().out


def test_resident_policy_equals_loading_every_checkpoint(tmp_path, prefect_server, monkeypatch):
    """Three iterations with the policy resident (the default: one engine and one generator for the run) and with
    trainer.resident off (every rollout and update loads the last checkpoint): the same rollouts, advantages,
    train steps and checkpoints, bit for bit, optimizer state included."""
    import tasks.stages

    loads = []

    def counted(name: str):
        original = getattr(tasks.stages, name)

        def load(*args, **kwargs):
            loads.append(name)
            return original(*args, **kwargs)

        return load

    for name in ("open_trainer", "HFGenerator"):  # what loads a policy: the update's engine, the rollout's generator
        monkeypatch.setattr(tasks.stages, name, counted(name))
    roots, counts = {}, {}
    for resident in (True, False):
        roots[resident] = tmp_path / f"resident-{resident}"
        config = small_config(roots[resident], iterations=3, trainer={"resident": resident})
        train(config_path=str(write_config(tmp_path / f"{resident}.yaml", config)))
        counts[resident], loads[:] = sorted(loads), []
    assert counts == {True: ["HFGenerator", "open_trainer"], False: ["HFGenerator"] * 3 + ["open_trainer"] * 3}
    for table in ("rollouts", "advantages", "train_steps", "checkpoints", "metrics"):
        assert table_rows(roots[True], table) == table_rows(roots[False], table), table
    one, two = (Warehouse(root).checkpoint_dir("t", 2) for root in (roots[True], roots[False]))
    assert Path(one, "hf", "model.safetensors").read_bytes() == Path(two, "hf", "model.safetensors").read_bytes()
    files = sorted(p.name for p in Path(one, "deepspeed", CHECKPOINT_TAG).glob("*.pt"))
    assert files == sorted(p.name for p in Path(two, "deepspeed", CHECKPOINT_TAG).glob("*.pt"))
    for name in files:  # ZeRO stage 0: one file, the weights and the optimizer state
        states = [torch.load(Path(d, "deepspeed", CHECKPOINT_TAG, name), weights_only=False) for d in (one, two)]
        _assert_identical(states[0], states[1], name)
    assert states[0]["global_steps"] == 6 and states[0]["optimizer"]["state"], "2 steps an iteration, Adam's moments"


def _assert_identical(one: object, two: object, where: str) -> None:
    """Nested checkpoint state (dicts, lists, tensors, numbers) equal exactly: tensors by torch.equal."""
    if isinstance(one, torch.Tensor):
        assert isinstance(two, torch.Tensor) and one.dtype == two.dtype and torch.equal(one, two), where
    elif isinstance(one, dict):
        assert isinstance(two, dict) and one.keys() == two.keys(), where
        for key in one:
            _assert_identical(one[key], two[key], f"{where}.{key}")
    elif isinstance(one, list | tuple):
        assert type(one) is type(two) and len(one) == len(two), where
        for k, (a, b) in enumerate(zip(one, two, strict=True)):
            _assert_identical(a, b, f"{where}[{k}]")
    else:
        assert one == two or (one != one and two != two), where
