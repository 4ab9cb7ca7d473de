"""`hicra eval` (the `hicra-eval` flow on one checkpoint) and `hicra grade` (grade a file of model outputs).

`hicra grade` was called `hicra verify`, which still works with a deprecation warning: "verify" is the training stage
that grades rollouts. Building the command line imports neither Prefect nor torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import ROOT_HELP, prefect_defaults, warehouse_root

if TYPE_CHECKING:
    from schemas.config import EvalProtocol

EVAL_COLUMNS = {
    "problems": "problems",
    "k": "k",
    "avg_at_k": "avg@k",
    "pass_at_k": "pass@k",
    "mean_response_length": "length",
    "not_ok_share": "not ok",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint on benchmark suites (the Prefect flow `hicra-eval`)")
    target = ev.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="a run id: evaluate one of its committed checkpoints")
    target.add_argument("--model", help="an HF model folder outside any run (stored as iteration -1)")
    ev.add_argument("--iteration", default="latest", help="with --run: N, `latest` (default) or `all`")
    ev.add_argument(
        "--suites",
        default="synthetic",
        help="comma-separated: benchmark names (aime24, aime25, amc23, math500, minerva_math, olympiadbench, gsm8k), "
        "synthetic[:N] (the tiny task's eval split, the default), a .jsonl/.parquet file, hf:NAME[:SPLIT]",
    )
    ev.add_argument("--limit", type=int, help="evaluate only the first N problems of each suite")
    ev.add_argument("--samples", type=int, help="samples per problem on every suite (default: the paper's protocol)")
    ev.add_argument("--max-new-tokens", type=int, help="response limit (default: the run's rollout.max_new_tokens)")
    ev.add_argument("--protocol", help="YAML file of protocol settings (schemas.config.EvalProtocol)")
    for name in ("id", "problem", "answer"):
        ev.add_argument(f"--{name}-field", help=f"the {name} column of a suite file (dotted for a struct field)")
    ev.add_argument("--batch-size", type=int, default=64, help="sequences generated together")
    ev.add_argument("--workers", type=int, default=2, help="verifier worker processes")
    ev.add_argument("--warehouse", help=ROOT_HELP)
    ev.set_defaults(func=cmd_eval)

    vf = sub.add_parser(
        "grade", aliases=["verify"], help="grade a JSONL file of model outputs (fields `response` and `reference`)"
    )
    vf.add_argument("file", help="JSONL: one object per line with `response` and `reference` (a string or a list)")
    vf.add_argument("--out", help="output JSONL (default: stdout): reward, status, extracted, detail per input line")
    vf.add_argument("--workers", type=int, default=2, help="verifier worker processes")
    vf.add_argument("--timeout", type=float, default=5.0, help="hard wall-clock deadline per item, seconds")
    vf.add_argument(
        "--extractors",
        help="answer extractors in order, comma-separated (default: the full chain, every extractor of "
        "hicra.verifier.EXTRACTORS; `boxed` grades as training does by default; see docs/grading.md)",
    )
    vf.add_argument("--fallbacks", help="deprecated: the old name of --extractors")
    vf.set_defaults(func=cmd_grade)


def _protocol(args: argparse.Namespace, suites: list[str]) -> EvalProtocol:
    import yaml

    from schemas.config import EvalProtocol

    protocol = (yaml.safe_load(Path(args.protocol).read_text()) or {}) if args.protocol else {}
    if args.samples:
        protocol.update(samples={s: args.samples for s in suites}, default_samples=args.samples)
    if args.max_new_tokens:
        protocol["max_new_tokens"] = args.max_new_tokens
    return EvalProtocol.model_validate(protocol)


def cmd_eval(args: argparse.Namespace) -> int:
    prefect_defaults()
    from rich.console import Console
    from rich.table import Table

    from flows.evaluate import evaluate

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    fields = {name: getattr(args, f"{name}_field") for name in ("id", "problem", "answer")}
    iteration = (
        None if args.iteration == "all" else args.iteration if args.iteration == "latest" else int(args.iteration)
    )
    rows = evaluate(
        warehouse=warehouse_root(args),
        run_id=args.run,
        iteration=iteration,
        model_dir=args.model,
        suites=suites,
        limit=args.limit,
        protocol=_protocol(args, suites),
        fields={k: v for k, v in fields.items() if v} or None,
        batch_size=args.batch_size,
        verifier_workers=args.workers,
    )
    table = Table(title="eval_summary")
    for label in ("checkpoint", "suite", *EVAL_COLUMNS.values()):
        text = label in ("checkpoint", "suite")
        table.add_column(label, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    for row in rows:
        cells = [row[key] for key in EVAL_COLUMNS]
        table.add_row(
            row["checkpoint_id"], row["suite"], *(f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells)
        )
    Console(highlight=False).print(table)
    return 0


def _extractors(args: argparse.Namespace) -> tuple[str, ...]:
    """--extractors (or the deprecated --fallbacks, with a warning), else the full chain."""
    from hicra.verifier import FULL_CHAIN

    if args.fallbacks is not None:
        if args.extractors is not None:
            raise ValueError("--fallbacks is the old name of --extractors: give only --extractors")
        warnings.warn("--fallbacks is deprecated: use --extractors", FutureWarning, stacklevel=2)
    names = args.extractors if args.extractors is not None else args.fallbacks
    return FULL_CHAIN if names is None else tuple(name.strip() for name in names.split(",") if name.strip())


def cmd_grade(args: argparse.Namespace) -> int:
    from hicra.data import DataError, read_jsonl
    from hicra.verifier import Verifier

    if args.command == "verify":
        warnings.warn("`hicra verify` is deprecated: use `hicra grade`", FutureWarning, stacklevel=2)

    path = Path(args.file)
    responses, references = [], []
    for number, row in read_jsonl(path):
        if "response" not in row or row.get("reference") is None:
            raise DataError(f"{path}:{number}: needs the fields 'response' and 'reference'")
        responses.append(row["response"])
        references.append(row["reference"])
    with Verifier(workers=args.workers, timeout_s=args.timeout, extractors=_extractors(args)) as verifier:
        results = verifier.score(responses, references)
    lines = [
        json.dumps({"reward": r.reward, "status": r.status, "extracted": r.extracted, "detail": r.detail}) + "\n"
        for r in results
    ]
    if args.out:
        Path(args.out).write_text("".join(lines))
    else:
        sys.stdout.writelines(lines)
    correct, not_ok = sum(r.reward > 0 for r in results), sum(r.status != "ok" for r in results)
    print(f"{len(results)} graded: {correct} correct, {not_ok} not ok", file=sys.stderr)
    return 0
