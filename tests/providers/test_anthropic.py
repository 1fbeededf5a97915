"""The Anthropic provider through the real ``anthropic`` SDK against a loopback server."""

from __future__ import annotations

import pytest

from chat_server.errors import ProviderError, ProviderUnavailable
from chat_server.providers.anthropic import AnthropicProvider
from chat_server.providers.base import CitationRef, Provider, TextDelta, UsageReport
from chat_server.providers.prompt import system_instructions
from tests.providers import (
    PASSAGES,
    TOKENS,
    ProviderContract,
    collect,
    collect_failure,
    make_request,
    text_of,
)
from tests.upstreams import AnthropicUpstream, Upstream


class TestAnthropic(ProviderContract):
    upstream_cls = AnthropicUpstream
    provider_cls = AnthropicProvider

    async def test_passages_are_one_cached_citable_document(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """The passages go as one document block, a content block each, cached and citable."""
        await collect(provider)
        request = upstream.requests[0]
        assert request.path == "/v1/messages"
        body = request.body
        assert body["stream"] is True
        assert body["max_tokens"] == 256
        question = body["messages"][-1]
        assert question["role"] == "user"
        document, text = question["content"]
        assert document["type"] == "document"
        assert document["cache_control"] == {"type": "ephemeral"}
        assert document["citations"] == {"enabled": True}
        assert document["source"]["type"] == "content"
        assert [b["text"] for b in document["source"]["content"]] == [p.text for p in PASSAGES]
        assert text == {"type": "text", "text": make_request().messages[-1].content}
        assert [m["content"] for m in body["messages"][:-1]] == [
            m.content for m in make_request().messages[:-1]
        ]
        system = body["system"][0]["text"]
        assert system == system_instructions("Perudo", "en", True)
        assert PASSAGES[0].text not in system

    @pytest.mark.parametrize("block", [0, 1, 2])
    async def test_a_citation_names_the_cited_passage(
        self, upstream: Upstream, provider: Provider, block: int
    ) -> None:
        """A citation of document block i comes back as passage i, with the quote."""
        upstream.script.cite_block = block
        events = await collect(provider)
        citations = [e for e in events if isinstance(e, CitationRef)]
        assert citations == [CitationRef(PASSAGES[block].id, PASSAGES[block].text)]
        assert text_of(events) == "".join(TOKENS)

    async def test_a_citation_past_the_range_of_a_float_is_a_provider_error(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A citation whose block index is 1e400 (infinity once parsed) is a malformed
        stream: provider_error, not an internal error."""
        upstream.script.raw_numbers = {"cite_block": "1e400"}
        events, failure = await collect_failure(provider)
        assert type(failure) is ProviderError
        assert not [e for e in events if isinstance(e, (CitationRef, TextDelta))]

    async def test_without_passages_there_is_no_document(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A game with no passages sends the plain question and gets no citations."""
        events = await collect(provider, make_request(passages=[]))
        body = upstream.requests[0].body
        assert body["messages"][-1]["content"] == make_request().messages[-1].content
        assert body["system"][0]["text"] == system_instructions("Perudo", "en", False)
        assert not [e for e in events if isinstance(e, CitationRef)]
        assert [e.text for e in events if isinstance(e, TextDelta)] == TOKENS

    async def test_cache_usage_is_reported(self, upstream: Upstream, provider: Provider) -> None:
        """Cache reads and writes from the stream arrive in the usage."""
        upstream.script.cache_read_tokens = 120
        upstream.script.cache_creation_tokens = 30
        upstream.script.output_tokens = 42
        events = await collect(provider)
        report = next(e for e in events if isinstance(e, UsageReport) and e.final)
        assert report.usage.input_tokens == upstream.script.input_tokens
        assert report.usage.output_tokens == 42
        assert report.usage.cache_read_tokens == 120
        assert report.usage.cache_creation_tokens == 30

    async def test_input_tokens_are_reported_before_the_text(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """message_start's input and cache counts arrive as an early report, before any text."""
        upstream.script.input_tokens = 777
        upstream.script.cache_read_tokens = 5
        events = await collect(provider)
        first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
        early = [e for e in events[:first_text] if isinstance(e, UsageReport)]
        assert len(early) == 1 and not early[0].final
        assert (early[0].usage.input_tokens, early[0].usage.cache_read_tokens) == (777, 5)

    async def test_overloaded_529_is_unavailable(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Anthropic's 529 "overloaded" is provider_unavailable."""
        upstream.script.fail_status = 529
        events, failure = await collect_failure(provider)
        assert events == []
        assert isinstance(failure, ProviderUnavailable)
