"""Statistics of an experiment's results (`hicra report --experiment`): pure functions of plain numbers.

Confidence intervals are Student-t intervals of a mean; the paired tests are paired t-tests (two-sided), either over
seeds (one final accuracy per run, paired by seed) or over evaluation problems (each problem's accuracy difference,
averaged over the seeds both methods have). No warehouse access here: the callers query and pass numbers in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """The mean of n values with a two-sided confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of treatment - baseline over n pairs: the mean difference, its interval, t and the p-value."""

    n: int
    diff: Interval
    t: float
    p: float


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of `values` with its Student-t confidence interval at `level` (NaN bounds for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, int(x.size))
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


def paired_t_test(treatment: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> PairedTest:
    """Two-sided paired t-test of treatment[i] - baseline[i]. With every difference equal (to 1e-12), t is +-inf
    (p = 0) or, all zero, NaN (p = 1): no variation to test against."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired_t_test: {len(treatment)} treatment values but {len(baseline)} baseline values")
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    diff = mean_interval(diffs, level)
    if diffs.size < 2:
        return PairedTest(int(diffs.size), diff, math.nan, math.nan)
    if float(np.ptp(diffs)) <= 1e-12:  # equal up to float rounding (accuracies are fractions of the problems)
        zero = abs(diff.mean) <= 1e-12
        return PairedTest(int(diffs.size), diff, math.nan if zero else math.copysign(math.inf, diff.mean), float(zero))
    result = stats.ttest_1samp(diffs, 0.0)
    return PairedTest(int(diffs.size), diff, float(result.statistic), float(result.pvalue))


def paired_by_key(
    treatment: Mapping[Hashable, float], baseline: Mapping[Hashable, float]
) -> tuple[list[Hashable], list[float], list[float]]:
    """The keys both mappings have (sorted) and their values in that order: the pairs of a paired test."""
    keys = sorted(treatment.keys() & baseline.keys())
    return keys, [treatment[k] for k in keys], [baseline[k] for k in keys]


def per_problem_pairs(
    treatment: Mapping[tuple[int, str], float], baseline: Mapping[tuple[int, str], float]
) -> tuple[list[str], list[float], list[float]]:
    """Per evaluation problem, each method's accuracy averaged over the seeds where both have the problem.

    `treatment` and `baseline` map (seed, problem id) to the accuracy (mean reward over samples) of that seed's final
    checkpoint on that problem. Returns the problem ids (sorted) and the two accuracy lists: the pairs of the
    per-problem test, whose units are problems (seeds are averaged, not counted as extra pairs).
    """
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for seed, problem in treatment.keys() & baseline.keys():
        entry = sums[problem]
        entry[0] += treatment[seed, problem]
        entry[1] += baseline[seed, problem]
        entry[2] += 1
    problems = sorted(sums)
    return problems, [sums[p][0] / sums[p][2] for p in problems], [sums[p][1] / sums[p][2] for p in problems]


def band(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the values across seeds at one iteration: a line and its band (NaN values skipped)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    return float(x.mean()), float(x.min()), float(x.max())
