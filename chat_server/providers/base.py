"""The one small interface every model provider implements.

A provider turns a ``ProviderRequest`` (system prompt, conversation, rulebook
passages) into an async stream of ``StreamEvent`` values. It is made once, in the
app's lifespan, and shared by every turn; ``stream()`` is safe to call concurrently.

Cancellation: the turn consumes ``stream()`` in a task. Cancelling that task raises
``CancelledError`` at the provider's current ``await``; each adapter closes its
upstream HTTP response in a ``finally`` so that no more tokens are paid for.

Errors: adapters translate their SDK's exceptions at the border into
``ProviderUnavailable`` (429, 503, overload, connect errors, timeouts, a stream
dropped mid-way) or ``ProviderError`` (any other status, a malformed stream), with
``raise ... from exc``. A usage count goes through ``token_count``: one that is not a
whole number from 0 to ``MAX_TOKENS`` makes the stream malformed. First-token and idle
timeouts are applied by the caller (``chat_server.providers.timing``), not by each
adapter.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..rulebooks import Passage  # re-exported: the providers' interface names it

__all__ = [
    "MAX_TOKENS",
    "ChatMessage",
    "CitationRef",
    "Finish",
    "Passage",
    "Provider",
    "ProviderRequest",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "UsageReport",
    "token_count",
]

#: The most tokens one usage count may hold: the range of the columns that store it
#: (``usage_events``, INTEGER: 32 bits on Postgres).
MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """Everything a provider needs for one answer; the last message is the question.

    ``model`` overrides the provider's configured model when not empty; ``system`` holds
    extra instructions appended to the grounded prompt each provider builds from
    ``passages`` (``prompt.py``), usually empty. ``rules_silent``: the game has rules,
    but no passage cleared the relevance floor (``passages`` is then empty): the model is
    told that the rules do not answer the question.
    """

    model: str
    system: str
    messages: list[ChatMessage]
    passages: list[Passage]
    language: str
    game_name: str
    max_output_tokens: int = 1024
    rules_silent: bool = False


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


def token_count(value: object) -> int:
    """A usage count as a provider sent it (parsed JSON), checked: None is 0.

    Raises ``ValueError`` unless it is a whole number from 0 to ``MAX_TOKENS`` (an int,
    or a float with no fraction: ``12.0``): a string, a fraction, infinity (``1e400``
    parses to it) or a figure out of range is what an adapter calls a malformed event.
    """
    if value is None:
        return 0
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"a usage count must be a whole number from 0 to {MAX_TOKENS}")
    return value


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class CitationRef:
    """The model cited a passage (by ``Passage.id``); ``quote`` is the cited text."""

    passage_id: str
    quote: str | None = None


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Token counts so far. ``final`` is False for an early report (Anthropic's
    ``message_start``), True for the end-of-stream one; a later report replaces an
    earlier one."""

    usage: Usage = field(default_factory=Usage)
    final: bool = True


@dataclass(frozen=True, slots=True)
class Finish:
    reason: Literal["stop", "length"] = "stop"


StreamEvent = TextDelta | CitationRef | UsageReport | Finish


@runtime_checkable
class Provider(Protocol):
    """A streaming model provider. ``name`` is the contract's provider name."""

    name: str
    model: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream the answer; raise ``ProviderError``/``ProviderUnavailable`` on failure."""
        ...

    async def aclose(self) -> None:
        """Release the SDK client (called once, at shutdown)."""
        ...
