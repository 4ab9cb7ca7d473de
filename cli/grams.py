"""Strategic Gram subcommands: `hicra annotate` marks grams (and planning tokens) in a JSONL file of responses;
`hicra sgs mine` runs the mining flow `hicra-sgs`, `hicra sgs compare` compares a stored set with a reference."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, get_args

from cli.common import ROOT_HELP, prefect_defaults, warehouse_root
from hicra.mining import AUTO_MINIBATCH_ABOVE, MAX_DEFAULT_CLUSTERS, Algorithm


def _gram_set(args: argparse.Namespace) -> list[str]:
    """The grams the options name: a stored set by version, a file, or the paper's list."""
    from hicra.grams import load_grams

    if args.grams_version:
        from tasks.mining import stored_grams
        from warehouse.store import Warehouse

        return stored_grams(Warehouse(warehouse_root(args)), args.grams_version)
    return load_grams(Path(args.grams) if args.grams else None)


def annotate_record(record: dict, field: str, matcher: Any, tokenizer: Any | None) -> dict:
    """`record` with its gram matches added: `spans`, `num_spans`, and with a tokenizer `token_ids` and
    `planning_mask` (spans are then offsets in the decoded ids, given as `decoded` where it differs from the input)."""
    from hicra.grams import annotate

    text = record.get(field)
    if not isinstance(text, str):
        raise ValueError(f"no text field {field!r} in {sorted(record)}")
    out = dict(record)
    if tokenizer is None:
        spans = matcher.find(text)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded, spans, mask = annotate(ids, tokenizer, matcher)
        out.update(token_ids=ids, planning_mask=mask)
        if decoded != text:
            out["decoded"] = decoded
    out.update(spans=[{"start": s.start, "end": s.end, "gram": s.gram} for s in spans], num_spans=len(spans))
    return out


def cmd_annotate(args: argparse.Namespace) -> int:
    from hicra.grams import GramMatcher

    matcher = GramMatcher(_gram_set(args))
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with ExitStack() as stack:
        lines = stack.enter_context(Path(args.file).open(encoding="utf-8"))
        out = stack.enter_context(Path(args.out).open("w", encoding="utf-8")) if args.out else sys.stdout
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = annotate_record(json.loads(line), args.field, matcher, tokenizer)
            except ValueError as err:
                raise ValueError(f"{args.file}:{number}: {err}") from err
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"annotated {args.file} with {matcher.version} ({len(matcher.grams)} grams)", file=sys.stderr)
    return 0


def cmd_sgs_mine(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.mining import mine_sgs
    from tasks.common import console

    warehouse = warehouse_root(args)
    result = mine_sgs(
        warehouse=warehouse,
        where=args.where,
        sql=args.sql,
        jsonl=args.jsonl,
        field=args.field,
        n_min=args.ngram_min,
        n_max=args.ngram_max,
        min_doc_freq=args.min_doc_freq,
        n_clusters=args.clusters,
        algorithm=args.algorithm,
        top_share=args.top_share,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    version = result["version"]
    console.print(f"Use it in a run config:  planning: {{grams_version: {version}}}", soft_wrap=True)
    console.print(
        f"Inspect it:  hicra sql --warehouse {warehouse} \"select * from strategic_grams where version = '{version}'\"",
        soft_wrap=True,
    )
    return 0


def cmd_sgs_compare(args: argparse.Namespace) -> int:
    from hicra.grams import load_grams
    from hicra.mining import compare_sets
    from tasks.mining import print_comparison, stored_grams
    from warehouse.store import Warehouse

    mined = stored_grams(Warehouse(warehouse_root(args)), args.version)
    reference = load_grams(Path(args.reference) if args.reference else None)
    print_comparison(args.version, args.reference or "the paper's list", compare_sets(mined, reference))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `annotate` and `sgs {mine,compare}` to the `hicra` command line."""
    warehouse_help = ROOT_HELP

    annotate = sub.add_parser("annotate", help="mark Strategic Grams (and planning tokens) in a JSONL of responses")
    annotate.add_argument("file", help="JSONL file, one object per line with the response text")
    annotate.add_argument("--field", default="response", help="field holding the text (default: response)")
    annotate.add_argument("--tokenizer", help="HF tokenizer folder: also write token_ids and planning_mask")
    grams = annotate.add_mutually_exclusive_group()
    grams.add_argument("--grams", help="gram file: JSON list (or {grams: [...]}) or one gram a line (default: paper's)")
    grams.add_argument("--grams-version", help="a mined set stored in the warehouse (sg-...)")
    annotate.add_argument("--warehouse", help=f"{warehouse_help}; for --grams-version")
    annotate.add_argument("--out", help="output JSONL file (default: stdout)")
    annotate.set_defaults(func=cmd_annotate)

    sgs = sub.add_parser("sgs", help="mine Strategic Gram sets and compare them").add_subparsers(
        dest="sgs_command", required=True
    )
    mine = sgs.add_parser("mine", help="mine a set from successful solutions and store it (flow hicra-sgs)")
    mine.add_argument("--warehouse", help=f"{warehouse_help}: corpus source and where the set is stored")
    corpus = mine.add_mutually_exclusive_group()
    where_help = "SQL condition ANDed onto the default corpus query (r: rollouts, s: scores), e.g. \"r.run_id = 'a'\""
    corpus.add_argument("--where", help=where_help)
    corpus.add_argument("--sql", help="a full corpus query; its first column is the solution text")
    corpus.add_argument("--jsonl", help="a JSONL file of solutions instead of the warehouse")
    mine.add_argument("--field", help="JSONL field of the text (default: solution, else response)")
    mine.add_argument("--clusters", type=int, help=f"k (default: sqrt(#n-grams), at most {MAX_DEFAULT_CLUSTERS})")
    auto = f"auto: k-means, MiniBatchKMeans above {AUTO_MINIBATCH_ABOVE:,} n-grams"
    mine.add_argument("--algorithm", choices=get_args(Algorithm), default="auto", help=f"clustering ({auto})")
    mine.add_argument("--min-doc-freq", type=int, default=2, help="drop n-grams in fewer solutions (default: 2)")
    mine.add_argument("--top-share", type=float, default=0.2, help="share of clusters kept by Cluster DF (0.2)")
    mine.add_argument("--ngram-min", type=int, default=3, help="shortest n-gram in words (default: 3)")
    mine.add_argument("--ngram-max", type=int, default=5, help="longest n-gram in words (default: 5)")
    mine.add_argument("--batch-size", type=int, default=256, help="embedding batch size (default: 256)")
    mine.add_argument("--device", help="embedding device, e.g. cpu or cuda (default: sentence-transformers' choice)")
    mine.add_argument("--seed", type=int, default=0, help="clustering seed (default: 0)")
    mine.set_defaults(func=cmd_sgs_mine)

    compare = sgs.add_parser("compare", help="compare a stored set with the paper's list (or another file)")
    compare.add_argument("version", help="the stored set's version (sg-...)")
    compare.add_argument("--reference", help="gram file to compare with (default: the paper's list)")
    compare.add_argument("--warehouse", help=warehouse_help)
    compare.set_defaults(func=cmd_sgs_compare)
