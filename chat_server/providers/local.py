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
        quoted: list[Passage] = []
        if request.rules_silent:
            intro = (
                "I am the offline rulebook lookup (not a language model). The rules of "
                f"{request.game_name} (rulebook, errata and FAQ) say nothing about that: "
                "the rules are silent on this question."
            )
        elif not passages:
            intro = (
                f"I am the offline rulebook lookup (not a language model), and I have no "
                f"rulebook for {request.game_name} yet, so I cannot answer from the rules. "
                "Ask an admin to add one."
            )
        else:
            intro = (
                "I am the offline rulebook lookup, not a language model: here is what the "
                f"rulebook of {request.game_name} says that matches your question."
            )
            quoted = passages
        # The answer in parts, each with the passage it quotes, cited as it starts: a
        # turn cancelled midway cites what it showed, not what it was given.
        parts: list[tuple[str, Passage | None]] = [(intro, None)]
        for p in quoted:
            where = f"{p.title} — {p.heading}" if p.heading else p.title
            if p.page is not None:
                where += f", page {p.page}"
            parts.append((f"[{p.id}] {where}:\n{p.text.rstrip()}", p))
        output_tokens = 0
        for n, (text, source) in enumerate(parts):
            if source is not None:
                yield CitationRef(source.id, source.text[:200])
            if n < len(parts) - 1:
                text += "\n\n"
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
