"""`prefect deployment run hicra/train` against a real Prefect server and process worker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from flows.serve import PREFECT, wait_healthy
from tests.conftest import ROOT, free_port, small_config
from warehouse.catalog import query


@pytest.mark.slow
def test_deployment_run_trains_the_run(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PWD": str(ROOT),
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path / "wh", run_id="deployed", iterations=1)))
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
        prefect("--no-prompt", "deploy", "--name", "train")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "hicra"], env=env, cwd=tmp_path,
                                  stdout=logs[1], stderr=subprocess.STDOUT)  # fmt: skip
        params = json.dumps({"config_path": str(config)})
        out = prefect("deployment", "run", "hicra/train", "--params", params, "--watch", "--watch-timeout", "900",
                      timeout=960)  # fmt: skip
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
    summary = query(tmp_path / "wh", "select run_id, iteration, rollouts from iteration_summary").to_pylist()
    assert summary == [{"run_id": "deployed", "iteration": 0, "rollouts": 32}]
    assert query(tmp_path / "wh", "select count(*) n from checkpoints").to_pylist() == [{"n": 1}]
