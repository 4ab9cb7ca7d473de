"""Tests for Strategic Gram mining: n-grams, Cluster DF and the top-share cut, the comparison report, and the
warehouse round trip (mined by the `hicra-sgs` flow, stored, chosen by version in a run config, used by annotate)."""

from __future__ import annotations

import json
import random
import shutil
from functools import cache

import pytest

from hicra.grams import grams_version
from hicra.mining import MinedSet, compare_sets, mine_strategic_grams, word_ngrams

RECURRING = ["let me check the result", "we need to find the total", "first we compute the sum"]
"""Phrases in every solution of the corpus: every cluster holding one of their n-grams has the top Cluster DF."""
ONCE = "the purple giraffe sings loudly"
"""In one solution only: dropped before embedding (min_doc_freq 2)."""
TWICE = "banana orchestra tuning violins"
"""In two solutions: embedded, but its cluster's DF is far below the top share."""


@cache
def corpus(n: int = 200) -> list[str]:
    """Solutions of recurring phrases between arithmetic that rarely repeats, plus the two rare phrases."""
    rng = random.Random(0)
    solutions = []
    for i in range(n):
        parts = [f"{rng.randint(10, 999)} plus {rng.randint(10, 999)} is {rng.randint(10, 999)}." for _ in range(3)]
        parts += [p.capitalize() + "." for p in RECURRING]
        rng.shuffle(parts)
        if i == 7:
            parts.append(ONCE + ".")
        if i in (3, 11):
            parts.append(TWICE + "!")
        solutions.append(" ".join(parts))
    return solutions


@cache
def mined() -> MinedSet:
    return mine_strategic_grams(corpus())


def test_word_ngrams_stay_inside_phrases():
    text = "First, we need to find x_1. Let's break this  down:\n it's fine"
    assert word_ngrams(text, 3, 3) == {
        "let's break this",
        "break this down",
        "we need to",
        "need to find",
        "to find x_1",
    }
    assert "it's fine" in word_ngrams(text, 2, 2) and "first we" not in word_ngrams(text, 2, 2)
    assert word_ngrams("Wait, WAIT wait wait", 3, 5) == {"wait wait wait"}
    assert word_ngrams("one two", 3, 5) == set()


def test_recurring_phrases_are_kept_and_rare_ones_dropped():
    result = mined()
    grams = set(result.grams)
    for phrase in RECURRING:
        assert word_ngrams(phrase) <= grams, phrase
        assert all(result.cluster_df[result.cluster[g]] == 200 for g in word_ngrams(phrase))
    assert not word_ngrams(ONCE) & grams
    assert not word_ngrams(TWICE) & grams
    params = result.params
    assert params["embedded_ngrams"] < params["distinct_ngrams"]  # the once-only n-grams were never embedded
    assert params["corpus_size"] == 200 and params["algorithm"] == "kmeans" and "MiniLM" in params["model"]
    assert result.version == grams_version(result.grams)
    assert all(result.doc_freq[g] == 200 for g in grams if any(g in word_ngrams(p) for p in RECURRING))


def test_cluster_df_with_one_gram_per_cluster_is_the_gram_doc_freq():
    """With k = #n-grams every cluster is one n-gram: Cluster DF is its document frequency, the cut a DF cut."""
    result = mine_strategic_grams(corpus(), n_clusters=10_000, top_share=0.1)
    k = result.params["n_clusters"]
    assert k == result.params["embedded_ngrams"] == len(result.cluster_df)
    assert sorted(result.cluster_df.values(), reverse=True) == list(result.cluster_df.values())
    assert result.params["min_cluster_df"] == result.cluster_df[-(-k // 10) - 1] == 200
    assert all(result.cluster_df[result.cluster[g]] == result.doc_freq[g] == 200 for g in result.grams)
    assert set(result.grams) == set().union(*map(word_ngrams, RECURRING))  # ties at the cut are all kept


def test_compare_sets_reports_overlap_and_differences():
    report = compare_sets(["let me check", "we need to", "but wait now"], ["Let me  check", "but wait", "so"])
    assert report["mined"] == 3 and report["reference"] == 3 and report["overlap"] == 1
    assert report["overlap_share_of_mined"] == pytest.approx(1 / 3)
    assert report["only_mined"] == ["but wait now", "we need to"]
    assert report["only_reference"] == ["but wait", "so"]
    assert report["mined_containing_reference"] == 2  # "let me check" (itself), "but wait now" (holds "but wait")


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="n_min"):
        mine_strategic_grams(corpus(), n_min=4, n_max=3)
    with pytest.raises(ValueError, match="no n-gram"):
        mine_strategic_grams(["just one solution here"])


@pytest.fixture(scope="module")
def mined_warehouse(small_run, tmp_path_factory):
    """A copy of the small run's warehouse with a set mined from all its rollouts by the flow `hicra-sgs`."""
    from flows.mining import mine_sgs

    root = tmp_path_factory.mktemp("sgs") / "wh"
    shutil.copytree(small_run[0], root)
    result = mine_sgs(warehouse=str(root), sql="select response from rollouts")
    return root, small_run[1], result


def test_flow_stores_the_set_once(mined_warehouse, capsys):
    from cli.main import main
    from flows.mining import mine_sgs
    from tasks.mining import SGS_RUN_ID, stored_grams
    from warehouse.catalog import query
    from warehouse.store import Warehouse

    root, _, result = mined_warehouse
    version = result["version"]
    assert result["stored"] and version.startswith("sg-")
    grams = stored_grams(Warehouse(root), version)
    assert grams and grams_version(grams) == version
    rows = query(root, f"select * from strategic_grams where version = '{version}'").to_pylist()
    assert [r["gram"] for r in rows] == grams
    assert {(r["run_id"], r["iteration"], r["corpus"]) for r in rows} == {
        (SGS_RUN_ID, 0, "select response from rollouts")
    }
    params = json.loads(rows[0]["params"])
    assert rows[0]["corpus_size"] == params["corpus_size"] == query(root, "select count(*) from rollouts")[0][0].as_py()
    assert all(r["cluster_df"] >= params["min_cluster_df"] and r["doc_freq"] <= r["cluster_df"] for r in rows)

    again = mine_sgs(warehouse=str(root), sql="select response from rollouts")
    assert again["version"] == version and not again["stored"]

    capsys.readouterr()
    assert main(["sgs", "compare", version, "--warehouse", str(root)]) == 0
    assert f"{version} versus the paper's list" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="sg-00000000"):
        stored_grams(Warehouse(root), "sg-00000000")


def test_default_corpus_is_the_correct_rollouts(mined_warehouse):
    from tasks.mining import corpus_sql, select_corpus
    from warehouse.catalog import query

    root = str(mined_warehouse[0])
    correct = query(root, "select count(*) from scores where correct")[0][0].as_py()
    if correct:
        texts, corpus = select_corpus.fn(root, corpus_sql(), None, None)
        assert len(texts) == correct and "s.correct" in corpus
    else:
        with pytest.raises(ValueError, match="corpus is empty"):
            select_corpus.fn(root, corpus_sql(), None, None)
    with pytest.raises(ValueError, match="corpus is empty"):
        select_corpus.fn(root, corpus_sql(where="r.iteration < 0"), None, None)


def test_config_selects_the_set_by_version_for_annotate(mined_warehouse):
    """Annotate iteration 0 again (its commit removed in the copy) with the mined set chosen by version."""
    from hicra.tiny import build_tiny_policy
    from schemas.config import ConfigError, load_config
    from tasks.mining import stored_grams
    from tasks.stages import annotate_planning
    from tests.conftest import TEST_MODEL
    from warehouse.store import Warehouse

    root, config_path, result = mined_warehouse
    version = result["version"]
    config = load_config(config_path, **{"run.warehouse": str(root), "planning.grams_version": version})
    store = Warehouse(root)
    store.remove(store.commit_path(config.run.id, 0, "annotate"))
    annotate_planning.fn(config, 0, str(build_tiny_policy(**TEST_MODEL)))
    planning = store.read_table("planning", config.run.id, 0).to_pydict()
    assert set(planning["grams_version"]) == {version}
    found = {span["gram"] for spans in planning["spans"] for span in spans}
    assert found, "the mined set should match in the responses it was mined from"
    assert found <= set(stored_grams(store, version))

    with pytest.raises(ConfigError, match="not both"):
        load_config(config_path, **{"planning.grams": "x.txt", "planning.grams_version": version})


def test_jsonl_corpus_reads_solution_else_response(tmp_path):
    from tasks.mining import select_corpus

    path = tmp_path / "solutions.jsonl"
    path.write_text('{"solution": "a b c"}\n\n{"response": "d e f", "solution": ""}\n{"response": "g h i"}\n')
    texts, corpus = select_corpus.fn("unused", "unused", str(path), None)
    assert texts == ["a b c", "g h i"] and corpus == f"jsonl:{path} field=solution/response"
    path.write_text('{"text": "x", "response": "y"}\n{"text": "z"}\n')
    assert select_corpus.fn("unused", "unused", str(path), "text")[0] == ["x", "z"]
    with pytest.raises(ValueError, match=":2: no field 'solution or response'"):
        select_corpus.fn("unused", "unused", str(path), None)
