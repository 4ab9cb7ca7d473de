"""An iteration's summary row read back from the warehouse, and how the command line shows it: one line per
iteration while a run trains, the whole table when it ends (both fit 80 columns)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from schemas.config import BASE_ITERATION, RunConfig
from warehouse.catalog import connect_iteration

SUMMARY_COLUMNS = {
    "reward": ("reward", "{:.3f}"),
    "accuracy": ("acc", "{:.3f}"),
    "eval_accuracy": ("eval", "{:.3f}"),
    "pass_at_group": ("pass@G", "{:.3f}"),
    "mean_response_length": ("length", "{:.1f}"),
    "planning_token_share": ("planning", "{:.3f}"),
    "zero_adv_group_share": ("zero-adv", "{:.3f}"),
    "loss": ("loss", "{:+.4f}"),
}
"""`iteration_summary` columns the console shows: (label, format). `zero-adv`: the share of groups whose rewards
are all equal (no gradient signal); `eval`: held-out accuracy where the iteration's checkpoint was evaluated."""
LINE_COLUMNS = {"accuracy": ("acc", "{:.3f}"), "eval_accuracy": ("eval", "{:.3f}"),
                "pass_at_group": ("pass@G", "{:.2f}"), "mean_response_length": ("len", "{:.0f}"),
                "planning_token_share": ("plan", "{:.3f}"), "loss": ("loss", "{:+.4f}")}  # fmt: skip
"""The per-iteration line's columns: short labels and formats, so that a line fits 80 columns."""


def summarize(config: RunConfig, iteration: int) -> dict:
    """The `iteration_summary` row of one iteration, as a dict, with `eval_accuracy` (the mean avg@k of the
    checkpoint's evaluations on held-out suites; None when it was not evaluated) and the semantic entropy of each
    suite evaluated on its checkpoint (`semantic_entropy_eval_<suite>`, from `eval_summary`; the last protocol's where
    there are several). Reads the iteration's own files (`connect_iteration`), not the whole warehouse: the cost of
    a summary does not grow with the run. The starting policy (BASE_ITERATION) has its evaluation only."""
    with connect_iteration(config.run.warehouse, config.run.id, iteration) as con:
        rows = con.sql("SELECT *, (SELECT avg(avg_at_k) FROM eval_summary) AS eval_accuracy FROM iteration_summary")
        rows = rows.to_arrow_table().to_pylist()
        if not rows and iteration == BASE_ITERATION:
            start = "SELECT run_id, iteration, avg(avg_at_k) AS eval_accuracy FROM eval_summary GROUP BY ALL"
            rows = con.sql(start).to_arrow_table().to_pylist()
        if not rows:
            return {}
        evals = con.sql("SELECT suite, semantic_entropy FROM eval_summary ORDER BY protocol_hash").to_arrow_table()
    return rows[0] | {f"semantic_entropy_eval_{e['suite']}": e["semantic_entropy"] for e in evals.to_pylist()}


def _label(iteration: int | None) -> str:
    """An iteration as the console shows it: `start` for the starting policy (BASE_ITERATION)."""
    return "start" if iteration == BASE_ITERATION else str(iteration)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def duration(seconds: float) -> str:
    """At most 5 characters: `59s`, `17m`, `2.8h`."""
    if seconds < 1000:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 6000 else f"{seconds / 3600:.1f}h"


def iteration_line(row: dict, seconds: float) -> str:
    """One iteration's summary on one line that fits 80 columns (up to iteration 999 and 99999-token responses):
    `#3 acc 0.250 eval 0.310 pass@G 0.50 len 41 plan 0.083 loss -0.0081 12s`; NULL (no update yet, not
    evaluated) is `-`; the reward is in the table at the end."""
    cells = " ".join(f"{label} {_cell(row, key, fmt)}" for key, (label, fmt) in LINE_COLUMNS.items())
    return f"#{_label(row.get('iteration'))} {cells} {duration(seconds)}"


def summary_table(rows: list[dict]) -> Table:
    """Every iteration's summary (SUMMARY_COLUMNS), 79 characters wide with fixed formats: nothing is cut at 80."""
    table = Table(title="per-iteration summary", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("iteration", justify="right", no_wrap=True)
    for label, _ in SUMMARY_COLUMNS.values():
        table.add_column(label, justify="right", no_wrap=True)
    for row in rows:
        cells = (_cell(row, key, fmt) for key, (_, fmt) in SUMMARY_COLUMNS.items())
        table.add_row(_label(row.get("iteration")), *cells)
    return table
