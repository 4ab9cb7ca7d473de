"""One iteration's policy update: advantages from rewards and masks, then DeepSpeed steps, on one rank or several.

`run_update` does the work in this process (every rank runs it); `run_update_distributed` runs it on N ranks with
torchrun (gloo on the CPU, NCCL on GPUs) and reads rank 0's result back. Both give the same parameters to float
tolerance: each optimizer step's rows are split over ranks and losses keep the step's global normalisers.

Several nodes (docs/multinode.md): node 0 (the process that runs the update stage) writes the request into a folder
that every node sees at the same path and starts its torchrun with `--node_rank=0`, hosting torchrun's static
rendezvous at `NodeLaunch.master`; each other node runs `follow_updates` (`hicra update-node`), which watches that
folder and joins every new request with its own node rank. Every rank writes its share of the DeepSpeed checkpoint
into the same shared folder and global rank 0 (on node 0) writes the result and the HF export there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hicra.core_algos import AdvantageConfig, get_advantage_fn, mixed_groups
from hicra.trainer import PolicyTrainer, Rollouts, UpdateConfig


@dataclass
class UpdateRequest:
    """Everything an update needs, plain data so that it can be handed to other processes."""

    base_model_dir: str
    resume_from: str | None  # the previous iteration's DeepSpeed checkpoint folder
    save_to: str  # gets deepspeed/ and hf/
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    planning: list[list[int]]  # 0/1 per response token
    rewards: list[float]
    group_index: list[int]
    pad_id: int
    advantage: str
    advantage_config: AdvantageConfig
    trainer: UpdateConfig
    dynamic_sampling: bool = False
    max_groups: int | None = None  # with dynamic_sampling: train on the first max_groups mixed groups only (refill)
    client_state: dict = field(default_factory=dict)


@dataclass
class UpdateResult:
    """What the update used and did. Tensors are (N, T) over response tokens unless noted."""

    advantages: torch.Tensor
    amplified: torch.Tensor
    old_logprob: torch.Tensor
    entropy: torch.Tensor
    response_mask: torch.Tensor
    planning_mask: torch.Tensor
    keep: torch.Tensor  # (N,) bool: rows the update trained on (dynamic sampling drops equal-reward groups)
    steps: list[dict]
    global_step: int


def open_trainer(request: UpdateRequest) -> PolicyTrainer:
    """The update's engine: the base model, with the previous iteration's DeepSpeed checkpoint loaded if any."""
    resume = Path(request.resume_from) if request.resume_from else None
    return PolicyTrainer(Path(request.base_model_dir), request.trainer, resume_from=resume)


def run_update(request: UpdateRequest, trainer: PolicyTrainer | None = None) -> UpdateResult:
    """Old-policy pass, advantages, clipped policy-gradient steps, checkpoint save; in this process (one rank).

    `trainer`: an engine that holds exactly the weights and optimizer state of `request.resume_from` (one the
    caller kept resident since the previous update), started here on this iteration; else `open_trainer(request)`."""
    batch = Rollouts(request.prompt_ids, request.response_ids, request.pad_id)
    width = batch.response_ids.shape[1]
    planning = torch.zeros(len(batch), width)
    for row, mask in enumerate(request.planning):
        planning[row, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
    rewards = torch.tensor(request.rewards, dtype=torch.float32)
    group_index = torch.tensor(request.group_index, dtype=torch.long)
    if trainer is None:
        trainer = open_trainer(request)
    else:
        trainer.next_iteration(request.trainer)
    old_logprob, entropy, ref_logprob = trainer.old_logprobs(batch)
    advantages, amplified = get_advantage_fn(request.advantage)(
        rewards, group_index, batch.response_mask, planning, entropy, request.advantage_config
    )
    keep = mixed_groups(rewards, group_index) if request.dynamic_sampling else torch.ones(len(batch), dtype=torch.bool)
    if request.max_groups is not None:
        keep &= torch.isin(group_index, group_index[keep].unique()[: request.max_groups])
    steps = []
    if bool(keep.any()):
        kept = keep.nonzero()[:, 0]
        ref = ref_logprob[kept] if ref_logprob is not None else None
        steps = trainer.update(batch.subset(kept), advantages[kept], old_logprob[kept], ref)
    save_to = Path(request.save_to)
    trainer.save(save_to / "deepspeed", save_to / "hf", client_state=request.client_state)
    return UpdateResult(
        advantages=advantages,
        amplified=amplified.contiguous(),
        old_logprob=old_logprob,
        entropy=entropy,
        response_mask=batch.response_mask,
        planning_mask=planning,
        keep=keep,
        steps=steps,
        global_step=int(trainer.engine.global_steps),
    )


REQUEST_FILE, RESULT_FILE = "update-request.pt", "update-result.pt"


@dataclass(frozen=True)
class NodeLaunch:
    """One node's part in a multi-node update: torchrun's static rendezvous, served by node 0 at `master`."""

    nodes: int
    node_rank: int
    master: str  # host:port of node 0, reachable from every node

    def torchrun_args(self) -> list[str]:
        host, _, port = self.master.rpartition(":")
        return [f"--nnodes={self.nodes}", f"--node_rank={self.node_rank}", f"--master_addr={host}",
                f"--master_port={port}"]  # fmt: skip


def _torchrun(workdir: Path, num_processes: int, launch: NodeLaunch | None) -> subprocess.CompletedProcess:
    """Run `python -m hicra.update` on this node's `num_processes` ranks over the request in `workdir`; one node on
    a free local port unless `launch` says which node of several this is."""
    if launch is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            launch = NodeLaunch(1, 0, f"127.0.0.1:{sock.getsockname()[1]}")
    command = [
        sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(), f"--nproc_per_node={num_processes}",
        "-m", "hicra.update", str(workdir / REQUEST_FILE), str(workdir / RESULT_FILE),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    return subprocess.run(command, env=env, capture_output=True, text=True)


def run_update_distributed(
    request: UpdateRequest, num_processes: int, workdir: Path, launch: NodeLaunch | None = None
) -> UpdateResult:
    """Run `run_update` on `num_processes` ranks with torchrun, on this node or, with `launch` (node rank 0), on
    `launch.nodes` nodes whose followers watch `workdir`'s parent folders; raises with this node's output if it fails.

    The request is renamed into place complete, so a follower never reads half a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    partial = workdir / f".{REQUEST_FILE}.tmp"
    torch.save(request, partial)
    os.replace(partial, workdir / REQUEST_FILE)
    done = _torchrun(workdir, num_processes, launch)
    if done.returncode != 0:
        what = f"{launch.nodes}-node " if launch else ""
        raise RuntimeError(f"the {what}{num_processes}-rank update failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return torch.load(workdir / RESULT_FILE, weights_only=False)


def follow_updates(
    watch: Path, num_processes: int, launch: NodeLaunch, once: bool = False, poll_s: float = 1.0
) -> None:
    """A follower node (rank >= 1): join every update request that appears under `watch` (at any depth) with this
    node's ranks, until interrupted, or after one with `once` (then a failed join raises RuntimeError). A request
    already answered (its result exists) or already joined is skipped; a failed join is printed and the follower
    goes on (node 0's stage retries with a new request)."""
    joined: set[Path] = set()
    while True:
        for request in sorted(watch.rglob(REQUEST_FILE)):
            if request in joined or (request.parent / RESULT_FILE).exists():
                continue
            joined.add(request)
            print(f"node {launch.node_rank}: joining the update of {request.parent}", flush=True)
            done = _torchrun(request.parent, num_processes, launch)
            if done.returncode != 0:
                failure = f"node {launch.node_rank}: the update failed:\n{(done.stdout + done.stderr)[-4000:]}"
                if once:
                    raise RuntimeError(failure)
                print(failure, flush=True)
            if once:
                return
        time.sleep(poll_s)


def main(argv: list[str]) -> None:
    """torchrun entry point: `python -m hicra.update REQUEST.pt RESULT.pt`; rank 0 writes the result."""
    request = torch.load(argv[0], weights_only=False)
    result = run_update(request)
    if torch.distributed.get_rank() == 0:
        torch.save(result, argv[1])
    torch.distributed.barrier()


if __name__ == "__main__":
    # import the module under its own name, so the pickled result names `hicra.update.UpdateResult`, not `__main__`
    from hicra.update import main as module_main

    module_main(sys.argv[1:])
