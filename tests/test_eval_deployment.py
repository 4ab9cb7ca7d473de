"""`prefect deployment run hicra-eval/scheduled` on a real server and process worker: only new checkpoints evaluated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flows.serve import PREFECT, wait_healthy
from tests.conftest import ROOT, free_port
from tests.test_evaluate import eval_commits
from warehouse.catalog import query


@pytest.mark.slow
def test_scheduled_deployment_evaluates_only_checkpoints_without_results(small_run, tmp_path):
    from flows.evaluate import evaluate

    warehouse = Path(shutil.copytree(small_run[0], tmp_path / "wh"))
    params = {"warehouse": str(warehouse), "limit": 2}  # the deployment's default suites: synthetic
    evaluate(**params, run_id="t", iteration=0)  # iteration 0 already has results (in-process, the session server)
    before = eval_commits(warehouse)
    [(iteration, stage)] = before
    assert iteration == 0

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no cron runs of our own: only the one started here
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PWD": str(ROOT),
    }
    logs = (tmp_path / "server.log").open("w"), (tmp_path / "worker.log").open("w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=logs[0], stderr=subprocess.STDOUT)  # fmt: skip
    worker = None
    try:
        wait_healthy(api, server.pid)

        def prefect(*args: str, timeout: float = 300) -> str:
            done = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            return done.stdout

        prefect("work-pool", "create", "hicra", "--type", "process")
        prefect("--no-prompt", "deploy", "--name", "scheduled")
        assert "*/30 * * * *" in prefect("deployment", "inspect", "hicra-eval/scheduled")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "hicra"], env=env, cwd=tmp_path,
                                  stdout=logs[1], stderr=subprocess.STDOUT)  # fmt: skip
        out = prefect("deployment", "run", "hicra-eval/scheduled", "--params", json.dumps(params), "--watch",
                      "--watch-timeout", "600", timeout=660)  # fmt: skip
        assert "COMPLETED" in out.upper(), out[-2000:]
    finally:
        for process in (worker, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        for log in logs:
            log.close()
    after = eval_commits(warehouse)
    assert set(after) == {(0, stage), (1, stage)}  # the same suite and protocol on the new checkpoint
    assert after[(0, stage)] == before[(0, stage)]  # the evaluated one untouched
    counts = query(warehouse, "select iteration, count(*) n from eval_results group by 1 order by 1").to_pylist()
    assert counts == [{"iteration": 0, "n": 2}, {"iteration": 1, "n": 2}]
