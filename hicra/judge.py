"""The paper's error-type analysis (arXiv 2509.03646, Fig. 5): an LLM judge puts each failed rollout in one of four
categories, of which `planning` is the one HICRA targets; the others are grouped as "other errors".

The paper describes the analysis (failed rollouts classified by an LLM into planning and strategy errors versus
knowledge, calculation and other errors) but its exact prompt text was not available to us: `SYSTEM_PROMPT` and
`CATEGORIES` are written from that description, and `PROMPT_VERSION` (a hash of both) names them in the warehouse so
that a changed prompt never mixes with verdicts of the old one.

The judge is any OpenAI-compatible chat endpoint (a local vLLM server by default), reached with httpx. Where the
server supports vLLM's structured outputs (`structured_outputs: {choice: [...]}`), the answer is constrained to the
category names, so every verdict is one of them; a server that rejects the parameter (HTTP 400) is asked again
without it and its free-text answer is parsed; an answer naming no category is kept as `unparseable`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

CATEGORIES: dict[str, str] = {
    "planning": "Planning and strategy error: the high-level approach is wrong or badly organised; a wrong or "
    "unsuitable method is chosen, the problem is decomposed wrongly, a necessary case or sub-goal is missed, or the "
    "solution persists in a dead end (or abandons a correct line) instead of changing strategy.",
    "knowledge": "Knowledge error: a wrong fact, definition, formula or theorem is used, or a correct one is applied "
    "where its conditions do not hold.",
    "calculation": "Calculation error: the plan is sound but its execution slips: an arithmetic, algebraic or "
    "counting mistake, a wrong substitution or a copying error.",
    "other": "Other error: the problem is misread, the final answer is in the wrong form or missing, or the response "
    "is cut off or incoherent.",
}
PLANNING = "planning"
UNPARSEABLE = "unparseable"

SYSTEM_PROMPT = (
    "You analyse incorrect solutions to math problems. You are given a problem, its reference answer and a model's "
    "solution, which reached a wrong or no final answer. Decide which kind of error is the main reason the solution "
    "failed, choosing exactly one of these categories:\n"
    + "\n".join(f"- {name}: {text}" for name, text in CATEGORIES.items())
    + "\nAnswer with the category name only."
)
USER_TEMPLATE = "Problem:\n{problem}\n\nReference answer: {reference}\n\nModel's solution:\n{response}\n\nCategory:"
PROMPT_VERSION = hashlib.sha256((SYSTEM_PROMPT + USER_TEMPLATE).encode()).hexdigest()[:8]

Constrain = Literal["auto", "choice", "none"]


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: `category` (a key of CATEGORIES, or `unparseable`), the raw text, and whether the server
    constrained the answer to the category names."""

    category: str
    raw: str
    constrained: bool


def parse_verdict(text: str) -> str:
    """The category a free-text answer names: the first category name in it as a whole word (case-insensitive, so
    "Planning error" and "**planning**" count), else `unparseable`."""
    found = re.search(r"\b(" + "|".join(CATEGORIES) + r")\b", text, flags=re.IGNORECASE)
    return found.group(1).lower() if found else UNPARSEABLE


class Judge:
    """A chat-completions client that classifies failed rollouts (thread-safe: share one across worker threads).

    `constrain`: `choice` always sends vLLM's structured-outputs choice, `none` never does, `auto` sends it until the
    server rejects the parameter (an HTTP 400 that names it; other errors are raised). Greedy decoding (temperature
    0), so a verdict depends only on the server's model.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        api_key: str | None = None,
        constrain: Constrain = "auto",
        timeout_s: float = 300.0,
        max_tokens: int = 16,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.requested = self.constrain = constrain
        self.max_tokens = max_tokens
        self.model = model or self._served_model()

    def _send(self, method: str, path: str, json: dict | None = None) -> httpx.Response:
        """One request to the judge; an unreachable server is a RuntimeError that says so (httpx's own errors name
        no remedy), an HTTP error status is returned for the caller to read."""
        try:
            return self.client.request(method, path, json=json)
        except httpx.TransportError as err:
            raise RuntimeError(
                f"cannot reach the judge at {self.client.base_url} ({type(err).__name__}: {err}); start an "
                "OpenAI-compatible server there (vLLM: `python -m vllm.entrypoints.openai.api_server --model ...`) "
                "or pass --base-url"
            ) from err

    @staticmethod
    def _check(reply: httpx.Response) -> httpx.Response:
        if reply.is_error:
            raise RuntimeError(f"the judge answered HTTP {reply.status_code} to {reply.url}: {reply.text[:1000]}")
        return reply

    def _served_model(self) -> str:
        """The server's first model (`GET /models`): a vLLM server serves exactly one."""
        models = self._check(self._send("GET", "/models")).json()["data"]
        if not models:
            raise RuntimeError(f"the judge server at {self.client.base_url} serves no model")
        return models[0]["id"]

    def classify(self, problem: str, reference: str, response: str) -> Verdict:
        """One failed rollout's verdict; raises RuntimeError for an unreachable server or a failed request."""
        user = USER_TEMPLATE.format(problem=problem, reference=reference, response=response)
        body: dict = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        constrained = self.constrain != "none"
        if constrained:
            body["structured_outputs"] = {"choice": list(CATEGORIES)}
        reply = self._send("POST", "/chat/completions", body)
        if reply.status_code == 400 and self.constrain == "auto" and "structured_outputs" in reply.text:
            self.constrain, constrained = "none", False
            body.pop("structured_outputs")
            reply = self._send("POST", "/chat/completions", body)
        text = self._check(reply).json()["choices"][0]["message"]["content"] or ""
        category = text.strip() if constrained and text.strip() in CATEGORIES else parse_verdict(text)
        return Verdict(category, text, constrained)

    def close(self) -> None:
        self.client.close()
