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

from tests.faults.support import RawWebSocket
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


def openai_settings(tmp_path: Path, upstream: OpenAIUpstream, **extra: Any) -> Any:
    """``settings_for`` with the OpenAI provider pointed at ``upstream``."""
    return settings_for(tmp_path, openai_api_key="sk", openai_base_url=upstream.base_url, **extra)


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
    assert completed["usage"] == {
        "input_tokens": 321,
        "output_tokens": 60,
        "estimated": False,
        "cost_usd": None,  # gpt-test has no price
    }
    assert (completed["provider"], completed["model"]) == ("openai", "gpt-test")
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
    settings = openai_settings(tmp_path, openai_up)
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
    settings = openai_settings(tmp_path, openai_up)
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
    settings = openai_settings(
        tmp_path,
        openai_up,
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
    settings = openai_settings(tmp_path, openai_up)
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
    settings = openai_settings(tmp_path, openai_up)
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
    settings = openai_settings(tmp_path, openai_up)
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
    assert frames[-1]["usage"] == {
        "input_tokens": 9,
        "output_tokens": 3,
        "estimated": False,
        "cost_usd": round((9 * 0.30 + 3 * 2.50) / 1_000_000, 8),  # gemini-2.5-flash
    }


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


def conversation(upstream: OpenAIUpstream, index: int) -> list[tuple[str, str]]:
    """The conversation a request carried, the system prompt left out."""
    return [(m["role"], m["content"]) for m in upstream.requests[index].body["messages"][1:]]


async def test_each_turn_sends_the_sessions_latest_turns(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """Each turn sends the session's latest HISTORY_TURNS turns: a cancelled answer is
    left out, two connections on one session each see the other's turns (both receive
    every turn live), and a resume on a new connection goes on from what was stored."""
    settings = openai_settings(tmp_path, openai_up, history_turns=2)
    with running_server(settings) as server:
        token = server.token()
        async with ws_client(server.ws_url, token) as first:
            session_id = (await first.start(catan(server)))["session"]["id"]
            openai_up.script = Script(tokens=["A1."])
            await first.ask("Q1")
            async with ws_client(server.ws_url, token) as second:
                await second.send({"type": "session.resume", "session_id": session_id})
                await second.expect("session.ready")
                openai_up.script = Script(tokens=["A2."])
                await second.ask("Q2")
                await first.until("turn.completed")  # first follows second's turn too
                openai_up.script = Script(tokens=["A3."])
                await first.ask("Q3")
                await second.until("turn.completed")
                openai_up.script = Script(tokens=[f"t{i} " for i in range(2000)], token_delay=0.01)
                await second.send({"type": "message", "text": "Q4"})
                await second.expect("turn.started")
                await second.expect("turn.delta")
                await second.send({"type": "cancel"})
                assert (await second.until("turn.completed"))[-1]["finish_reason"] == "cancelled"
                await first.until("turn.completed")
            openai_up.script = Script(tokens=["A5."])
            await first.ask("Q5")
        async with ws_client(server.ws_url, token) as third:
            await third.send({"type": "session.resume", "session_id": session_id})
            await third.expect("session.ready")
            openai_up.script = Script(tokens=["A6."])
            await third.ask("Q6")
    assert conversation(openai_up, 0) == [("user", "Q1")]
    assert conversation(openai_up, 1) == [("user", "Q1"), ("assistant", "A1."), ("user", "Q2")]
    assert conversation(openai_up, 2) == [
        ("user", "Q1"),
        ("assistant", "A1."),
        ("user", "Q2"),
        ("assistant", "A2."),
        ("user", "Q3"),
    ]
    assert conversation(openai_up, 4) == [
        ("user", "Q3"),
        ("assistant", "A3."),
        ("user", "Q4"),
        ("user", "Q5"),
    ]
    assert conversation(openai_up, 5) == [
        ("user", "Q4"),
        ("user", "Q5"),
        ("assistant", "A5."),
        ("user", "Q6"),
    ]


async def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A client that stops reading mid-answer (its buffers full, pings too far apart to
    notice): once one frame could not be written for WS_SEND_TIMEOUT the server lets it
    go, and its turn is handled like a disconnect (cancelled, upstream closed)."""
    openai_up.script = Script(tokens=["x" * 2000] * 20000, token_delay=0.0005)
    settings = openai_settings(
        tmp_path,
        openai_up,
        ws_send_timeout=0.5,
        ws_ping_interval=600.0,
    )
    with running_server(settings) as server:
        token = server.token()
        raw = await asyncio.to_thread(RawWebSocket, server.port, token, rcvbuf=4096)
        try:
            session_id = await asyncio.to_thread(
                raw.start_turn, catan(server), "Tell me everything."
            )

            async def live() -> tuple[int, int]:
                return len(server.services.connections), len(server.services.manager)

            # From here on the client reads nothing.
            deadline = time.monotonic() + 20
            while await asyncio.to_thread(server.call, live()) != (0, 0):
                assert time.monotonic() < deadline, "the silent client was never let go"
                await asyncio.sleep(0.05)
            assert openai_up.disconnected.wait(timeout=5)
        finally:
            raw.close()
        async with ws_client(server.ws_url, token, max_size=None) as client:
            stored = await history(client, session_id)
    assert [m["status"] for m in stored] == ["complete", "cancelled"]


async def test_a_client_that_pauses_reading_gets_the_whole_answer_in_order(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A client that stops reading long enough for the server's sends to wait (its
    socket and the server's write buffer full), then reads again within
    WS_SEND_TIMEOUT, gets every delta, numbered in order, and the turn's end."""
    tokens = [f"{i:05d}" + "y" * 1995 for i in range(10000)]  # 20 MB: more than buffers hold
    openai_up.script = Script(tokens=tokens)
    settings = openai_settings(
        tmp_path,
        openai_up,
        ws_send_timeout=30.0,
        ws_ping_interval=600.0,
    )
    with running_server(settings) as server:
        raw = await asyncio.to_thread(RawWebSocket, server.port, server.token(), rcvbuf=4096)
        try:
            await asyncio.to_thread(raw.start_turn, catan(server), "Tell me everything.")
            await asyncio.sleep(1.5)  # reading nothing while the upstream streams

            async def queued() -> int:
                return max((len(c.outbox) for c in server.services.connections.all()), default=0)

            # The server is holding text back: its sends are waiting for this client.
            assert await asyncio.to_thread(server.call, queued()) >= 1
            frames = []
            while not frames or frames[-1]["type"] != "turn.completed":
                frames.append(await asyncio.to_thread(raw.read_json))
        finally:
            raw.close()
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == "".join(tokens)
    assert frames[-1]["finish_reason"] == "stop"


async def test_a_question_that_cannot_be_stored_gets_no_answer(
    tmp_path: Path, openai_up: OpenAIUpstream, postgres_url: str
) -> None:
    """The question's write fails (its table locked past DATABASE_TIMEOUT) while the
    provider is already asked: `unavailable`, no turn.started and no delta, the
    upstream request closed, nothing stored, the quota place given back; then the next
    turn works and does not carry the lost question."""
    import asyncpg

    openai_up.script = Script(tokens=["A1."])
    settings = openai_settings(
        tmp_path,
        openai_up,
        database_url=postgres_url,
        database_timeout=1.0,
        seed_demo=True,
    )
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            session_id = (await client.start(catan(server)))["session"]["id"]
            assert (await client.ask("Q1"))[0]["quota"]["used"] == 1
            openai_up.script = Script(tokens=[f"t{i} " for i in range(200)], token_delay=0.01)
            locker = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
            try:
                transaction = locker.transaction()
                await transaction.start()
                await locker.execute("LOCK TABLE chat_messages IN EXCLUSIVE MODE")
                await client.send({"type": "message", "text": "Q2"})
                error = await client.recv()
                await transaction.rollback()
            finally:
                await locker.close()
            assert (error["type"], error["code"]) == ("error", "unavailable")
            if len(openai_up.requests) == 2:  # the provider had been asked: no longer
                assert openai_up.disconnected.wait(timeout=5)
            openai_up.script = Script(tokens=["A3."])
            frames = await client.ask("Q3")
            assert frames[0]["type"] == "turn.started"  # nothing of Q2 came in between
            assert frames[0]["quota"]["used"] == 2
            stored = await history(client, session_id)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "Q1", "complete"),
        ("assistant", "A1.", "complete"),
        ("user", "Q3", "complete"),
        ("assistant", "A3.", "complete"),
    ]
    assert conversation(openai_up, len(openai_up.requests) - 1) == [
        ("user", "Q1"),
        ("assistant", "A1."),
        ("user", "Q3"),
    ]
