"""The self-hosted path on 127.0.0.1: `hicra serve` (server, process worker, deployments, zombie automation), then
`prefect deployment run` of `hicra/train` and `hicra-eval/scheduled` through that worker, a run whose stages run as
`hicra-stage` deployments on two more pools and workers (`hicra serve --pools`), then `hicra stop`.

One server for the module: starting a Prefect server and deploying cost about a minute each on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from schemas.config import GPU_TAG
from tasks.prefect_server import AUTOMATION, POOL, PREFECT, STAGE_POOLS, alive, state_dir, stop
from tests.conftest import ROOT, child_env, free_port, small_config
from tests.test_evaluate import eval_commits
from tests.test_train_flow import assert_same_warehouse
from warehouse.catalog import query

pytestmark = pytest.mark.slow


def run(*command: str, env: dict, timeout: float = 900) -> str:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`hicra serve` on a free port (no scheduler: the cron deployment must not start runs of its own)."""
    root, port = tmp_path_factory.mktemp("served") / "wh", free_port()
    env = child_env(PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2")
    started: list[psutil.Process] = []
    try:
        out = run(sys.executable, "-m", "cli", "serve", "--warehouse", str(root), "--port", str(port), env=env)
        assert "server: started" in out and "worker: started" in out, out
        assert f"http://127.0.0.1:{port}" in out
        pids = {name: int((state_dir(root) / f"hicra-{name}.pid").read_text()) for name in ("server", "worker")}
        started = [psutil.Process(pid) for pid in pids.values()]
        started += [child for process in started for child in process.children(recursive=True)]
        yield {"root": root, "port": port, "pids": pids, "started": started, "env": env,
               "api": f"http://127.0.0.1:{port}/api"}  # fmt: skip
    finally:
        stop(root)
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_serve_again_is_harmless_and_sets_everything_up(served):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    again = run(
        sys.executable,
        "-m",
        "cli",
        "serve",
        "--warehouse",
        str(served["root"]),
        "--port",
        str(served["port"] + 1),
        env=served["env"],
    )  # fmt: skip  (the live server's port wins)
    assert "server: already running" in again and "worker: already running" in again, again
    state = state_dir(served["root"])
    assert {n: int((state / f"hicra-{n}.pid").read_text()) for n in ("server", "worker")} == served["pids"]
    with temporary_settings(updates={PREFECT_API_URL: served["api"]}), get_client(sync_client=True) as client:
        assert client.read_work_pool(POOL).type == "process"
        assert client.read_deployment_by_name("hicra/train").work_pool_name == POOL
        assert client.read_deployment_by_name("hicra-eval/scheduled").work_pool_name == POOL
        assert client.read_deployment_by_name("hicra-stage/gpu").work_pool_name == STAGE_POOLS["worker-gpu"]
        assert client.read_deployment_by_name("hicra-stage/cpu").work_pool_name == STAGE_POOLS["worker-cpu"]
        assert client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit == 1
        # the limit the task engine takes a slot of for every task run tagged `gpu`
        assert client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}").limit == 1
        [automation] = client.read_automations_by_name(AUTOMATION)
        assert automation.enabled and automation.actions[0].type == "change-flow-run-state"


def test_deployment_run_trains_the_run(served, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path / "wh", run_id="deployed", iterations=1)))
    env = {**served["env"], "PREFECT_API_URL": served["api"]}
    out = run(PREFECT, "deployment", "run", "hicra/train", "--params", json.dumps({"config_path": str(config)}),
              "--watch", "--watch-timeout", "900", env=env, timeout=960)  # fmt: skip
    assert "COMPLETED" in out.upper(), out[-2000:]
    summary = query(tmp_path / "wh", "select run_id, iteration, rollouts from iteration_summary").to_pylist()
    assert summary == [{"run_id": "deployed", "iteration": 0, "rollouts": 32}]
    assert query(tmp_path / "wh", "select count(*) n from checkpoints").to_pylist() == [{"n": 1}]


def test_scheduled_eval_deployment_evaluates_only_new_checkpoints(served, small_run, tmp_path):
    from flows.evaluate import evaluate

    warehouse = shutil.copytree(small_run[0], tmp_path / "wh")
    params = {"warehouse": str(warehouse), "limit": 2}  # the deployment's default suites: synthetic
    evaluate(**params, run_id="t", iteration=0)  # iteration 0 already has results (in-process, the session server)
    before = eval_commits(warehouse)
    [(iteration, stage)] = before
    assert iteration == 0
    env = {**served["env"], "PREFECT_API_URL": served["api"]}
    assert "*/30 * * * *" in run(PREFECT, "deployment", "inspect", "hicra-eval/scheduled", env=env)
    out = run(PREFECT, "deployment", "run", "hicra-eval/scheduled", "--params", json.dumps(params), "--watch",
              "--watch-timeout", "600", env=env, timeout=660)  # fmt: skip
    assert "COMPLETED" in out.upper(), out[-2000:]
    after = eval_commits(warehouse)
    assert set(after) == {(0, stage), (1, stage)}  # the same suite and protocol on the new checkpoint
    assert after[(0, stage)] == before[(0, stage)]  # the evaluated one untouched
    counts = query(warehouse, "select iteration, count(*) n from eval_results group by 1 order by 1").to_pylist()
    assert counts == [{"iteration": 0, "n": 2}, {"iteration": 1, "n": 2}]


GPU, CPU = "hicra-stage/gpu", "hicra-stage/cpu"
STAGE_DEPLOYMENTS = {"rollout": GPU, "update": GPU, "verify": CPU, "annotate": CPU}


def test_stages_run_as_deployments_on_two_pools(served, small_run, tmp_path):
    """`hicra serve --pools` adds a worker on hicra-gpu and one on hicra-cpu; a run whose config sends rollout and
    update to `hicra-stage/gpu` and verify and annotate to `hicra-stage/cpu` runs each stage as a flow run on its
    pool, and its warehouse equals the in-process run's (same config and seed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, TaskRunFilter, TaskRunFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = served["root"]
    out = run(sys.executable, "-m", "cli", "serve", "--pools", "--warehouse", str(root), env=served["env"])
    assert "worker-gpu: started" in out and "worker-cpu: started" in out and "worker: already running" in out, out
    for name in STAGE_POOLS:
        process = psutil.Process(int((state_dir(root) / f"hicra-{name}.pid").read_text()))
        served["started"] += [process, *process.children(recursive=True)]
    config = tmp_path / "run.yaml"
    orchestration = {"stage_deployments": STAGE_DEPLOYMENTS}
    config.write_text(yaml.safe_dump(small_config(tmp_path / "wh", iterations=1, orchestration=orchestration)))
    env = {**served["env"], "PREFECT_API_URL": served["api"]}
    out = run(sys.executable, "-m", "cli", "train", "--config", str(config), env=env)
    assert out.count("running as deployment hicra-stage/") == 4, out
    assert_same_warehouse(tmp_path / "wh", small_run[0], where="iteration = 0")
    with temporary_settings(updates={PREFECT_API_URL: served["api"]}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["hicra-stage"])))
        ran = {r.parameters["stage"]: (r.work_pool_name, r.state.type.value, r.parent_task_run_id is not None)
               for r in runs if r.parameters["warehouse"] == str((tmp_path / "wh").resolve())}  # fmt: skip
        expected = {
            stage: (f"hicra-{name.split('/')[1]}", "COMPLETED", True) for stage, name in STAGE_DEPLOYMENTS.items()
        }
        assert ran == expected
        gpu_tasks = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[GPU_TAG])))
        assert sorted(t.name for t in gpu_tasks if t.name.startswith("t-i0-")) == ["t-i0-rollout", "t-i0-update"]


HOLD_GPU_SLOT = f"""
from prefect.concurrency.sync import concurrency
with concurrency("tag:{GPU_TAG}", occupy=1, strict=True):
    print("held", flush=True)
    input()
"""


def test_gpu_stage_waits_for_the_gpu_slot(served, small_run, tmp_path):
    """While another process holds the server's one `gpu` slot, a run's GPU stages wait (here a copy of a trained run
    with only eval left to do); once the slot is released they run."""
    warehouse = shutil.copytree(small_run[0], tmp_path / "wh")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(warehouse, eval={"every": 1, "suites": ["synthetic:2"]})))
    env = {**served["env"], "PREFECT_API_URL": served["api"]}
    # another run's GPU stage
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_GPU_SLOT],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    process = None
    try:
        assert holder.stdout.readline().strip() == "held"
        # the run prints "iteration 1/2" just before its first GPU task (iteration 0's rollout, committed: the task
        # only prints "committed, skipped", but inside the slot); a task run waiting for a slot is not in the API yet
        log = tmp_path / "train.log"
        command = [sys.executable, "-m", "cli", "train", "--config", str(config)]
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "iteration 1/2" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its first iteration"
            time.sleep(0.5)
        time.sleep(10)
        assert process.poll() is None and "iteration 0 rollout" not in log.read_text(), log.read_text()[-3000:]
        assert not list((warehouse / "_attempts").rglob("eval-*.json"))
        holder.communicate("\n", timeout=60)  # release the slot
        process.wait(timeout=600)
    finally:
        for child in (holder, process):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "iteration 0 rollout: committed, skipped" in log.read_text()
    assert query(warehouse, "select count(*) n from eval_results").to_pylist() == [{"n": 4}]


def test_stage_deployment_that_does_not_commit_fails_the_run_clearly(served, tmp_path):
    """A stage flow run that fails (here: its workers are told a warehouse path without the run) stops the training
    run with an error naming the stage, the deployment, the flow run, its work pool and its state."""
    config = tmp_path / "run.yaml"
    orchestration = {"stage_deployments": {"rollout": CPU}, "stage_warehouse": str(tmp_path / "not-mounted")}
    config.write_text(yaml.safe_dump(small_config(tmp_path / "wh", "lost", iterations=1, orchestration=orchestration)))
    env = {**served["env"], "PREFECT_API_URL": served["api"]}
    done = subprocess.run([sys.executable, "-m", "cli", "train", "--config", str(config)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    message = (
        "stage rollout of run 'lost' iteration 0 did not commit: deployment 'hicra-stage/cpu', "
        r"flow run 'lost-i0-rollout' \([0-9a-f-]+\) on work pool 'hicra-cpu' is FAILED \(.*no frozen config"
    )
    assert re.search(message, done.stderr), done.stderr[-3000:]


def test_stop_leaves_nothing(served):
    out = run(sys.executable, "-m", "cli", "stop", "--warehouse", str(served["root"]), env=served["env"])
    assert re.match(r"stopped: worker(, worker-gpu, worker-cpu)?, server", out), out  # stage workers if started
    assert not [p.pid for p in served["started"] if alive(p.pid)]
    assert not list(state_dir(served["root"]).glob("*.pid"))
    again = run(sys.executable, "-m", "cli", "stop", "--warehouse", str(served["root"]), env=served["env"])
    assert "nothing was running" in again
