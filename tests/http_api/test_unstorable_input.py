"""Input no database can hold (NUL in text, NaN, bytes that are not UTF-8) is refused as
invalid, never a 500 — on SQLite and on PostgreSQL, which rejects NUL even in a lookup."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, running_server
from tests.wsclient import ws_client

from .support import backend_settings, bearer, client, expect_error


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Iterator[RunningServer]:
    with running_server(backend_settings(request, tmp_path, backend)) as srv:
        yield srv


REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "search": ("GET", "/games", {"params": {"search": "a\x00b"}}),
    "game id": ("GET", "/games/a%00b", {}),
    "usage game_id": ("GET", "/me/usage", {"params": {"game_id": "a\x00"}}),
    "sessions game_id": ("GET", "/me/sessions", {"params": {"game_id": "a\x00"}}),
    "session id": ("GET", "/me/sessions/a%00", {}),
    "game name": ("POST", "/admin/games", {"json": {"name": "a\x00b"}}),
    "patch id": ("PATCH", "/admin/games/x%00", {"json": {"name": "ok"}}),
    "patch section": ("PATCH", "/admin/games/{game}", {"json": {"section": "a\x00"}}),
    "import section": ("POST", "/admin/games/import", {"json": {"bgg_id": 1, "section": "\x00"}}),
    "flag scope_id": (
        "PUT",
        "/admin/flags",
        {
            "json": {
                "feature_key": "chat",
                "scope_type": "user",
                "scope_id": "a\x00",
                "enabled": True,
            }
        },
    ),
    "flag metadata": (
        "PUT",
        "/admin/flags",
        {
            "json": {
                "feature_key": "f",
                "scope_type": "global",
                "enabled": True,
                "metadata": {"k": "\x00"},
            }
        },
    ),
    "flag NaN": (
        "PUT",
        "/admin/flags",
        {
            "content": b'{"feature_key":"f","scope_type":"global","enabled":true,'
            b'"metadata":{"x":NaN}}',
            "headers": {"Content-Type": "application/json"},
        },
    ),
    "rating Infinity": (
        "POST",
        "/admin/games",
        {
            "content": b'{"name":"x","rating":Infinity}',
            "headers": {"Content-Type": "application/json"},
        },
    ),
    "body not UTF-8": (
        "POST",
        "/admin/games",
        {"content": b'{"name":"caf\xe9"}', "headers": {"Content-Type": "application/json"}},
    ),
    "delete flag id": ("DELETE", "/admin/flags/a%00", {}),
    "document game id": (
        "POST",
        "/admin/games/x%00/documents",
        {"json": {"title": "t", "content": "c"}},
    ),
    "document text": (
        "POST",
        "/admin/games/{game}/documents",
        {"json": {"title": "t", "content": "a\x00"}},
    ),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_unstorable_input_is_422(server: RunningServer, case: str) -> None:
    """NUL in a path, query or body, NaN, or a body that is not UTF-8: 422, nothing stored."""
    method, path, kwargs = REQUESTS[case]
    with client(server, "adm", "admin") as staff:
        game = staff.get("/games").json()["games"][0]["id"]
        flags_before = staff.get("/admin/flags").json()
        headers = {**staff.headers, **kwargs.pop("headers", {})}
        response = staff.request(method, path.format(game=game), headers=headers, **kwargs)
        expect_error(response, 422, "VALIDATION_ERROR")
        assert staff.get("/admin/flags").json() == flags_before
        assert all("\x00" not in g["name"] for g in staff.get("/games").json()["games"])


def cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "bad_cursor"),
    [
        ("/games", cursor("a\x00", "b")),
        ("/me/sessions", cursor("a\x00")),
        ("/games", cursor("\ud800", "b")),
        ("/me/sessions", cursor("\ud800")),
    ],
    ids=["games NUL", "sessions NUL", "games lone surrogate", "sessions lone surrogate"],
)
def test_cursor_holding_unstorable_text_is_422(
    server: RunningServer, path: str, bad_cursor: str
) -> None:
    """A forged cursor holding NUL or a lone surrogate (JSON's ``\\ud800``) is refused
    as INVALID_CURSOR (422), never a 500."""
    with client(server) as http:
        expect_error(http.get(path, params={"cursor": bad_cursor}), 422, "INVALID_CURSOR")


FRAMES: dict[str, dict[str, Any]] = {
    "session.start game_id": {"type": "session.start", "game_id": "a\x00"},
    "session.resume session_id": {"type": "session.resume", "session_id": "a\x00"},
}


@pytest.mark.parametrize("frame", list(FRAMES))
async def test_ws_frame_holding_nul_keeps_the_connection(server: RunningServer, frame: str) -> None:
    """A frame with NUL in an id gets an error frame and the connection stays open."""
    async with asyncio.timeout(20), ws_client(server.ws_url, server.token("u")) as ws:
        await ws.send(FRAMES[frame])
        error = await ws.expect("error")
        assert error["code"] in {"invalid_frame", "not_found"}
        await ws.send({"type": "ping", "id": 1})
        assert (await ws.expect("pong"))["id"] == 1


async def test_ws_message_holding_nul_keeps_the_connection(server: RunningServer) -> None:
    """A chat message with NUL in it is refused or answered; the connection stays open."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        games = (await http.get("/games", headers=bearer(server.token("u")))).json()["games"]
    async with asyncio.timeout(20), ws_client(server.ws_url, server.token("u")) as ws:
        await ws.start(games[0]["id"])
        await ws.send({"type": "message", "text": "how\x00 to win"})
        first = await ws.recv()
        if first["type"] == "turn.started":
            await ws.until("turn.completed")
        else:
            assert (first["type"], first["code"]) == ("error", "invalid_frame")
        await ws.send({"type": "ping", "id": 2})
        assert (await ws.expect("pong"))["id"] == 2
