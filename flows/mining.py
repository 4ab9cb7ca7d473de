"""The flow `hicra-sgs`: mine a Strategic Gram set from successful solutions, store it, compare it with the paper's.

The corpus is the warehouse's correct rollouts (or another SQL query, or a JSONL file); the set is committed to the
`strategic_grams` table under its version, which a run config selects with `planning.grams_version`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from hicra.grams import load_grams
from hicra.mining import Algorithm, compare_sets
from tasks.mining import corpus_sql, mine_grams, print_comparison, select_corpus, store_grams


@flow(name="hicra-sgs", flow_run_name="sgs-mine")
def mine_sgs(
    warehouse: str,
    where: str | None = None,
    sql: str | None = None,
    jsonl: str | None = None,
    field: str | None = None,
    n_min: int = 3,
    n_max: int = 5,
    min_doc_freq: int = 2,
    n_clusters: int | None = None,
    algorithm: Algorithm = "auto",
    top_share: float = 0.2,
    batch_size: int = 256,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Mine, store and compare a set; returns its version, whether it was stored, and the comparison report.

    The corpus: `jsonl` (field `field`, default "solution" else "response"), else the query `sql`, else the correct
    rollouts of the warehouse filtered by `where`. The other arguments are `hicra.mining.mine_strategic_grams`'s.
    """
    solutions, corpus = select_corpus(warehouse, corpus_sql(where, sql), jsonl, field)
    options = {
        "n_min": n_min,
        "n_max": n_max,
        "min_doc_freq": min_doc_freq,
        "n_clusters": n_clusters,
        "algorithm": algorithm,
        "top_share": top_share,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
    }
    mined = mine_grams(solutions, options)
    stored = store_grams(warehouse, mined, corpus)
    report = compare_sets(mined.grams, load_grams())
    print_comparison(mined.version, "the paper's list", report)
    return {"version": mined.version, "stored": stored, **report}
