"""A user's own sessions over REST (CONTRACT §3): listed, paged, and private."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import client, expect_error

SESSION_FIELDS = {"id", "game_id", "language", "provider", "model", "created_at"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


def demo_ids(server: RunningServer) -> dict[str, str]:
    with client(server) as http:
        return {g["name"]: g["id"] for g in http.get("/games").json()["games"]}


async def chat(server: RunningServer, user: str, game_id: str, question: str) -> dict[str, Any]:
    """One session with one completed turn; its ``session.ready`` session."""
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token(user)) as ws:
        ready = await ws.start(game_id)
        frames = await ws.ask(question)
        assert frames[-1]["finish_reason"] == "stop"
    session: dict[str, Any] = ready["session"]
    return session


def walk_sessions(server: RunningServer, user: str, **params: Any) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    with client(server, user) as http:
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            page = http.get("/me/sessions", params=query).json()
            assert set(page) == {"sessions", "next_cursor"}
            sessions.extend(page["sessions"])
            cursor = page["next_cursor"]
            if cursor is None:
                return sessions


async def test_my_sessions_lists_only_mine_newest_first(server: RunningServer) -> None:
    """/me/sessions lists the caller's sessions, newest first, filterable by game and paged."""
    ids = demo_ids(server)
    first = await chat(server, "ann", ids["Catan"], "How do I build a road?")
    second = await chat(server, "ann", ids["Tic-Tac-Toe"], "Who moves first?")
    third = await chat(server, "ann", ids["Catan"], "What does a city cost?")
    await chat(server, "ben", ids["Catan"], "How do harbors work?")
    mine = walk_sessions(server, "ann")
    assert [s["id"] for s in mine] == [third["id"], second["id"], first["id"]]
    assert all(set(s) == SESSION_FIELDS for s in mine)
    assert [s["id"] for s in walk_sessions(server, "ann", limit=1)] == [s["id"] for s in mine]
    catan = walk_sessions(server, "ann", game_id=ids["Catan"])
    assert [s["id"] for s in catan] == [third["id"], first["id"]]
    assert [s["id"] for s in walk_sessions(server, "nobody")] == []


async def test_my_session_shows_its_messages(server: RunningServer) -> None:
    """/me/sessions/{id} gives the session and its stored question and answer."""
    game_id = demo_ids(server)["Tic-Tac-Toe"]
    session = await chat(server, "cat", game_id, "What happens when all nine squares are filled?")
    with client(server, "cat") as http:
        response = http.get(f"/me/sessions/{session['id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session", "messages"}
    assert body["session"]["id"] == session["id"]
    assert body["session"]["game_id"] == game_id
    question, answer = body["messages"]
    assert (question["role"], question["status"]) == ("user", "complete")
    assert question["content"] == "What happens when all nine squares are filled?"
    assert (answer["role"], answer["status"]) == ("assistant", "complete")
    assert "draw" in answer["content"]


async def test_another_users_session_is_404(server: RunningServer) -> None:
    """Someone else's session is the same 404 as one that does not exist."""
    session = await chat(server, "dan", demo_ids(server)["Catan"], "How do I trade?")
    with client(server, "eve") as http, client(server, "root", "admin") as admin:
        missing = expect_error(http.get("/me/sessions/no-such"), 404, "SESSION_NOT_FOUND")
        other = expect_error(http.get(f"/me/sessions/{session['id']}"), 404, "SESSION_NOT_FOUND")
        assert other == missing
        expect_error(admin.get(f"/me/sessions/{session['id']}"), 404, "SESSION_NOT_FOUND")


@pytest.mark.parametrize(
    ("params", "error_code"),
    [
        ({"limit": 0}, "VALIDATION_ERROR"),
        ({"limit": 101}, "VALIDATION_ERROR"),
        ({"cursor": "%%%"}, "INVALID_CURSOR"),
    ],
)
def test_bad_session_paging_is_422(
    server: RunningServer, params: dict[str, Any], error_code: str
) -> None:
    """A bad limit or cursor on /me/sessions is 422 with the contract's body."""
    with client(server) as http:
        expect_error(http.get("/me/sessions", params=params), 422, error_code)


async def test_my_sessions_default_page_is_20(server: RunningServer) -> None:
    """Without ``limit`` a page holds 20 sessions; ``limit`` goes up to 100."""
    game_id = demo_ids(server)["Catan"]
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token("fay")) as ws:
        for _ in range(21):
            await ws.start(game_id)
    with client(server, "fay") as http:
        first = http.get("/me/sessions").json()
        assert len(first["sessions"]) == 20 and first["next_cursor"]
        rest = http.get("/me/sessions", params={"cursor": first["next_cursor"]}).json()
        assert (len(rest["sessions"]), rest["next_cursor"]) == (1, None)
        assert len(http.get("/me/sessions", params={"limit": 100}).json()["sessions"]) == 21
