"""`hicra report RUN`: one PNG per plot of `iteration_summary` and an index.md that shows them."""

from __future__ import annotations

import pytest

from cli.main import main
from warehouse.report import PLOTS, inline_markdown, summary_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_report_writes_plots_and_index(small_run, tmp_path, capsys):
    root, _, _ = small_run
    out = tmp_path / "report"
    assert main(["report", "t", "--warehouse", str(root), "--out", str(out)]) == 0
    assert "index.md" in capsys.readouterr().out
    index = (out / "index.md").read_text()
    for plot in PLOTS:
        png = (out / f"{plot.name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000, plot.name
        assert f"]({plot.name}.png)" in index
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.md", *(f"{p.name}.png" for p in PLOTS)])


def test_inline_markdown_embeds_every_plot(small_run):
    rows = summary_rows(small_run[0], "t")
    assert [r["iteration"] for r in rows] == [0, 1]
    assert inline_markdown("t", rows).count("](data:image/png;base64,iVBORw0KGgo") == len(PLOTS)


def test_training_publishes_the_plots_as_an_artifact(small_run):
    from prefect.artifacts import Artifact

    artifact = Artifact.get("t-plots")  # the small run's flow published it to the session's test server
    assert artifact.type == "markdown" and artifact.data.count("](data:image/png;base64,") == len(PLOTS)


def test_report_of_an_unknown_run_is_an_error(small_run):
    with pytest.raises(ValueError, match="no iterations of run 'nope'"):
        summary_rows(small_run[0], "nope")
