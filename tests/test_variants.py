"""Every advantage estimator and the entropy-regularisation baseline runs end to end and reports the paper's metrics."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.train import train
from hicra.grams import load_grams, normalise_gram
from tests.conftest import small_config
from warehouse.catalog import query

METRICS = [
    "entropy_planning", "entropy_execution", "relative_perplexity_planning", "relative_perplexity_execution",
    "semantic_entropy", "conditional_entropy", "planning_in_top_entropy", "top_entropy_in_planning",
    "clip_fraction", "approx_kl", "grad_norm", "mean_response_length", "truncated_share", "zero_adv_group_share",
    "accuracy", "pass_at_group",
]  # fmt: skip

VARIANTS = {
    "grpo": {"advantage": "grpo"},
    "hicra": {"advantage": "hicra"},
    "high_entropy": {"advantage": "high_entropy"},
    "placebo": {"advantage": "placebo"},
    "entropy_reg": {"advantage": "grpo", "entropy_coef": 0.01},
    "hicra_kl_dynamic": {"advantage": "hicra", "kl_coef": 0.05, "dynamic_sampling": True, "dual_clip": 3.0},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_runs_and_reports_metrics(variant, tmp_path, prefect_server):
    config = small_config(tmp_path / "wh", run_id=variant, iterations=2, algorithm=VARIANTS[variant])
    config["rollout"].update(prompts_per_iteration=4)  # 96 tokens: some responses end, so rewards vary in groups
    config["trainer"].update(mini_batch_size=8, micro_batch_size=4)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    train(config_path=str(path))
    rows = query(tmp_path / "wh", "select * from iteration_summary order by iteration").to_pylist()
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        missing = [m for m in METRICS if row[m] is None]
        assert not missing, f"{variant}: iteration {row['iteration']} lacks {missing}"
    assert rows[0]["relative_perplexity_planning"] == pytest.approx(1.0)
    amplified = query(tmp_path / "wh", "select sum(list_sum(amplified_mask)) n from advantages").to_pylist()[0]["n"]
    assert (amplified > 0) == (VARIANTS[variant]["advantage"] != "grpo")
    if VARIANTS[variant].get("kl_coef"):
        assert (
            query(tmp_path / "wh", "select count(*) n from train_steps where ref_kl is null").to_pylist()[0]["n"] == 0
        )
    if variant == "placebo":  # the placebo set: stored, the planning set's size, its matches are what was amplified
        wh = tmp_path / "wh"
        sets = query(wh, "select version, count(*) n, any_value(params) params from strategic_grams group by 1")
        (placebo,) = sets.to_pylist()
        assert (
            placebo["n"] == len({normalise_gram(g) for g in load_grams()})
            and json.loads(placebo["params"])["kind"] == "placebo"
        )
        same = query(
            wh,
            "select bool_and(a.amplified_mask::INT[] = p.planning_mask::INT[]) same from advantages a "
            "join planning p using (run_id, iteration, rollout_id)",
        ).to_pylist()[0]["same"]
        assert not same  # the placebo's tokens, not the Strategic Grams'
    if variant == "high_entropy":  # HICRA's budget: each response amplifies as many tokens as it has planning tokens
        budgets = query(
            tmp_path / "wh",
            "select list_sum(a.amplified_mask) a, p.num_planning_tokens p from advantages a "
            "join planning p using (run_id, iteration, rollout_id)",
        ).to_pylist()
        assert all(b["a"] == b["p"] for b in budgets)
