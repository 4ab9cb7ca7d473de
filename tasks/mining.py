"""Tasks of the `hicra-sgs` flow (select a corpus, mine a Strategic Gram set, store it) and reading stored sets.

Storage: each mined set is one warehouse commit, run_id "sgs", iteration 0, stage = the set's version
("sg-1a2b3c4d"), writing the `strategic_grams` table (one row per gram). The version hashes the grams, so a set mined
again (same grams, whatever the parameters) is already committed and is not stored twice.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from hicra.generate import derive_seed
from hicra.grams import load_grams
from hicra.mining import NO_CLUSTER, MinedSet, mine_strategic_grams, placebo_grams
from schemas.config import PlanningSection, RunConfig
from schemas.tables import StrategicGramRow, to_table
from tasks.common import console
from warehouse.catalog import query
from warehouse.store import Warehouse

SGS_RUN_ID = "sgs"
SGS_ITERATION = 0
TABLE = "strategic_grams"
DEFAULT_CORPUS_SQL = (
    "select r.response from rollouts r join scores s using (run_id, iteration, rollout_id) where s.correct"
)
"""The default corpus: every correct rollout in the warehouse."""

JSONL_FIELDS = ("solution", "response")
"""Fields a JSONL corpus row is read from when none is named: the first one present."""


def corpus_sql(where: str | None = None, sql: str | None = None) -> str:
    """The corpus query: `sql` as given (its first column is the text), else the default with `where` ANDed on."""
    if sql and where:
        raise ValueError("give a full corpus query or a WHERE condition, not both")
    if sql:
        return sql
    return f"{DEFAULT_CORPUS_SQL} and ({where})" if where else DEFAULT_CORPUS_SQL


@task(name="select-corpus", cache_policy=NO_CACHE)
def select_corpus(warehouse: str, sql: str, jsonl: str | None, field: str | None) -> tuple[list[str], str]:
    """The solutions to mine (non-empty texts) and where they came from: the file and field if `jsonl` is given,
    else the `sql` query over the warehouse (its first column)."""
    if jsonl is None:
        texts, corpus = query(warehouse, sql).column(0).to_pylist(), sql
    else:
        texts = []
        with Path(jsonl).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                name = field or next((f for f in JSONL_FIELDS if f in row), None)
                if name not in row:
                    raise ValueError(f"{jsonl}:{number}: no field {name or ' or '.join(JSONL_FIELDS)!r}")
                texts.append(row[name])
        corpus = f"jsonl:{jsonl} field={field or '/'.join(JSONL_FIELDS)}"
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"the corpus is empty: {corpus}")
    console.print(f"corpus: {len(texts)} solutions from {corpus}")
    return texts, corpus


@task(name="mine-grams", cache_policy=NO_CACHE)
def mine_grams(solutions: list[str], options: dict[str, Any]) -> MinedSet:
    """Mine a set (`hicra.mining.mine_strategic_grams` with `options`), showing each phase's progress."""
    columns = (
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bars:
        phases: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in phases:
                phases[phase] = bars.add_task(phase, total=total)
            bars.update(phases[phase], completed=done)

        mined = mine_strategic_grams(solutions, progress=progress, **options)
    params = mined.params
    console.print(
        f"mined {mined.version}: {len(mined.grams)} grams in {params['clusters_kept']} of {params['n_clusters']} "
        f"clusters ({params['algorithm']}, Cluster DF >= {params['min_cluster_df']}) from "
        f"{params['embedded_ngrams']} n-grams"
    )
    return mined


@task(name="store-grams", cache_policy=NO_CACHE)
def store_grams(warehouse: str, mined: MinedSet, corpus: str) -> bool:
    """Commit the set to the `strategic_grams` table; False when a set with its version is already stored."""
    store = Warehouse(warehouse)
    if store.is_committed(SGS_RUN_ID, SGS_ITERATION, mined.version):
        console.print(f"{mined.version} is already in {store.url}: not stored again")
        return False
    store.discard_uncommitted(SGS_RUN_ID, SGS_ITERATION, mined.version)
    created = dt.datetime.now(dt.UTC)
    params = json.dumps(mined.params, sort_keys=True)
    rows = [
        StrategicGramRow(
            run_id=SGS_RUN_ID,
            iteration=SGS_ITERATION,
            version=mined.version,
            gram=gram,
            cluster=mined.cluster[gram],
            cluster_df=mined.cluster_df[mined.cluster[gram]],
            doc_freq=mined.doc_freq[gram],
            params=params,
            corpus=corpus,
            corpus_size=mined.params["corpus_size"],
            model=mined.params["model"],
            created_at=created,
        )
        for gram in mined.grams
    ]
    info = {"version": mined.version, "grams": len(rows)}
    store.commit_stage(SGS_RUN_ID, SGS_ITERATION, mined.version, {TABLE: to_table(StrategicGramRow, rows)}, info)
    console.print(f"stored {mined.version} ({len(rows)} grams) in {store.url}")
    return True


def stored_grams(store: Warehouse, version: str) -> list[str]:
    """The grams of a set stored in the warehouse, in stored order."""
    return list(stored_clusters(store, version))


def stored_clusters(store: Warehouse, version: str) -> dict[str, int]:
    """Gram -> cluster of a set stored in the warehouse, in stored order (`NO_CLUSTER` for a placebo set's)."""
    commit = store.read_commit(SGS_RUN_ID, SGS_ITERATION, version)
    if commit is None:
        raise FileNotFoundError(
            f"no Strategic Gram set {version} in the warehouse {store.url} "
            f'(list them: hicra sql "select distinct version from strategic_grams")'
        )
    files = [store.path(f["path"]) for f in commit.files if f["table"] == TABLE]
    tables = [pq.read_table(path, columns=["gram", "cluster"], filesystem=store.fs).to_pydict() for path in files]
    return {g: c for t in tables for g, c in zip(t["gram"], t["cluster"], strict=True)}


def planning_grams(planning: PlanningSection, store: Warehouse) -> list[str]:
    """The configured gram set: a mined set by version from the warehouse, a file, or the paper's list."""
    if planning.grams_version:
        return stored_grams(store, planning.grams_version)
    return load_grams(Path(planning.grams) if planning.grams else None)


def planning_strategies(planning: PlanningSection, store: Warehouse) -> dict[str, int] | None:
    """Gram -> strategy (its cluster) of the configured set where it has clusters (a mined set), else None."""
    if not planning.grams_version:
        return None
    clusters = stored_clusters(store, planning.grams_version)
    return clusters if any(c != NO_CLUSTER for c in clusters.values()) else None


def run_placebo_grams(store: Warehouse, config: RunConfig) -> list[str]:
    """The run's placebo gram set (`algorithm.advantage: placebo`), drawn from its iteration-0 responses and stored.

    Corpus: every response of the run's first iteration (all of them: early on few are correct). They are the
    policy's own text, so placebo n-grams occur in its later responses as its phrases do, and they exist in every
    run (training sets often carry no solutions); committed rollouts never change, so every iteration and every
    resumed attempt draws the same set (seeded by run id and seed), which is stored once like any gram set.
    """
    run = config.run
    responses = store.read_table("rollouts", run.id, 0).column("response").to_pylist()
    placebo = placebo_grams(planning_grams(config.planning, store), responses, derive_seed("placebo", run.id, run.seed))
    if not store.is_committed(SGS_RUN_ID, SGS_ITERATION, placebo.version):
        store_grams.fn(store.url, placebo, f"responses of run {run.id} iteration 0")
    return placebo.grams


def print_comparison(name: str, reference: str, report: dict[str, Any], examples: int = 15) -> None:
    """Print `hicra.mining.compare_sets`'s report: the counts, then a few grams each set alone has."""
    table = Table(title=f"{name} versus {reference}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("mined", "reference", "overlap", "overlap_share_of_mined", "overlap_share_of_reference"):
        value = report[key]
        table.add_row(key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value))
    table.add_row("mined grams holding a reference gram", str(report["mined_containing_reference"]))
    console.print(table)
    for key, label in (("only_mined", name), ("only_reference", reference)):
        grams = report[key]
        more = f", ... (+{len(grams) - examples})" if len(grams) > examples else ""
        console.print(f"only in {label} ({len(grams)}): " + ", ".join(grams[:examples]) + more)
