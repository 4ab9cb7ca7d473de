"""`hicra update-node --config RUN.yaml --node-rank K`: a follower node of multi-node updates (docs/multinode.md).

It watches the run's shared folder (`trainer.nodes.shared_dir`, default the warehouse's `_staging` folder) and joins
every update request that node 0's update stage puts there with this node's `trainer.num_processes` ranks. No Prefect
here: the follower is a plain process, started once per node (an `srun` step, a systemd unit, a pool worker's job).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.common import add_set_option, config_warehouse, parse_override
from schemas.config import RunConfig, load_config


def watch_folder(config: RunConfig) -> Path:
    """The folder a follower watches: `trainer.nodes.shared_dir`, else the warehouse root's `_staging`."""
    return Path(config.trainer.nodes.shared_dir or Path(config.run.warehouse) / "_staging").resolve()


def cmd_update_node(args: argparse.Namespace) -> int:
    from hicra.update import NodeLaunch, follow_updates

    overrides = dict(map(parse_override, args.set))
    config = load_config(args.config, **{"run.warehouse": config_warehouse(args), **overrides})
    nodes = config.trainer.nodes
    if nodes.count < 2:
        raise ValueError(f"{args.config}: trainer.nodes.count is {nodes.count}; a follower needs 2 or more nodes")
    if not 1 <= args.node_rank < nodes.count:
        raise ValueError(f"--node-rank must be 1..{nodes.count - 1} (node 0 runs the update stage): {args.node_rank}")
    watch = watch_folder(config)
    watch.mkdir(parents=True, exist_ok=True)
    print(f"node {args.node_rank} of {nodes.count}: watching {watch} (rendezvous {nodes.master})", flush=True)
    launch = NodeLaunch(nodes.count, args.node_rank, str(nodes.master))
    follow_updates(watch, config.trainer.num_processes, launch, once=args.once)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser("update-node", help="join a run's multi-node updates as node K (K >= 1) of trainer.nodes")
    node.add_argument("--config", required=True, help="the run's YAML config (trainer.nodes names the nodes)")
    node.add_argument("--warehouse", help="warehouse root (default: $HICRA_WAREHOUSE or the config's)")
    add_set_option(node, "override a config field as `hicra train --set` does (give both the same overrides)")
    node.add_argument(
        "--node-rank", type=int, default=int(os.environ.get("SLURM_NODEID", "-1")),
        help="this node's rank, 1..count-1 (default: $SLURM_NODEID)",
    )  # fmt: skip
    node.add_argument("--once", action="store_true", help="exit after joining one update")
    node.set_defaults(func=cmd_update_node)
