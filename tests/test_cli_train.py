"""`hicra train`'s console (cli/train.py, tasks/summary.py): one compact line per iteration, the whole summary table
at the end only, both within 80 columns; the suggested command is never wrapped. Tested at 80 and 200 columns."""

from __future__ import annotations

import re

import pytest
import yaml
from rich.console import Console

from cli.main import main as hicra
from tasks.common import console
from tasks.summary import duration, iteration_line, summary_table
from tests.conftest import small_config

WORST = {
    "iteration": 999,
    "reward": -0.25,
    "accuracy": 1.0,
    "eval_accuracy": 1.0,
    "pass_at_group": 1.0,
    "mean_response_length": 99999.0,
    "planning_token_share": 0.0833,
    "zero_adv_group_share": 0.5,
    "loss": -0.00813,
}  # every cell at its widest
LOG_RECORD = re.compile(r"\[\d{4}-\d\d-\d\d |\d\d:\d\d:\d\d\.\d+ \| ")
"""Lines of log records (DeepSpeed's accelerator notice, Prefect's copy of a warning): not the console's output."""


def test_the_iteration_line_fits_80_columns_at_its_widest():
    line = iteration_line(WORST, 35999)
    assert line == "#999 acc 1.000 eval 1.000 pass@G 1.00 len 99999 plan 0.083 loss -0.0081 10.0h"
    assert len(line) <= 80
    assert iteration_line({"iteration": 0, "accuracy": 0.5}, 3.2).startswith("#0 acc 0.500 eval - pass@G -")
    assert [duration(s) for s in (59.4, 999, 1000, 5999, 6000)] == ["59s", "999s", "17m", "100m", "1.7h"]


@pytest.mark.parametrize("columns", [80, 200])
def test_the_summary_table_is_never_cut(columns):
    out = Console(width=columns, record=True)
    out.print(summary_table([WORST, {"iteration": 1}]))
    lines = out.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in "".join(lines)
    assert lines[2].split() == [
        "iteration", "reward", "acc", "eval", "pass@G", "length", "planning", "zero-adv", "loss"
    ]  # fmt: skip
    assert lines[4].split() == ["999", "-0.250", "1.000", "1.000", "1.000", "99999.0", "0.083", "0.500", "-0.0081"]


def test_training_prints_a_line_per_iteration_and_the_table_at_the_end(prefect_server, tmp_path, capsys, monkeypatch):
    config = tmp_path / "run.yaml"
    small = small_config(tmp_path / "wh", iterations=2, rollout={"prompts_per_iteration": 4, "max_new_tokens": 32})
    config.write_text(yaml.safe_dump(small))
    for columns in (80, 200):  # the second run resumes: every stage committed, the same lines
        monkeypatch.setattr(console, "width", columns)
        assert hicra(["train", "--config", str(config), "--warehouse", str(tmp_path / "wh")]) == 0
        lines = capsys.readouterr().out.splitlines()
        summaries = [line for line in lines if line.startswith("#")]
        assert [line.split()[0] for line in summaries] == ["#0", "#1"] and all(len(s) <= 80 for s in summaries)
        assert sum("per-iteration summary" in line for line in lines) == 1  # the table: once, at the end
        command = [line for line in lines if "hicra sql" in line]
        assert command == [
            f'  hicra sql --warehouse {tmp_path / "wh"} "select iteration, avg(reward) from scores '
            'group by 1 order by 1"'
        ]  # fmt: skip  (one line however narrow the terminal)
        ours = [line for line in lines if "hicra sql" not in line and not LOG_RECORD.match(line)]
        assert max(len(line) for line in ours) <= columns
