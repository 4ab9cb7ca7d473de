"""A local Prefect server and process workers whose state lives beside the warehouse (`hicra serve`, `hicra stop`).

Everything is under `<warehouse>/_prefect`: the server's PREFECT_HOME (its SQLite database), the logs, the PID files
and the server's API address. `hicra serve` is idempotent: it finds a live server (PID and health check) and a live
worker (PID) and starts only what is missing; the work pools (`hicra`, and `hicra-gpu`, `hicra-cpu` for the stage
deployments), the `gpu` tag concurrency limit, the deployments of prefect.yaml and the zombie-run automation are
created or updated every time. Prefect is imported on use, so building the command line stays cheap. Process
management, not a stage: no flow imports it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from schemas.config import GPU_TAG

if TYPE_CHECKING:
    from prefect.automations import AutomationCore

REPO = Path(__file__).resolve().parents[1]  # prefect.yaml and the flows' entrypoints: deploy from here
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "hicra"
STAGE_POOLS = {"worker-gpu": "hicra-gpu", "worker-cpu": "hicra-cpu"}  # the `hicra-stage` deployments' pools
GPU_SLOTS = 1  # task runs tagged `gpu` (rollout, update, eval) at once, across every run on this server
HEARTBEAT_SECONDS = 60  # flow runs emit a heartbeat event this often (Prefect's minimum is 30)
AUTOMATION = "hicra: crash zombie flow runs"


def state_dir(root: str | Path) -> Path:
    return Path(root).resolve() / "_prefect"


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running(pid_file: Path) -> psutil.Process | None:
    """The live Prefect process whose PID the file holds; None if there is no file, it died, or its PID was reused."""
    try:
        process = psutil.Process(int(pid_file.read_text()))
        ours = alive(process.pid) and any("prefect" in part for part in process.cmdline())
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    return process if ours else None


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(api_url: str, pid: int, timeout: float = 180) -> None:
    """Wait until the server at `api_url` answers its health check; fail as soon as its process `pid` is gone."""
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        if not alive(pid):
            raise RuntimeError(f"the Prefect server (pid {pid}) exited before {api_url} became healthy")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no healthy Prefect server at {api_url} after {timeout:.0f} s")
        time.sleep(0.5)


def terminate(process: psutil.Process, timeout: float = 30) -> None:
    """Stop a process and its children: SIGTERM, then SIGKILL for whatever is left after `timeout` seconds."""
    family = [process, *process.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, left = psutil.wait_procs(family, timeout=timeout)
    for member in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(left, timeout=5)


def _environment(root: str | Path, api_url: str) -> dict[str, str]:
    """The server's, worker's and CLI's environment: this warehouse's Prefect home and server, heartbeats on."""
    return {
        **os.environ,
        "PREFECT_HOME": str(state_dir(root)),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        "PWD": str(REPO),  # prefect.yaml's pull step runs the flows in {{ $PWD }}
    }


def _spawn(args: list[str], env: dict[str, str], name: str, state: Path) -> int:
    """Start `prefect ARGS` detached (its own session: a Ctrl-C in this terminal does not reach it); returns the PID."""
    with (state / f"{name}.log").open("ab") as log:
        process = subprocess.Popen([PREFECT, *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    (state / f"hicra-{name}.pid").write_text(str(process.pid))
    return process.pid


def zombie_automation() -> AutomationCore:
    """Prefect's documented zombie detection: a flow run whose heartbeats stop for 3 periods is marked Crashed."""
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture, ResourceSpecification
    from prefect.client.schemas.objects import StateType

    return AutomationCore(
        name=AUTOMATION,
        description=f"Flow runs with no heartbeat for {3 * HEARTBEAT_SECONDS} s (their worker or machine died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={f"prefect.flow-run.{s}" for s in ("heartbeat", "Completed", "Failed", "Cancelled", "Crashed")},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat: marked Crashed by hicra serve")],
    )


def _ensure_pools_limits_automation(api_url: str) -> None:
    """Create the process work pools, the `gpu` tag concurrency limit and the zombie-run automation unless they
    exist (by name)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for pool in (POOL, *STAGE_POOLS.values()):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
        try:
            client.read_concurrency_limit_by_tag(GPU_TAG)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=GPU_SLOTS)
        if not client.read_automations_by_name(AUTOMATION):
            client.create_automation(zombie_automation())


def serve(root: str | Path, port: int = 4200, pools: bool = False) -> dict:
    """Start (or find) this warehouse's server and worker (with `pools`, also a worker on each stage pool), then
    deploy; returns the API URL, the PIDs by name (server, worker, worker-gpu, worker-cpu) and what started."""
    state = state_dir(root)
    state.mkdir(parents=True, exist_ok=True)
    url_file = state / "server.url"
    server = running(state / "hicra-server.pid")
    if server is not None:
        api_url = url_file.read_text().strip() if url_file.exists() else f"http://127.0.0.1:{port}/api"
        wait_healthy(api_url, server.pid)  # live: healthy now, or soon if another `hicra serve` just started it
        started = []
    else:
        api_url = f"http://127.0.0.1:{port}/api"
        server = psutil.Process(_spawn(["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                       _environment(root, api_url), "server", state))  # fmt: skip
        url_file.write_text(api_url)
        try:
            wait_healthy(api_url, server.pid)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; see {state / 'server.log'}") from err
        started = ["server"]
    env = _environment(root, api_url)
    _ensure_pools_limits_automation(api_url)
    deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO, capture_output=True,
                            text=True)  # fmt: skip
    if deploy.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{deploy.stdout[-2000:]}\n{deploy.stderr[-2000:]}")
    pids = {"server": server.pid}
    for name, pool in {"worker": POOL, **(STAGE_POOLS if pools else {})}.items():
        worker = running(state / f"hicra-{name}.pid")
        if worker is not None and "server" in started:  # a worker of a server that died may poll another port
            terminate(worker)
            worker = None
        if worker is None:
            worker = psutil.Process(_spawn(["worker", "start", "--pool", pool], env, name, state))
            started.append(name)
        pids[name] = worker.pid
    return {"api_url": api_url, "pids": pids, "started": started}


def stop(root: str | Path) -> list[str]:
    """Stop this warehouse's worker, then its server (and their children); returns what was running."""
    state = state_dir(root)
    stopped = []
    for name in ("worker", *STAGE_POOLS, "server"):
        pid_file = state / f"hicra-{name}.pid"
        process = running(pid_file)
        if process is not None:
            terminate(process)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    (state / "server.url").unlink(missing_ok=True)
    return stopped
