"""`hicra judge` against a real vLLM OpenAI server (the vLLM environment's, serving the test policy), not a mock.

The test policy knows nothing of error types: the tests check the plumbing (constrained answers are always a
category, free-text answers that name none are stored as `unparseable`, commits per iteration, resume, idempotence,
the report's columns), not the quality of the verdicts. Its context (256 positions) is stretched to 2,048 with
`--hf-overrides` so that the judge prompt fits; the answers are then meaningless, which is all these tests need.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from cli.main import main as hicra
from hicra.judge import CATEGORIES, UNPARSEABLE, Judge, parse_verdict
from hicra.tiny import build_tiny_policy
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.conftest import TEST_MODEL, child_env, free_port
from tests.test_vllm import vllm_python  # noqa: F401 (the fixture: skips or fails without the vLLM environment)
from warehouse.catalog import query
from warehouse.report import summary_rows
from warehouse.store import Warehouse

RUN = "judged"
# per iteration: (response, correct); iteration 0 has 3 failures, iteration 1 has 2
ITERATIONS = [
    [("3 * 4 = 12, then 12 + 7 = 18. So the answer is \\boxed{18}.", False), ("So the answer is \\boxed{19}.", True),
     ("First, we need to find 3 + 4 = 7. So the answer is \\boxed{7}.", False), ("Let's break this down.", False)],
    [("4 * 5 = 20, 20 - 2 = 17. So the answer is \\boxed{17}.", False), ("So the answer is \\boxed{18}.", True),
     ("Let me verify: 20 - 2 = 18. So the answer is \\boxed{18}.", True), ("We need 4 + 5 = 9. \\boxed{7}", False)],
]  # fmt: skip


def test_parse_verdict_finds_the_first_category_named():
    assert parse_verdict("planning") == "planning"
    assert parse_verdict("**Calculation** error, since 12 + 7 is 19") == "calculation"
    assert parse_verdict("The main error is a knowledge error, not planning.") == "knowledge"
    assert parse_verdict("Other") == "other"
    assert parse_verdict("replanning the steps") == UNPARSEABLE  # a whole word only
    assert parse_verdict("") == UNPARSEABLE


def test_an_unreachable_judge_is_an_error_that_says_so():
    with pytest.raises(RuntimeError, match=r"cannot reach the judge at http://127\.0\.0\.1:\d+/v1/ .*--base-url"):
        Judge(f"http://127.0.0.1:{free_port()}/v1")


def commit_iteration(store: Warehouse, iteration: int, responses: list[tuple[str, bool]] | None = None) -> None:
    """The rollout and verify commits of one iteration (what the judge reads): `responses` (text, correct), by
    default the iteration's of `ITERATIONS`."""
    rollouts, scores = [], []
    for k, (response, correct) in enumerate(responses or ITERATIONS[iteration]):
        rid = f"{RUN}-{iteration}-{k}"
        rollouts.append(
            RolloutRow(
                run_id=RUN, iteration=iteration, rollout_id=rid, prompt_id=f"p{iteration}", group_index=0,
                sample_index=k, prompt="What is 3 * 4 + 7?" if iteration == 0 else "What is 4 * 5 - 2?",
                reference="19" if iteration == 0 else "18", prompt_token_ids=[1, 2], response=response,
                response_token_ids=[3, 4], sampler_logprobs=[-1.0, -1.0], finish_reason="stop", response_length=2,
                seed=k, policy_iteration=iteration,
            )
        )  # fmt: skip
        scores.append(
            ScoreRow(
                run_id=RUN, iteration=iteration, rollout_id=rid, reward=float(correct), correct=correct, status="ok",
                extracted=None, detail=None, verify_seconds=0.0,
            )
        )  # fmt: skip
    store.commit_stage(RUN, iteration, "rollout", {"rollouts": to_table(RolloutRow, rollouts)})
    store.commit_stage(RUN, iteration, "verify", {"scores": to_table(ScoreRow, scores)})


@pytest.fixture(scope="module")
def judge_server(vllm_python, tmp_path_factory):  # noqa: F811
    """vLLM's OpenAI server over the test policy on a free port; yields its base URL; killed (its process group)
    in a finally."""
    policy, port = build_tiny_policy(**TEST_MODEL), free_port()
    command = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(policy), "--served-model-name",
        "tiny-judge", "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.2",
        "--enforce-eager", "--max-model-len", "2048", "--hf-overrides", json.dumps({"max_position_embeddings": 2048}),
    ]  # fmt: skip
    env = child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    log = tmp_path_factory.mktemp("judge-server") / "vllm.log"
    with log.open("w") as out:  # a file, not a pipe: nobody reads the server's log while it runs
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the vLLM server did not become healthy in 300 s")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def judgments(root) -> list[dict]:
    return query(root, "SELECT * FROM judgments ORDER BY iteration, rollout_id").to_pylist()


@pytest.mark.slow
def test_judge_commits_constrained_verdicts_resumes_and_is_idempotent(judge_server, tmp_path, capsys):
    root = tmp_path / "wh"
    store = Warehouse(root)
    commit_iteration(store, 0)
    judge = ["judge", RUN, "--warehouse", str(root), "--base-url", judge_server, "--workers", "2"]
    assert hicra(judge) == 0
    first = judgments(root)
    assert [r["rollout_id"] for r in first] == [f"{RUN}-0-0", f"{RUN}-0-2", f"{RUN}-0-3"]  # the failed ones only
    assert all(r["category"] in CATEGORIES and r["constrained"] and r["model"] == "tiny-judge" for r in first)
    assert all(r["is_planning"] == (r["category"] == "planning") and r["raw"].strip() == r["category"] for r in first)

    commit_iteration(store, 1)  # the run went on: judging again judges only the new iteration
    assert hicra(judge) == 0
    assert "iteration 0: judged before, skipped" in capsys.readouterr().out
    second = judgments(root)
    assert second[:3] == first and [r["rollout_id"] for r in second[3:]] == [f"{RUN}-1-0", f"{RUN}-1-3"]
    commits = [c.stage for c in store.commits(RUN) if c.stage.startswith("judge-")]
    assert len(commits) == 2 and len(set(commits)) == 1  # one commit per iteration, one judge

    assert hicra(judge) == 0  # everything judged: nothing changes
    assert judgments(root) == second

    types = query(root, "SELECT * FROM error_types ORDER BY iteration").to_pylist()
    for row, iteration in zip(types, (0, 1), strict=True):
        mine = [r for r in second if r["iteration"] == iteration]
        assert row["judged"] == len(mine) and row["unparseable"] == 0
        assert row["planning_errors"] == sum(r["is_planning"] for r in mine)
        assert row["other_errors"] == len(mine) - row["planning_errors"]
    report = {r["iteration"]: r for r in summary_rows(root, RUN)}
    assert [(report[i]["planning_errors"], report[i]["other_errors"]) for i in (0, 1)] == [
        (t["planning_errors"], t["other_errors"]) for t in types
    ]


@pytest.mark.slow
def test_unconstrained_answers_are_parsed_or_stored_as_unparseable(judge_server, tmp_path):
    root = tmp_path / "wh"
    commit_iteration(Warehouse(root), 0)
    started = dt.datetime.now(dt.UTC)
    args = ["judge", RUN, "--warehouse", str(root), "--base-url", judge_server, "--constrain", "none"]
    assert hicra(args) == 0
    rows = judgments(root)
    assert len(rows) == 3 and not any(r["constrained"] for r in rows)
    assert all(r["category"] == parse_verdict(r["raw"]) for r in rows)  # the policy's prose names no category
    assert all(r["judged_at"] >= started for r in rows)
    types = query(root, "SELECT * FROM error_types").to_pylist()
    unparseable = sum(r["category"] == UNPARSEABLE for r in rows)
    assert types[0]["unparseable"] == unparseable and types[0]["judged"] == 3


@pytest.mark.slow
def test_a_request_the_server_rejects_fails_the_iteration_uncommitted(judge_server, tmp_path, capsys):
    root = tmp_path / "wh"
    store = Warehouse(root)
    commit_iteration(store, 0, [("3 + 4 = 8. " * 1000, False)])  # far beyond the server's 2,048-token context
    assert hicra(["judge", RUN, "--warehouse", str(root), "--base-url", judge_server]) == 2
    assert "the judge answered HTTP 400" in capsys.readouterr().err
    assert not [c for c in store.commits(RUN) if c.stage.startswith("judge-")]
    assert [a["status"] for a in store.attempts(RUN) if a["stage"].startswith("judge-")] == ["failed"]
