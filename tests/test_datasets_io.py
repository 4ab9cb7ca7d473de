"""Dataset import and export: verl's Parquet layout and TRL-style datasets as training prompts (bad rows named, one
iteration trained from each), and a run's scored rollouts exported to JSONL and a `datasets` folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from transformers import AutoTokenizer

from cli.main import main as hicra_main
from flows.train import train
from hicra.data import DataError, load_training_problems
from hicra.prompts import render_prompt
from schemas.config import ConfigError, DataSection, load_config
from tests.conftest import ROOT, child_env, small_config
from warehouse.catalog import query
from warehouse.export import ExportError, export_rollouts

SYSTEM = "Reason step by step, then put the final answer in \\boxed{}."


def math_rows(n: int) -> list[dict]:
    """The first `n` short problems of the shared MATH training set (short: they fit the test policy's context)."""
    rows = []
    with (ROOT.parent / "shared" / "data" / "train" / "math_train_l3to5.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["problem"]) < 90:
                rows.append(row)
            if len(rows) == n:
                return rows
    raise AssertionError("not enough short problems")


def verl_rows(rows: list[dict]) -> list[dict]:
    """Rows in verl's RL layout, as its examples/data_preprocess scripts write them (plus a system message)."""
    return [
        {
            "data_source": "math",
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["problem"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": row["answer"]},
            "extra_info": {"split": "train", "index": 100 + i, "id": row["id"]},
        }
        for i, row in enumerate(rows)
    ]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(source: str, path: Path | str, **fields) -> list:
    return load_training_problems(DataSection(source=source, path=str(path), **fields), seed=0)


def test_verl_layout(tmp_path):
    rows = math_rows(3)
    problems = load("verl", write_parquet(tmp_path / "train.parquet", verl_rows(rows)))
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        (str(100 + i), row["problem"], row["answer"]) for i, row in enumerate(rows)
    ]
    assert problems[0].messages == (
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": rows[0]["problem"]},
    )

    no_index = [{k: v for k, v in row.items() if k != "extra_info"} for row in verl_rows(rows)]
    assert [p.id for p in load("verl", write_parquet(tmp_path / "no-index.parquet", no_index))] == ["0", "1", "2"]


def test_verl_bad_rows_are_named(tmp_path):
    bad = verl_rows(math_rows(3))
    bad[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: no 'reward_model\.ground_truth'"):
        load("verl", write_parquet(tmp_path / "bad.parquet", bad))
    bad = verl_rows(math_rows(3))
    bad[2]["prompt"] = [{"role": "system", "content": SYSTEM}]
    with pytest.raises(DataError, match=r"row 3: no problem text in 'prompt'"):
        load("verl", write_parquet(tmp_path / "bad.parquet", bad))
    bad = verl_rows(math_rows(2))
    bad[1]["extra_info"]["index"] = 100
    with pytest.raises(DataError, match=r"row 2: duplicate extra_info\.index '100'"):
        load("verl", write_parquet(tmp_path / "bad.parquet", bad))
    plain = write_parquet(tmp_path / "plain.parquet", math_rows(2))
    with pytest.raises(DataError, match=r"plain\.parquet: not verl's RL Parquet layout: no column 'prompt', 'reward"):
        load("verl", plain)
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        load("verl", tmp_path / "broken.parquet")
    with pytest.raises(DataError, match="file not found"):
        load("verl", tmp_path / "none.parquet")


def test_data_path_is_required_and_checked():
    for source in ("jsonl", "verl", "hf"):
        with pytest.raises(ConfigError, match=f"data.path is required when data.source is '{source}'"):
            load_config(None, **{"data.source": source})
    with pytest.raises(ConfigError, match="names a hub dataset: set data.source to 'hf'"):
        load_config(None, **{"data.source": "verl", "data.path": "hf:org/name"})
    with pytest.raises(ConfigError, match="needs a dataset NAME"):
        load_config(None, **{"data.source": "hf", "data.path": "hf::train"})
    assert load_config(None, **{"data.source": "hf", "data.path": "hf:org/name:test"}).data.path == "hf:org/name:test"


def trl_rows(rows: list[dict]) -> list[dict]:
    """TRL-style rows: a conversational `prompt` and the answer in `solution` (as TRL's GRPO examples have it)."""
    return [{"prompt": [{"role": "user", "content": r["problem"]}], "solution": r["answer"]} for r in rows]


def test_trl_datasets_folder_file_and_fields(tmp_path):
    rows = math_rows(4)
    datasets.Dataset.from_list(trl_rows(rows)).save_to_disk(str(tmp_path / "trl"))
    problems = load("hf", tmp_path / "trl")
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        (str(i), r["problem"], r["answer"]) for i, r in enumerate(rows)
    ]
    assert problems[0].messages == ({"role": "user", "content": rows[0]["problem"]},)

    # standard (text) prompts in a JSONL file; `answer` is preferred to a worked `solution`
    lines = [{"prompt": r["problem"], "answer": r["answer"], "solution": "worked text", "id": r["id"]} for r in rows]
    (tmp_path / "trl.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    problems = load("hf", tmp_path / "trl.jsonl")
    assert [(p.id, p.problem, p.answer, p.messages) for p in problems] == [
        (r["id"], r["problem"], r["answer"], None) for r in rows
    ]
    assert [p.answer for p in load("hf", tmp_path / "trl.jsonl", answer_field="solution")] == ["worked text"] * 4

    datasets.DatasetDict({"train": datasets.Dataset.from_list(trl_rows(rows))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd holds several splits: name one of their folders \(.*dd/train\)"):
        load("hf", tmp_path / "dd")
    assert len(load("hf", tmp_path / "dd" / "train")) == 4

    bad = trl_rows(rows)
    bad[2]["solution"] = " "
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad: row 3: no 'solution'"):
        load("hf", tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a Hugging Face dataset folder"):
        load("hf", tmp_path / "empty")


def test_chat_prompts_keep_their_messages(small_run):
    root, _, _ = small_run
    hf_path = query(root, "select hf_path from checkpoints order by iteration limit 1").to_pylist()[0]["hf_path"]
    tokenizer = AutoTokenizer.from_pretrained(root / hf_path)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "1 + 1?"}]
    assert render_prompt("1 + 1?", tokenizer, use_chat_template=True, messages=messages) == (
        f"<system>{SYSTEM}<user>1 + 1?<assistant>"
    )
    assert render_prompt("1 + 1?", tokenizer, use_chat_template=True) == "<user>1 + 1?<assistant>"
    assert render_prompt("1 + 1?", tokenizer, messages=messages) == "Question: 1 + 1?\nSolution:"


def train_one_iteration(tmp_path: Path, run_id: str, data: dict) -> Path:
    """One cheap iteration of the small test policy on `data`; returns the warehouse root."""
    config = small_config(
        tmp_path / "wh",
        run_id=run_id,
        iterations=1,
        data=data,
        rollout={"prompts_per_iteration": 4, "group_size": 2, "max_new_tokens": 24},
        reward={"overlong_buffer": 8},
        trainer={"mini_batch_size": 8, "micro_batch_size": 8},
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    train(config_path=str(tmp_path / "run.yaml"))
    return tmp_path / "wh"


@pytest.mark.slow
def test_trains_one_iteration_from_verl_parquet(tmp_path, prefect_server):
    rows = verl_rows(math_rows(6))
    path = write_parquet(tmp_path / "train.parquet", rows)
    root = train_one_iteration(tmp_path, "verl", {"source": "verl", "path": str(path), "use_chat_template": True})
    rollouts = query(root, "select prompt_id, prompt, reference from rollouts").to_pylist()
    assert len(rollouts) == 8
    assert query(root, "select count(*) n from scores").to_pylist() == [{"n": 8}]
    hf_path = query(root, "select hf_path from checkpoints").to_pylist()[0]["hf_path"]
    tokenizer = AutoTokenizer.from_pretrained(root / hf_path)
    by_index = {str(row["extra_info"]["index"]): row for row in rows}
    for rollout in rollouts:
        row = by_index[rollout["prompt_id"]]  # the id is extra_info.index
        assert rollout["reference"] == row["reward_model"]["ground_truth"]
        assert rollout["prompt"] == tokenizer.apply_chat_template(
            row["prompt"], tokenize=False, add_generation_prompt=True
        )


@pytest.mark.slow
def test_trains_one_iteration_from_a_trl_datasets_folder(tmp_path, prefect_server):
    rows = math_rows(6)
    datasets.Dataset.from_list(trl_rows(rows)).save_to_disk(str(tmp_path / "trl"))
    root = train_one_iteration(tmp_path, "trl", {"source": "hf", "path": str(tmp_path / "trl")})
    rollouts = query(root, "select prompt_id, prompt, reference from rollouts").to_pylist()
    assert len(rollouts) == 8 and query(root, "select count(*) n from scores").to_pylist() == [{"n": 8}]
    for rollout in rollouts:
        row = rows[int(rollout["prompt_id"])]  # no id column: the row's position
        assert (rollout["prompt"], rollout["reference"]) == (f"Question: {row['problem']}\nSolution:", row["answer"])


def expected_rows(root: Path, iteration: int | None = None) -> list[dict]:
    """The scored rollouts as the base views hold them, joined here (not through `scored_rollouts`)."""
    where = "" if iteration is None else f"where r.iteration = {iteration}"
    return query(
        root,
        "select r.rollout_id, r.iteration, r.group_index, r.prompt, r.response, r.response_token_ids, "
        "r.sampler_logprobs, s.reward, s.correct, s.status, p.planning_mask, p.num_planning_tokens "
        f"from rollouts r join scores s using (rollout_id) join planning p using (rollout_id) {where} "
        "order by r.iteration, r.group_index, r.sample_index",
    ).to_pylist()


def test_export_jsonl(small_run, tmp_path, capsys):
    root, _, _ = small_run
    out = tmp_path / "rollouts.jsonl"
    assert hicra_main(["export", "t", "--format", "jsonl", "--out", str(out), "--warehouse", str(root)]) == 0
    assert "exported 64 scored rollouts of run 't' (all iterations)" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = expected_rows(root)
    assert len(lines) == len(expected) == query(root, "select count(*) n from scores").to_pylist()[0]["n"] == 64
    for line, row in zip(lines, expected, strict=True):
        assert {k: line[k] for k in row} == row
        assert line["planning_share"] == pytest.approx(row["num_planning_tokens"] / len(row["planning_mask"]))
        assert line["run_id"] == "t" and line["response_length"] == len(line["response_token_ids"])

    out.write_text("old")  # a JSONL target is replaced; an unknown run or iteration says what exists
    assert hicra_main(["export", "t", "--iteration", "1", "--out", str(out), "--warehouse", str(root)]) == 0
    assert [json.loads(line)["rollout_id"] for line in out.read_text().splitlines()] == [
        row["rollout_id"] for row in expected_rows(root, 1)
    ]
    assert hicra_main(["export", "nope", "--out", str(tmp_path / "x.jsonl"), "--warehouse", str(root)]) == 2
    assert (
        hicra_main(["export", "t", "--iteration", "5", "--out", str(tmp_path / "x.jsonl"), "--warehouse", str(root)])
        == 2
    )
    err = capsys.readouterr().err
    assert "run 'nope' has no scored rollouts" in err and "(runs with some: ['t'])" in err
    assert "no scored rollouts in iteration 5 (it has [0, 1])" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]  # no temporary files left


def test_export_hf_folder_reads_back_without_torch(small_run, tmp_path):
    root, _, _ = small_run
    out = tmp_path / "rollouts-hf"
    script = (
        "import sys; from warehouse.export import export_rollouts; "
        f"print(export_rollouts({str(root)!r}, 't', 'hf', {str(out)!r})); assert 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["64"]
    dataset = datasets.load_from_disk(str(out))
    assert dataset.num_rows == 64
    assert dataset.features["response_token_ids"] == datasets.List(datasets.Value("int32"))
    assert (
        dataset.to_list()
        == query(root, "select * from scored_rollouts order by iteration, group_index, sample_index").to_pylist()
    )
    assert [{k: row[k] for k in expected} for row, expected in zip(dataset, expected_rows(root), strict=True)] == (
        expected_rows(root)
    )
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_rollouts(root, "t", "hf", out)
