"""The offline provider: a rulebook lookup, no language model, no key.

It streams the passages that grounding found for the question, word by word, and says
plainly that it is quoting the rulebook rather than answering in its own words.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import (
    CitationRef,
    Finish,
    Passage,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    Usage,
    UsageReport,
)

__all__ = ["LocalProvider"]

_TOKEN = re.compile(r"\S+\s*|\s+")


class LocalProvider:
    """Answers from the game's rulebook passages; ``token_delay`` paces the stream."""

    name = "local"

    def __init__(self, *, token_delay: float = 0.02, max_passages: int = 2) -> None:
        self.model = "rulebook-lookup"
        self._delay = token_delay
        self._max_passages = max_passages

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        question = request.messages[-1].content if request.messages else ""
        passages = request.passages[: self._max_passages]
        # Each part of the answer, with the passage it quotes (cited as it starts, so a
        # turn cancelled midway cites what it showed, not what it was given).
        parts: list[tuple[str, Passage | None]]
        if request.rules_silent:
            parts = [
                (
                    "I am the offline rulebook lookup (not a language model). The rules of "
                    f"{request.game_name} (rulebook, errata and FAQ) say nothing about that: "
                    "the rules are silent on this question.",
                    None,
                )
            ]
        elif not passages:
            parts = [
                (
                    "I am the offline rulebook lookup (not a language model), and I have no "
                    f"rulebook for {request.game_name} yet, so I cannot answer from the "
                    "rules. Ask an admin to add one.",
                    None,
                )
            ]
        else:
            parts = [
                (
                    "I am the offline rulebook lookup, not a language model: here is what "
                    f"the rulebook of {request.game_name} says that matches your question."
                    "\n\n",
                    None,
                )
            ]
            for n, p in enumerate(passages, 1):
                where = f"{p.title} — {p.heading}" if p.heading else p.title
                if p.page is not None:
                    where += f", page {p.page}"
                end = "" if n == len(passages) else "\n\n"
                parts.append((f"[{p.id}] {where}:\n{p.text.rstrip()}{end}", p))
        output_tokens = 0
        for text, quoted in parts:
            if quoted is not None:
                yield CitationRef(quoted.id, quoted.text[:200])
            for token in _TOKEN.findall(text):
                if self._delay:
                    await asyncio.sleep(self._delay)
                output_tokens += 1
                yield TextDelta(token)
        input_tokens = len(question.split()) + sum(len(p.text.split()) for p in passages)
        yield UsageReport(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
        yield Finish("stop")

    async def aclose(self) -> None:
        return None
