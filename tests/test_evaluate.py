"""Evaluation: suites and their layouts, the protocol hash, pass@k in SQL, `hicra eval` once only, `hicra grade`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cli.main import main as hicra_main
from hicra.data import DataError, Fields
from hicra.evaluate import load_suite, suite_settings
from hicra.grams import GramMatcher, load_grams
from hicra.metrics import pass_at_k, semantic_entropy
from schemas.config import EvalProtocol
from schemas.tables import EvalResultRow, to_table
from warehouse.catalog import query
from warehouse.store import Warehouse


@pytest.fixture
def warehouse_copy(small_run, tmp_path) -> Path:
    """A private copy of the 2-iteration run's warehouse (checkpoints at iterations 0 and 1), free to write to."""
    return Path(shutil.copytree(small_run[0], tmp_path / "wh"))


def eval_commits(root: Path) -> dict[tuple[int, str], str]:
    """(iteration, stage) -> committed_at of every eval commit."""
    return {(c.iteration, c.stage): c.committed_at for c in Warehouse(root).commits() if c.stage.startswith("eval-")}


def test_hicra_eval_writes_results_and_summary_once(warehouse_copy, capsys):
    suites = ["--suites", "gsm8k,synthetic", "--limit", "3", "--samples", "2"]
    args = ["eval", "--run", "t", *suites, "--warehouse", str(warehouse_copy)]
    assert hicra_main(args) == 0
    out = capsys.readouterr().out
    assert "avg@k" in out and "pass@k" in out
    counts = query(
        warehouse_copy,
        "select suite, iteration, checkpoint_id, count(*) n, count(distinct problem_id) p, count(distinct seed) seeds "
        "from eval_results group by all order by suite",
    ).to_pylist()
    assert counts == [
        {"suite": "gsm8k", "iteration": 1, "checkpoint_id": "t/1", "n": 6, "p": 3, "seeds": 6},
        {"suite": "synthetic", "iteration": 1, "checkpoint_id": "t/1", "n": 6, "p": 3, "seeds": 6},
    ]
    summary = query(warehouse_copy, "from eval_summary order by suite").to_pylist()
    assert [(r["suite"], r["problems"], r["k"]) for r in summary] == [("gsm8k", 3, 2), ("synthetic", 3, 2)]
    matcher = GramMatcher(load_grams())  # the run's gram set: the paper's list
    for row in summary:
        assert 0 <= row["avg_at_k"] <= row["pass_at_k"] <= 1 and row["mean_response_length"] > 0
        texts = query(warehouse_copy, f"select response from eval_results where suite = '{row['suite']}'")
        spans = [[(m.start, m.end, m.gram) for m in matcher.find(t)] for t in texts.column(0).to_pylist()]
        assert row["semantic_entropy"] == pytest.approx(semantic_entropy(spans))  # on the evaluation's answers
    pass_at_1 = query(warehouse_copy, "select suite, pass_at_k from eval_pass_at_k where k = 1 order by suite")
    assert [r["pass_at_k"] for r in pass_at_1.to_pylist()] == pytest.approx([r["avg_at_k"] for r in summary])
    commits = eval_commits(warehouse_copy)
    assert {stage.rsplit("-", 1)[0] for _, stage in commits} == {"eval-gsm8k", "eval-synthetic"}

    assert hicra_main(args) == 0  # the same (checkpoint, suite, protocol) again: nothing to do
    assert "evaluated before" in capsys.readouterr().out
    assert eval_commits(warehouse_copy) == commits
    assert query(warehouse_copy, "select count(*) n from eval_results").to_pylist() == [{"n": 12}]


def test_pass_at_k_in_sql_matches_the_estimator_by_hand(tmp_path):
    """n = 4 samples of 3 problems with c = 1, 0, 4 correct: pass@1 = 5/12, pass@2 = (1/2 + 0 + 1)/3, pass@4 = 2/3."""
    rows = [
        EvalResultRow(
            run_id="r", iteration=0, checkpoint_id="r/0", checkpoint_path="hf", suite="s", protocol_hash="h",
            problem_id=problem, sample_index=i, reference="1", response="", extracted=None,
            status="ok", reward=float(i < correct), response_length=10 + i, finish_reason="stop", seed=i,
        )
        for problem, correct in (("a", 1), ("b", 0), ("c", 4))
        for i in range(4)
    ]  # fmt: skip
    Warehouse(tmp_path).commit_stage("r", 0, "eval-s-h", {"eval_results": to_table(EvalResultRow, rows)})
    got = query(tmp_path, "select k, pass_at_k from eval_pass_at_k order by k").to_pylist()
    by_hand = {1: 5 / 12, 2: (1 - 3 / 6 + 0 + 1) / 3, 4: 2 / 3}
    assert [r["k"] for r in got] == [1, 2, 4]
    for row in got:
        assert row["pass_at_k"] == pytest.approx(by_hand[row["k"]])
        assert row["pass_at_k"] == pytest.approx(sum(pass_at_k(4, c, row["k"]) for c in (1, 0, 4)) / 3)
    [summary] = query(tmp_path, "from eval_summary").to_pylist()
    assert (summary["problems"], summary["k"], summary["mean_response_length"]) == (3, 4, 11.5)
    assert summary["avg_at_k"] == pytest.approx(5 / 12)  # the paper's Pass@1: mean reward over all samples
    assert summary["pass_at_k"] == pytest.approx(2 / 3)  # k = 4 = n: the share of problems solved at least once


def test_verl_parquet_layout_and_custom_fields(tmp_path):
    chat = [{"role": "system", "content": "Reason step by step."}]
    rows = [
        {
            "data_source": "toy",
            "prompt": [*chat, {"role": "user", "content": f"What is {n} + {n}?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * n)},
            "extra_info": {"split": "test", "index": n},
        }
        for n in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    suite = load_suite(str(tmp_path / "test.parquet"))
    assert suite.name == "test"
    assert [(p.id, p.problem, p.references) for p in suite.problems] == [
        (str(n), f"What is {n} + {n}?", (str(2 * n),)) for n in range(3)
    ]
    assert len(load_suite(str(tmp_path / "test.parquet"), limit=2).problems) == 2

    lines = [{"question": "2 * 3?", "final": 6}, {"question": "1 + 1?", "final": "2"}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    mine = load_suite(str(tmp_path / "mine.jsonl"), fields=Fields(problem="question", answer="final"))
    expected = [("0", "2 * 3?", ("6",)), ("1", "1 + 1?", ("2",))]
    assert [(p.id, p.problem, p.references) for p in mine.problems] == expected
    with pytest.raises(DataError, match=r"mine\.jsonl: row 1: no 'answer'"):
        load_suite(str(tmp_path / "mine.jsonl"), fields=Fields(problem="question", answer="answer"))
    with pytest.raises(DataError, match="not found"):
        load_suite(str(tmp_path / "missing.jsonl"))


def test_benchmarks_from_the_shared_folder():
    minerva = load_suite("minerva_math")
    assert len(minerva.problems) == 272 and any(len(p.references) > 1 for p in minerva.problems)
    assert [len(load_suite(name).problems) for name in ("aime24", "amc23")] == [30, 40]
    synthetic = load_suite("synthetic", limit=5)
    assert [p.id for p in synthetic.problems] == [f"synth-eval-{i}" for i in range(5)]


def test_hugging_face_suite_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError, as when not installed
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_suite("hf:HuggingFaceH4/MATH-500")


def test_protocol_defaults_and_hash():
    protocol = EvalProtocol()
    assert (protocol.temperature, protocol.top_p) == (0.6, 0.95)
    assert [protocol.samples_for(s) for s in ("aime24", "aime25", "amc23", "math500", "gsm8k")] == [32, 32, 4, 1, 1]
    suite = load_suite("gsm8k", limit=3)
    digest = suite_settings(protocol, suite, 128).digest()
    assert digest == suite_settings(EvalProtocol(), load_suite("gsm8k", limit=3), 128).digest()
    changed = [
        suite_settings(protocol, load_suite("gsm8k", limit=4), 128),
        suite_settings(protocol, suite, 256),
        suite_settings(EvalProtocol(temperature=1.0), suite, 128),
        suite_settings(EvalProtocol(samples={"gsm8k": 2}), suite, 128),
    ]
    assert len({digest, *(s.digest() for s in changed)}) == 5


def test_hicra_grade_scores_a_file(tmp_path, capsys):
    lines = [
        {"response": "So the answer is \\boxed{4}.", "reference": "4"},
        {"response": "\\boxed{5}", "reference": "4"},
        {"response": "I do not know.", "reference": "4"},
        {"response": "\\boxed{3.83 \\times 10^{35}}", "reference": ["3.83e35", "3.83 \\times 10^{35}"]},
    ]
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert hicra_main(["grade", str(path), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["reward"], r["status"]) for r in results] == [(1.0, "ok"), (0.0, "ok"), (0.0, "no_answer"), (1.0, "ok")]
    assert [r["extracted"] for r in results][:3] == ["4", "5", None]
    assert "4 graded: 2 correct, 1 not ok" in captured.err

    path.write_text('{"response": "\\\\boxed{1}"}\n')
    assert hicra_main(["grade", str(path)]) == 2
    assert "outputs.jsonl:1: needs the fields" in capsys.readouterr().err


def test_hicra_grade_extractors_flag(tmp_path, capsys):
    """The full chain by default, `--extractors` to choose, `--fallbacks` still accepted with a warning."""
    path = tmp_path / "outputs.jsonl"
    path.write_text(json.dumps({"response": "So we get $x = 4$.", "reference": "4"}) + "\n")

    def graded(*flags: str) -> tuple[float, str]:
        assert hicra_main(["grade", str(path), "--workers", "1", *flags]) == 0
        result = json.loads(capsys.readouterr().out)
        return result["reward"], result["status"]

    assert graded() == (1.0, "ok")
    assert graded("--extractors", "boxed") == (0.0, "no_answer")
    with pytest.warns(FutureWarning, match="--fallbacks is deprecated: use --extractors"):
        assert graded("--fallbacks", "boxed,latex") == (1.0, "ok")
    assert hicra_main(["grade", str(path), "--extractors", "boxed,nope"]) == 2
    assert "known: boxed, " in capsys.readouterr().err
    with pytest.warns(FutureWarning, match="`hicra verify` is deprecated: use `hicra grade`"):
        assert hicra_main(["verify", str(path), "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["reward"] == 1.0


def test_training_evaluates_every_k_iterations(small_run, warehouse_copy):
    """eval.every = 2 evaluates iteration 1 only; eval settings are outside the config hash, so the run resumes.
    eval.first adds the starting policy (iteration -1, before any update): the summaries' first row, `start`."""
    from flows.train import train
    from schemas.config import load_config
    from tasks.stages import prepare_policy
    from tasks.summary import iteration_line

    _, config_path, _ = small_run
    config = yaml.safe_load(config_path.read_text())
    config["run"]["warehouse"] = str(warehouse_copy)
    config["eval"] = {"every": 2, "suites": ["synthetic"], "limit": 2}
    path = warehouse_copy.parent / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    train(config_path=str(path))
    assert [iteration for iteration, _ in eval_commits(warehouse_copy)] == [1]
    assert query(warehouse_copy, "select count(*) n from eval_results").to_pylist() == [{"n": 2}]

    config["eval"]["first"] = True
    path.write_text(yaml.safe_dump(config))
    summaries = train(config_path=str(path))
    assert sorted(iteration for iteration, _ in eval_commits(warehouse_copy)) == [-1, 1]
    assert [row["iteration"] for row in summaries] == [-1, 0, 1]
    start = query(warehouse_copy, "select avg_at_k from eval_summary where iteration = -1").to_pylist()
    paths = query(warehouse_copy, "select distinct checkpoint_path from eval_results where iteration = -1").to_pylist()
    assert summaries[0]["eval_accuracy"] == start[0]["avg_at_k"]
    base = Path(prepare_policy(load_config(path))).resolve()
    assert paths == [{"checkpoint_path": str(base)}]  # the policy before any update
    assert iteration_line(summaries[0], 1.0).startswith("#start acc - eval ")
