"""Turns through the real provider SDKs, end to end: the server relays a loopback
vendor upstream (its exact SSE wire format) to a WebSocket client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.upstreams import AnthropicUpstream, GeminiUpstream, OpenAIUpstream, Script
from tests.wsclient import Client, ws_client


@pytest.fixture
def openai_up() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as upstream:
        yield upstream


@pytest.fixture
def anthropic_up() -> Iterator[AnthropicUpstream]:
    with AnthropicUpstream() as upstream:
        yield upstream


def settings_for(tmp_path: Path, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        ws_max_frames_per_second=1000,
        ws_frame_burst=1000,
        provider_first_token_timeout=2.0,
        provider_idle_timeout=2.0,
        **extra,
    )


def catan(server: RunningServer) -> str:
    token = server.token(role="admin")
    listing = httpx.get(
        f"{server.url}/games",
        params={"search": "catan"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).json()
    return str(listing["games"][0]["id"])


def text_of(frames: list[dict[str, Any]]) -> str:
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    return "".join(d["text"] for d in deltas)


async def history(client: Client, session_id: str) -> list[dict[str, Any]]:
    await client.send({"type": "session.resume", "session_id": session_id})
    return list((await client.expect("session.ready"))["history"])


async def test_openai_tokens_arrive_in_order_and_whole(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """The deltas, concatenated, equal what the upstream sent; the rulebook reached it."""
    tokens = [f"tok{i} " for i in range(60)]
    openai_up.script = Script(tokens=tokens, token_delay=0.002, input_tokens=321)
    settings = settings_for(
        tmp_path,
        openai_api_key="sk-test",
        openai_base_url=openai_up.base_url,
        openai_model="gpt-test",
    )
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            ready = await client.start(catan(server), provider="openai")
            assert ready["session"]["provider"] == "openai"
            assert ready["session"]["model"] == "gpt-test"
            frames = await client.ask("What happens when a seven is rolled?")
    assert text_of(frames) == "".join(tokens)
    completed = frames[-1]
    assert completed["finish_reason"] == "stop"
    assert completed["usage"] == {"input_tokens": 321, "output_tokens": 60}
    body = openai_up.requests[0].body
    assert body["model"] == "gpt-test" and body["stream"] is True
    sent = str(body["messages"])
    assert "steals one random resource card" in sent
    assert completed["citations"][0]["heading"] == "The robber"


async def test_cancel_closes_the_upstream_at_once(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """cancel: turn.completed cancelled, and the upstream sees its connection closed
    within 100 ms."""
    openai_up.script = Script(tokens=[f"t{i} " for i in range(2000)], token_delay=0.01)
    settings = settings_for(tmp_path, openai_api_key="sk", openai_base_url=openai_up.base_url)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            session_id = (await client.start(catan(server)))["session"]["id"]
            await client.send({"type": "message", "text": "robber"})
            await client.expect("turn.started")
            for _ in range(3):
                await client.expect("turn.delta")
            sent_at = time.monotonic()
            await client.send({"type": "cancel"})
            frames = await client.until("turn.completed")
            assert frames[-1]["finish_reason"] == "cancelled"
            assert openai_up.disconnected.wait(2)
            assert openai_up.disconnected_at is not None
            assert openai_up.disconnected_at - sent_at < 0.1
            stored = (await history(client, session_id))[-1]
    assert stored["status"] == "cancelled"
    assert stored["content"] == text_of(frames[:-1]) or stored["content"].startswith("t0 ")


async def test_slow_reader_gets_everything_in_fewer_frames(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A client that stops reading for a while then reads gets all of the text, merged
    into fewer deltas, while the server's queue for it stayed bounded."""
    tokens = [f"{i:05d}" + "x" * 195 for i in range(3000)]
    openai_up.script = Script(tokens=tokens)
    settings = settings_for(tmp_path, openai_api_key="sk", openai_base_url=openai_up.base_url)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token(), max_queue=1) as client:
            await client.start(catan(server))
            await client.send({"type": "message", "text": "robber"})
            await asyncio.sleep(1.5)  # not reading while the upstream streams everything

            async def queued() -> int:
                return max((len(c.outbox) for c in server.services.connections.all()), default=0)

            assert server.call(queued()) <= 3
            frames = await client.until("turn.completed")
    assert text_of(frames) == "".join(tokens)
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert len(deltas) < len(tokens) / 2


async def test_fallback_answers_when_the_first_provider_fails_before_a_token(
    tmp_path: Path, openai_up: OpenAIUpstream, anthropic_up: AnthropicUpstream
) -> None:
    """A 500 before the stream: the next provider of PROVIDER_FALLBACK answers, and the
    usage says which one did."""
    openai_up.script = Script(fail_status=500)
    anthropic_up.script = Script(tokens=["From ", "Claude."])
    settings = settings_for(
        tmp_path,
        openai_api_key="sk",
        openai_base_url=openai_up.base_url,
        anthropic_api_key="sk-ant",
        anthropic_base_url=anthropic_up.base_url,
        provider_fallback="openai,anthropic",
    )
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server), provider="openai")
            frames = await client.ask("How do I win?")
        assert text_of(frames) == "From Claude."
        assert frames[-1]["finish_reason"] == "stop"
        admin = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(
                f"{server.url}/admin/usage", params={"group_by": "provider"}, headers=admin
            )
        rows = response.json()["rows"]
    assert [r["key"] for r in rows] == ["anthropic"]
    document = anthropic_up.requests[0].body["messages"][-1]["content"][0]
    assert document["cache_control"] == {"type": "ephemeral"}


async def test_drop_mid_stream_is_an_error_and_the_partial_text_is_stored(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A connection dropped mid-stream: error provider_unavailable, turn.completed error,
    the text streamed so far stored with status error, the quota kept."""
    openai_up.script = Script(tokens=["one ", "two ", "three ", "four "], drop_after=2)
    settings = settings_for(tmp_path, openai_api_key="sk", openai_base_url=openai_up.base_url)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            session_id = (await client.start(catan(server)))["session"]["id"]
            frames = await client.ask("robber")
            kinds = [f["type"] for f in frames]
            error = frames[kinds.index("error")]
            assert error["code"] == "provider_unavailable"
            assert error["turn_id"] == frames[-1]["turn_id"]
            assert frames[-1]["finish_reason"] == "error"
            assert text_of(frames) == "one two "
            stored = await history(client, session_id)
    assert (stored[-1]["status"], stored[-1]["content"]) == ("error", "one two ")
    assert frames[0]["quota"]["used"] == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "provider_error"), (429, "provider_unavailable"), (503, "provider_unavailable")],
)
async def test_failure_before_the_first_token_gives_the_quota_back(
    tmp_path: Path, openai_up: OpenAIUpstream, status: int, code: str
) -> None:
    """A provider failing before its first token: its code, an empty error message stored,
    and the quota given back."""
    openai_up.script = Script(fail_status=status)
    settings = settings_for(tmp_path, openai_api_key="sk", openai_base_url=openai_up.base_url)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            ready = await client.start(catan(server))
            frames = await client.ask("robber")
            assert [f["type"] for f in frames] == ["turn.started", "error", "turn.completed"]
            assert frames[1]["code"] == code
            stored = await history(client, ready["session"]["id"])
            assert (stored[-1]["status"], stored[-1]["content"]) == ("error", "")
            await client.send({"type": "session.resume", "session_id": ready["session"]["id"]})
            quota = (await client.expect("session.ready"))["quota"]
    assert quota["used"] == 0


async def test_slow_first_token_is_provider_unavailable(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """No first token within the configured timeout: provider_unavailable."""
    openai_up.script = Script(first_token_delay=5.0)
    settings = settings_for(tmp_path, openai_api_key="sk", openai_base_url=openai_up.base_url)
    settings = settings.model_copy(update={"provider_first_token_timeout": 0.5})
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server))
            started = time.monotonic()
            frames = await client.ask("robber")
    assert frames[1]["code"] == "provider_unavailable"
    assert frames[-1]["finish_reason"] == "error"
    assert time.monotonic() - started < 3.0


async def test_gemini_streams_through_the_server(tmp_path: Path) -> None:
    """Gemini's SSE stream reaches the client token by token, with usage."""
    with GeminiUpstream() as upstream:
        upstream.script = Script(tokens=["Gem", "ini ", "says"], input_tokens=9)
        settings = settings_for(tmp_path, gemini_api_key="g-key", gemini_base_url=upstream.base_url)
        with running_server(settings) as server:
            async with ws_client(server.ws_url, server.token()) as client:
                await client.start(catan(server), provider="gemini")
                frames = await client.ask("How do I win?")
    assert text_of(frames) == "Gemini says"
    assert frames[-1]["usage"] == {"input_tokens": 9, "output_tokens": 3}


async def test_unconfigured_provider_is_refused(tmp_path: Path) -> None:
    """session.start with a provider that has no key: invalid_frame naming what exists."""
    with running_server(settings_for(tmp_path)) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.send(
                {"type": "session.start", "game_id": catan(server), "provider": "anthropic"}
            )
            error = await client.expect("error")
    assert error["code"] == "invalid_frame"
    assert "local" in error["message"]
