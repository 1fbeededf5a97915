"""The OpenAI provider through the real ``openai`` SDK against a loopback server."""

from __future__ import annotations

from dataclasses import replace

from chat_server.providers.base import Provider, UsageReport
from chat_server.providers.openai import OpenAIProvider
from tests.providers import PASSAGES, ProviderContract, collect, make_request
from tests.upstreams import OpenAIUpstream, Upstream


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
