"""The tiny task's two solution methods: announced by Strategic-Gram phrases, recognised per response, recorded in
the warehouse's `planning.strategy` column and queryable per iteration."""

from __future__ import annotations

from collections import Counter

from hicra import tiny
from hicra.grams import GramMatcher, load_grams
from warehouse.catalog import query


def test_each_method_is_announced_by_its_own_strategic_gram() -> None:
    matcher = GramMatcher(load_grams())
    words = {"container": "bag", "containers": "bags", "items": "apples"}
    grams = {name: {s.gram for s in matcher.find(phrase.format(**words))} for name, phrase in tiny.STRATEGIES.items()}
    assert "break it down into manageable steps" in grams["add"]
    assert "a more direct approach is" in grams["multiply"]
    assert not grams["add"] & grams["multiply"] - {"let's"}  # the methods' grams differ
    for problem in tiny.synthetic_problems(50, seed=0):
        first = min(matcher.find(problem["solution"]), key=lambda s: s.start)
        assert first.start == 0  # the solution opens with its method's planning phrase


def test_warm_up_data_mixes_the_methods_and_addition_is_the_long_one() -> None:
    problems = tiny.synthetic_problems(2000, seed=0)
    counts = Counter(p["strategy"] for p in problems)
    assert set(counts) == set(tiny.STRATEGIES)
    assert 0.45 <= counts["add"] / len(problems) <= 0.55
    steps = {name: [p["solution"].count(" = ") for p in problems if p["strategy"] == name] for name in counts}
    assert set(steps["multiply"]) == {1}  # one product
    assert min(steps["add"]) == 2 and max(steps["add"]) == 8  # k - 1 running sums (k from 3 to 9)


def test_strategy_is_recognised_from_the_response_text() -> None:
    for problem in tiny.synthetic_problems(300, seed=2) + tiny.synthetic_problems(100, seed=2, split="eval"):
        assert tiny.strategy_of(problem["solution"]) == problem["strategy"]
        assert tiny.strategy_of(problem["solution"].lower()) == problem["strategy"]
    by_method = {p["strategy"]: p["solution"] for p in tiny.synthetic_problems(20, seed=0)}
    add, multiply = by_method["add"], by_method["multiply"]
    assert tiny.strategy_of(multiply + " " + add) == "multiply"  # the first announced method counts
    assert tiny.strategy_of("7 * 8 = 56. So the answer is \\boxed{56}.") is None
    assert tiny.strategy_of("") is None


def test_problems_and_methods_are_deterministic() -> None:
    assert tiny.synthetic_problems(200, seed=3) == tiny.synthetic_problems(200, seed=3)
    assert [p["strategy"] for p in tiny.synthetic_problems(200, seed=3)] != [
        p["strategy"] for p in tiny.synthetic_problems(200, seed=4)
    ]


def test_strategy_column_is_filled_and_one_query_gives_the_shares(small_run) -> None:
    root, _, _ = small_run
    rows = query(
        root,
        "SELECT p.strategy, r.response FROM planning p JOIN rollouts r USING (run_id, iteration, rollout_id)",
    ).to_pylist()
    assert rows and all(row["strategy"] == tiny.strategy_of(row["response"]) for row in rows)
    assert {row["strategy"] for row in rows} & set(tiny.STRATEGIES)
    shares = query(
        root,
        "SELECT iteration, strategy, count(*) / sum(count(*)) OVER (PARTITION BY iteration) AS share "
        "FROM planning GROUP BY 1, 2 ORDER BY 1, 2",
    ).to_pylist()
    for iteration in {row["iteration"] for row in shares}:
        assert abs(sum(r["share"] for r in shares if r["iteration"] == iteration) - 1) < 1e-9
