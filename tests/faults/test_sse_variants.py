"""Legal but unusual event streams through the real OpenAI, Anthropic and Gemini SDK
clients: every framing gives the whole answer, text comes out valid whatever escapes
the JSON holds, and an answer that is not an event stream is provider_error saying so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chat_server.errors import ProviderError, ProviderUnavailable
from chat_server.providers.anthropic import AnthropicProvider
from chat_server.providers.base import Finish, StreamEvent, TextDelta, UsageReport
from chat_server.providers.gemini import GeminiProvider
from chat_server.providers.openai import OpenAIProvider
from chat_server.providers.timing import with_timeouts
from tests.providers import make_request
from tests.sse_framing import FRAMINGS, plain
from tests.upstreams import AnthropicUpstream, GeminiUpstream, OpenAIUpstream, Script, Upstream

pytestmark = pytest.mark.faults

TIMEOUT = 20.0
VENDORS: dict[str, tuple[type[Upstream], type[Any]]] = {
    "openai": (OpenAIUpstream, OpenAIProvider),
    "anthropic": (AnthropicUpstream, AnthropicProvider),
    "gemini": (GeminiUpstream, GeminiProvider),
}
# Non-ASCII of one to four bytes, JSON-escaped by the upstream unless ensure_ascii=False.
TOKENS = ["Roll ", "fïve ", "dice ", "→ ", "🎲", " ✓"]


@pytest.fixture(params=list(VENDORS))
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def upstream(vendor: str) -> Iterator[Upstream]:
    with VENDORS[vendor][0](Script(tokens=list(TOKENS))) as upstream:
        yield upstream


@pytest.fixture
async def provider(vendor: str, upstream: Upstream) -> AsyncIterator[Any]:
    provider = VENDORS[vendor][1](api_key="k", model="loopback-model", base_url=upstream.base_url)
    try:
        yield provider
    finally:
        await provider.aclose()


async def answer(provider: Any) -> list[StreamEvent]:
    """The events as a turn gets them (through ``with_timeouts``, which mends text)."""
    async with asyncio.timeout(TIMEOUT):
        stream = with_timeouts(provider.stream(make_request()), first_token=10, idle=10)
        return [event async for event in stream]


def text(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_every_legal_framing_gives_the_whole_answer(
    upstream: Upstream, provider: Any, framing: str
) -> None:
    """CRLF, lone CR, no space, comments, multi-line data, BOM, cuts inside characters
    and CRLFs, one byte per write: the same text, usage and finish as plain framing."""
    upstream.script.writes = FRAMINGS[framing]
    upstream.script.ensure_ascii = framing != "inside-characters"  # raw UTF-8 to cut into
    events = await answer(provider)
    assert text(events) == "".join(TOKENS)
    usage = next(e.usage for e in events if isinstance(e, UsageReport))
    assert usage.input_tokens == upstream.script.input_tokens
    assert events[-1] == Finish("stop")


async def test_line_separators_inside_json_text_are_text(upstream: Upstream, provider: Any) -> None:
    """Raw U+2028, U+2029 and U+0085 inside a JSON string (legal JSON) arrive as text."""
    tokens = ["a\u2028b", " c\u2029d", " e\u0085f"]
    upstream.script = Script(tokens=tokens, ensure_ascii=False, writes=plain)
    assert text(await answer(provider)) == "".join(tokens)


async def test_a_surrogate_pair_split_across_two_events_is_joined(
    upstream: Upstream, provider: Any
) -> None:
    """``"\\ud83c"`` ending one event and ``"\\udfb2"`` starting the next: one 🎲."""
    upstream.script = Script(tokens=["Dice ", "\ud83c", "\udfb2", " roll", "\ud83c\udfb2"])
    events = await answer(provider)
    assert text(events) == "Dice 🎲 roll🎲"
    for event in events:
        if isinstance(event, TextDelta):
            event.text.encode("utf-8")  # every delta on its own is valid UTF-8


async def test_lone_surrogates_and_nul_become_replacement_characters(
    upstream: Upstream, provider: Any
) -> None:
    """A lone high or low surrogate, and a NUL, are U+FFFD; the rest of the text stays."""
    upstream.script = Script(tokens=["a\ud83c", "b", "\udfb2c", "d\x00e", "\ud800"])
    assert text(await answer(provider)) == "a\ufffdb\ufffdcd\ufffde\ufffd"


async def test_a_one_megabyte_event_arrives_whole(upstream: Upstream, provider: Any) -> None:
    """One event of a million characters is read whole (the deltas are cut later)."""
    upstream.script = Script(tokens=["x" * 1_000_000, "!"])
    assert text(await answer(provider)) == "x" * 1_000_000 + "!"


@pytest.mark.parametrize(
    "kind, body",
    [
        ("application/json", b'{"id": "x", "choices": []}'),
        ("text/html; charset=utf-8", b"<html><body>Welcome to the proxy</body></html>"),
        ("text/plain", b"data: not really\n\n"),
    ],
)
async def test_an_answer_that_is_not_an_event_stream_is_provider_error(
    vendor: str, upstream: Upstream, provider: Any, kind: str, body: bytes
) -> None:
    """JSON, HTML or any other type to a stream request: provider_error naming it."""
    upstream.script = Script(plain_answer=(kind, body))
    with pytest.raises(ProviderError) as failure:
        await answer(provider)
    assert not isinstance(failure.value, ProviderUnavailable)
    assert failure.value.code == "provider_error"
    assert "not an event stream" in failure.value.message
    assert kind.split(";")[0] in failure.value.message
