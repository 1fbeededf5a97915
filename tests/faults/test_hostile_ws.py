"""Hostile WebSocket input (issue 16): long subjects, foreign origins, tokens in the URL,
escapes no database stores, long echoes, invalid UTF-8; and a changed profiles role
reaching an open socket at its next session."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chat_server.frames import encode
from chat_server.logs import ClientGarbageFilter, configure_logging
from chat_server.storage.profiles import set_role
from tests.faults.support import RawWebSocket, bearer
from tests.server import RunningServer, make_settings, running_server
from tests.test_ai_sdk import send_frame
from tests.test_ws_providers import catan
from tests.wsclient import Client, ws_client

pytestmark = pytest.mark.faults


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path, role_cache_ttl=0)) as srv:
        yield srv


async def test_a_subject_over_64_characters_is_unauthorized(server: RunningServer) -> None:
    """sub of 65 characters: unauthorized then 4401, by header and by auth frame alike."""
    for auth_frame in (False, True):
        async with ws_client(
            server.ws_url, server.token("u" * 65), auth_frame=auth_frame, ready=False
        ) as client:
            error = await client.expect("error")
            assert error["code"] == "unauthorized"
            assert await client.closed() == 4401
    async with ws_client(server.ws_url, server.token("u" * 64)) as client:
        await client.start(catan(server))  # 64 is fine, a session too


async def test_origins_outside_the_allow_list_get_403_at_the_handshake(tmp_path: Path) -> None:
    """WS_ALLOWED_ORIGINS set: another Origin is HTTP 403; a listed one (any case, a
    trailing slash) and a client naming none connect."""
    settings = make_settings(
        tmp_path, ws_allowed_origins="https://app.example, https://admin.example/"
    )
    with running_server(settings) as server:
        token = server.token()
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url, origin="https://evil.example", open_timeout=5)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        for origin in ("https://app.example", "HTTPS://ADMIN.EXAMPLE", None):
            async with connect(
                server.ws_url,
                origin=origin,  # type: ignore[arg-type]
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=5,
            ) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"


async def test_any_origin_connects_when_the_list_is_unset(server: RunningServer) -> None:
    """WS_ALLOWED_ORIGINS unset: any Origin is accepted."""
    async with connect(
        server.ws_url,
        origin="https://anywhere.example",  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {server.token()}"},
        open_timeout=5,
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"


async def test_a_token_in_the_url_is_not_accepted(server: RunningServer) -> None:
    """/ws/chat?token=<valid jwt>: not authenticated; a first frame that is not auth
    gets unauthorized and 4401."""
    async with ws_client(f"{server.ws_url}?token={server.token()}") as client:
        await client.send({"type": "ping", "id": "1"})
        assert (await client.expect("error"))["code"] == "unauthorized"
        assert await client.closed() == 4401


async def next_error(client: Client) -> dict[str, Any]:
    return await client.expect("error")


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "message", "text": "a\\ud800b"}',
        '{"type": "message", "text": "\\udfb2"}',
        '{"type": "message", "text": "a\\u0000b"}',
        '{"type": "message", "text": "ok", "client_id": "\\uDBFF"}',
    ],
    ids=["lone-high", "lone-low", "nul", "in-client-id"],
)
async def test_frames_with_nul_or_lone_surrogates_are_invalid_and_nothing_is_stored(
    server: RunningServer, raw: str
) -> None:
    """invalid_frame, no turn, no stored message, and the socket goes on."""
    async with ws_client(server.ws_url, server.token()) as client:
        session_id = (await client.start(catan(server)))["session"]["id"]
        await client.send(raw)
        assert (await next_error(client))["code"] == "invalid_frame"
        await client.send({"type": "session.resume", "session_id": session_id})
        assert (await client.expect("session.ready"))["history"] == []


async def test_a_60_kb_unknown_key_is_echoed_200_characters_at_most(
    server: RunningServer,
) -> None:
    """A frame with an unknown key of 60,000 characters: invalid_frame, a short message."""
    async with ws_client(server.ws_url, server.token()) as client:
        await client.send(json.dumps({"type": "ping", "id": "1", "k" * 60_000: 1}))
        error = await next_error(client)
        assert error["code"] == "invalid_frame"
        assert len(json.dumps(error)) < 400
        await client.send({"type": "ping", "id": "2"})
        assert (await client.expect("pong"))["id"] == "2"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line at INFO and above as JSON, with the process-wide setup restored."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = [
        (lg, list(lg.handlers), list(lg.filters), lg.level, lg.propagate)
        for lg in (logging.getLogger(n) for n in names)
    ]
    out = io.StringIO()
    configure_logging("info", json_format=True, stream=out)
    try:
        yield out
    finally:
        configure_logging("warning", json_format=True, stream=io.StringIO())
        for lg, handlers, filters, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.filters[:] = filters
            lg.setLevel(level)
            lg.propagate = propagate


def test_invalid_utf8_is_one_warning_line_without_traceback_and_rate_limited(
    captured: io.StringIO, tmp_path: Path
) -> None:
    """Invalid UTF-8 in a text frame, before auth, from 25 clients: each socket closes
    1007, the log holds WARNING lines only, no traceback, at most 10 of them."""
    with running_server(make_settings(tmp_path)) as server:
        logging.getLogger("uvicorn.error").setLevel(logging.INFO)  # the test server's: WARNING
        for _ in range(25):
            raw = RawWebSocket(server.port, None)
            try:
                raw.send_frame(b'{"type": "auth", "token": "\xff\xfe"}')
                opcode, payload = raw.read_frame()
                assert (opcode, payload[:2]) == (0x8, (1007).to_bytes(2, "big"))
            finally:
                raw.close()
    lines = [json.loads(x) for x in captured.getvalue().splitlines() if x.strip()]
    garbage = [x for x in lines if "UTF-8" in x["msg"]]
    assert 1 <= len(garbage) <= 10
    assert {x["level"] for x in garbage} == {"warning"}
    assert not [x for x in lines if x["level"] in ("error", "critical") or "exc" in x]
    assert "Traceback" not in captured.getvalue()


async def test_a_changed_profiles_role_applies_at_the_next_session_start(
    server: RunningServer,
) -> None:
    """An open socket of a user whose profiles row turns admin: the next session.start
    resolves the role again (admins pass the chat flag, which is off for that user)."""
    db = server.services.db
    server.call(set_role(db, "promoted", "basic"))
    off = {"feature_key": "chat", "scope_type": "user", "scope_id": "promoted", "enabled": False}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.put(
            "/admin/flags", json=off, headers=bearer(server.token(role="admin"))
        )
        assert response.status_code in (200, 201), response.text
    async with ws_client(server.ws_url, server.token("promoted", role=None)) as client:
        await client.start(catan(server))
        await client.send({"type": "message", "text": "robber?"})
        assert (await next_error(client))["code"] == "feature_disabled"
        server.call(set_role(db, "promoted", "admin"))
        await client.start(catan(server))
        frames = await client.ask("robber?")
        assert frames[0]["type"] == "turn.started"
        assert frames[-1]["finish_reason"] == "stop"


def test_an_outbound_frame_is_always_valid_utf8() -> None:
    """A frame whose text holds a lone surrogate (a row stored before these rules) goes
    out with U+FFFD in its place; a pair left as two code units is one character."""
    data = encode({"type": "turn.delta", "text": "a\ud800b\ud83c\udfb2"})
    data.encode("utf-8")
    assert json.loads(data)["text"] == "a\ufffdb🎲"


def test_role_cache_ttl_zero_applies_a_demotion_to_the_next_request(
    server: RunningServer,
) -> None:
    """ROLE_CACHE_TTL=0: a profiles row turned from developer to basic refuses the very
    next admin request (403), where the default would keep it for 30 s."""
    server.call(set_role(server.services.db, "demoted", "developer"))
    headers = bearer(server.token("demoted", role=None))
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        assert http.get("/admin/flags").status_code == 200
        server.call(set_role(server.services.db, "demoted", "basic"))
        assert http.get("/admin/flags").status_code == 403


async def test_a_demotion_applies_to_the_next_ai_sdk_chat(server: RunningServer) -> None:
    """/ws/ai-sdk, as /ws/chat: a profiles row turned from developer to basic applies to
    the socket's next chat; a hidden game it could open before is then not_found."""
    server.call(set_role(server.services.db, "demoted2", "developer"))
    token = server.token("demoted2", role=None)
    headers = bearer(server.token("ops", "developer"))
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
        hidden = (
            await http.post("/admin/games", json={"name": "Unreleased", "status": "hidden"})
        ).json()["id"]

    base = server.url.replace("http", "ws") + "/ws/ai-sdk"
    async with ws_client(base, token, ready=False) as ws:
        await ws.send(send_frame("r1", "as-developer", hidden))
        frames = [await ws.recv(timeout=10)]
        while frames[-1]["type"] not in ("end", "error"):
            frames.append(await ws.recv(timeout=10))
        assert frames[-1]["type"] == "end"  # staff may open a hidden game
        server.call(set_role(server.services.db, "demoted2", "basic"))
        await ws.send(send_frame("r2", "as-basic", hidden))
        refused = await ws.recv(timeout=10)
    assert refused["type"] == "error" and refused["errorText"].startswith("not_found")


def test_garbage_lines_past_the_limit_are_counted_on_the_next_one() -> None:
    """Past ``limit`` lines in a window the rest are dropped; the first line of the next
    window says how many were; other lines pass untouched."""
    garbage = ClientGarbageFilter(limit=2, window=0.2)

    def record(msg: str) -> logging.LogRecord:
        error = ValueError("bad bytes")
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, msg, None, (ValueError, error, None)
        )

    utf8 = "Invalid UTF-8 sequence received from client."
    passed = [r for r in (record(utf8) for _ in range(5)) if garbage.filter(r)]
    assert len(passed) == 2
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in passed)
    time.sleep(0.25)
    (later,) = [r for r in [record(utf8)] if garbage.filter(r)]
    assert later.getMessage() == f"{utf8} (3 more not logged)"
    other = record("Exception in ASGI application\n")
    assert garbage.filter(other) and other.levelno == logging.ERROR and other.exc_info


async def test_ai_sdk_frames_with_nul_or_lone_surrogates_are_invalid(
    server: RunningServer,
) -> None:
    """On /ws/ai-sdk too: a question or any field holding a lone surrogate or a NUL is
    invalid_frame, and the socket then serves a valid request."""
    base = server.url.replace("http", "ws") + "/ws/ai-sdk"
    message = '{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "%s"}]}'
    send = (
        '{"type": "send", "requestId": "r", "id": "chat-1", "trigger": "submit-message",'
        ' "messages": [%s], "headers": {}, "body": {"game_id": "%s"}}'
    )
    bad = [
        send % (message % "a\\ud800b", "g"),
        send % (message % "a\\u0000b", "g"),
        send % (message % "fine", "\\udfb2"),
    ]
    async with ws_client(base, server.token(), ready=False) as ws:
        for frame in bad:
            await ws.ws.send(frame)
            refused = await ws.recv()
            assert refused["type"] == "error", frame
            assert refused["errorText"].startswith("invalid_frame: "), refused
        await ws.send(
            {"type": "resume", "requestId": "ok", "id": "nothing", "headers": {}, "body": {}}
        )
        assert await ws.recv() == {"type": "no-active", "requestId": "ok"}
