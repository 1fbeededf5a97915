"""Structured logs: JSON lines with the bound ids, plain text on a terminal, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from chat_server.auth import mint_token
from chat_server.logs import (
    RequestContext,
    add_context,
    bind,
    configure_logging,
    log_context,
    redact,
)

JWT = mint_token(secret="s" * 40, user_id="user-9", role="basic")
OPENAI_KEY = "sk-proj-Abc123def456ghi789jkl"
ANTHROPIC_KEY = "sk-ant-api03-Zyx987wvu654tsr321"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back afterwards."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "httpx"]
    saved = [
        (lg, list(lg.handlers), lg.level, lg.propagate)
        for lg in (logging.getLogger(n) for n in names)
    ]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_carries_bound_ids(restore_logging: None) -> None:
    """A line logged inside ``bind`` carries the ids as fields of one JSON object."""
    out = io.StringIO()
    configure_logging("info", stream=out)
    log = logging.getLogger("chat_server.test")
    with bind(user_id="u1", session_id="s1"), bind(turn_id="t1", game_id=None):
        log.info("turn %s completed", "t1", extra={"finish_reason": "stop"})
    log.info("outside")
    inside, outside = lines(out)
    assert inside["msg"] == "turn t1 completed"
    assert inside["level"] == "info"
    assert inside["logger"] == "chat_server.test"
    assert inside["ts"].endswith("Z")
    assert (inside["user_id"], inside["session_id"], inside["turn_id"]) == ("u1", "s1", "t1")
    assert inside["finish_reason"] == "stop"
    assert "game_id" not in inside
    assert "user_id" not in outside


async def test_context_follows_tasks_and_stays_in_them(restore_logging: None) -> None:
    """Tasks started inside ``bind`` log its ids; ``add_context`` stays in its own task."""
    out = io.StringIO()
    configure_logging("info", stream=out)
    log = logging.getLogger("chat_server.test")

    async def turn() -> None:
        add_context(turn_id="t2")
        log.info("in the turn")

    with bind(connection_id="c1"):
        async with asyncio.timeout(5):
            await asyncio.create_task(turn())
        log.info("after the turn")
    in_turn, after = lines(out)
    assert (in_turn["connection_id"], in_turn["turn_id"]) == ("c1", "t2")
    assert after["connection_id"] == "c1"
    assert "turn_id" not in after
    assert log_context() == {}


def test_secrets_are_masked(restore_logging: None) -> None:
    """A JWT, a Bearer header, API keys and a URL password never reach the log line."""
    out = io.StringIO()
    configure_logging("debug", stream=out)
    log = logging.getLogger("chat_server.test")
    log.info("token %s", JWT)
    log.warning("header Authorization: Bearer %s", "opaque-credential-123")
    log.error("keys %s and %s", OPENAI_KEY, ANTHROPIC_KEY)
    log.info("redis at redis://default:hunter2secret@cache:6379/0")
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    for secret in (JWT, "opaque-credential-123", OPENAI_KEY, ANTHROPIC_KEY, "hunter2secret"):
        assert secret not in text
    token, bearer, keys, redis, failed = lines(out)
    assert token["msg"] == "token [redacted-jwt]"
    assert bearer["msg"] == "header Authorization: Bearer [redacted]"
    assert keys["msg"] == "keys sk-[redacted] and sk-[redacted]"
    assert redis["msg"] == "redis at redis://default:[redacted]@cache:6379/0"
    assert "[redacted-jwt]" in failed["exc"]


def test_redact_leaves_ordinary_text_alone() -> None:
    """Ids, dotted names and URLs without passwords are logged as they are."""
    text = "session 01JABC.turn chat_server.ws http://localhost:8000/ws/chat risk-taking"
    assert redact(text) == text


def test_plain_text_on_a_terminal(restore_logging: None) -> None:
    """On a terminal the line is readable text with the ids at the end, not JSON."""
    tty = Tty()
    configure_logging("info", stream=tty)
    with bind(session_id="s9"):
        logging.getLogger("chat_server.test").info("hello %s", "there")
    line = tty.getvalue().strip()
    assert line.endswith("INFO    chat_server.test: hello there [session_id=s9]")
    explicit = io.StringIO()
    configure_logging("info", stream=explicit, json_format=False)
    logging.getLogger("chat_server.test").info("plain")
    assert explicit.getvalue().strip().endswith("chat_server.test: plain")
    assert "plain" not in tty.getvalue()  # the earlier handler was replaced, not added to


def test_level_and_uvicorn_loggers(restore_logging: None) -> None:
    """``LOG_LEVEL`` filters lines, and uvicorn's access log comes out as JSON too."""
    out = io.StringIO()
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.addHandler(logging.NullHandler())
    uvicorn_access.propagate = False
    configure_logging("warning", stream=out)
    logging.getLogger("chat_server.test").info("hidden")
    logging.getLogger("uvicorn.access").warning(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/games?token={JWT}", "1.1", 200
    )
    (line,) = lines(out)
    assert line["logger"] == "uvicorn.access"
    assert line["msg"] == '127.0.0.1:5 - "GET /games?token=[redacted-jwt] HTTP/1.1" 200'
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


async def test_request_id_on_lines_and_response(restore_logging: None) -> None:
    """Each HTTP request's lines carry its request_id, which the response returns."""
    out = io.StringIO()
    configure_logging("info", stream=out)

    async def hello(request: Request) -> PlainTextResponse:
        logging.getLogger("chat_server.test").info("handling")
        return PlainTextResponse("hi")

    app = RequestContext(Starlette(routes=[Route("/", hello)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        async with asyncio.timeout(5):
            fresh = await http.get("/")
            given = await http.get("/", headers={"X-Request-ID": "proxy-id-1"})
            odd = await http.get("/", headers={"X-Request-ID": "x" * 200})
    first, second, third = lines(out)
    assert first["request_id"] == fresh.headers["x-request-id"]
    assert len(first["request_id"]) == 32
    assert second["request_id"] == given.headers["x-request-id"] == "proxy-id-1"
    assert third["request_id"] == odd.headers["x-request-id"] != "x" * 200


def test_request_id_on_websocket_lines(restore_logging: None) -> None:
    """Every line a WebSocket logs, before and after it sends, carries its request_id."""
    out = io.StringIO()
    configure_logging("info", stream=out)
    log = logging.getLogger("chat_server.test")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        log.info("accepted")
        await websocket.send_text(await websocket.receive_text())
        log.info("sent")
        await websocket.close()

    app = RequestContext(Starlette(routes=[WebSocketRoute("/ws", echo)]))
    with TestClient(app) as client:
        for headers in ({"X-Request-ID": "proxy-ws-1"}, {}):
            with client.websocket_connect("/ws", headers=headers) as ws:
                ws.send_text("ping")
                assert ws.receive_text() == "ping"
    ours = [line for line in lines(out) if line["logger"] == "chat_server.test"]
    assert [line["msg"] for line in ours] == ["accepted", "sent"] * 2
    assert ours[0]["request_id"] == ours[1]["request_id"] == "proxy-ws-1"
    assert ours[2]["request_id"] == ours[3]["request_id"] != "proxy-ws-1"
    assert len(ours[2]["request_id"]) == 32


async def test_a_turn_logs_its_ids_and_no_secret(restore_logging: None, tmp_path: Path) -> None:
    """The turn's log line carries turn, session, user and game ids; neither the token
    nor the question's text appears anywhere in the log."""
    from tests.server import make_settings, running_server
    from tests.wsclient import ws_client

    out = io.StringIO()
    configure_logging("info", json_format=True, stream=out)
    question = "What is the secret handshake of the robber?"
    with running_server(make_settings(tmp_path, log_level="info")) as server:
        token = server.token("alice")
        async with httpx.AsyncClient(timeout=5) as http:
            listing = await http.get(
                f"{server.url}/games", headers={"Authorization": f"Bearer {token}"}
            )
        game = listing.json()["games"][0]["id"]
        async with ws_client(server.ws_url, token) as client:
            session_id = (await client.start(game))["session"]["id"]
            frames = await client.ask(question)
    logged = lines(out)
    turn_lines = [x for x in logged if x["msg"] == "turn completed"]
    assert len(turn_lines) == 1
    line = turn_lines[0]
    assert line["turn_id"] == frames[0]["turn_id"]
    assert (line["session_id"], line["user_id"], line["game_id"]) == (session_id, "alice", game)
    text = out.getvalue()
    assert token not in text
    assert question not in text
    assert any(x.get("request_id") for x in logged)
