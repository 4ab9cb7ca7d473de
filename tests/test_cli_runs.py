"""`hicra runs` and `hicra status RUN` (cli/runs.py): boxes fitted to 80 columns, commit times to the minute."""

from __future__ import annotations

from cli.main import main as hicra
from tests.test_cli_sql import root  # noqa: F401  (the fixture: one committed iteration, rollout and verify)


def test_status_shows_each_stage_within_80_columns(root, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "80")
    assert hicra(["status", "r", "--warehouse", root]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0].startswith("run r: when each stage committed") and max(len(line) for line in lines) <= 80
    assert [c.strip() for c in lines[2].split("│")[1:-1]] == ["iteration", "rollout", "verify", "annotate", "update"]
    cells = [cell.strip() for cell in lines[5].split("│")[1:-1]]
    assert cells[0] == "0" and len(cells[1]) == len("12-04 01:20")  # MM-DD HH:MM


def test_runs_lists_the_run(root, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "200")
    assert hicra(["runs", "--warehouse", root]) == 0
    out = capsys.readouterr().out
    assert "last_commit" in out and "│ r " in out and "verify" in out
