"""`hicra judge RUN`: the paper's error-type analysis of a run's failed rollouts through an OpenAI-compatible judge.

Each iteration's failed rollouts go to the judge (`hicra.judge`: a local vLLM server by default); the verdicts are
committed per iteration into the `judgments` table (`tasks.judge`), `error_types` counts planning errors vs others,
and `hicra report` plots them. Run it again to judge iterations committed since: judged ones are skipped.
"""

from __future__ import annotations

import argparse
import os

from cli.common import ROOT_HELP, warehouse_root
from hicra.judge import DEFAULT_BASE_URL


def cmd_judge(args: argparse.Namespace) -> int:
    from hicra.judge import Judge
    from tasks.judge import judge_run

    def report(iteration: int, line: str | None) -> None:
        print(f"  iteration {iteration}: {line or 'judged before, skipped'}", flush=True)

    judge = Judge(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"), args.constrain)
    try:
        print(f"judging the failed rollouts of {args.run_id} with {judge.model} at {args.base_url}", flush=True)
        stage = judge_run(warehouse_root(args), args.run_id, judge, args.sample, args.workers, report)
    finally:
        judge.close()
    print(f'verdicts committed as stage {stage}; see `hicra sql "select * from error_types"` and `hicra report`')
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    judge = sub.add_parser("judge", help="classify a run's failed rollouts by error type with an LLM judge")
    judge.add_argument("run_id")
    judge.add_argument("--warehouse", help=ROOT_HELP)
    judge.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help=f"OpenAI-compatible API (default: {DEFAULT_BASE_URL})"
    )
    judge.add_argument("--model", help="the judge model (default: the server's first model)")
    judge.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY; none for a local server)")
    judge.add_argument(
        "--constrain", choices=["auto", "choice", "none"], default="auto",
        help="vLLM structured outputs that restrict the answer to a category: auto (if the server takes them), "
        "choice (always), none (parse free text)",
    )  # fmt: skip
    judge.add_argument("--sample", type=int, help="judge at most N failed rollouts per iteration (default: all)")
    judge.add_argument("--workers", type=int, default=8, help="requests in flight (default: 8)")
    judge.set_defaults(func=cmd_judge)
