"""A run's report: PNG plots of its `iteration_summary` (one per quantity) and an index.md that shows them.

`hicra report RUN` writes them (cli/report.py); the training flow puts the same plots into a Prefect markdown artifact
after every iteration (`flows.train.report_iteration`), inlined as data URIs. No Prefect, no torch here; matplotlib is
imported on use, so other `hicra` commands do not pay for it.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from warehouse.catalog import query


@dataclass(frozen=True)
class Plot:
    """One figure: `iteration_summary` columns (with their legend labels) against the iteration."""

    name: str
    title: str
    ylabel: str
    series: dict[str, str]


PLOTS = (
    Plot("reward_accuracy", "Reward and accuracy", "mean over rollouts",
         {"reward": "reward", "accuracy": "accuracy", "pass_at_group": "pass@G"}),
    Plot("semantic_entropy", "Semantic entropy of Strategic Grams", "bits", {"semantic_entropy": "semantic entropy"}),
    Plot("token_entropy", "Token entropy: planning vs execution", "nats",
         {"entropy_planning": "planning", "entropy_execution": "execution"}),
    Plot("relative_perplexity", "Relative perplexity (vs the first iteration)", "ratio",
         {"relative_perplexity_planning": "planning", "relative_perplexity_execution": "execution"}),
    Plot("response_length", "Response length", "tokens", {"mean_response_length": "mean response length"}),
    Plot("error_types", "Failed rollouts by error type (LLM judge, `hicra judge`)", "failed rollouts judged",
         {"planning_errors": "planning errors", "other_errors": "other errors"}),
)  # fmt: skip

# `iteration_summary` with the error types of the run's most recently committed judge (NULL where none judged).
SUMMARY_SQL = """
SELECT s.*, e.planning_errors, e.other_errors FROM iteration_summary s
LEFT JOIN (SELECT * FROM error_types QUALIFY judge_id = arg_max(judge_id, judged_at) OVER (PARTITION BY run_id)) e
    USING (run_id, iteration)
ORDER BY iteration
"""


def summary_rows(root: str | Path, run_id: str) -> list[dict]:
    """The `iteration_summary` rows of one run, in iteration order, with its judged error types."""
    table = query(root, SUMMARY_SQL)
    rows = table.filter(pc.equal(table["run_id"], run_id)).to_pylist()
    if not rows:
        raise ValueError(f"no iterations of run {run_id!r} in the warehouse {root} (see `hicra runs`)")
    return rows


def _points(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    """The (iteration, value) pairs where the column has a number (NULL or NaN before a metric existed: skipped)."""
    pairs = [(r["iteration"], r.get(column)) for r in rows]
    kept = [(i, v) for i, v in pairs if v is not None and not math.isnan(v)]
    return [i for i, _ in kept], [v for _, v in kept]


def render(plot: Plot, rows: list[dict], dpi: int = 80) -> bytes:
    """One plot as PNG bytes (Agg backend: no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.2), dpi=dpi)
    # fixed margins: faster than a layout engine (bench/report.py)
    figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)
    axes = figure.add_subplot()
    axes.xaxis.get_major_locator().set_params(integer=True)
    points = {label: _points(rows, column) for column, label in plot.series.items()}
    for label, (x, y) in points.items():
        axes.plot(x, y, marker="o", label=label)
    if not any(x for x, _ in points.values()):
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)
        axes.set(xticks=[], yticks=[])
    axes.set(title=plot.title, xlabel="iteration", ylabel=plot.ylabel)
    axes.grid(alpha=0.3)
    if len(plot.series) > 1:
        axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", backend="agg")
    return buffer.getvalue()


def markdown(run_id: str, rows: list[dict], sources: dict[str, str]) -> str:
    """The report page: one image per plot, `sources` mapping each plot's name to its file name or data URI."""
    lines = [f"# Run {run_id}", "", f"Iterations {rows[0]['iteration']}-{rows[-1]['iteration']} "
             "(from `iteration_summary`).", ""]  # fmt: skip
    for plot in PLOTS:
        lines += [f"## {plot.title}", "", f"![{plot.title}]({sources[plot.name]})", ""]
    return "\n".join(lines)


def inline_markdown(run_id: str, rows: list[dict]) -> str:
    """The report page with every plot inlined as a base64 data URI (for a Prefect artifact: no files to serve)."""
    sources = {p.name: "data:image/png;base64," + base64.b64encode(render(p, rows, dpi=60)).decode() for p in PLOTS}
    return markdown(run_id, rows, sources)


def write_report(root: str | Path, run_id: str, out: str | Path) -> Path:
    """Write one PNG per plot and index.md into `out`; returns the index's path."""
    rows = summary_rows(root, run_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        (out / f"{plot.name}.png").write_bytes(render(plot, rows))
    index = out / "index.md"
    index.write_text(markdown(run_id, rows, {p.name: f"{p.name}.png" for p in PLOTS}))
    return index
