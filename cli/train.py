"""`hicra train`: train (or resume) a run with the Prefect flow `hicra` (flows/train.py)."""

from __future__ import annotations

import argparse

from cli.common import (
    add_set_option,
    config_warehouse,
    parse_override,
    prefect_defaults,
    start_temporary_prefect_server,
)


def cmd_train(args: argparse.Namespace) -> int:
    prefect_defaults()
    server = start_temporary_prefect_server()  # while torch, transformers and DeepSpeed are imported
    from flows.train import train
    from tasks.common import console
    from tasks.summary import summary_table

    if server is not None:
        server.join()
    summaries = train(
        config_path=args.config,
        run_id=args.run_id,
        iterations=args.iterations,
        warehouse=config_warehouse(args),
        force=args.force,
        overrides=dict(parse_override(item) for item in args.set),
    )
    console.print(summary_table(summaries))
    where = f" --warehouse {args.warehouse}" if args.warehouse else ""
    console.print("Query the run with SQL, for example:")
    command = f'  hicra sql{where} "select iteration, avg(reward) from scores group by 1 order by 1"'
    console.print(command, soft_wrap=True, markup=False)  # never wrapped mid-line: it is copied to a shell
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train (or resume) a run with the Prefect flow `hicra`")
    train.add_argument("--config", default="configs/tiny.yaml", help="YAML run config")
    train.add_argument("--run-id", help="run id (default: the config's run.id)")
    train.add_argument("--iterations", type=int, help="number of iterations (default: the config's)")
    train.add_argument("--warehouse", help="warehouse root (default: $HICRA_WAREHOUSE or the config's)")
    train.add_argument("--force", action="store_true", help="resume even though the config changed (recorded)")
    add_set_option(train, "override any config field, e.g. --set algorithm.advantage=grpo --set rollout.group_size=8")
    train.set_defaults(func=cmd_train)
