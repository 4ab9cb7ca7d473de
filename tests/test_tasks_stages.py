"""Small real runs of the test policy: a two-source mixture with the context growth rule, and DAPO's dynamic
sampling with refill; both read back from the warehouse."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from flows.train import train
from hicra.data import DataError, load_training_mixture, mixture_position, mixture_prompts, refill_prompts
from hicra.tiny import synthetic_problems
from schemas.config import RunConfig, load_config
from tasks.resident import resident, resident_session
from tasks.stages import _check_data_position, verify
from tests.conftest import small_config
from warehouse.catalog import query
from warehouse.store import StageCommit, Warehouse


def run(tmp_path, config: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    train(config_path=str(path))
    return Warehouse(tmp_path / "wh"), load_config(path)


def test_mixture_run_grows_its_context_after_a_clipped_iteration(tmp_path, prefect_server):
    """Iteration 0 at 16 tokens clips more than 20% of its responses, so iteration 1 samples at 48 (recorded in the
    rollout commit and the metrics table); each iteration's prompts are the mixture's and the data position saved with
    the checkpoint is the mixture's."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(p) + "\n" for p in synthetic_problems(12, seed=1)))
    sources = [
        {"name": "syn", "source": "synthetic", "synthetic_size": 60, "weight": 1.0},
        {"name": "file", "source": "jsonl", "path": str(extra), "weight": 1.0},
    ]
    config = small_config(
        tmp_path / "wh",
        data={"sources": sources},
        rollout={"prompts_per_iteration": 4, "max_new_tokens": 16, "grow_max_new_tokens": 48},
        reward={"overlong_buffer": 8},
    )
    store, run_config = run(tmp_path, config)
    mixture = load_training_mixture(run_config.data, 0)
    limits = []
    for iteration in range(2):
        rollouts = store.read_table("rollouts", "t", iteration).to_pylist()
        firsts = [r["prompt_id"] for r in sorted(rollouts, key=lambda r: r["group_index"]) if r["sample_index"] == 0]
        assert firsts == [p.id for p in mixture_prompts(mixture, 4, "t", 0, iteration)]
        assert Counter(p.split("/")[0] for p in firsts) == {"syn": 2, "file": 2}
        limits.append(store.read_commit("t", iteration, "rollout").info["max_new_tokens"])
        assert max(r["response_length"] for r in rollouts) <= limits[-1]
        position = store.read_commit("t", iteration, "update").info["data_position"]
        expected = mixture_position({"syn": 60, "file": 12}, {"syn": 1.0, "file": 1.0}, 4, "t", 0, iteration + 1)
        assert {k: position[k] for k in expected} == expected
    clipped = query(store.root, "select avg((finish_reason = 'length')::int) from rollouts where iteration = 0")
    assert clipped.column(0)[0].as_py() > 0.2  # the premise: the tiny policy rambles past 16 tokens
    assert limits == [16, 48]
    recorded = query(
        store.root, "select iteration, value from metrics where name = 'max_new_tokens' order by iteration"
    ).to_pylist()
    assert recorded == [{"iteration": 0, "value": 16.0}, {"iteration": 1, "value": 48.0}]
    longest = query(store.root, "select max(response_length) from rollouts where iteration = 1").column(0)[0].as_py()
    assert longest > 16
    _check_data_position(store, run_config, 1, {"syn": 60, "file": 12})  # unchanged sources: fine
    with pytest.raises(DataError, match="changed since the run started"):
        _check_data_position(store, run_config, 1, {"syn": 60, "file": 11})


def test_dynamic_sampling_refills_until_enough_mixed_groups(tmp_path, prefect_server):
    """Rewards are correctness only, and the test policy is rarely right: most groups are all-zero, so the rollout
    draws more rounds of prompts (seeded by round, none repeated); the update trains on at most
    prompts_per_iteration mixed groups, and every dropped group stays in the warehouse with in_update false."""
    config = small_config(
        tmp_path / "wh",
        iterations=1,
        rollout={"prompts_per_iteration": 4, "max_new_tokens": 48},
        reward={"overlong_buffer": 0},
        algorithm={"dynamic_sampling": True, "dynamic_sampling_rounds": 3},
    )
    store, run_config = run(tmp_path, config)
    rounds = store.read_commit("t", 0, "rollout").info["rounds"]
    groups = query(
        store.root,
        """select r.group_index, any_value(r.prompt_id) as prompt_id, max(s.reward) > min(s.reward) as mixed,
                  bool_and(a.in_update) as trained, bool_or(a.in_update) as any_trained
           from rollouts r join scores s using (run_id, iteration, rollout_id)
                join advantages a using (run_id, iteration, rollout_id)
           group by all order by group_index""",
    ).to_pylist()
    assert rounds > 1 and len(groups) == 4 * rounds  # the premise: round 1 had fewer than 4 mixed groups
    assert all(g["trained"] == g["any_trained"] for g in groups)  # whole groups in or out
    mixed = [g["group_index"] for g in groups if g["mixed"]]
    assert [g["group_index"] for g in groups if g["trained"]] == mixed[:4]
    assert len(mixed[:4]) == 4 or rounds == 3  # stopped early only once 4 groups were mixed
    if rounds < 3:
        assert len([g for g in mixed if g < 4 * (rounds - 1)]) < 4  # ... and not before
    mixture = load_training_mixture(run_config.data, 0)
    prompt_ids = [g["prompt_id"] for g in groups]
    assert len(set(prompt_ids)) == len(prompt_ids)
    assert prompt_ids[:4] == [p.id for p in mixture_prompts(mixture, 4, "t", 0, 0)]
    for round_ in range(1, rounds):
        drawn = refill_prompts(mixture, 4, "t", 0, 0, round_, set(prompt_ids[: 4 * round_]))
        assert prompt_ids[4 * round_ : 4 * (round_ + 1)] == [p.id for p in drawn]
    dropped = query(store.root, "select value from metrics where name = 'dropped_groups'").column(0)[0].as_py()
    assert dropped == len(groups) - len(mixed[:4])


def _update_commit(iteration: int, committed_at: str) -> StageCommit:
    return StageCommit(run_id="t", iteration=iteration, stage="update", files=[], info={}, committed_at=committed_at)


def test_resident_policy_serves_only_its_run_and_checkpoint(tmp_path):
    """The engine is handed out only for the committed update it holds; other runs, residency off or several
    ranks hold nothing; the session ends with the flow."""
    config = RunConfig.model_validate(small_config(tmp_path / "wh"))
    for off in ({"resident": False}, {"num_processes": 2}, {"zero_stage": 3}):
        with resident_session(config.model_copy(update={"trainer": config.trainer.model_copy(update=off)})):
            assert resident(config) is None, off
    with resident_session(config):
        held = resident(config)
        assert held is not None and resident(config.model_copy(update={"run": config.run.model_copy(
            update={"id": "other"})})) is None  # fmt: skip
        engine = object()
        held.keep_trainer(engine, _update_commit(0, "2026-01-01T00:00:00"))
        assert held.take_trainer(_update_commit(0, "2026-01-01T00:00:01")) is None  # a later commit of the same
        held.keep_trainer(engine, _update_commit(0, "2026-01-01T00:00:00"))
        assert held.take_trainer(_update_commit(0, "2026-01-01T00:00:00")) is engine
        assert held.take_trainer(_update_commit(0, "2026-01-01T00:00:00")) is None  # taken: the update changes it
    assert resident(config) is None


def test_a_failed_stage_drops_the_resident_policy(tmp_path, prefect_server):
    """A stage that raises leaves nothing held, so its retry and the stages after it load committed checkpoints."""
    config = RunConfig.model_validate(small_config(tmp_path / "wh"))
    with resident_session(config):
        held = resident(config)
        held.keep_trainer(object(), _update_commit(0, "2026-01-01T00:00:00"))
        with pytest.raises(FileNotFoundError):
            verify(config, 1, str(tmp_path))  # iteration 1 has no rollouts
        assert held.trainer is None and held.take_trainer(_update_commit(0, "2026-01-01T00:00:00")) is None
