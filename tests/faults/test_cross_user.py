"""Cross-user and hidden-game access: another user's session (REST and WebSocket, even
with the id of its running turn) and hidden games (by id, search, status filter or
cursor) look exactly like things that do not exist."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import Client, ws_client

from .support import bearer, first_game

pytestmark = pytest.mark.faults

MISSING_ID = "01a00000-0000-7000-8000-000000000000"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with OpenAIUpstream() as upstream:
        upstream.script = Script(tokens=[f"b{i} " for i in range(250)], token_delay=0.01)
        settings = make_settings(
            tmp_path,
            openai_api_key="sk-test",
            openai_base_url=upstream.base_url,
            ws_resume_grace=5.0,
        )
        with running_server(settings) as srv:
            yield srv


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def same_refusal(theirs: httpx.Response, missing: httpx.Response) -> None:
    """Refusing another's thing says nothing more than refusing nothing at all."""
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()


async def no_frame_of(client: Client, turn_id: str, seconds: float = 0.5) -> list[dict[str, Any]]:
    """What arrives in ``seconds``; none of it may belong to ``turn_id``."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frames.append(await client.recv())
    except TimeoutError:
        pass
    assert not [f for f in frames if f.get("turn_id") == turn_id], frames
    return frames


async def test_another_users_session_and_running_turn_are_not_found(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Alice cannot read, resume, follow or cancel Bob's session or turn, by REST or
    WebSocket; Bob's answer streams on untouched."""
    alice, bob = server.token("alice"), server.token("bob")
    game = await first_game(server.url, alice)
    async with ws_client(server.ws_url, bob) as bob_ws, ws_client(server.ws_url, alice) as mine:
        bob_session = (await bob_ws.start(game, provider="openai"))["session"]["id"]
        await bob_ws.send({"type": "message", "text": "Bob's private question"})
        bob_turn = (await bob_ws.expect("turn.started"))["turn_id"]
        await bob_ws.expect("turn.delta")
        alice_session = (await mine.start(game, provider="openai"))["session"]["id"]

        same_refusal(
            await http.get(f"/me/sessions/{bob_session}", headers=bearer(alice)),
            await http.get(f"/me/sessions/{MISSING_ID}", headers=bearer(alice)),
        )
        listed = (await http.get("/me/sessions", headers=bearer(alice))).json()["sessions"]
        assert [s["id"] for s in listed] == [alice_session]
        far_cursor = base64.urlsafe_b64encode(json.dumps(["~"]).encode()).decode().rstrip("=")
        paged = await http.get("/me/sessions", params={"cursor": far_cursor}, headers=bearer(alice))
        assert [s["id"] for s in paged.json()["sessions"]] == [alice_session]

        for attempt in (
            {"session_id": bob_session},
            {"session_id": bob_session, "turn_id": bob_turn, "after_seq": 0},
            {"session_id": MISSING_ID, "turn_id": bob_turn, "after_seq": 0},
        ):
            await mine.send({"type": "session.resume", **attempt})
            error = await mine.expect("error")
            assert (error["code"], error.get("turn_id")) == ("not_found", None), error
            assert "Bob" not in json.dumps(error)
            await no_frame_of(mine, bob_turn, 0.2)

        # Her own session with his turn id: her session, none of his text.
        await mine.send(
            {"type": "session.resume", "session_id": alice_session, "turn_id": bob_turn}
        )
        ready = await mine.expect("session.ready")
        assert ready["session"]["id"] == alice_session
        assert "Bob" not in json.dumps(ready)
        await mine.send({"type": "cancel", "turn_id": bob_turn})
        assert (await mine.expect("error"))["code"] == "not_found"
        await no_frame_of(mine, bob_turn)

        frames = await bob_ws.until("turn.completed", timeout=15)
    assert frames[-1]["finish_reason"] == "stop"


async def test_hidden_games_stay_hidden_by_id_search_status_and_cursor(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """A basic user never meets a hidden or beta game: by id (404 like a missing id), in
    search, with a status filter, on any page, with any cursor, nor over the WebSocket."""
    staff, user = bearer(server.token("ops", "developer")), server.token("carol")
    made = {}
    for status in ("hidden", "beta"):
        response = await http.post(
            "/admin/games",
            json={"name": f"Aardvark {status} secret", "status": status},
            headers=staff,
        )
        assert response.status_code == 201, response.text
        made[status] = response.json()["id"]
    secret_ids = set(made.values())

    for game_id in secret_ids:
        same_refusal(
            await http.get(f"/games/{game_id}", headers=bearer(user)),
            await http.get(f"/games/{MISSING_ID}", headers=bearer(user)),
        )
        same_refusal(
            await http.get("/me/usage", params={"game_id": game_id}, headers=bearer(user)),
            await http.get("/me/usage", params={"game_id": MISSING_ID}, headers=bearer(user)),
        )
    for query in (
        {"search": "secret"},
        {"search": "aardvark"},
        {"status": "hidden"},
        {"status": "beta"},
        {"status": "hidden", "search": "Aardvark"},
    ):
        listed = await http.get("/games", params=query, headers=bearer(user))
        assert listed.status_code in (200, 422)
        if listed.status_code == 200:
            assert not {g["id"] for g in listed.json()["games"]} & secret_ids, query

    # Staff see the secret games first (by name); their cursor, or one forged to sit just
    # before them, gives a basic user nothing hidden.
    staff_page = (await http.get("/games", params={"limit": 1}, headers=staff)).json()
    assert staff_page["games"][0]["id"] in secret_ids
    forged = base64.urlsafe_b64encode(json.dumps(["A", ""]).encode()).decode().rstrip("=")
    seen: set[str] = set()
    for cursor in (staff_page["next_cursor"], forged, None):
        while True:
            params: dict[str, Any] = {"limit": 1}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/games", params=params, headers=bearer(user))).json()
            seen |= {g["id"] for g in page["games"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen and not seen & secret_ids

    async with ws_client(server.ws_url, user) as client:
        for game_id in secret_ids:
            await client.send({"type": "session.start", "game_id": game_id})
            assert (await client.expect("error"))["code"] == "not_found"


async def test_a_session_whose_game_became_hidden_cannot_be_resumed(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Hiding a game closes it to basic users at once, even for sessions they made."""
    staff, user = bearer(server.token("ops", "developer")), server.token("dave")
    created = await http.post("/admin/games", json={"name": "Soon hidden"}, headers=staff)
    game_id = created.json()["id"]
    async with ws_client(server.ws_url, user) as client:
        session_id = (await client.start(game_id))["session"]["id"]
    patched = await http.patch(f"/admin/games/{game_id}", json={"status": "hidden"}, headers=staff)
    assert patched.status_code == 200
    async with ws_client(server.ws_url, user) as client:
        await client.send({"type": "session.resume", "session_id": session_id})
        assert (await client.expect("error"))["code"] == "not_found"


async def test_a_game_hidden_while_attached_closes_to_the_next_message_and_to_rest(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """A connection attached before the game was hidden gets not_found for its next
    message (no turn, nothing of the rulebook), and the user's REST views of the
    session look like a session that does not exist; staff still see it."""
    staff = bearer(server.token("ops", "developer"))
    user = server.token("erin")
    created = await http.post("/admin/games", json={"name": "Hidden midway"}, headers=staff)
    game_id = created.json()["id"]
    async with ws_client(server.ws_url, user) as client:
        session_id = (await client.start(game_id))["session"]["id"]
        await client.send({"type": "message", "text": "robber"})
        assert (await client.until("turn.completed"))[-1]["finish_reason"] == "stop"
        assert (
            await http.get(f"/me/sessions/{session_id}", headers=bearer(user))
        ).status_code == 200
        patched = await http.patch(
            f"/admin/games/{game_id}", json={"status": "hidden"}, headers=staff
        )
        assert patched.status_code == 200
        await client.send({"type": "message", "text": "robber again"})
        frames = await client.until("error")
        assert frames[-1]["code"] == "not_found"
        assert not [f for f in frames if f["type"].startswith("turn.")]
    same_refusal(
        await http.get(f"/me/sessions/{session_id}", headers=bearer(user)),
        await http.get(f"/me/sessions/{MISSING_ID}", headers=bearer(user)),
    )
    mine = (await http.get("/me/sessions", headers=bearer(user))).json()["sessions"]
    assert session_id not in {s["id"] for s in mine}
    ops = server.token("ops", "developer")
    async with ws_client(server.ws_url, ops) as client:
        await client.start(game_id)  # staff still see a hidden game
