"""The Gemini provider through the real ``google-genai`` SDK against a loopback server."""

from __future__ import annotations

from chat_server.providers.base import Provider, TextDelta, UsageReport
from chat_server.providers.gemini import GeminiProvider
from tests.providers import PASSAGES, ProviderContract, collect, make_request
from tests.upstreams import GeminiUpstream, Upstream


class TestGemini(ProviderContract):
    upstream_cls = GeminiUpstream
    provider_cls = GeminiProvider

    async def test_the_request_carries_the_system_instruction(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """The passages go in the system instruction, the turns as user/model contents."""
        await collect(provider)
        request = upstream.requests[0]
        assert request.path.endswith("/models/loopback-model:streamGenerateContent")
        assert request.query["alt"] == ["sse"]
        assert request.headers["x-goog-api-key"] == "test-key"
        body = request.body
        system = body["systemInstruction"]["parts"][0]["text"]
        assert all(f"[{p.id}]" in system and p.text in system for p in PASSAGES)
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        assert [c["parts"][0]["text"] for c in body["contents"]] == [
            m.content for m in make_request().messages
        ]
        assert body["generationConfig"]["maxOutputTokens"] == 256

    async def test_cached_tokens_are_reported(self, upstream: Upstream, provider: Provider) -> None:
        """Cached content tokens from the usage metadata arrive as cache reads."""
        upstream.script.cache_read_tokens = 64
        events = await collect(provider)
        report = next(e for e in events if isinstance(e, UsageReport) and e.final)
        assert report.usage.cache_read_tokens == 64
        assert report.usage.input_tokens == upstream.script.input_tokens

    async def test_prompt_tokens_are_reported_before_the_text(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """The first chunk's prompt count arrives as an early report, before any text."""
        upstream.script.input_tokens = 321
        events = await collect(provider)
        first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
        early = [e for e in events[:first_text] if isinstance(e, UsageReport)]
        assert len(early) == 1 and not early[0].final
        assert (early[0].usage.input_tokens, early[0].usage.output_tokens) == (321, 0)
