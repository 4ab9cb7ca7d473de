"""Tests for `hicra annotate`: gram spans in a JSONL of responses, with and without a tokenizer, any gram set."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from cli.main import main
from hicra.grams import grams_version, load_grams, token_char_spans
from hicra.tiny import build_tiny_policy
from tests.conftest import TEST_MODEL

RESPONSES = [
    {"id": "a", "response": "Let's think. First, we need to find x. But wait, so the answer is 4."},
    {"id": "b", "response": "No grams here: 2 + 2 = 4, butter."},
    {"id": "c", "response": "WAIT, let me check: sofa then so."},
]


@pytest.fixture
def responses(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RESPONSES) + "\n")
    return path


def run(args: list[str], capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["annotate", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def check_spans(rows: list[dict], grams: set[str]) -> None:
    for row, given in zip(rows, RESPONSES, strict=True):
        assert row["id"] == given["id"] and row["num_spans"] == len(row["spans"])
        for span in row["spans"]:
            assert row["response"][span["start"] : span["end"]].lower() == span["gram"] and span["gram"] in grams


def test_paper_grams_without_tokenizer(responses, capsys):
    rows = run([str(responses)], capsys)
    check_spans(rows, set(load_grams()))
    assert {"let's", "but wait", "wait"} <= {s["gram"] for s in rows[0]["spans"]}
    assert rows[1]["num_spans"] == 0  # "butter" holds "but" but not at a word boundary
    assert "token_ids" not in rows[0]


def test_gram_file_with_tokenizer_writes_the_planning_mask(responses, tmp_path, capsys):
    grams = tmp_path / "grams.txt"
    grams.write_text("let me check\nso\n\nwe need to\n")
    out = tmp_path / "out.jsonl"
    run([str(responses), "--grams", str(grams), "--tokenizer", str(build_tiny_policy(**TEST_MODEL)), "--out", str(out)],
        capsys)  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    check_spans(rows, {"let me check", "so", "we need to"})
    assert [s["gram"] for s in rows[2]["spans"]] == ["let me check", "so"]
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_policy(**TEST_MODEL))
    for row in rows:
        assert "decoded" not in row  # a byte-level BPE decodes to the input
        assert len(row["planning_mask"]) == len(row["token_ids"])
        bounds = token_char_spans(row["token_ids"], tokenizer)
        expected = [int(any(s < sp["end"] and sp["start"] < e for sp in row["spans"])) for s, e in bounds]
        assert row["planning_mask"] == expected


def test_json_gram_file_and_bad_input(responses, tmp_path, capsys):
    grams = tmp_path / "grams.json"
    grams.write_text(json.dumps({"grams": ["First, we need"], "count": 1}))
    capsys.readouterr()
    assert main(["annotate", str(responses), "--grams", str(grams)]) == 0
    out, err = capsys.readouterr()
    assert [s["gram"] for s in json.loads(out.splitlines()[0])["spans"]] == ["first, we need"]
    assert f"with {grams_version(['First, we need'])} (1 grams)" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no response field"}\n')
    assert main(["annotate", str(bad)]) == 2
    assert f"{bad}:1: no text field 'response'" in capsys.readouterr().err
