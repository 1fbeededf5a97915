"""The SDK-backed providers, through their real SDKs, against loopback vendor servers.

``ProviderContract`` holds the behaviour every provider shares (text, usage, error
translation, cancellation); each ``test_<vendor>.py`` subclasses it with its
upstream server and provider class, and adds what only that vendor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import anyio
import pytest

from chat_server.errors import ProviderError, ProviderUnavailable
from chat_server.providers.base import (
    ChatMessage,
    Finish,
    Passage,
    Provider,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    UsageReport,
)
from tests.upstreams import Script, Upstream

TIMEOUT = 2.0  # seconds any single await in these tests may take

PASSAGES = [
    Passage("p-setup", "doc-1", "Base rules", "Setup", "Each player takes five dice.", 1, "en"),
    Passage(
        "p-bid", "doc-1", "Base rules", "Bidding", "Every bid must raise the last bid.", 2, "en"
    ),
    Passage("p-call", "doc-1", "Base rules", None, "Calling a bid reveals every cup.", 3, "en"),
]
TOKENS = ["Each", " player", " takes", " fïve", ' "dice"', "\n", "✓"]


def make_request(passages: list[Passage] | None = None) -> ProviderRequest:
    """A second question in a conversation about a game with three passages."""
    return ProviderRequest(
        model="",
        system="",
        messages=[
            ChatMessage("user", "What do I need to start?"),
            ChatMessage("assistant", "Dice and a cup [p-setup]."),
            ChatMessage("user", "How many dice does each player take?"),
        ],
        passages=PASSAGES if passages is None else passages,
        language="en",
        game_name="Perudo",
        max_output_tokens=256,
    )


async def collect(provider: Provider, request: ProviderRequest | None = None) -> list[StreamEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in provider.stream(request or make_request())]


async def collect_failure(provider: Provider) -> tuple[list[StreamEvent], ProviderError]:
    """The events that arrived before the stream failed, and the failure."""
    events: list[StreamEvent] = []
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ProviderError) as failure:
            async for event in provider.stream(make_request()):
                events.append(event)
    return events, failure.value


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_until(condition: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Poll a condition that the upstream's thread makes true (no event to await)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


class ProviderContract:
    """What every SDK-backed provider does; subclasses name the vendor."""

    upstream_cls: ClassVar[type[Upstream]]
    provider_cls: ClassVar[type[Any]]

    @pytest.fixture
    def upstream(self) -> Iterator[Upstream]:
        with self.upstream_cls(Script(tokens=list(TOKENS))) as upstream:
            yield upstream

    def make_provider(self, base_url: str, **kwargs: float) -> Any:
        return self.provider_cls(
            api_key="test-key", model="loopback-model", base_url=base_url, **kwargs
        )

    @contextlib.asynccontextmanager
    async def opened(self, base_url: str, **kwargs: float) -> AsyncIterator[Any]:
        """A provider for ``base_url``, closed (within ``TIMEOUT``) on the way out."""
        provider = self.make_provider(base_url, **kwargs)
        try:
            yield provider
        finally:
            async with asyncio.timeout(TIMEOUT):
                await provider.aclose()

    @pytest.fixture
    async def provider(self, upstream: Upstream) -> AsyncIterator[Any]:
        async with self.opened(upstream.base_url) as provider:
            yield provider

    async def test_text_and_usage_arrive(self, upstream: Upstream, provider: Provider) -> None:
        """The answer streams token by token, then the usage, then a normal finish."""
        events = await collect(provider)
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        assert deltas == TOKENS
        assert isinstance(events[-2], UsageReport)
        assert events[-2].usage.input_tokens == upstream.script.input_tokens
        assert events[-2].usage.output_tokens == len(TOKENS)
        assert events[-1] == Finish("stop")

    async def test_a_cut_answer_finishes_with_length(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """An answer that hit the token limit ends with finish reason "length"."""
        upstream.script.finish = "length"
        events = await collect(provider)
        assert events[-1] == Finish("length")
        assert text_of(events) == "".join(TOKENS)

    async def test_conversation_and_passages_reach_the_provider(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """The history, the question and every passage are in the request body."""
        await collect(provider)
        body = json.dumps(upstream.requests[0].body, ensure_ascii=False)
        for passage in PASSAGES:
            assert passage.text in body
        for message in make_request().messages:
            assert message.content in body
        assert "Perudo" in body

    @pytest.mark.parametrize("status", [400, 401, 404, 500])
    async def test_an_error_status_is_a_provider_error(
        self, upstream: Upstream, provider: Provider, status: int
    ) -> None:
        """Any error status other than an overload is provider_error, with no tokens."""
        upstream.script.fail_status = status
        events, failure = await collect_failure(provider)
        assert events == []
        assert type(failure) is ProviderError
        assert isinstance(failure.__cause__, Exception)

    @pytest.mark.parametrize("status", [429, 503])
    async def test_an_overload_status_is_unavailable(
        self, upstream: Upstream, provider: Provider, status: int
    ) -> None:
        """429 and 503 are provider_unavailable, so that the caller may fall back."""
        upstream.script.fail_status = status
        events, failure = await collect_failure(provider)
        assert events == []
        assert isinstance(failure, ProviderUnavailable)
        assert len(upstream.requests) == 1  # the SDK did not retry on its own

    @pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
    async def test_the_proxy_in_the_environment_carries_the_request(
        self, upstream: Upstream, monkeypatch: pytest.MonkeyPatch, variable: str
    ) -> None:
        """Behind an egress proxy named in the environment, the answer comes through it.

        The loopback upstream plays the proxy (it reads an absolute-form target like
        an origin-form one); the provider's host does not resolve (``.invalid``), so
        an answer can only have come through the proxy.
        """
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)
        origin = f"127.0.0.1:{upstream.port}"
        monkeypatch.setenv(variable, f"http://{origin}")
        unresolvable = upstream.base_url.replace(origin, "provider.invalid")
        async with self.opened(unresolvable) as provider:
            events = await collect(provider)
        assert text_of(events) == "".join(TOKENS)
        assert [r.headers["host"] for r in upstream.requests] == ["provider.invalid"]

        monkeypatch.setenv("NO_PROXY", "provider.invalid")
        async with self.opened(unresolvable) as provider:
            _, failure = await collect_failure(provider)
        assert isinstance(failure, ProviderUnavailable)  # straight to a host that does not resolve
        assert len(upstream.requests) == 1

    async def test_a_closed_port_is_unavailable(self) -> None:
        """A provider nobody listens for is provider_unavailable."""
        async with self.opened(f"http://127.0.0.1:{closed_port()}") as provider:
            events, failure = await collect_failure(provider)
        assert events == []
        assert isinstance(failure, ProviderUnavailable)

    @pytest.mark.parametrize(
        "reply",
        [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b""],
        ids=["not-http", "bad-header", "closed-at-once"],
    )
    async def test_an_upstream_that_does_not_speak_http_is_unavailable(self, reply: bytes) -> None:
        """Whatever the transport makes of a broken answer, it is provider_unavailable."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with self.opened(f"http://127.0.0.1:{port}/v1") as provider:
                events, failure = await collect_failure(provider)
        finally:
            server.close()
        assert events == []
        assert isinstance(failure, ProviderUnavailable)

    async def test_a_drop_mid_stream_is_unavailable_after_the_tokens(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A connection cut mid-answer keeps the tokens sent, then is unavailable."""
        upstream.script.drop_after = 3
        events, failure = await collect_failure(provider)
        assert text_of(events) == "".join(TOKENS[:3])
        assert isinstance(failure, ProviderUnavailable)

    async def test_garbage_is_a_provider_error(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A stream event that is not JSON is provider_error, after the good tokens."""
        upstream.script.garbage_after = 2
        events, failure = await collect_failure(provider)
        assert text_of(events) == "".join(TOKENS[:2])
        assert type(failure) is ProviderError

    @pytest.mark.parametrize("count", ["input_tokens", "output_tokens"])
    @pytest.mark.parametrize(
        "figure",
        ["100000000000000000000", "1e400", "2147483648", "-1", "12.5"],
        ids=["1e20", "1e400", "past-int32", "negative", "fraction"],
    )
    async def test_a_usage_count_that_is_no_count_is_a_provider_error(
        self, upstream: Upstream, provider: Provider, count: str, figure: str
    ) -> None:
        """A usage count that is not a whole number from 0 to 2**31-1 (10**20, 1e400 that
        parses to infinity) is a malformed stream: provider_error, never reported."""
        upstream.script.raw_numbers = {count: figure}
        events, failure = await collect_failure(provider)
        assert type(failure) is ProviderError
        assert "".join(TOKENS).startswith(text_of(events))
        for report in (e for e in events if isinstance(e, UsageReport)):
            assert report.usage.input_tokens == upstream.script.input_tokens
            assert report.usage.output_tokens <= len(TOKENS)

    async def test_the_largest_usage_count_is_reported(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A count of 2**31-1 (what the usage columns hold) is a count, written 2147483647.0
        as well."""
        upstream.script.raw_numbers = {
            "input_tokens": "2147483647.0",
            "output_tokens": "2147483647",
        }
        events = await collect(provider)
        assert text_of(events) == "".join(TOKENS)
        assert isinstance(events[-2], UsageReport)
        assert events[-2].usage.input_tokens == 2**31 - 1
        assert events[-2].usage.output_tokens == 2**31 - 1

    async def test_an_overload_mid_stream_is_unavailable(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """An overload reported inside the stream is provider_unavailable."""
        upstream.script.error_after = 2
        events, failure = await collect_failure(provider)
        assert text_of(events) == "".join(TOKENS[:2])
        assert isinstance(failure, ProviderUnavailable)

    async def test_a_server_error_mid_stream_is_a_provider_error(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """A server error reported inside the stream is provider_error."""
        upstream.script.error_after = 2
        upstream.script.error_overloaded = False
        events, failure = await collect_failure(provider)
        assert text_of(events) == "".join(TOKENS[:2])
        assert type(failure) is ProviderError

    async def test_a_silent_upstream_times_out_as_unavailable(self, upstream: Upstream) -> None:
        """A provider that stops sending for longer than the read timeout is unavailable."""
        upstream.script.first_token_delay = 1.0
        started = time.monotonic()
        async with self.opened(upstream.base_url, read_timeout=0.2) as provider:
            events, failure = await collect_failure(provider)
        assert isinstance(failure, ProviderUnavailable)
        assert text_of(events) == ""
        assert time.monotonic() - started < 0.9

    async def test_cancelling_the_turn_closes_the_upstream_connection(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Cancelling the consuming task closes the provider's connection within 100 ms."""
        upstream.script.tokens = ["tok"] * 50
        upstream.script.token_delay = 0.05
        seen: list[str] = []
        two = asyncio.Event()

        async def consume() -> None:
            async for event in provider.stream(make_request()):
                if isinstance(event, TextDelta):
                    seen.append(event.text)
                    if len(seen) == 2:
                        two.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(TIMEOUT):
            await two.wait()
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(TIMEOUT):
                await task
        await wait_until(upstream.disconnected.is_set, within=0.5)
        assert upstream.disconnected_at is not None
        assert upstream.disconnected_at - cancelled_at < 0.1
        assert len(seen) < 50

    async def test_an_anyio_cancel_scope_closes_the_upstream_connection(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Cancelling an AnyIO task group (as Starlette runs turns) closes it within 100 ms."""
        upstream.script.tokens = ["tok"] * 50
        upstream.script.token_delay = 0.05
        seen: list[str] = []
        two = anyio.Event()

        async def consume() -> None:
            async for event in provider.stream(make_request()):
                if isinstance(event, TextDelta):
                    seen.append(event.text)
                    if len(seen) == 2:
                        two.set()

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(consume)
                await two.wait()
                group.cancel_scope.cancel()  # level-triggered: every later await is cancelled
                cancelled_at = time.monotonic()
        await wait_until(upstream.disconnected.is_set, within=0.5)
        assert upstream.disconnected_at is not None
        assert upstream.disconnected_at - cancelled_at < 0.1
        assert len(seen) < 50

    async def test_closing_the_stream_closes_the_upstream_connection(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Closing the generator between two tokens closes the connection at once."""
        upstream.script.tokens = ["tok"] * 50
        upstream.script.token_delay = 0.05
        stream = provider.stream(make_request())
        count = 0
        async with asyncio.timeout(TIMEOUT):
            async for event in stream:
                count += isinstance(event, TextDelta)
                if count == 2:
                    break
            closed_at = time.monotonic()
            await stream.aclose()  # type: ignore[attr-defined]
        await wait_until(upstream.disconnected.is_set, within=0.5)
        assert upstream.disconnected_at is not None
        assert upstream.disconnected_at - closed_at < 0.1

    async def test_concurrent_streams_do_not_mix(
        self, upstream: Upstream, provider: Provider
    ) -> None:
        """Several turns streaming at once through one provider each get the whole answer."""
        upstream.script.token_delay = 0.01
        results = await asyncio.gather(*(collect(provider) for _ in range(4)))
        assert [text_of(events) for events in results] == ["".join(TOKENS)] * 4
        assert len(upstream.requests) == 4

    async def test_the_connection_is_reused_and_released_by_aclose(
        self, upstream: Upstream
    ) -> None:
        """Finished streams give their connection back to the pool; aclose() closes it."""
        async with self.opened(upstream.base_url) as provider:
            for _ in range(3):
                await collect(provider)
            assert upstream.open_connections == 1
        await wait_until(lambda: upstream.open_connections == 0, within=1.0)
        assert not upstream.disconnected.is_set()
