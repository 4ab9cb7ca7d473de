"""The experiment flow on a mini grid (2 methods x 2 seeds x 2 iterations of the small policy, a real Prefect server
and warehouse): killed and resumed, same prompts per seed across methods, and the report's numbers against SQL."""

from __future__ import annotations

import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli.main import main as hicra_main
from flows.experiment import experiment
from schemas.config import ConfigError, load_config
from schemas.experiment import load_experiment, parse_run_id
from tasks.common import RunConfigMismatch, freeze_run_config
from tests.conftest import ROOT, child_env, small_config
from warehouse.catalog import query
from warehouse.compare import PANELS, final_results, lines
from warehouse.experiments import comparison_data, experiment_runs
from warehouse.store import Warehouse

T_975_DF1 = 12.706204736174698  # Student t, 97.5% quantile, 1 degree of freedom (2 seeds)
RUNS = ["mini-grpo-s0", "mini-hicra-s0", "mini-grpo-s1", "mini-hicra-s1"]  # the order they run: seed by seed


def write_experiment(folder: Path, **changes: object) -> Path:
    """A mini grid over the small test policy: grpo and hicra, seeds 0 and 1, 2 iterations, evaluated each and
    before the first."""
    base = small_config(folder / "wh", run_id="unused")
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "name": "mini",
        "base": "base.yaml",
        "methods": {"grpo": {"algorithm.advantage": "grpo"}, "hicra": {"algorithm.advantage": "hicra"}},
        "seeds": [0, 1],
        "iterations": 2,
        "overrides": {
            "eval.every": 1,
            "eval.first": True,
            "eval.suites": ["synthetic:6"],
            "rollout.prompts_per_iteration": 4,
            "model.tiny.seed": 0,
        },
        **changes,
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


SLOW = pytest.mark.slow  # the tests on the grid: 4 short runs, one of them killed and resumed (minutes)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, prefect_server):
    """The mini grid, killed (SIGKILL) inside its second run's first rollout, then resumed to the end in-process.

    Returns (experiment file, warehouse root, the first run's commits before the resume)."""
    folder = tmp_path_factory.mktemp("grid")
    path = write_experiment(folder)
    root = folder / "wh"
    command = [sys.executable, "-m", "cli", "experiment", "--config", str(path)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=child_env(PREFECT_API_URL=prefect_server, HICRA_DEBUG="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    attempts = root / "_attempts" / f"run_id={RUNS[1]}" / "iteration=0"
    deadline = time.monotonic() + 900
    try:
        while not any(attempts.glob("rollout-*.json")):
            assert process.poll() is None, "the experiment ended before its second run started"
            assert time.monotonic() < deadline, "timed out waiting for the second run"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    store = Warehouse(root)
    first = sorted((c.iteration, c.stage, c.committed_at) for c in store.commits(RUNS[0]))
    assert not store.is_committed(RUNS[1], 0, "rollout")
    assert experiment(config_path=str(path)) == RUNS
    return path, root, first


@SLOW
def test_killed_experiment_resumes_and_skips_finished_runs(grid, capsys):
    path, root, first = grid
    store = Warehouse(root)
    assert sorted((c.iteration, c.stage, c.committed_at) for c in store.commits(RUNS[0])) == first  # not rerun
    attempts = query(root, "select run_id, stage, status from stage_attempts where status <> 'ok'").to_pylist()
    assert attempts == [{"run_id": RUNS[1], "stage": "rollout", "status": "interrupted"}]
    for run in RUNS:
        assert store.is_committed(run, 1, "update"), run
    before = len(store.attempts())
    assert experiment(config_path=str(path)) == RUNS  # everything done: every run skipped, nothing attempted
    assert len(store.attempts()) == before
    assert capsys.readouterr().out.count("committed, skipped") >= len(RUNS)


@SLOW
def test_methods_of_a_seed_draw_the_same_prompts(grid):
    _, root, _ = grid
    rows = query(root, "select run_id, iteration, list(prompt_id order by group_index) p from rollouts group by all")
    prompts = {(r["run_id"], r["iteration"]): r["p"] for r in rows.to_pylist()}
    for seed in (0, 1):
        for iteration in (0, 1):
            assert prompts[f"mini-grpo-s{seed}", iteration] == prompts[f"mini-hicra-s{seed}", iteration]
    assert prompts["mini-grpo-s0", 0] != prompts["mini-grpo-s1", 0]  # another seed, other prompts
    configs = {run: yaml.safe_load(Warehouse(root).frozen_config(run)[0]) for run in RUNS}
    assert {c["data"]["order_key"] for c in configs.values()} == {"mini"}
    assert [(c["algorithm"]["advantage"], c["run"]["seed"]) for c in configs.values()] == [
        ("grpo", 0), ("hicra", 0), ("grpo", 1), ("hicra", 1)
    ]  # fmt: skip


@SLOW
def test_report_numbers_equal_sql_over_the_warehouse(grid):
    _, root, _ = grid
    assert experiment_runs(root, "mini") == sorted(RUNS)
    data = comparison_data(root, experiment_runs(root, "mini"))
    assert (data.suite, data.final_iteration) == ("synthetic:6", 1)
    final = {r["run_id"]: r["a"] for r in query(root, "select run_id, avg(reward) a from eval_results "
                                                      "where iteration = 1 group by all").to_pylist()}  # fmt: skip
    per_problem = query(root, "select run_id, problem_id, avg(reward) a from eval_results where iteration = 1 "
                              "group by all").to_pylist()  # fmt: skip
    results = {r.method: r for r in final_results(data, "grpo")}
    assert list(results) == ["grpo", "hicra"]
    for method, result in results.items():
        accs = [final[f"mini-{method}-s{seed}"] for seed in (0, 1)]
        half = T_975_DF1 * statistics.stdev(accs) / math.sqrt(2)
        assert result.accuracy.n == 2
        assert result.accuracy.mean == pytest.approx(statistics.mean(accs))
        assert (result.accuracy.low, result.accuracy.high) == pytest.approx((statistics.mean(accs) - half,
                                                                           statistics.mean(accs) + half))  # fmt: skip
    assert results["grpo"].by_seed is None
    diffs = [final[f"mini-hicra-s{seed}"] - final[f"mini-grpo-s{seed}"] for seed in (0, 1)]
    by_seed = results["hicra"].by_seed
    assert by_seed.n == 2 and by_seed.diff.mean == pytest.approx(statistics.mean(diffs))
    if statistics.stdev(diffs) > 0:  # 1 degree of freedom: t is Cauchy, p = 1 - 2 atan(|t|) / pi
        t = statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(2))
        assert (by_seed.t, by_seed.p) == pytest.approx((t, 1 - 2 * math.atan(abs(t)) / math.pi))
    accuracy = {(r["run_id"], r["problem_id"]): r["a"] for r in per_problem}
    problems = sorted({p for _, p in accuracy})
    problem_diffs = [
        statistics.mean(accuracy[f"mini-hicra-s{s}", p] - accuracy[f"mini-grpo-s{s}", p] for s in (0, 1))
        for p in problems
    ]
    by_problem = results["hicra"].by_problem
    assert by_problem.n == len(problems) == 6
    assert by_problem.diff.mean == pytest.approx(statistics.mean(problem_diffs))
    if statistics.stdev(problem_diffs) > 0:
        assert by_problem.t == pytest.approx(
            statistics.mean(problem_diffs) / (statistics.stdev(problem_diffs) / math.sqrt(len(problems)))
        )
    # the held-out panel: per method and iteration the mean over seeds and the min-max band, from eval_summary
    heldout = query(root, "select run_id, iteration, avg_at_k from eval_summary").to_pylist()
    line = lines(data, "heldout_accuracy")["hicra"]
    for k, iteration in enumerate(line.iterations):
        values = [r["avg_at_k"] for r in heldout if r["iteration"] == iteration and "-hicra-" in r["run_id"]]
        assert (line.mean[k], line.low[k], line.high[k]) == pytest.approx(
            (statistics.mean(values), min(values), max(values))
        )
    assert line.iterations == [-1, 0, 1]  # from the starting policy (eval.first)
    # one base policy, sampled with the same seeds (common random numbers): every run's start is the same answers
    starts = query(root, "select run_id, list(response order by problem_id, sample_index) answers from eval_results "
                         "where iteration = -1 group by 1").to_pylist()  # fmt: skip
    assert len(starts) == 4 and len({tuple(r["answers"]) for r in starts}) == 1
    # strategy shares (the tiny task's planning.strategy): per method and iteration the mean share over seeds
    shares = query(root, "select run_id, iteration, strategy, count(*) / sum(count(*)) over (partition by run_id, "
                         "iteration) s from planning group by 1, 2, 3").to_pylist()  # fmt: skip
    assert data.strategies == sorted({r["strategy"] for r in shares} - {None})
    for strategy in data.strategies:
        line = lines(data, f"strategy_share:{strategy}")["grpo"]
        for k, iteration in enumerate(line.iterations):
            values = [
                next((r["s"] for r in shares if r["run_id"] == f"mini-grpo-s{seed}" and r["iteration"] == iteration
                      and r["strategy"] == strategy), 0.0)
                for seed in (0, 1)
            ]  # fmt: skip
            assert line.mean[k] == pytest.approx(statistics.mean(values))


@SLOW
def test_report_command_writes_panels_and_table(grid, tmp_path, capsys):
    _, root, _ = grid
    out = tmp_path / "report"
    assert hicra_main(["report", "--experiment", "mini", "--warehouse", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hicra" in printed and "p(seed)" in printed
    assert max(len(line) for line in printed.splitlines() if not line.startswith("wrote ")) <= 80
    for panel in PANELS:
        assert (out / f"{panel.name}.png").read_bytes()[:4] == b"\x89PNG"
    index = (out / "index.md").read_text()
    assert "| hicra | 2 |" in index and "![Held-out accuracy](heldout_accuracy.png)" in index


def test_experiment_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"baseline 'ppo' is not one of the methods"):
        load_experiment(write_experiment(tmp_path, baseline="ppo"))
    with pytest.raises(ConfigError, match=r"methods\.hicra.*algorithm\.alpha"):
        load_experiment(write_experiment(tmp_path, methods={"grpo": {}, "hicra": {"algorithm.alpha": 5}}))
    with pytest.raises(ConfigError, match=r"methods.*run\.seed is set by the experiment"):
        load_experiment(write_experiment(tmp_path, methods={"grpo": {"run.seed": 3}}))
    with pytest.raises(ConfigError, match=r"seeds: .*distinct"):
        load_experiment(write_experiment(tmp_path, seeds=[1, 1]))
    with pytest.raises(ConfigError, match=r"evaluate their last iteration"):
        load_experiment(write_experiment(tmp_path, iterations=3, overrides={"eval.every": 2}))
    with pytest.raises(ConfigError, match=r"method name 'HICRA-2'"):
        load_experiment(write_experiment(tmp_path, methods={"grpo": {}, "HICRA-2": {}}))
    assert parse_run_id("my-exp-high_entropy-s12") == ("my-exp", "high_entropy", 12)
    assert parse_run_id("tiny") is None


def test_runs_started_before_data_order_key_resume(tmp_path):
    """A run frozen before `data.order_key` existed (its YAML lacks it, its hash differs) resumes unforced: the
    field's null default draws the prompts by run id as before."""
    config = load_config(None, **{"run.warehouse": str(tmp_path / "wh"), "run.id": "old"})
    raw = yaml.safe_load(config.to_yaml())
    del raw["data"]["order_key"]
    Warehouse(tmp_path / "wh").freeze_config("old", yaml.safe_dump(raw), "0123456789abcdef")
    freeze_run_config(config)  # no RunConfigMismatch
    changed = load_config(None, **{"run.warehouse": str(tmp_path / "wh"), "run.id": "old", "data.order_key": "x"})
    with pytest.raises(RunConfigMismatch, match=r"changed: data\.order_key"):
        freeze_run_config(changed)


def test_warehouse_given_on_the_command_line_holds_every_run(tmp_path):
    """`hicra experiment --warehouse W` (or $HICRA_WAREHOUSE) puts every run in W, as `hicra train` does."""
    experiment = load_experiment(write_experiment(tmp_path), str(tmp_path / "elsewhere"))
    assert {config.run.warehouse for config in experiment.runs.values()} == {str(tmp_path / "elsewhere")}
