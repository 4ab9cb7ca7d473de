"""Prompt rendering shared by SFT warm-up, rollouts and evaluation, so every stage shows the policy the same text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PLAIN_TEMPLATE = "Question: {problem}\nSolution:"
"""The tiny policy's prompt format; the solution text follows after a single space."""


def render_prompt(
    problem: str,
    tokenizer: Any,
    template: str | None = None,
    use_chat_template: bool = False,
    messages: Sequence[dict[str, str]] | None = None,
) -> str:
    """Return the prompt text for `problem`: the tokenizer's chat template over the dataset's own chat `messages`
    when it has them, else over one user message (`template` with `{problem}`, default the bare problem); or the
    plain `{problem}` template."""
    if use_chat_template:
        if not messages:
            messages = [{"role": "user", "content": (template or "{problem}").format(problem=problem)}]
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return (template or PLAIN_TEMPLATE).format(problem=problem)
