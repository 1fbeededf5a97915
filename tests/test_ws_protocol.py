"""The WebSocket protocol (CONTRACT §2) on a running server: frames, errors, close codes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from chat_server.storage.flags import upsert_flag
from tests.server import SECRET, RunningServer, make_settings, running_server
from tests.wsclient import ws_client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path,
        local_token_delay=0.01,
        ws_max_frames_per_second=1000,
        ws_frame_burst=1000,
        ws_auth_timeout=1.0,
    )
    with running_server(settings) as srv:
        yield srv


def games(server: RunningServer) -> dict[str, str]:
    token = server.token(role="admin")
    listing = httpx.get(
        f"{server.url}/games", headers={"Authorization": f"Bearer {token}"}, timeout=5
    ).json()["games"]
    return {g["name"]: g["id"] for g in listing}


async def test_header_auth_gives_ready(server: RunningServer) -> None:
    """A bearer token on the handshake is answered with ready, naming user and role."""
    async with ws_client(server.ws_url, server.token("alice", "developer"), ready=False) as c:
        ready = await c.expect("ready")
    assert ready["user_id"] == "alice"
    assert ready["role"] == "developer"
    assert ready["connection_id"]


async def test_first_frame_auth_gives_ready(server: RunningServer) -> None:
    """A browser may authenticate with a first auth frame instead of a header."""
    async with ws_client(server.ws_url, server.token("bob"), auth_frame=True) as client:
        await client.send({"type": "ping", "id": 7})
        assert await client.expect("pong") == {"type": "pong", "id": 7}


async def test_bad_header_token_is_refused_with_4401(server: RunningServer) -> None:
    """A bad token on the handshake: the socket opens, then unauthorized and close 4401."""
    async with ws_client(server.ws_url, "not-a-jwt", ready=False) as client:
        error = await client.expect("error")
        assert error["code"] == "unauthorized"
        assert await client.closed() == 4401


async def test_expired_token_is_token_expired(server: RunningServer) -> None:
    """An expired token is refused as token_expired, then close 4401."""
    token = server.token(ttl=-60)
    async with ws_client(server.ws_url, token, ready=False) as client:
        error = await client.expect("error")
        assert error["code"] == "token_expired"
        assert await client.closed() == 4401


async def test_no_auth_in_time_closes_4408(server: RunningServer) -> None:
    """Saying nothing for WS_AUTH_TIMEOUT seconds closes the socket with 4408."""
    async with ws_client(server.ws_url) as client:
        assert await client.closed(timeout=5) == 4408


async def test_other_frame_before_auth_is_unauthorized(server: RunningServer) -> None:
    """Any frame but auth before authenticating: unauthorized, close 4401."""
    async with ws_client(server.ws_url) as client:
        await client.send({"type": "ping"})
        assert (await client.expect("error"))["code"] == "unauthorized"
        assert await client.closed() == 4401


async def test_refresh_with_another_users_token_closes_4403(server: RunningServer) -> None:
    """A later auth frame must carry the same user; another user's token closes 4403."""
    async with ws_client(server.ws_url, server.token("alice")) as client:
        await client.send({"type": "auth", "token": server.token("alice")})
        await client.send({"type": "ping", "id": 1})
        assert (await client.expect("pong"))["id"] == 1
        await client.send({"type": "auth", "token": server.token("mallory")})
        assert (await client.expect("error"))["code"] == "forbidden"
        assert await client.closed() == 4403


async def test_token_expiry_while_connected_closes_4401(tmp_path: Path) -> None:
    """When the token runs out and no fresh one came, token_expired then close 4401."""
    settings = make_settings(tmp_path, jwt_leeway=0.0)
    with running_server(settings) as server:
        token = jwt.encode(
            {"sub": "u", "aud": "authenticated", "exp": int(time.time()) + 2, "user_role": "basic"},
            SECRET,
            algorithm="HS256",
        )
        async with ws_client(server.ws_url, token) as client:
            error = await client.expect("error", timeout=6)
            assert error["code"] == "token_expired"
            assert await client.closed() == 4401


def short_token(user: str, ttl: int) -> str:
    claims = {"sub": user, "aud": "authenticated", "exp": int(time.time()) + ttl}
    return jwt.encode({**claims, "user_role": "basic"}, SECRET, algorithm="HS256")


async def test_a_fresh_token_keeps_the_connection_past_the_old_expiry(tmp_path: Path) -> None:
    """An auth frame with a fresh token before expiry: no token_expired, still served."""
    settings = make_settings(tmp_path, jwt_leeway=0.0)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, short_token("u", 2)) as client:
            await client.send({"type": "auth", "token": short_token("u", 3600)})
            await asyncio.sleep(3.5)
            await client.send({"type": "ping", "id": 1})
            assert await client.expect("pong") == {"type": "pong", "id": 1}


async def test_token_expiry_during_a_turn_waits_for_its_end(tmp_path: Path) -> None:
    """The token runs out while an answer streams: the answer ends (turn.completed),
    then token_expired and close 4401; meanwhile a new message or session is
    token_expired (a client cannot stay on by always asking again)."""
    settings = make_settings(tmp_path, jwt_leeway=0.0, local_token_delay=0.05)
    with running_server(settings) as server:
        game = games(server)["Catan"]
        async with ws_client(server.ws_url, short_token("u", 2)) as client:
            await client.start(game)
            await client.send({"type": "message", "text": "Tell me all about the robber."})
            await client.expect("turn.started")
            await asyncio.sleep(2.5)  # expired now; the answer still streams
            for frame in (
                {"type": "message", "text": "and now?"},
                {"type": "session.start", "game_id": game},
            ):
                await client.send(frame)
                refused = await client.until("error", timeout=10)
                assert refused[-1]["code"] == "token_expired"
            frames = await client.until("turn.completed", timeout=30)
            assert frames[-1]["finish_reason"] == "stop"
            assert frames[-1]["timing"]["total_ms"] > 2000  # it outlived the token
            assert (await client.expect("error"))["code"] == "token_expired"
            assert await client.closed() == 4401


async def test_frame_too_big_closes_1009(server: RunningServer) -> None:
    """A frame over WS_MAX_FRAME_BYTES closes the connection with 1009."""
    async with ws_client(server.ws_url, server.token(), max_size=None) as client:
        await client.send({"type": "message", "text": "x" * 70_000})
        assert await client.closed() == 1009


async def test_malformed_frames_get_invalid_frame_and_the_connection_lives(
    server: RunningServer,
) -> None:
    """200 malformed frames each get invalid_frame; the connection still answers ping."""
    bad: list[str | bytes] = [
        "not json",
        "[]",
        "3",
        '"text"',
        "{}",
        '{"type": 5}',
        '{"type": "nope"}',
        '{"type": "message"}',
        '{"type": "message", "text": 5}',
        '{"type": "ping", "id": 1e999}',
        '{"type": "session.start", "game_id": 3}',
        '{"type": "session.resume", "session_id": "x", "after_seq": -1}',
        '{"type": "message", "text": "hi", "extra": true}',
        json.dumps({"type": "ping", "id": 10**30}),
        "[" * 5000 + "]" * 5000,
        '{"a":' * 50 + "1" + "}" * 50,
        b"\x00\x01binary",
    ]
    frames = [bad[i % len(bad)] for i in range(200)]
    async with ws_client(server.ws_url, server.token()) as client:
        for frame in frames:
            await client.ws.send(frame)
        for _ in frames:
            error = await client.expect("error")
            assert error["code"] == "invalid_frame", error
        await client.send({"type": "ping", "id": "still-here"})
        assert (await client.expect("pong"))["id"] == "still-here"


async def test_text_longer_than_the_limit_is_invalid(tmp_path: Path) -> None:
    """A message longer than WS_MAX_TEXT_CHARS is invalid_frame and starts no turn."""
    with running_server(make_settings(tmp_path, ws_max_text_chars=10)) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(games(server)["Catan"])
            await client.send({"type": "message", "text": "x" * 11})
            assert (await client.expect("error"))["code"] == "invalid_frame"
            await client.send({"type": "ping", "id": 1})
            await client.expect("pong")


async def test_message_without_session_is_session_required(server: RunningServer) -> None:
    """A message before session.start is session_required."""
    async with ws_client(server.ws_url, server.token()) as client:
        await client.send({"type": "message", "text": "hello"})
        assert (await client.expect("error"))["code"] == "session_required"


async def test_start_on_hidden_game_is_not_found(server: RunningServer) -> None:
    """A game the user may not see is not_found, exactly like one that does not exist."""
    ids = games(server)
    admin = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.patch(
            f"{server.url}/admin/games/{ids['Catan']}",
            json={"status": "hidden"},
            headers=admin,
            timeout=5,
        )
        response.raise_for_status()
    async with ws_client(server.ws_url, server.token()) as client:
        await client.send({"type": "session.start", "game_id": ids["Catan"]})
        assert (await client.expect("error"))["code"] == "not_found"
        await client.send({"type": "session.start", "game_id": "no-such-game"})
        assert (await client.expect("error"))["code"] == "not_found"


async def test_turn_streams_then_completes_and_history_has_both(server: RunningServer) -> None:
    """A turn: started, numbered deltas, completed; the stored history has both messages."""
    catan = games(server)["Catan"]
    async with ws_client(server.ws_url, server.token()) as client:
        ready = await client.start(catan)
        await client.send(
            {"type": "message", "text": "How much does a city cost?", "client_id": "c-1"}
        )
        frames = await client.until("turn.completed")
    started, completed = frames[0], frames[-1]
    assert started["type"] == "turn.started"
    assert started["client_id"] == "c-1"
    assert started["quota"]["used"] == 1
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert len(deltas) > 3
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    text = "".join(d["text"] for d in deltas)
    assert "three ore and two grain" in text
    assert completed["finish_reason"] == "stop"
    assert completed["timing"]["total_ms"] >= completed["timing"]["first_token_ms"] >= 0
    async with ws_client(server.ws_url, server.token()) as client:
        await client.send({"type": "session.resume", "session_id": ready["session"]["id"]})
        resumed = await client.expect("session.ready")
    history = resumed["history"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert history[0]["id"] == started["message_id"]
    assert history[1]["id"] == completed["message_id"]
    assert history[1]["content"] == text


async def test_second_message_while_streaming_is_turn_in_progress(
    server: RunningServer,
) -> None:
    """A message while a turn runs is turn_in_progress; after completion it is welcome."""
    async with ws_client(server.ws_url, server.token()) as client:
        await client.start(games(server)["Catan"])
        await client.send({"type": "message", "text": "What does the robber do?"})
        await client.expect("turn.started")
        await client.send({"type": "message", "text": "And trading?"})
        frames = await client.until("error")
        assert frames[-1]["code"] == "turn_in_progress"
        await client.until("turn.completed")
        frames = await client.ask("And trading?")
        assert frames[-1]["finish_reason"] == "stop"


async def test_cancel_ends_the_turn_as_cancelled_and_stores_it(server: RunningServer) -> None:
    """cancel stops the turn: turn.completed cancelled; the partial answer is stored so."""
    async with ws_client(server.ws_url, server.token()) as client:
        ready = await client.start(games(server)["Catan"])
        await client.send({"type": "message", "text": "Explain the robber"})
        await client.expect("turn.started")
        await client.expect("turn.delta")
        await client.send({"type": "cancel"})
        frames = await client.until("turn.completed")
        assert frames[-1]["finish_reason"] == "cancelled"
        await client.send({"type": "session.resume", "session_id": ready["session"]["id"]})
        history = (await client.expect("session.ready"))["history"]
    assert history[-1]["status"] == "cancelled"
    assert history[-1]["role"] == "assistant"


async def test_feature_disabled_then_quota_exceeded(server: RunningServer) -> None:
    """The chat flag is checked first (feature_disabled), then the daily quota."""
    catan = games(server)["Catan"]

    async def set_flag(enabled: bool, limit: int | None) -> None:
        await upsert_flag(
            server.services.db,
            feature_key="chat",
            scope_type="game",
            scope_id=catan,
            role=None,
            environment="dev",
            enabled=enabled,
            metadata={} if limit is None else {"daily_limit": limit},
        )
        await server.services.flags.changed()

    server.call(set_flag(False, None))
    async with ws_client(server.ws_url, server.token()) as client:
        await client.start(catan)
        await client.send({"type": "message", "text": "robber"})
        assert (await client.expect("error"))["code"] == "feature_disabled"
        server.call(set_flag(True, 1))
        frames = await client.ask("robber")
        assert frames[0]["quota"] == {
            **frames[0]["quota"],
            "daily_limit": 1,
            "used": 1,
            "remaining": 0,
        }
        await client.send({"type": "message", "text": "robber again"})
        error = await client.expect("error")
        assert error["code"] == "quota_exceeded"
        assert error["context"]["remaining"] == 0
    async with ws_client(server.ws_url, server.token("root", "admin")) as admin:
        await admin.start(catan)
        server.call(set_flag(False, 0))
        frames = await admin.ask("robber")
        assert frames[-1]["finish_reason"] == "stop"


async def test_another_users_session_is_not_found(server: RunningServer) -> None:
    """session.resume of another user's session is not_found."""
    async with ws_client(server.ws_url, server.token("alice")) as alice:
        ready = await alice.start(games(server)["Catan"])
    async with ws_client(server.ws_url, server.token("mallory")) as mallory:
        await mallory.send({"type": "session.resume", "session_id": ready["session"]["id"]})
        assert (await mallory.expect("error"))["code"] == "not_found"


async def test_frame_flood_is_rate_limited_then_closed_1008(tmp_path: Path) -> None:
    """Frames beyond the rate get rate_limited; ten refusals in a minute close 1008."""
    settings = make_settings(tmp_path, ws_max_frames_per_second=1, ws_frame_burst=2)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            for i in range(20):
                await client.send({"type": "ping", "id": i})
            frames = []
            code = None
            try:
                while True:
                    frames.append(await client.recv(timeout=5))
            except Exception:
                code = await client.closed()
            assert [f["type"] for f in frames[:2]] == ["pong", "pong"]
            assert sum(f.get("code") == "rate_limited" for f in frames) >= 9
            assert code == 1008


async def test_too_many_connections_for_one_user(tmp_path: Path) -> None:
    """The connection past WS_MAX_CONNECTIONS_PER_USER gets rate_limited and close 1008."""
    with running_server(make_settings(tmp_path, ws_max_connections_per_user=2)) as server:
        token = server.token("greedy")
        async with (
            ws_client(server.ws_url, token),
            ws_client(server.ws_url, token),
            ws_client(server.ws_url, token, ready=False) as third,
        ):
            assert (await third.expect("error"))["code"] == "rate_limited"
            assert await third.closed() == 1008
        async with ws_client(server.ws_url, token) as again:
            await again.send({"type": "ping", "id": 1})
            await again.expect("pong")


async def test_history_survives_a_server_restart(tmp_path: Path) -> None:
    """Messages written before a restart are in the history after it."""
    settings = make_settings(tmp_path)
    with running_server(settings) as server:
        catan = games(server)["Catan"]
        token = server.token("alice")
        async with ws_client(server.ws_url, token) as client:
            session_id = (await client.start(catan))["session"]["id"]
            await client.ask("How do I win?")
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token("alice")) as client:
            await client.send({"type": "session.resume", "session_id": session_id})
            ready = await client.expect("session.ready")
    assert [m["role"] for m in ready["history"]] == ["user", "assistant"]
    assert ready["history"][0]["content"] == "How do I win?"
    assert "ten victory points" in ready["history"][1]["content"]


async def test_drop_with_zero_grace_cancels_and_stores(tmp_path: Path) -> None:
    """A client that drops mid-turn with WS_RESUME_GRACE=0: the turn is cancelled, stored."""
    settings = make_settings(tmp_path, local_token_delay=0.05, ws_resume_grace=0.0)
    with running_server(settings) as server:
        token = server.token("alice")
        async with ws_client(server.ws_url, token) as client:
            session_id = (await client.start(games(server)["Catan"]))["session"]["id"]
            await client.send({"type": "message", "text": "Explain the robber"})
            await client.expect("turn.started")
            await client.expect("turn.delta")
        await asyncio.sleep(0.3)
        async with ws_client(server.ws_url, token) as client:
            await client.send({"type": "session.resume", "session_id": session_id})
            history = (await client.expect("session.ready"))["history"]
    assert history[-1]["status"] == "cancelled"
    assert len(history[-1]["content"]) > 0


async def test_a_question_holding_nul_is_invalid_and_stores_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """NUL in a question is invalid_frame on either database (PostgreSQL cannot store
    it): no turn, nothing in the history, no quota used, and the connection goes on."""
    settings = make_settings(tmp_path, database_url=database_url, seed_demo=True)
    with running_server(settings) as server:
        token = server.token()
        async with ws_client(server.ws_url, token) as client:
            session = (await client.start(games(server)["Catan"]))["session"]
            await client.send({"type": "message", "text": "How do I\x00 win?"})
            error = await client.expect("error")
            assert error["code"] == "invalid_frame"
            assert "turn_id" not in error
            frames = await client.ask("How do I win?")
            assert frames[0]["quota"]["used"] == 1
        async with ws_client(server.ws_url, token) as client:
            await client.send({"type": "session.resume", "session_id": session["id"]})
            history = (await client.expect("session.ready"))["history"]
            assert [m["content"] for m in history if m["role"] == "user"] == ["How do I win?"]
