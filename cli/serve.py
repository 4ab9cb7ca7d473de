"""`hicra serve` and `hicra stop`: this warehouse's Prefect server and workers (tasks/prefect_server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import ROOT_HELP, warehouse_root
from schemas.config import GPU_TAG
from tasks.prefect_server import AUTOMATION, GPU_SLOTS, HEARTBEAT_SECONDS, POOL, STAGE_POOLS, serve, state_dir, stop


def cmd_serve(args: argparse.Namespace) -> int:
    root = Path(warehouse_root(args)).resolve()
    info = serve(root, args.port, pools=args.pools)
    state = state_dir(root)
    for name, pid in info["pids"].items():
        how = "started" if name in info["started"] else "already running"
        print(f"{name}: {how}, pid {pid}, log {state / f'{name}.log'}")
    api_url = info["api_url"]
    print(f"Prefect UI: {api_url.removesuffix('/api')}")
    print(f"Work pools: {POOL}, {', '.join(STAGE_POOLS.values())} (stage deployments); {GPU_SLOTS} `{GPU_TAG}` slot.")
    print(f"Zombie runs: no heartbeat for {3 * HEARTBEAT_SECONDS} s marks a flow run Crashed ({AUTOMATION!r}).")
    print("Run the training deployment:")
    print(f"  export PREFECT_API_URL={api_url}")
    print(f"  prefect deployment run hicra/train --param warehouse={root}")
    print(f"  prefect deployment run hicra/train --param warehouse={root} --param run_id=exp2 --param iterations=5")
    print(f"Watch it: hicra runs --warehouse {root}; stop the server and worker: hicra stop --warehouse {root}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = stop(warehouse_root(args))
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    warehouse_help = f"{ROOT_HELP}; state in ROOT/_prefect"
    serve_parser = sub.add_parser("serve", help="start a local Prefect server and worker, deploy prefect.yaml")
    serve_parser.add_argument("--warehouse", help=warehouse_help)
    serve_parser.add_argument("--port", type=int, default=4200, help="the server's port on 127.0.0.1 (default 4200)")
    serve_parser.add_argument(
        "--pools", action="store_true",
        help=f"also start a worker on each stage pool ({', '.join(STAGE_POOLS.values())}) on this machine",
    )  # fmt: skip
    serve_parser.set_defaults(func=cmd_serve)
    stop_parser = sub.add_parser("stop", help="stop the Prefect worker and server that `hicra serve` started")
    stop_parser.add_argument("--warehouse", help=warehouse_help)
    stop_parser.set_defaults(func=cmd_stop)
