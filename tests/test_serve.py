"""`hicra serve` twice, then `hicra stop`: one server and one worker, the pool, deployment and automation exist."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import psutil
import pytest

from flows.serve import AUTOMATION, POOL, alive, state_dir, stop
from tests.conftest import ROOT, free_port


def hicra(*args: str) -> str:
    # No scheduler: prefect.yaml's cron deployment must not start evaluation runs during the test.
    env = {**os.environ, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, f"hicra {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def pids(state) -> dict[str, int]:
    return {name: int((state / f"hicra-{name}.pid").read_text()) for name in ("server", "worker")}


@pytest.mark.slow
def test_serve_is_idempotent_and_stop_leaves_nothing(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, port = tmp_path / "wh", free_port()
    state = state_dir(root)
    started: list[psutil.Process] = []
    try:
        first = hicra("serve", "--warehouse", str(root), "--port", str(port))
        assert "server: started" in first and "worker: started" in first, first
        assert f"http://127.0.0.1:{port}" in first
        first_pids = pids(state)
        started = [psutil.Process(pid) for pid in first_pids.values()]
        started += [child for process in started for child in process.children(recursive=True)]

        second = hicra("serve", "--warehouse", str(root), "--port", str(port + 1))  # the live server's port wins
        assert "server: already running" in second and "worker: already running" in second, second
        assert pids(state) == first_pids

        api_url = f"http://127.0.0.1:{port}/api"
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            assert client.read_work_pool(POOL).type == "process"
            assert client.read_deployment_by_name("hicra/train").work_pool_name == POOL
            [automation] = client.read_automations_by_name(AUTOMATION)
            assert automation.enabled and automation.actions[0].type == "change-flow-run-state"

        assert "stopped: worker, server" in hicra("stop", "--warehouse", str(root))
        assert not [p.pid for p in started if alive(p.pid)]
        assert not list(state.glob("*.pid"))
        assert "nothing was running" in hicra("stop", "--warehouse", str(root))
    finally:
        stop(root)
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
