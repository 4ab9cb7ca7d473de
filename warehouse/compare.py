"""The multi-run report: the paper's panels per iteration, one line per method with its band across seeds, and the
table of final held-out accuracy per method with 95% confidence intervals and paired tests against the baseline.

Numbers come from `warehouse.experiments.comparison_data`, statistics from `warehouse.stats`; this module renders
(PNG files with matplotlib, imported on use; markdown; a rich table for the terminal).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from warehouse.experiments import STRATEGY_PREFIX, ComparisonData
from warehouse.stats import Interval, PairedTest, band, mean_interval, paired_by_key, paired_t_test, per_problem_pairs


@dataclass(frozen=True)
class Panel:
    """One figure: a per-(run, iteration) column, one line per method (mean over seeds) with a min-max band."""

    name: str
    title: str
    ylabel: str
    column: str


PANELS = (
    Panel("heldout_accuracy", "Held-out accuracy", "avg@k", "heldout_accuracy"),
    Panel("train_accuracy", "Training accuracy (rollouts)", "mean over rollouts", "accuracy"),
    Panel("relative_perplexity_execution", "Relative perplexity: execution tokens", "ratio to iteration 0",
          "relative_perplexity_execution"),
    Panel("relative_perplexity_planning", "Relative perplexity: planning tokens", "ratio to iteration 0",
          "relative_perplexity_planning"),
    Panel("entropy_execution", "Token entropy: execution tokens", "nats", "entropy_execution"),
    Panel("entropy_planning", "Token entropy: planning tokens", "nats", "entropy_planning"),
    Panel("semantic_entropy", "Semantic entropy of Strategic Grams", "bits", "semantic_entropy"),
    Panel("response_length", "Response length", "tokens", "mean_response_length"),
)  # fmt: skip


def panels(data: ComparisonData) -> list[Panel]:
    """The fixed panels, then one per strategy that any response announced (its share of the responses)."""
    shares = [
        Panel(f"strategy_{s}", f"Strategy share: {s}", "share of responses", f"{STRATEGY_PREFIX}{s}")
        for s in data.strategies
    ]
    return [*PANELS, *shares]


@dataclass(frozen=True)
class Line:
    """One method's line in a panel: per iteration the mean over seeds and the band (min, max over seeds)."""

    iterations: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]


@dataclass(frozen=True)
class MethodResult:
    """A row of the final-accuracy table: the method's accuracy over seeds and its tests against the baseline
    (None for the baseline itself): paired by seed, and paired per evaluation problem."""

    method: str
    accuracy: Interval
    by_seed: PairedTest | None
    by_problem: PairedTest | None


def methods(data: ComparisonData, baseline: str | None = None) -> list[str]:
    """The methods in the order of their first run, the baseline first."""
    order = list(dict.fromkeys(key.method for key in data.runs))
    return sorted(order, key=lambda m: m != baseline)


def lines(data: ComparisonData, column: str) -> dict[str, Line]:
    """Per method, the column's mean and min-max band over seeds at each iteration that has a value."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in data.panels:
        value = row.get(column)
        if value is not None and not math.isnan(value):
            values[row["method"]][row["iteration"]].append(value)
    result = {}
    for method, by_iteration in values.items():
        its = sorted(by_iteration)
        bands = [band(by_iteration[i]) for i in its]
        result[method] = Line(its, [b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands])
    return result


def final_results(data: ComparisonData, baseline: str) -> list[MethodResult]:
    """The final-accuracy table: per method the mean over seeds with its 95% t-interval, and (other methods) the
    paired t-tests against `baseline`: over seeds (final accuracy, paired by seed) and over problems."""
    by_method: dict[str, dict[int, str]] = defaultdict(dict)
    for key in data.runs:
        by_method[key.method][key.seed] = key.run_id
    if baseline not in by_method:
        raise ValueError(f"baseline method {baseline!r} is not among the runs' methods {sorted(by_method)}")

    def finals(method: str) -> dict[int, float]:
        return {seed: data.final[run] for seed, run in by_method[method].items() if run in data.final}

    def problems(method: str) -> dict[tuple[int, str], float]:
        runs = by_method[method].items()
        return {(seed, p): acc for seed, run in runs for p, acc in data.problems.get(run, {}).items()}

    rows = []
    for method in methods(data, baseline):
        accuracy = mean_interval(list(finals(method).values()))
        if method == baseline:
            rows.append(MethodResult(method, accuracy, None, None))
            continue
        _, treated, base = paired_by_key(finals(method), finals(baseline))
        _, treated_p, base_p = per_problem_pairs(problems(method), problems(baseline))
        rows.append(MethodResult(method, accuracy, paired_t_test(treated, base), paired_t_test(treated_p, base_p)))
    return rows


def _num(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ci(interval: Interval) -> str:
    return f"[{_num(interval.low)}, {_num(interval.high)}]" if not math.isnan(interval.low) else "-"


def _p(test: PairedTest | None) -> str:
    return "-" if test is None or math.isnan(test.p) else f"{test.p:.3f}"


FINAL_HEADER = ["method", "seeds", "acc", "95% CI", "diff", "p(seed)", "p(prob)"]


def final_cells(result: MethodResult) -> list[str]:
    """A final-accuracy row as text: diff is the mean paired difference over seeds (treatment - baseline)."""
    diff = _num(result.by_seed.diff.mean, sign=True) if result.by_seed else "-"
    return [result.method, str(result.accuracy.n), _num(result.accuracy.mean), _ci(result.accuracy), diff,
            _p(result.by_seed), _p(result.by_problem)]  # fmt: skip


def final_table(data: ComparisonData, baseline: str) -> Table:
    """The final-accuracy table for the terminal (fits 80 columns)."""
    table = Table(title=f"held-out accuracy at iteration {data.final_iteration} ({data.suite}), vs {baseline}")
    for i, name in enumerate(FINAL_HEADER):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for result in final_results(data, baseline):
        table.add_row(*final_cells(result))
    return table


def render(panel: Panel, method_lines: dict[str, Line], order: list[str], dpi: int = 80) -> bytes:
    """One panel as PNG bytes: a line per method (mean over seeds) with a shaded min-max band across seeds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.4), dpi=dpi)
    figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.14)
    axes = figure.add_subplot()
    axes.xaxis.get_major_locator().set_params(integer=True)
    for method in order:
        if method not in method_lines:
            continue
        line = method_lines[method]
        (drawn,) = axes.plot(line.iterations, line.mean, marker="o", markersize=3, label=method)
        axes.fill_between(line.iterations, line.low, line.high, color=drawn.get_color(), alpha=0.18, linewidth=0)
    if not method_lines:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set(title=panel.title, xlabel="iteration", ylabel=panel.ylabel)
    axes.grid(alpha=0.3)
    if method_lines:
        axes.legend(fontsize=7, title="mean; band: seed range", title_fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", backend="agg")
    return buffer.getvalue()


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(data: ComparisonData, baseline: str, title: str) -> str:
    """The report page: the final-accuracy table, then each panel's figure and its per-iteration table
    (mean over seeds, [min, max] across seeds) per method."""
    order = methods(data, baseline)
    seeds = sorted({key.seed for key in data.runs})
    lines_md = [
        f"# {title}", "",
        f"{len(data.runs)} runs, methods {', '.join(order)}, seeds {', '.join(map(str, seeds))}. Held-out suite "
        f"`{data.suite}` (protocol {data.protocol}), final iteration {data.final_iteration}.", "",
        "## Final held-out accuracy", "",
        *_markdown_table(FINAL_HEADER, [final_cells(r) for r in final_results(data, baseline)]), "",
        f"acc: final held-out accuracy, the mean over seeds, with its 95% Student-t interval; diff: the mean paired "
        f"difference to `{baseline}` over seeds; p(seed): two-sided paired t-test over seeds (the final accuracies "
        "of the same seed); p(prob): two-sided paired t-test over the held-out problems (each problem's accuracy "
        "averaged over the seeds).", "",
    ]  # fmt: skip
    for panel in panels(data):
        method_lines = lines(data, panel.column)
        lines_md += [f"## {panel.title}", "", f"![{panel.title}]({panel.name}.png)", ""]
        its = sorted({i for line in method_lines.values() for i in line.iterations})
        if not its:
            lines_md += ["(no data)", ""]
            continue
        present = [m for m in order if m in method_lines]
        rows = []
        for it in its:
            cells = [str(it)]
            for method in present:
                line = method_lines[method]
                if it in line.iterations:
                    k = line.iterations.index(it)
                    cells.append(f"{line.mean[k]:.3g} [{line.low[k]:.3g}, {line.high[k]:.3g}]")
                else:
                    cells.append("-")
            rows.append(cells)
        lines_md += [*_markdown_table(["iteration", *present], rows), ""]
    return "\n".join(lines_md)


def write_comparison(data: ComparisonData, baseline: str, out: str | Path, title: str) -> Path:
    """Write one PNG per panel and index.md into `out`; returns the index's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = methods(data, baseline)
    for panel in panels(data):
        (out / f"{panel.name}.png").write_bytes(render(panel, lines(data, panel.column), order))
    index = out / "index.md"
    index.write_text(markdown(data, baseline, title))
    return index
