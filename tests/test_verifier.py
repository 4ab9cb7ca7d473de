"""Tests for hicra.verifier: answer extraction, every status, grading cases, the hard deadline, hostile inputs.

Two pools are shared by the module (starting one costs a few seconds): ``pool`` with the production deadline and
``fast_pool`` with a 1 s deadline for the tests that provoke timeouts. Run from the repository root.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import hicra.verifier as verifier_module
from hicra.verifier import EXTRACTORS, FULL_CHAIN, TRAINING_EXTRACTORS, Verifier, extract_answer, verify_one

DATA = Path(__file__).parent / "data" / "grading_cases.jsonl"
BENCH_CASES = Path(__file__).parents[1] / "bench" / "grading_cases.jsonl"
MB = 1 << 20
STATUSES = {"ok", "no_answer", "parse_error", "timeout", "error"}
FAST_DEADLINE_S = 1.0
# Share of the regression cases where the verifier agrees with the source grader: 188-189/195 (96.4-96.9%) measured
# (the misses: decimal commas and "1 000", p(x) vs P(x), a math-verify bug on \mathrm{e}, a sum that hits the
# deadline). One whole percent below it leaves slack for the timing-dependent cases on a loaded machine.
MIN_REGRESSION_ACCURACY = 0.95


@pytest.fixture(scope="module")
def pool():
    with Verifier(workers=2, timeout_s=5.0, extractors=("boxed", "answer_is")) as verifier:
        print(f"pool of 2 workers started in {verifier.start_seconds:.2f} s")
        yield verifier


@pytest.fixture(scope="module")
def full_pool():
    with Verifier(workers=2, timeout_s=FAST_DEADLINE_S, extractors=FULL_CHAIN) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def fast_pool():
    with Verifier(workers=2, timeout_s=FAST_DEADLINE_S, extractors=("boxed", "answer_is")) as verifier:
        yield verifier


def stuck_or_dying(response, reference, extractors, **options):
    """Stand-in worker function (module level, so workers can import it).

    A response starting with "STUCK" ignores SIGALRM and hangs; "DIE" ends the worker process.
    """
    if response.startswith("STUCK"):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(60)
    if response == "DIE":
        os._exit(3)
    return verify_one(response, reference, extractors, **options)


# --- extraction (in this process) ---


@pytest.mark.parametrize(
    ("text", "extractors", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", ("boxed",), r"\frac{1}{2}"),
        (r"\boxed{1} first, then \boxed{\{1, 2\}}", ("boxed",), r"\{1, 2\}"),  # last box; escaped braces
        (r"\boxed{\left\{ x \right.}", ("boxed",), r"\left\{ x \right."),  # an escaped brace is not structure
        (r"\boxed{\begin{pmatrix} 1 \\{2} \end{pmatrix}}", ("boxed",), r"\begin{pmatrix} 1 \\{2} \end{pmatrix}"),
        (r"\fbox{7}", ("boxed",), "7"),
        (r"\boxed {3}", ("boxed",), "3"),
        (r"$\boxed 5$", ("boxed",), "5"),
        (r"\boxed{1} and a truncated \boxed{\frac{1}{2", ("boxed",), None),  # no fallback to an earlier box
        (r"\boxedness 3", ("boxed",), None),
        (r"\boxed{  }", ("boxed",), None),
        ("The final answer is $\\frac{1}{2}$. I hope it is correct.", ("boxed", "answer_is"), r"\frac{1}{2}"),
        ("Answer: **42**\nmore text", ("boxed", "answer_is"), "42"),
        ("the answer is 3.5", ("boxed", "answer_is"), "3.5"),
        (r"the answer is 3. Check: \boxed{4}", ("boxed", "answer_is"), "4"),  # the order of the extractors decides
        (r"the answer is 3. Check: \boxed{4}", ("answer_is", "boxed"), "3"),
        ("the answer is 3", ("boxed",), None),
        ("", ("boxed", "answer_is"), None),
    ],
)
def test_extract_answer(text, extractors, expected):
    assert extract_answer(text, extractors) == expected


def test_registry_is_the_full_chain_in_order():
    assert tuple(EXTRACTORS) == FULL_CHAIN and FULL_CHAIN[0] == "boxed" and FULL_CHAIN[-1] == "last_expression"
    assert TRAINING_EXTRACTORS == ("boxed",)


# One or more cases per kind of statement a grader meets (docs/grading.md), graded in this process with the full
# chain: (response, reference, reward, extracted answer).
FULL_CHAIN_CASES = {
    "inline-dollar-end": ("Collecting terms, the total comes to $\\frac{5}{6}$.", "5/6", 1.0, "\\frac{5}{6}"),
    "paren-math-end": ("The expected value equals \\(3.5\\).", "7/2", 1.0, "3.5"),
    "display-bracket": ("So the length is\n\\[ L = 2\\sqrt{6} \\]", "\\sqrt{24}", 1.0, "L = 2\\sqrt{6}"),
    "display-dollars": ("Finally:\n$$\n-\\frac{1}{9}\n$$", "-1/9", 1.0, "-\\frac{1}{9}"),
    "so-we-get": ("Substituting back, so we get $b = 11$ in the end.", "11", 1.0, "b = 11"),
    "therefore-words": ("Therefore, the garden needs 36 plants.", "36", 1.0, "36"),
    "final-answer": ("Final answer: $2^{5}$", "32", 1.0, "2^{5}"),
    "answer-dash": ("Answer - 77", "77", 1.0, "77"),
    "bold": ("Step 3 done.\n\nThe minimum is **-8**.", "-8", 1.0, "-8"),
    "bold-label": ("**Final Answer:** 19/4", "4.75", 1.0, "19/4"),
    "equation-vs-value": ("We find $k = 7$.", "7", 1.0, "k = 7"),
    "equation-vs-equation": ("The line is $y = 3x - 2$.", "y = 3x - 2", 1.0, "y = 3x - 2"),
    "inequality-vs-interval": ("It holds for $t \\le 3$.", "(-\\infty, 3]", 1.0, "t \\le 3"),
    "reversed-inequality": ("It holds for $3 \\ge t$.", "t \\le 3", 1.0, "3 \\ge t"),
    "interval-vs-inequality": ("The set is $(-2, 5]$.", "-2 < x \\le 5", 1.0, "(-2, 5]"),
    "wrong-inequality": ("It holds for $t < 3$.", "(-\\infty, 3]", 0.0, "t < 3"),
    "pmatrix-vs-bmatrix": (
        "$\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}$",
        "\\begin{bmatrix}2&0\\\\0&2\\end{bmatrix}",
        1.0,
        None,
    ),
    "vector-vs-tuple": ("The vector is $\\begin{pmatrix} 4 \\\\ -1 \\end{pmatrix}$.", "(4, -1)", 1.0, None),
    "tuple-vs-vector": ("The point is $(5, 0, 1)$.", "\\begin{pmatrix}5\\\\0\\\\1\\end{pmatrix}", 1.0, "(5, 0, 1)"),
    "several-answers": ("The roots are $-2$ and $6$.", "\\{6, -2\\}", 1.0, "-2, 6"),
    "serial-comma": ("The values are $1$, $4$, and $9$.", "\\{1, 4, 9\\}", 1.0, "1, 4, 9"),
    "plain-list": ("Hence the solutions are 3, 8.", "\\{3, 8\\}", 1.0, "3, 8"),
    "labelled-parts": ("(a) 14 (b) $\\frac{1}{7}$", "14, \\frac{1}{7}", 1.0, "14, \\frac{1}{7}"),
    "thousands": ("The stadium seats 45,210 people.", "45210", 1.0, "45210"),
    "currency": ("It costs \\$3.75 per item.", "3.75", 1.0, "3.75"),
    "percent": ("The rate rose by 12%.", "12\\%", 1.0, "12\\%"),
    "units": ("Each side is 9 cm long.", "9", 1.0, "9"),
    "numeral": ("So the club has fourteen members.", "14", 1.0, "14"),
    "compound-numeral": ("Thus there are forty-two tiles.", "42", 1.0, "42"),
    "last-number": ("after the trades she keeps 27", "27", 1.0, "27"),
    "last-number-wrong": ("after the trades she keeps 28", "27", 0.0, "28"),
    "box-beats-everything": ("Therefore it is 5. **6** $7$ \\boxed{8}", "8", 1.0, "8"),
}


@pytest.mark.parametrize("case", FULL_CHAIN_CASES.values(), ids=FULL_CHAIN_CASES.keys())
def test_full_chain_grades_every_kind_of_statement(case):
    response, reference, reward, extracted = case
    result = verify_one(response, reference, FULL_CHAIN, timeout_s=5.0)
    assert (result.status, result.reward) == ("ok", reward), result
    if extracted is not None:
        assert result.extracted == extracted


def test_unreadable_answer_hands_over_and_wrong_answer_does_not():
    result = verify_one("\\boxed{\\frac{}{}}\n\nSo the total is 12.", "12", FULL_CHAIN, timeout_s=5.0)
    assert (result.status, result.reward, result.extracted) == ("ok", 1.0, "12")
    wrong = verify_one("\\boxed{11}\n\nSo the total is 12.", "12", FULL_CHAIN, timeout_s=5.0)
    assert (wrong.status, wrong.reward, wrong.extracted) == ("ok", 0.0, "11")
    assert verify_one("So the total is 12.", "12").status == "no_answer"  # the training default: boxed only
    assert verify_one("nothing to see", "12", FULL_CHAIN).status == "no_answer"


def test_extract_answer_rejects_unknown_extractor():
    with pytest.raises(ValueError, match="unknown answer extractor 'last_number'; known: boxed, "):
        extract_answer("x", ("boxed", "last_number"))
    with pytest.raises(ValueError):
        Verifier(extractors=())


MEGABYTE_INPUTS = {
    "prose": "lorem ipsum " * (MB // 12),
    "box-opens": "\\boxed{" * (MB // 7),
    "open-braces": "\\boxed" + "{" * MB,
    "pairs": "\\boxed{" + "{}" * (MB // 2),
    "balanced": "\\boxed" + "{" * (MB // 2) + "}" * (MB // 2),
    "answer-is": "answer is " * (MB // 10),
    "spaces": "answer" + " " * MB,
    "backslashes": "\\" * MB,
    "box-spaces": "\\boxed" + " " * MB,
    "dollars": "$" * MB,
    "nul": "\x00" * MB,
    "display-opens": "$$ a " * (MB // 5),
    "inline-opens": "$a" * (MB // 2),
    "bracket-opens": "\\[" * (MB // 2),
    "stars": "**a" * (MB // 3),
    "labels": "(a) 1 (b) 2 " * (MB // 12),
    "phrases": "therefore " * (MB // 10),
    "expression": "1 + " * (MB // 4) + "x",
    "numerals": "twenty-one " * (MB // 11),
    "inequalities": "x < " * (MB // 4),
}


@pytest.mark.parametrize("text", MEGABYTE_INPUTS.values(), ids=MEGABYTE_INPUTS.keys())
def test_extract_answer_is_linear_on_megabyte_inputs(text):
    for name in FULL_CHAIN:  # each extractor on its own: the chain stops at the first that finds an answer
        start = time.perf_counter()
        extract_answer(text, (name,))
        assert time.perf_counter() - start < 3.0, name  # under 1 s per megabyte here; quadratic would take hours


# --- verify_one (in this process, on the main thread) ---


def test_verify_one_statuses_in_process(monkeypatch):
    assert verify_one(r"\boxed{\dfrac{1}{2}}", "0.5").status == "ok"
    result = verify_one("no box here", "1")
    assert (result.status, result.extracted, result.reward) == ("no_answer", None, 0.0)
    assert verify_one(None, "1").detail == "response is NoneType"
    assert verify_one(r"\boxed{42}", 42).reward == 1.0  # a numeric reference from a dataset
    long = verify_one("\\boxed{" + "1+" * 600 + "1}", "1", max_answer_chars=1000)
    assert long.status == "parse_error" and len(long.extracted) == 1000 and "1201 chars" in long.detail

    def broken(gold, pred):
        raise RuntimeError("boom")

    monkeypatch.setattr(verifier_module, "_compare", broken)
    error = verify_one(r"\boxed{3}", "3")
    assert (error.status, error.extracted, error.detail) == ("error", "3", "RuntimeError: boom")


def test_soft_deadline_in_process_restores_the_alarm():
    previous = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    result = verify_one(r"\boxed{9^{9^{9}}}", "1", timeout_s=0.5)
    assert result.status == "timeout" and result.extracted == "9^{9^{9}}"
    assert time.perf_counter() - start < 1.5
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# --- grading through the pool ---

CASES = [
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", 1.0),
    (r"\boxed{\tfrac{3}{4}}", "3/4", 1.0),
    (r"\boxed{\frac{2}{3}}", "0.5", 0.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", 0.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
    (r"\boxed{[0, 1)}", "[0,1)", 1.0),
    (r"\boxed{(0, 1]}", "[0,1)", 0.0),
    (r"\boxed{(-\infty, 2) \cup (3, \infty)}", r"(-\infty,2)\cup(3,\infty)", 1.0),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", 1.0),
    (r"\boxed{\{1, 2\}}", r"\{1,2,3\}", 0.0),
    (r"\boxed{50\%}", r"50\%", 1.0),
    (r"\boxed{50}", r"50\%", 1.0),  # a percentage gold accepts the bare number and the fraction
    (r"\boxed{0.5}", r"50\%", 1.0),
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{50}", "0.5", 0.0),  # ... a plain gold does not: gold first is asymmetric on purpose
    (r"\boxed{x = 3}", "3", 1.0),
    (r"\boxed{90^\circ}", "90", 1.0),
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{\text{(C)}}", r"\text{C}", 1.0),
    (r"\boxed{41}", "42", 0.0),
    (r"\boxed{-7}", "7", 0.0),
    (r"The final answer is $\frac{7}{2}$. I hope it is correct.", "3.5", 1.0),  # answer_is fallback
    (r"\boxed{2}", ["1", "2"], 1.0),  # alternative references
    (r"\boxed{3}", ["1", "2"], 0.0),
]


@pytest.fixture(scope="module")
def graded(pool):
    return pool.score([case[0] for case in CASES], [case[1] for case in CASES])


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[f"{c[0]} vs {c[1]}" for c in CASES])
def test_grading(graded, index, case):
    result = graded[index]
    assert (result.status, result.reward) == ("ok", case[2]), result


def test_one_result_per_input_in_order_and_every_status(pool, caplog):
    responses = [r"\boxed{1}", "no answer", r"\boxed{\frac{}{}}", r"\boxed{2}", r"\boxed{2}", r"\boxed{3}"]
    references = ["1", "1", "1", r"\frac{", r"\frac{", ["3", r"\frac{"]]
    with caplog.at_level(logging.WARNING, logger="hicra.verifier"):
        results = pool.score(responses, references)
    assert [r.status for r in results] == ["ok", "no_answer", "parse_error", "parse_error", "parse_error", "ok"]
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert results[2].detail.startswith("answer did not parse")
    assert results[3].detail.startswith(verifier_module.BAD_REFERENCE)
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("data problem" in message and "\\\\frac{" in message for message in warnings) == 2  # once per ref
    assert pool.score([], []) == []
    with pytest.raises(ValueError):
        pool.score(["a"], [])


def test_error_status_when_no_pair_can_be_compared(pool):
    (result,) = pool.score([r"\boxed{1:00}"], ["$12:00$"])
    assert (result.status, result.reward) == ("error", 0.0) and "ValueError" in result.detail


def test_batch_of_64_is_fast_once_warm(pool):
    answers = [rf"\boxed{{{n}}}" for n in range(32)] + [rf"\boxed{{\frac{{{n}}}{{7}}}}" for n in range(32)]
    references = [str(n) for n in range(32)] + [f"{n}/7" for n in range(32)]
    pool.score(answers, references)
    start = time.perf_counter()
    results = pool.score(answers, references)
    seconds = time.perf_counter() - start
    print(f"64 items scored in {seconds:.2f} s")
    assert [r.reward for r in results] == [1.0] * 64
    assert seconds < 5.0


def test_regression_cases_from_public_graders(pool):
    cases = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(cases) >= 150
    responses = [case["response"] if "response" in case else f"\\boxed{{{case['pred']}}}" for case in cases]
    results = pool.score(responses, [case["reference"] for case in cases])
    agree = [(result.reward == 1.0) == case["expected"] for result, case in zip(results, cases, strict=True)]
    accuracy = sum(agree) / len(cases)
    print(f"regression: {sum(agree)}/{len(cases)} = {accuracy:.3f}; {Counter(r.status for r in results)}")
    assert accuracy >= MIN_REGRESSION_ACCURACY


# --- deadlines ---


def test_soft_deadline_in_the_worker(fast_pool):
    start = time.perf_counter()
    slow, fine = fast_pool.score([r"\boxed{9^{9^{9}}}", r"\boxed{4}"], ["1", "4"])
    assert time.perf_counter() - start < 2 * FAST_DEADLINE_S
    assert slow.status == "timeout" and "stopped in the worker" in slow.detail and slow.extracted == "9^{9^{9}}"
    assert (fine.status, fine.reward) == ("ok", 1.0)


def test_stuck_worker_is_killed_and_replaced(fast_pool, monkeypatch):
    monkeypatch.setattr(verifier_module, "verify_one", stuck_or_dying)
    fast_pool.score([r"\boxed{1}"] * 4, ["1"] * 4)  # workers import this module first: keep that out of the timing
    start = time.perf_counter()
    responses = [r"STUCK \boxed{0}"] + [rf"\boxed{{{n}}}" for n in range(7)]
    results = fast_pool.score(responses, ["0"] + [str(n) for n in range(7)])
    seconds = time.perf_counter() - start
    print(f"stuck item killed, batch done in {seconds:.2f} s (deadline {FAST_DEADLINE_S} s)")
    assert seconds < 2 * FAST_DEADLINE_S
    assert (results[0].status, results[0].reward, results[0].extracted) == ("timeout", 0.0, "0")
    assert "worker killed" in results[0].detail
    assert [(r.status, r.reward) for r in results[1:]] == [("ok", 1.0)] * 7
    died, fine = fast_pool.score(["DIE", r"\boxed{1}"], ["1", "1"])
    assert (died.status, died.reward) == ("error", 0.0) and "ProcessExpired" in died.detail
    assert (fine.status, fine.reward) == ("ok", 1.0)
    monkeypatch.undo()
    again = fast_pool.score([rf"\boxed{{{n}}}" for n in range(4)], [str(n) for n in range(4)])
    assert [r.reward for r in again] == [1.0] * 4


# --- hostile inputs ---


def _fuzz(rng: random.Random) -> str:
    tokens = [r"\frac", "{", "}", "^", "_", r"\sqrt", r"\left(", r"\right)", "\\\\", "$", "x", "9", "0", r"\boxed{"]
    tokens += [r"\infty", r"\cup", r"\{", r"\}", "[", ")", ",", "=", r"\pm", "!", r"\text{", "&", r"\begin{pmatrix}"]
    return "\\boxed{" + "".join(rng.choice(tokens) for _ in range(rng.randint(5, 80))) + "}"


def hostile_responses() -> list[str]:
    """1,000 pathological responses: megabytes, deep nesting, power towers, broken LaTeX, NUL bytes, fuzz."""
    rng = random.Random(2509)
    megabytes = [
        "lorem ipsum " * (MB // 12),  # no answer at all
        "\\boxed{" + "1+" * (MB // 2) + "}",  # a megabyte answer
        "\\boxed{" * (MB // 7),  # a megabyte of unclosed boxes
        "\\boxed" + "{" * MB,  # one megabyte-deep unclosed brace
    ]
    towers = ["9^9^9^9", "9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{100})!", "9^{9^{9}}"]
    broken = [r"\frac{1}{2}\right)", r"\left(\sqrt{2}", r"\begin{pmatrix}1&2", "x^", r"\frac{}{}", r"\sqrt["]
    broken += ["}{", r"\end{array}", "$$$", r"\left\{1,2"]
    nul = ["\\boxed{1\x002}", "\x00" * 10_000 + "\\boxed{\x00}", "the answer is \x00\x00", "\\boxed{\x00" + "}" * 50]
    odd = ["\\boxed{\u202e١٢٣}", "\\boxed{\ud800}", "\\boxed{\u200b}", "\\boxed{😀}", "\\boxed{\x1b[31m1}"]
    responses = [megabytes[i % 4] for i in range(40)]
    responses += ["\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"] * 100
    responses += ["\\boxed{" + "{" * 10_000 + "1"] * 100
    responses += [f"\\boxed{{{towers[i % len(towers)]}}}" for i in range(40)]
    responses += ["\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}"] * 20
    responses += [f"\\boxed{{{broken[i % len(broken)]}}}" for i in range(150)]
    responses += [nul[i % len(nul)] for i in range(150)]
    responses += [_fuzz(rng) for _ in range(300)]
    responses += [odd[i % len(odd)] for i in range(100)]
    return responses


def test_hostile_inputs_bounded_time_no_crash(fast_pool):
    responses = hostile_responses()
    assert len(responses) == 1000
    start = time.perf_counter()
    results = fast_pool.score(responses, ["42"] * len(responses))
    seconds = time.perf_counter() - start
    statuses = Counter(r.status for r in results)
    killed = sum("worker killed" in (r.detail or "") for r in results)
    print(f"hostile set: {len(results)} results in {seconds:.1f} s: {dict(statuses)}, {killed} workers killed")
    assert len(results) == len(responses)
    assert set(statuses) <= STATUSES
    assert all(r.reward in (0.0, 1.0) for r in results)
    assert [r.status for r in results[:4]] == ["no_answer", "parse_error", "no_answer", "no_answer"]
    assert results[40].status == "parse_error" and results[140].status == "no_answer"  # deep braces
    assert seconds < 120
    (after,) = fast_pool.score([r"\boxed{42}"], ["42"])
    assert (after.status, after.reward) == ("ok", 1.0)


def test_hostile_inputs_with_the_full_chain(full_pool):
    responses = hostile_responses()
    start = time.perf_counter()
    results = full_pool.score(responses, ["42"] * len(responses))
    seconds = time.perf_counter() - start
    statuses = Counter(r.status for r in results)
    print(f"hostile set, full chain: {len(results)} results in {seconds:.1f} s: {dict(statuses)}")
    assert len(results) == len(responses) and set(statuses) <= STATUSES
    assert all(r.reward in (0.0, 1.0) for r in results)
    assert results[0].status == "no_answer" and results[2].status == "no_answer"
    assert seconds < 120
    (after,) = full_pool.score(["So we get $42$."], ["42"])
    assert (after.status, after.reward) == ("ok", 1.0)


def test_full_chain_keeps_every_right_verdict_and_meets_the_goals():
    """Regression: on the labelled bench set, every case the boxed-only grader gets right the full chain gets right
    too; and the full chain's agreement meets the issue's goals (measured: 1.000 on both sets, docs/grading.md)."""
    cases = [json.loads(line) for line in BENCH_CASES.read_text().splitlines()]
    responses, references = [c["response"] for c in cases], [c["reference"] for c in cases]
    right = {}
    for extractors in (TRAINING_EXTRACTORS, FULL_CHAIN):
        with Verifier(workers=2, timeout_s=5.0, extractors=extractors) as verifier:
            results = verifier.score(responses, references)
        right[extractors] = [(r.reward == 1.0) == c["expected"] for r, c in zip(results, cases, strict=True)]
    boxed_right, full_right = right[TRAINING_EXTRACTORS], right[FULL_CHAIN]
    lost = [c["response"][-80:] for c, was, now in zip(cases, boxed_right, full_right, strict=True) if was and not now]
    assert not lost
    easy = [right for right, c in zip(full_right, cases, strict=True) if c["category"] in ("boxed", "bare")]
    hard = [right for right, c in zip(full_right, cases, strict=True) if c["category"] not in ("boxed", "bare")]
    print(f"bench set: boxed/bare {sum(easy)}/{len(easy)}, harder {sum(hard)}/{len(hard)}")
    assert len(cases) >= 300 and sum(easy) / len(easy) >= 0.99 and sum(hard) / len(hard) >= 0.95


def test_broken_pool_is_restarted(fast_pool):
    fast_pool._pool.stop()  # what pebble's pool looks like after all its workers died at once
    (result,) = fast_pool.score([r"\boxed{5}"], ["5"])
    assert (result.status, result.reward) == ("ok", 1.0)


def test_close():
    verifier = Verifier(workers=1, timeout_s=FAST_DEADLINE_S)
    verifier.close()
    verifier.close()
    with pytest.raises(RuntimeError, match="closed"):
        verifier.score([r"\boxed{1}"], ["1"])


def test_progress_hears_every_graded_item():
    calls: list[int] = []
    with Verifier(workers=1, timeout_s=5.0) as verifier:
        results = verifier.score([r"\boxed{1}", r"\boxed{2}", "none"], ["1", "1", "1"], calls.append)
    assert [r.reward for r in results] == [1.0, 0.0, 0.0] and calls == [1, 2, 3]
