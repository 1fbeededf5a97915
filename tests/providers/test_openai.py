"""The OpenAI provider through the real ``openai`` SDK against a loopback server."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from chat_server.providers.base import (
    Finish,
    Passage,
    Provider,
    StreamEvent,
    TextDelta,
    Usage,
    UsageReport,
)
from chat_server.providers.openai import OpenAIProvider
from tests.providers import PASSAGES, TOKENS, ProviderContract, collect, make_request
from tests.upstreams import OpenAIUpstream, RecordedRequest, Script, Upstream, _Conn


class TestOpenAI(ProviderContract):
    upstream_cls = OpenAIUpstream
    provider_cls = OpenAIProvider

    async def test_the_request_streams_with_usage(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """The request asks for a stream with a final usage chunk, with the system prompt."""
        await collect(provider)
        request = upstream.requests[0]
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer test-key"
        body = request.body
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["model"] == "loopback-model"
        assert body["max_completion_tokens"] == 256
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "user"]
        system = body["messages"][0]["content"]
        assert all(f"[{p.id}]" in system and p.text in system for p in PASSAGES)

    async def test_errata_and_pages_reach_the_model(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """An errata passage is marked as overriding the rulebook; a PDF passage names its page."""
        errata = Passage(
            "p-err", "doc-2", "Errata", None, "Bids may not go down.", 0, "en", "errata"
        )
        paged = Passage("p-pdf", "doc-3", "Rulebook", "Bidding", "Bid upward.", 0, "en", page=7)
        await collect(provider, make_request([paged, errata]))
        system = upstream.requests[0].body["messages"][0]["content"]
        assert "[p-pdf] Rulebook — Bidding (page 7)" in system
        assert "[p-err] Errata (errata)" in system
        assert "overrides it" in system

    async def test_cached_prompt_tokens_are_reported(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Cached prompt tokens from the usage chunk arrive as cache reads."""
        upstream.script.cache_read_tokens = 9
        events = await collect(provider)
        report = next(e for e in events if isinstance(e, UsageReport))
        assert report.usage.cache_read_tokens == 9

    async def test_the_request_model_wins_over_the_default(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A session's own model is the one asked for."""
        await collect(provider, replace(make_request(), model="gpt-other"))
        assert upstream.requests[0].body["model"] == "gpt-other"


def _raw_utf8(event: bytes) -> bytes:
    """A ``data:`` event with its JSON re-encoded as raw UTF-8 (no ``\\u`` escapes)."""
    if not event.startswith(b"data: {"):
        return event
    payload = json.loads(event[len(b"data: ") :])
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class SplitUpstream(OpenAIUpstream):
    """The usual answer in raw UTF-8, after a comment and an event name, with the chosen
    line ends, cut into HTTP chunks by ``cut`` (the client reads them one by one)."""

    line_end = b"\n"
    gzip = False
    unterminated_usage = False  # no [DONE], and the usage line has no line end
    cut: Callable[[bytes], list[bytes]] | None = None

    async def _respond(self, conn: _Conn, req: RecordedRequest) -> bool:
        script = self.script
        events = [
            b": keep-alive\n",
            b"event: message\n",
            *self.head_events(req, script),
            *(self.token_event(req, script, i, text) for i, text in enumerate(script.tokens)),
            *self.tail_events(req, script),
        ]
        if self.unterminated_usage:
            events = [event for event in events if event != b"data: [DONE]\n\n"]
        body = b"".join(_raw_utf8(event) for event in events)
        if self.unterminated_usage:
            body = body.rstrip(b"\n")
        body = body.replace(b"\n", self.line_end)
        encoding = b""
        if self.gzip:
            body, encoding = gzip.compress(body), b"content-encoding: gzip\r\n"
        conn.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n%s"
            b"transfer-encoding: chunked\r\n\r\n" % encoding
        )
        for piece in self.cut(body) if self.cut else [body]:
            conn.chunk(piece)
        return conn.write(b"0\r\n\r\n")


def _bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


@pytest.fixture
def split_upstream() -> Iterator[SplitUpstream]:
    with SplitUpstream(Script(tokens=list(TOKENS))) as upstream:
        yield upstream


async def _answer(upstream: Upstream) -> list[StreamEvent]:
    provider = OpenAIProvider(api_key="test-key", model="m", base_url=upstream.base_url)
    try:
        return await collect(provider)
    finally:
        await provider.aclose()


def _assert_whole_answer(events: list[StreamEvent]) -> None:
    assert [e.text for e in events if isinstance(e, TextDelta)] == TOKENS
    assert events[-2] == UsageReport(Usage(input_tokens=17, output_tokens=len(TOKENS)))
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_lines_cut_at_every_byte_arrive_whole(
    split_upstream: SplitUpstream, line_end: bytes
) -> None:
    """An answer read one byte at a time, with any SSE line end, gives the same tokens."""
    split_upstream.line_end = line_end
    split_upstream.cut = _bytewise
    _assert_whole_answer(await _answer(split_upstream))


async def test_a_character_cut_between_two_chunks_arrives_whole(
    split_upstream: SplitUpstream,
) -> None:
    """A multi-byte UTF-8 character split across two chunks is decoded once whole."""

    def inside_the_check_mark(body: bytes) -> list[bytes]:
        cut = body.index("✓".encode()) + 1
        return [body[:cut], body[cut:]]

    split_upstream.cut = inside_the_check_mark
    _assert_whole_answer(await _answer(split_upstream))


async def test_a_last_line_without_a_line_end_counts(split_upstream: SplitUpstream) -> None:
    """A body that ends in the middle of its last line (the usage) still reports it."""
    split_upstream.unterminated_usage = True
    _assert_whole_answer(await _answer(split_upstream))


async def test_a_compressed_stream_is_decoded(split_upstream: SplitUpstream) -> None:
    """A gzip-encoded event stream (as some proxies send) is read like a plain one."""
    split_upstream.gzip = True
    split_upstream.cut = _bytewise
    _assert_whole_answer(await _answer(split_upstream))
