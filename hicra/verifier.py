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
from collections.abc import Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass
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
FALLBACKS = ("boxed", "answer_is")
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


@dataclass(frozen=True)
class VerifyResult:
    """The grade of one response: reward before any shaping, why, and what was compared."""

    reward: float  # 1.0 correct, 0.0 otherwise (before any shaping)
    status: Status  # "ok" = an answer was extracted and compared (correct or not)
    extracted: str | None  # the extracted answer text (cut to max_answer_chars)
    seconds: float  # wall time spent on this item
    detail: str | None = None  # why the status is not "ok" (exception, unparsed text, deadline), else None


def _closing_brace(text: str, pos: int) -> int | None:
    """Index of the brace that closes ``text[pos] == "{"``, ignoring ``\\{``, ``\\}``; None if it never closes.

    Escapes are blanked out (same length, so indices hold) and the running depth is computed by C-level iterators:
    about 0.2 s per megabyte, four times faster than a Python loop over the braces.
    """
    tail = text[pos:].replace("\\\\", "  ").replace("\\{", "  ").replace("\\}", "  ")
    try:
        return pos + operator.indexOf(accumulate(map(_BRACE_DELTA.get, tail, repeat(0))), 0)
    except ValueError:
        return None


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


def _answer_is(text: str) -> str | None:
    """Text after the last "answer is" / "answer:" up to the end of its sentence or line."""
    last = None
    for last in _ANSWER_IS_RE.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if last is None:
        return None
    stop = _SENTENCE_END_RE.search(text, last.end())
    answer = _strip_math(text[last.end() : stop.start() if stop else len(text)])
    return answer or None


_EXTRACTORS = {"boxed": _last_boxed, "answer_is": _answer_is}


def _check_fallbacks(fallbacks: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in fallbacks if name not in _EXTRACTORS]
    if unknown or not fallbacks:
        raise ValueError(f"answer extractors must be a non-empty subset of {FALLBACKS}, got {list(fallbacks)}")
    return tuple(fallbacks)


def extract_answer(response: str, fallbacks: Sequence[str] = ("boxed",)) -> str | None:
    """The final answer of a response: the first extractor in ``fallbacks`` order that finds one.

    ``boxed``: the last ``\\boxed{...}`` (or ``\\fbox``); ``answer_is``: "the (final) answer is X" / "Answer: X".
    Linear-time on any input (no backtracking regex), so megabyte responses are safe.
    """
    for name in _check_fallbacks(fallbacks):
        answer = _EXTRACTORS[name](response)
        if answer is not None:
            return answer
    return None


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


def _parse(text: str) -> list:
    """math-verify parse with no timeout of its own (see _alarm) and errors raised, not logged and dropped."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    return parse(_as_latex(text), config, parsing_timeout=None, raise_on_error=True)


def _has_math(parsed: list) -> bool:
    """True when math-verify produced a sympy object (not just its raw-string fallback)."""
    from sympy import Basic, MatrixBase

    return any(isinstance(item, Basic | MatrixBase) for item in parsed)


def _grade(extracted: str, references: Sequence[str]) -> tuple[Status, float, str | None]:
    """Parse the references (gold first, the order math-verify expects), then the answer, then compare.

    Pairs are compared one by one, as math-verify's own ``verify`` does, but with errors raised: one pair whose
    comparison raises must not hide a later pair that matches, and an item where no pair matched and some
    comparison raised is an ``error`` (the math was not really compared), not a quiet 0.
    """
    from math_verify import verify

    gold: list = []
    bad = []
    for reference in references:
        parsed = _parse(reference)
        if _has_math(parsed):
            gold.extend(parsed)
        else:
            bad.append(reference)
    if not gold:
        return "parse_error", 0.0, f"{BAD_REFERENCE}: {bad!r:.300}"
    pred = _parse(extracted)
    if not _has_math(pred):
        return "parse_error", 0.0, f"answer did not parse: {extracted!r:.300}"
    bad_detail = f"{BAD_REFERENCE}: {bad!r:.300}" if bad else None
    failure = None
    for g, p in product(gold, pred):
        try:
            if verify(g, p, timeout_seconds=None, raise_on_error=True):
                return "ok", 1.0, bad_detail
        except Exception as exc:  # sympy cannot compare this pair: try the others
            failure = failure or _describe(exc)
    if failure is not None:
        return "error", 0.0, failure
    return "ok", 0.0, bad_detail


def verify_one(
    response: str,
    reference: str | Sequence[str],
    fallbacks: Sequence[str] = ("boxed",),
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
    extracted = extract_answer(response, fallbacks) if isinstance(response, str) else None
    if extracted is None:
        status: Status = "no_answer"
        reward, detail = 0.0, None if isinstance(response, str) else f"response is {type(response).__name__}"
    elif len(extracted) > max_answer_chars:
        status, reward, detail = "parse_error", 0.0, f"answer has {len(extracted)} chars > {max_answer_chars}"
        extracted = extracted[:max_answer_chars]
    else:
        try:
            with _alarm(timeout_s):
                try:
                    status, reward, detail = _grade(extracted, references)
                except Exception as exc:  # anything math-verify/sympy raises on odd input: report, do not crash
                    status, reward, detail = "error", 0.0, _describe(exc)
        except _SoftTimeout:
            status, reward, detail = "timeout", 0.0, f"graded past {timeout_s:.2f} s, stopped in the worker"
    return VerifyResult(reward, status, extracted, time.perf_counter() - start, detail)


def _warm_up() -> None:
    """Pebble worker initializer: pay math-verify's lazy first-call costs before the first real item."""
    verify_one("\\boxed{\\frac{1}{2}}", ["0.5", "\\{1, 2\\}", "[0, 1)", "50\\%", "x = \\sqrt{2}"])


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver: workers fork from a clean single-threaded server, never from the caller.

    The caller has torch (OpenMP threads), pebble's own manager threads and possibly a Prefect server thread:
    forking such a process can copy a lock held by another thread and deadlock the child. "spawn" is safe too but
    every (re)started worker would re-import sympy and math-verify; the forkserver imports them once (_PRELOAD).
    Measured on 2 busy cores: pool start 3-4 s with forkserver, 5-7 s with spawn.
    As with spawn, each worker re-imports the caller's ``__main__`` module (Python 3.11 ignores a "__main__"
    preload), so an entry script must keep its work, and best its heavy imports, under
    ``if __name__ == "__main__":`` (a main module importing torch made the pool start take 12 s).
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
        fallbacks: Sequence[str] = ("boxed",),
        max_answer_chars: int = 1000,
    ) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        self.workers = workers
        self.timeout_s = timeout_s
        self.fallbacks = _check_fallbacks(fallbacks)
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

    def score(self, responses: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[VerifyResult]:
        """Grade responses[i] against references[i] (a string or a list of alternatives), in input order.

        Never raises for a bad response: every input gets exactly one result, non-ok ones say why.
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
            self._pool.schedule(verify_one, (response, reference, self.fallbacks), options, timeout=self.timeout_s)
            for response, reference in zip(responses, references, strict=True)
        ]
        results = [self._collect(future, response) for future, response in zip(futures, responses, strict=True)]
        self._log(results, references)
        return results

    def _collect(self, future: ProcessFuture, response: str) -> VerifyResult:
        """The worker's result, or a timeout/error result when the worker was killed or died."""
        try:
            return future.result()
        except FutureTimeoutError:  # killed by pebble, so no answer came back: extract it here (linear, safe)
            extracted = extract_answer(response, self.fallbacks) if isinstance(response, str) else None
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
