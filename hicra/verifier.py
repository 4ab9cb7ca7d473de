"""Reward verifier: extract the final answer from a response and check it against the reference with math-verify.

math-verify (sympy underneath) can run for a very long time on some inputs and its own timeouts rely on SIGALRM,
which only works on a process's main thread. So every item is graded in a worker process of a pebble
``ProcessPool``: inside the worker a SIGALRM interval timer ends slow items gracefully (status ``timeout``), and
pebble's per-task deadline kills a worker that did not stop in time and starts a new one (the backstop).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import operator
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, product, repeat
from typing import Literal

from pebble import ProcessFuture, ProcessPool

logger = logging.getLogger(__name__)


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once per process that its own timeouts are off: here that is deliberate (see _alarm)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())

Status = Literal["ok", "no_answer", "parse_error", "timeout", "error"]
Extractor = Callable[[str], "str | None"]
EXTRACTORS: dict[str, Extractor] = {}
"""The answer extractors by name, in the order of the full chain: the one definition of their names."""
TRAINING_EXTRACTORS = ("boxed",)
"""The training reward's default: the paper's strict matching on the last ``\\boxed{}`` (see docs/grading.md)."""
# The graceful in-worker deadline is this fraction of the hard one, so that a slow item can unwind and report
# ``timeout`` itself before pebble kills its worker.
SOFT_DEADLINE_FRACTION = 0.8
# ``detail`` of a ``parse_error`` caused by the reference (a data problem, logged at warning level) starts with this.
BAD_REFERENCE = "reference did not parse"
# Modules the forkserver imports once, so that a replacement worker starts warm (milliseconds, not seconds).
_PRELOAD = ["math_verify", "sympy", "latex2sympy2_extended", "pebble"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])(?P<space>\s*)")
_BRACE_DELTA = {"{": 1, "}": -1}
_TOKEN_RE = re.compile(r"[^\s$]+")
_ANSWER_IS_RE = re.compile(r"\banswer(?:\s+is\b\s*:?|\s*:)", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.\s|\n")
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_DELIMITED_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
TAIL_CHARS = 4000
"""The extractors that read a response with math-verify's regexes or look for phrases and bold text read only its
last TAIL_CHARS characters: a final answer stands at the end, and some of those regexes (lazy quantifiers,
alternations) cost more than linear time on hostile text, which a bounded window keeps bounded."""
_VECTOR_RE = re.compile(r"\\begin\{(?P<env>[pb]matrix)\}(?P<body>[^{}]*?)\\end\{(?P=env)\}", re.DOTALL)
_RELATIONS = {op: ("<", True) for op in ("<", "\\lt")} | {op: (">", True) for op in (">", "\\gt")}
_RELATIONS |= {op: ("<", False) for op in ("\\le", "\\leq", "\\leqslant", "<=", "\u2264")}
_RELATIONS |= {op: (">", False) for op in ("\\ge", "\\geq", "\\geqslant", ">=", "\u2265")}
_RELATION_RE = re.compile(r"(\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt)(?![A-Za-z])|<=|>=|<|>|≤|≥)")
_VARIABLE_RE = re.compile(r"[A-Za-z]|\\(?:alpha|beta|gamma|theta|lambda|mu|varphi|phi|omega)")
UNANCHORED_PRIORITY = 300  # math-verify's priority of a match with no "answer" phrase before it
_LABEL_RE = re.compile(r"(?<![A-Za-z\\])\(([a-h])\)")
_PHRASE_RE = re.compile(
    r"\b(?:final\s+answer|so\s+we\s+(?:get|have|obtain)|we\s+(?:get|obtain|find)|therefore|thus|hence|"
    r"the\s+result\s+is|which\s+gives|this\s+gives|answer\s*[-\u2013\u2014=])",
    re.IGNORECASE,
)
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,300})\*\*")
_LABEL_ONLY_RE = re.compile(r"(?:the\s+)?(?:final\s+)?(?:answer|result|solution)s?\s*[:\-\u2013\u2014]?", re.IGNORECASE)
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_MATH_RUN_RE = re.compile(r"[-\d(\[{\\]|[A-Za-z]\s*=")
_LEADING_PUNCTUATION_RE = re.compile(r"^(?:[\s:=*,\u2013\u2014]|-(?=\s))+")  # not the minus of "-12"
_SERIAL_COMMA_RE = re.compile(r",\s+(and|or)\b")
_AND_OR_RE = re.compile(r"\s*,?\s*\b(?:and|or)\b\s*")
_SMALL_NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
_SMALL_NUMBERS += "sixteen seventeen eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = dict(zip(_SMALL_NUMBERS.split(), range(20), strict=True))
_NUMBER_WORDS |= dict(zip(_TENS.split(), range(20, 100, 10), strict=True))
_DIGIT_WORDS = "|".join(_SMALL_NUMBERS.split()[1:10])
_NUMERAL_RE = re.compile(
    rf"\b(?:(?:{_TENS.replace(' ', '|')})(?:[-\s](?:{_DIGIT_WORDS}))?|{_SMALL_NUMBERS.replace(' ', '|')})\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class VerifyResult:
    """The grade of one response: reward before any shaping, why, and what was compared."""

    reward: float  # 1.0 correct, 0.0 otherwise (before any shaping)
    status: Status  # "ok" = an answer was extracted and compared (correct or not)
    extracted: str | None  # the extracted answer text (cut to max_answer_chars)
    seconds: float  # wall time spent on this item
    detail: str | None = None  # why the status is not "ok" (exception, unparsed text, deadline), else None


def extractor(name: str) -> Callable[[Extractor], Extractor]:
    """Register an answer extractor under ``name`` in EXTRACTORS; the order of registration is the full chain's."""

    def register(fn: Extractor) -> Extractor:
        EXTRACTORS[name] = fn
        return fn

    return register


def _closing_brace(text: str, pos: int) -> int | None:
    """Index of the brace that closes ``text[pos] == "{"``, ignoring ``\\{``, ``\\}``; None if it never closes.

    Escapes are blanked out (same length, so indices hold) and the running depth is computed by C-level iterators,
    several times faster than a Python loop over the characters (`python bench/verifier.py` measures both).
    """
    tail = text[pos:].replace("\\\\", "  ").replace("\\{", "  ").replace("\\}", "  ")
    try:
        return pos + operator.indexOf(accumulate(map(_BRACE_DELTA.get, tail, repeat(0))), 0)
    except ValueError:
        return None


@extractor("boxed")
def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, ``\\{`` escaped), or ``\\boxed x``.

    One regex pass to find the last box and one forward brace scan: linear in the input length.
    A last box that never closes (a truncated response) gives None rather than an earlier, intermediate box.
    """
    box = None
    for box in _BOX_RE.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if box is None:
        return None
    pos = box.end()
    if text.startswith("{", pos):
        close = _closing_brace(text, pos)
        if close is None:
            return None
        return text[pos + 1 : close].strip() or None
    token = _TOKEN_RE.match(text, pos) if box.group("space") else None  # "\\boxed 5"
    return token.group() if token else None


def _strip_math(answer: str) -> str:
    """Drop a trailing full stop and math/bold wrappers around a free-text answer: ``$\\frac12$.`` -> ``\\frac12``."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in _MATH_WRAPPERS:
        if len(answer) >= len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    return last


def _sentence_after(text: str, pos: int) -> str:
    """The text from ``pos`` to the end of its sentence or line."""
    stop = _SENTENCE_END_RE.search(text, pos)
    return text[pos : stop.start() if stop else len(text)]


@extractor("bare")
def _bare(text: str) -> str | None:
    """A last paragraph that is only math, with no words: a response that ends in (or is) its bare answer."""
    paragraph = _strip_math(_last_paragraph(text))
    return _math_of(paragraph) if paragraph and not _WORD_RE.search(_AND_OR_RE.sub(", ", paragraph)) else None


@extractor("answer_is")
def _answer_is(text: str) -> str | None:
    """The math after the last "answer is" / "answer:", up to the end of its sentence or line (see _math_of)."""
    last = _last(_ANSWER_IS_RE, text)
    return None if last is None else _math_of(_sentence_after(text, last.end()))


def _tail(text: str) -> str:
    """The last TAIL_CHARS characters of a response (from a line start when one is in them), ``\\$`` blanked."""
    if len(text) > TAIL_CHARS:
        newline = text.find("\n", len(text) - TAIL_CHARS)
        text = text[newline + 1 :] if newline != -1 else text[len(text) - TAIL_CHARS :]
    # An escaped dollar (currency) is no math delimiter, nor part of a number; math-verify's pattern of several
    # answers ("$1$, $2$ and $3$") misses the serial comma (", and $3$").
    return _SERIAL_COMMA_RE.sub(r" \1", text.replace("\\$", " "))


def _last_paragraph(text: str) -> str:
    text = _tail(text).rstrip()
    return text[text.rfind("\n\n") + 1 :]


@cache
def _regexes(latex: bool, expr: bool, anchored_only: bool) -> list[tuple[int, list[re.Pattern[str]]]]:
    """math-verify's own extraction regexes (LaTeX environments, plain numbers and expressions), grouped by
    priority, best first; ``\\boxed`` left out (the ``boxed`` extractor reads it, linearly)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig
    from math_verify.parser import get_extraction_regexes

    targets = [LatexExtractionConfig(not anchored_only, boxed_match_priority=-1)] if latex else []
    targets += [ExprExtractionConfig(not anchored_only)] if expr else []
    by_priority: dict[int, list[re.Pattern[str]]] = {}
    for patterns, _ in get_extraction_regexes(targets):
        for pattern, priority in patterns:
            if not (anchored_only and priority >= UNANCHORED_PRIORITY):
                by_priority.setdefault(priority, []).append(pattern)
    return sorted(by_priority.items())


def _match_text(match: re.Match[str]) -> str:
    """The answer a math-verify regex match stands for, as LaTeX: its environments' contents joined by ", " (several
    stated answers, as math-verify reads them: a set), a percent sign kept; a number without thousands separators."""
    groups = {name: value for name, value in match.groupdict().items() if value}
    parts = []
    for prefix in ("first", *(f"next{i}" for i in range(1, 6))):
        content = next((value for name, value in groups.items() if name.startswith(f"{prefix}_latex")), None)
        if content:
            parts.append(content.strip().rstrip(".,;").strip() + ("\\%" if f"{prefix}_percent" in groups else ""))
    if parts:
        return ", ".join(parts)
    if "expr" in groups:
        return groups["expr"].strip()
    integer = next((value for name, value in groups.items() if name.startswith("integer")), "")
    decimal = next((value for name, value in groups.items() if name.startswith("decimal")), "")
    number = integer.replace(",", "").replace(" ", "") + decimal.replace(",", ".")
    return number + ("\\%" if "percent" in groups else "")


def _math_verify_best(text: str, latex: bool, expr: bool, anchored_only: bool) -> re.Match[str] | None:
    """The match math-verify's ``parse`` would extract from ``text``, chosen as it chooses but without parsing.

    Its own ``extract_target_from_pred`` parses every candidate with sympy while it chooses, which has no time
    bound, so here only its regexes run (on a bounded text): the best priority that matches, and in it the match
    that ends last (the earlier start on a tie), as math-verify orders them. The grader parses the answer after.
    """
    for _, patterns in _regexes(latex, expr, anchored_only):
        matches = [match for pattern in patterns for match in pattern.finditer(text) if _match_text(match)]
        if matches:
            return max(matches, key=lambda m: (m.end(), -m.start()))
    return None


def _math_verify_match(text: str, latex: bool, expr: bool, anchored_only: bool) -> str | None:
    """The answer text of _math_verify_best's match, if any."""
    best = _math_verify_best(text, latex, expr, anchored_only)
    return None if best is None else _match_text(best)


@extractor("parts")
def _parts(text: str) -> str | None:
    """Labelled answers in the last paragraph, "(a) 3 (b) $4$" -> "3, 4" (math-verify has no notion of parts)."""
    return _labelled(_last_paragraph(text))


@extractor("latex")
def _latex(text: str) -> str | None:
    """math-verify's extraction over the end of the response: an anchored answer ("final answer is $x$",
    "answer: 12", LaTeX or a plain number/expression) anywhere in the tail, else the last math environment
    (``$..$``, ``\\(..\\)``, ``\\[..\\]``, ``$$..$$``) of the last paragraph.

    math-verify's unanchored priorities would take the last math anywhere, as strong a signal as a final-answer
    phrase; limited to the last paragraph it means "the answer at the end of a solution" and lets the phrase and bold
    extractors after it read a solution whose last paragraph has no math.
    """
    tail = _tail(text)
    answer = _math_verify_match(tail, latex=True, expr=True, anchored_only=True)
    return answer or _math_verify_match(_last_paragraph(tail), latex=True, expr=False, anchored_only=False)


def _labelled(text: str) -> str | None:
    """The answers of "(a) .. (b) .." (labels a, b, c.. in order, at least two), joined by ", "; else None."""
    labels = list(_LABEL_RE.finditer(text))
    if len(labels) < 2 or [m.group(1) for m in labels] != list("abcdefgh"[: len(labels)]):
        return None
    ends = [m.start() for m in labels[1:]] + [len(text)]
    answers = [_math_of(text[label.end() : end], labels=False) for label, end in zip(labels, ends, strict=True)]
    return None if None in answers else ", ".join(answers)


@extractor("phrase")
def _phrase(text: str) -> str | None:
    """The math after the last concluding phrase ("therefore", "so we get", "final answer", "Answer -", ...), up to
    the end of its sentence or line, in the last paragraph (a phrase earlier on concludes a step, not the solution).
    Hand-written: math-verify anchors only on the word "answer"."""
    tail = _last_paragraph(text)
    last = _last(_PHRASE_RE, tail)
    return None if last is None else _math_of(_sentence_after(tail, last.end()))


@extractor("bold")
def _bold(text: str) -> str | None:
    """The math of the last ``**bold**`` span (or of the rest of its line when the span is a label such as
    ``**Final Answer:**``), in the last paragraph. Hand-written: math-verify reads bold only around a plain number."""
    tail = _last_paragraph(text)
    last = _last(_BOLD_RE, tail)
    if last is None:
        return None
    content = last.group(1).strip()
    if _LABEL_ONLY_RE.fullmatch(content):
        line_end = tail.find("\n", last.end())
        content = tail[last.end() : line_end if line_end != -1 else len(tail)]
    return _math_of(content)


@extractor("last_expression")
def _last_expression(text: str) -> str | None:
    """The last resort: math-verify's unanchored extraction, the last math environment or number/expression of the
    response's tail, whatever surrounds it, or a number word stated after it."""
    tail = _tail(text)
    best = _math_verify_best(tail, latex=True, expr=True, anchored_only=False)
    word = _last(_NUMERAL_RE, tail)
    if word is not None and word.group().lower() != "one" and (best is None or word.end() > best.end()):
        return _numeral(word.group())  # "one" is a pronoun far more often than a last-stated answer
    return None if best is None else _match_text(best)


def _numeral(text: str) -> str | None:
    """The last number word of a text as digits ("twenty-one" -> "21"), 0-99; math-verify reads digits only."""
    last = _last(_NUMERAL_RE, text)
    if last is None:
        return None
    return str(sum(_NUMBER_WORDS[word] for word in re.split(r"[-\s]", last.group().lower())))


def _math_of(snippet: str, labels: bool = True) -> str | None:
    """The answer stated in a short snippet of prose (what follows a phrase, a bold span, a label): labelled parts,
    else its last math environment, else the snippet itself when it is math (no words), else its last number or
    expression, else a number word as digits; None when it states none of these.

    The math before the first word or after the last one ("14, found in 2 steps", "the roots are 1, 2") is the
    answer more often than the last number in between."""
    snippet = _strip_math(_LEADING_PUNCTUATION_RE.sub("", _strip_math(snippet)).rstrip(" \t:=-\u2013\u2014*,"))
    if not snippet:
        return None
    if labels and (parts := _labelled(snippet)):
        return parts
    if env := _math_verify_match(snippet, latex=True, expr=False, anchored_only=False):
        return env
    listed = _AND_OR_RE.sub(", ", snippet)
    words = list(_WORD_RE.finditer(listed))
    if not words:
        return listed
    for run in (listed[: words[0].start()], listed[words[-1].end() :]):  # "14, found in 2 steps"; "are 1, 2"
        run = run.strip(" \t:=,;.")
        if _MATH_RUN_RE.match(run) and any(char.isdigit() for char in run):
            return run
    return _math_verify_match(snippet, latex=False, expr=True, anchored_only=False) or _numeral(snippet)


def _check_extractors(extractors: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in extractors if name not in EXTRACTORS]
    if unknown or not extractors:
        what = f"unknown answer extractor {unknown[0]!r}" if unknown else "no answer extractor"
        raise ValueError(f"{what}; known: {', '.join(EXTRACTORS)}")
    return tuple(extractors)


def _answers(response: str, extractors: Sequence[str]) -> Iterator[str]:
    """The distinct answers the extractors find, in their order (each extractor runs only when the earlier answers
    are used up)."""
    seen = set()
    for name in extractors:
        answer = EXTRACTORS[name](response)
        if answer is not None and answer not in seen:
            seen.add(answer)
            yield answer


def extract_answer(response: str, extractors: Sequence[str] = TRAINING_EXTRACTORS) -> str | None:
    """The final answer of a response: the first extractor in ``extractors`` order that finds one (see EXTRACTORS).

    ``boxed``: the last ``\\boxed{...}`` (or ``\\fbox``); ``answer_is``: "the (final) answer is X" / "Answer: X";
    ``latex``: math-verify's anchored extraction, or the last math of the last paragraph; ``parts``: "(a) 3 (b) 4";
    ``phrase``: after "therefore", "so we get", ...; ``bold``: ``**X**``; ``last_expression``: the last math or
    number. Linear-time on any input (no backtracking regex on more than TAIL_CHARS), so megabyte responses are safe.
    """
    return next(_answers(response, _check_extractors(extractors)), None)


FULL_CHAIN = tuple(EXTRACTORS)
"""Every extractor in chain order: ``hicra grade``'s and the evaluation's default (see docs/grading.md)."""


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so that library ``except Exception`` does not eat it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _SoftTimeout


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise _SoftTimeout after ``seconds`` of wall time (main thread only: elsewhere, run without a deadline).

    ``setitimer`` rather than math-verify's own ``signal.alarm`` timeouts: those take whole seconds, apply to each
    parse/compare call separately (an item could use three of them) and would reset this timer, so math-verify's
    are disabled and this one timer bounds the whole item.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _as_latex(text: str) -> str:
    """math-verify extracts LaTeX only inside delimiters: box a bare answer, keep text that has its own."""
    return text if _DELIMITED_RE.search(text) else f"\\boxed{{{text}}}"


def _vector_as_tuple(text: str) -> str | None:
    """A one-row or one-column ``pmatrix``/``bmatrix`` as a tuple, ``(1, 2)``: math-verify compares a matrix with a
    matrix only, and a vector is as often written as a tuple."""
    match = _VECTOR_RE.fullmatch(text)
    if match is None:
        return None
    body = match.group("body").strip().removesuffix("\\\\")
    rows = [row.strip() for row in body.split("\\\\")]
    if len(rows) > 1 and all("&" not in row for row in rows):
        return f"({', '.join(rows)})"
    if len(rows) == 1 and "&" in rows[0]:
        return f"({', '.join(cell.strip() for cell in rows[0].split('&'))})"
    return None


def _inequality_as_interval(text: str) -> str | None:
    """A one-variable inequality as an interval, ``t \\le 3`` -> ``(-\\infty, 3]``, ``1 < x \\leq 3`` -> ``(1, 3]``:
    math-verify accepts an inequality against an interval gold but not the other way round, and cannot parse
    ``3 \\ge t``."""
    pieces = [piece.strip() for piece in _RELATION_RE.split(text)]
    sides, relations = pieces[::2], [_RELATIONS[op] for op in pieces[1::2]]
    if not 2 <= len(sides) <= 3 or not all(sides):
        return None
    variables = [i for i, side in enumerate(sides) if _VARIABLE_RE.fullmatch(side)]
    if len(variables) != 1 or (len(sides) == 3 and variables != [1]) or len(set(r[0] for r in relations)) != 1:
        return None
    (index,), (direction, strict) = variables, relations[0]
    if len(sides) == 3:  # a < x < b (or a > x > b)
        low, high = (sides[0], sides[2]) if direction == "<" else (sides[2], sides[0])
        low_strict, high_strict = (relations[0][1], relations[1][1])[:: 1 if direction == "<" else -1]
    elif (direction == "<") == (index == 0):  # x < b, b > x
        low, high, low_strict, high_strict = "-\\infty", sides[1 - index], True, strict
    else:  # x > a, a < x
        low, high, low_strict, high_strict = sides[1 - index], "\\infty", strict, True
    return f"{'(' if low_strict else '['}{low}, {high}{')' if high_strict else ']'}"


def _rewrite(text: str) -> str:
    """Forms math-verify cannot compare rewritten into ones it can (both the answer and the reference)."""
    bare = _strip_math(text)
    return _vector_as_tuple(bare) or _inequality_as_interval(bare) or text


def _parse(text: str) -> list:
    """math-verify parse with no timeout of its own (see _alarm) and errors raised, not logged and dropped."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    return parse(_as_latex(_rewrite(text)), config, parsing_timeout=None, raise_on_error=True)


def _has_math(parsed: list) -> bool:
    """True when math-verify produced a sympy object (not just its raw-string fallback)."""
    from sympy import Basic, MatrixBase

    return any(isinstance(item, Basic | MatrixBase) for item in parsed)


def _parse_references(references: Sequence[str]) -> tuple[list, list[str]]:
    """The parsed references (gold first, the order math-verify expects) and those that did not parse."""
    gold: list = []
    bad = []
    for reference in references:
        parsed = _parse(reference)
        if _has_math(parsed):
            gold.extend(parsed)
        else:
            bad.append(reference)
    return gold, bad


def _compare(gold: list, pred: list) -> tuple[Status, float, str | None]:
    """Compare the pairs one by one, as math-verify's own ``verify`` does, but with errors raised: one pair whose
    comparison raises must not hide a later pair that matches, and an item where no pair matched and some
    comparison raised is an ``error`` (the math was not really compared), not a quiet 0."""
    from math_verify import verify

    failure = None
    for g, p in product(gold, pred):
        try:
            if verify(g, p, timeout_seconds=None, raise_on_error=True):
                return "ok", 1.0, None
        except Exception as exc:  # sympy cannot compare this pair: try the others
            failure = failure or _describe(exc)
    return ("error", 0.0, failure) if failure is not None else ("ok", 0.0, None)


def _grade(
    response: str, references: Sequence[str], extractors: Sequence[str], max_answer_chars: int, tried: list[str]
) -> tuple[Status, float, str | None, str | None]:
    """Status, reward, detail and the graded answer: the first extracted answer that math-verify can read is compared
    with the references; one it cannot read (or longer than ``max_answer_chars``) hands over to the next extractor.

    A parsed answer that is wrong does not: trying further answers until one matches would reward a response for
    stating many. ``tried`` collects the answers as they are tried (the caller reports the last on a timeout).
    """
    gold: list | None = None
    bad: list[str] = []
    failure: tuple[Status, float, str | None, str | None] | None = None
    for answer in _answers(response, extractors):
        shown = answer[:max_answer_chars]
        tried.append(shown)
        if len(answer) > max_answer_chars:
            failure = failure or ("parse_error", 0.0, f"answer has {len(answer)} chars > {max_answer_chars}", shown)
            continue
        if gold is None:
            gold, bad = _parse_references(references)
            if not gold:
                return "parse_error", 0.0, f"{BAD_REFERENCE}: {bad!r:.300}", shown
        pred = _parse(answer)
        if not _has_math(pred):
            failure = failure or ("parse_error", 0.0, f"answer did not parse: {answer!r:.300}", shown)
            continue
        status, reward, detail = _compare(gold, pred)
        return status, reward, detail or (f"{BAD_REFERENCE}: {bad!r:.300}" if bad else None), shown
    return failure or ("no_answer", 0.0, None, None)


def verify_one(
    response: str,
    reference: str | Sequence[str],
    extractors: Sequence[str] = TRAINING_EXTRACTORS,
    *,
    timeout_s: float | None = None,
    max_answer_chars: int = 1000,
) -> VerifyResult:
    """Grade one response against one reference (or a list of acceptable alternatives); never raises.

    Meant to run on a worker process's main thread, where ``timeout_s`` arms a SIGALRM deadline for the whole item.
    An answer longer than ``max_answer_chars`` is a ``parse_error`` without calling sympy (no real final answer
    is that long, and sympy can spend minutes on one).
    """
    start = time.perf_counter()
    alternatives = reference if isinstance(reference, Sequence) and not isinstance(reference, str) else [reference]
    references = [str(item) for item in alternatives]  # a dataset may hold a number (42) rather than "42"
    if not isinstance(response, str):
        detail = f"response is {type(response).__name__}"
        return VerifyResult(0.0, "no_answer", None, time.perf_counter() - start, detail)
    extractors = _check_extractors(extractors)
    tried: list[str] = []
    try:
        with _alarm(timeout_s):
            try:
                status, reward, detail, extracted = _grade(response, references, extractors, max_answer_chars, tried)
            except Exception as exc:  # anything math-verify/sympy raises on odd input: report, do not crash
                status, reward, detail, extracted = "error", 0.0, _describe(exc), tried[-1] if tried else None
    except _SoftTimeout:
        status, reward, extracted = "timeout", 0.0, tried[-1] if tried else None
        detail = f"graded past {timeout_s:.2f} s, stopped in the worker"
    return VerifyResult(reward, status, extracted, time.perf_counter() - start, detail)


def _warm_up() -> None:
    """Pebble worker initializer: pay math-verify's lazy first-call costs before the first real item."""
    verify_one("\\boxed{\\frac{1}{2}}", ["0.5", "\\{1, 2\\}", "[0, 1)", "50\\%", "x = \\sqrt{2}"])
    verify_one("So we get $x = 1$.", "1", FULL_CHAIN)  # compiles the regexes of the other extractors


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver: workers fork from a clean single-threaded server, never from the caller.

    The caller has torch (OpenMP threads), pebble's own manager threads and possibly a Prefect server thread:
    forking such a process can copy a lock held by another thread and deadlock the child. "spawn" is safe too but
    every (re)started worker would re-import sympy and math-verify; the forkserver imports them once (_PRELOAD).
    A pool starts faster than with spawn (`python bench/verifier.py` measures both).
    As with spawn, each worker re-imports the caller's ``__main__`` module (Python 3.11 ignores a "__main__"
    preload), so an entry script must keep its work, and best its heavy imports, under
    ``if __name__ == "__main__":`` (a main module that imports torch slows every pool start several times over).
    The preload list is process-wide and only applies if the forkserver has not been started yet.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


class Verifier:
    """A warm pool of grading workers with a hard wall-clock deadline per item; reuse it across batches."""

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        extractors: Sequence[str] = TRAINING_EXTRACTORS,
        max_answer_chars: int = 1000,
    ) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        self.workers = workers
        self.timeout_s = timeout_s
        self.extractors = _check_extractors(extractors)
        self.max_answer_chars = max_answer_chars
        self._pool: ProcessPool | None = None
        self.start_seconds = self._start()

    def _start(self) -> float:
        """(Re)start the pool and wait until every worker is warm; returns the seconds it took."""
        begin = time.perf_counter()
        self._pool = ProcessPool(max_workers=self.workers, initializer=_warm_up, context=_pool_context())
        # One trivial task per worker: returns once the workers exist and ran _warm_up.
        for future in [self._pool.schedule(math.isqrt, (n,)) for n in range(self.workers)]:
            future.result()
        seconds = time.perf_counter() - begin
        logger.info("verifier pool of %d workers started in %.2f s", self.workers, seconds)
        return seconds

    def score(
        self,
        responses: Sequence[str],
        references: Sequence[str | Sequence[str]],
        progress: Callable[[int], None] | None = None,
    ) -> list[VerifyResult]:
        """Grade responses[i] against references[i] (a string or a list of alternatives), in input order.

        Never raises for a bad response: every input gets exactly one result, non-ok ones say why. `progress(n)`, if
        given, hears how many items are graded, as results come in.
        """
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        if self._pool is None:
            raise RuntimeError("Verifier is closed")
        if not self._pool.active:  # pebble gives up when all its workers die at once
            logger.warning("verifier pool is broken; restarting it")
            self.close()
            self._start()
        soft = self.timeout_s * SOFT_DEADLINE_FRACTION
        options = {"timeout_s": soft, "max_answer_chars": self.max_answer_chars}
        futures = [
            self._pool.schedule(verify_one, (response, reference, self.extractors), options, timeout=self.timeout_s)
            for response, reference in zip(responses, references, strict=True)
        ]
        results = []
        for future, response in zip(futures, responses, strict=True):
            results.append(self._collect(future, response))
            if progress:
                progress(len(results))
        self._log(results, references)
        return results

    def _collect(self, future: ProcessFuture, response: str) -> VerifyResult:
        """The worker's result, or a timeout/error result when the worker was killed or died."""
        try:
            return future.result()
        except FutureTimeoutError:  # killed by pebble, so no answer came back: extract it here (linear, safe)
            extracted = extract_answer(response, self.extractors) if isinstance(response, str) else None
            if extracted is not None:
                extracted = extracted[: self.max_answer_chars]
            return VerifyResult(0.0, "timeout", extracted, self.timeout_s, f"worker killed after {self.timeout_s} s")
        except Exception as exc:  # the worker died (ProcessExpired: out of memory, segfault) or the pool broke
            return VerifyResult(0.0, "error", None, 0.0, _describe(exc))

    @staticmethod
    def _log(results: list[VerifyResult], references: Sequence[str | Sequence[str]]) -> None:
        """Warn about errors, timeouts and bad references (each bad reference once per batch)."""
        reported: set[str] = set()
        for index, (result, reference) in enumerate(zip(results, references, strict=True)):
            if result.status in ("error", "timeout"):
                logger.warning("item %d: %s (%s), answer %.100r", index, result.status, result.detail, result.extracted)
            elif result.detail and result.detail.startswith(BAD_REFERENCE) and str(reference) not in reported:
                reported.add(str(reference))
                logger.warning("item %d: data problem, %s", index, result.detail)
            elif result.status == "parse_error":
                logger.debug("item %d: %s", index, result.detail)

    def close(self) -> None:
        """Stop the workers (the forkserver ends with this process)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
