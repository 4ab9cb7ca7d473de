"""The report's statistics against hand-computed values (t quantiles from tables, not from scipy)."""

from __future__ import annotations

import math

import pytest

from warehouse.stats import band, mean_interval, paired_by_key, paired_t_test, per_problem_pairs

T_975 = {1: 12.706204736174698, 2: 4.302652729749464, 3: 3.182446305284263}  # Student t, 97.5% quantiles by df


def test_mean_interval_is_the_student_t_interval():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, standard deviation 1
    half = T_975[2] / math.sqrt(3)
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx((2, 2 - half, 2 + half, 3))
    one = mean_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_paired_t_test_over_differences():
    test = paired_t_test([0.5, 0.7, 0.4, 0.8], [0.4, 0.5, 0.4, 0.5])  # differences 0.1, 0.2, 0.0, 0.3
    sd = math.sqrt(sum((d - 0.15) ** 2 for d in (0.1, 0.2, 0.0, 0.3)) / 3)
    t = 0.15 / (sd / 2)
    assert (test.n, test.diff.mean, test.t) == pytest.approx((4, 0.15, t))
    assert (test.diff.low, test.diff.high) == pytest.approx((0.15 - T_975[3] * sd / 2, 0.15 + T_975[3] * sd / 2))
    two = paired_t_test([0.3, 0.6], [0.1, 0.2])  # 1 degree of freedom: t is Cauchy
    assert two.p == pytest.approx(1 - 2 * math.atan(abs(two.t)) / math.pi)
    assert paired_t_test([0.2, 0.2], [0.2, 0.2]).p == 1.0  # no difference at all
    same = paired_t_test([0.3, 0.4], [0.2, 0.3])  # every difference 0.1 (up to rounding): no variation
    assert same.t == math.inf and same.p == 0.0
    with pytest.raises(ValueError, match="2 treatment values but 1 baseline"):
        paired_t_test([0.1, 0.2], [0.1])


def test_pairs_by_key_and_per_problem():
    assert paired_by_key({2: 0.5, 0: 0.1, 1: 0.3}, {0: 0.2, 1: 0.1}) == ([0, 1], [0.1, 0.3], [0.2, 0.1])
    treatment = {(0, "a"): 1.0, (1, "a"): 0.0, (0, "b"): 1.0, (1, "b"): 1.0, (2, "c"): 1.0}
    baseline = {(0, "a"): 0.0, (1, "a"): 0.0, (0, "b"): 0.5, (1, "b"): 0.0}
    assert per_problem_pairs(treatment, baseline) == (["a", "b"], [0.5, 1.0], [0.0, 0.25])
    assert band([0.2, None, 0.6, math.nan, 0.4]) == pytest.approx((0.4, 0.2, 0.6))
    assert all(math.isnan(v) for v in band([None]))
