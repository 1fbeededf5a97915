"""``GET /asyncapi.json``: AsyncAPI 3.0 of /ws/chat, valid for the official parser,
naming every frame the server accepts or sends, and matching what a real turn sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_server.frames import parse_frame
from chat_server.frames_out import validate_outbound
from tests.node import run_node
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

# Every frame the contract names (CONTRACT §2), both ways.
CLIENT_FRAMES = {"auth", "session.start", "session.resume", "message", "cancel", "ping"}
SERVER_FRAMES = {
    "ready",
    "session.ready",
    "turn.started",
    "turn.delta",
    "turn.completed",
    "error",
    "pong",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


async def test_the_document_is_valid_for_the_official_parser(server: RunningServer) -> None:
    """@asyncapi/parser finds no error in the document and reads every frame as a message."""
    result = await run_node("asyncapi-validate.mjs", f"{server.url}/asyncapi.json")
    assert result["errors"] == []
    names = set(result["messages"])
    assert names >= CLIENT_FRAMES | SERVER_FRAMES


async def test_every_frame_both_ways_is_described(server: RunningServer) -> None:
    """The channel's receive operation names the client frames, send the server's."""
    async with httpx.AsyncClient(timeout=5) as http:
        doc = (await http.get(f"{server.url}/asyncapi.json")).json()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["channels"]["chat"]["address"] == "/ws/chat"
    messages = doc["components"]["messages"]

    def names(operation: str) -> set[str]:
        refs = doc["operations"][operation]["messages"]
        return {messages[r["$ref"].rsplit("/", 1)[1]]["name"] for r in refs}

    assert names("receiveClientFrames") == CLIENT_FRAMES
    assert names("sendServerFrames") == SERVER_FRAMES


async def test_the_frames_of_a_real_turn_are_the_described_ones(server: RunningServer) -> None:
    """Every frame a real client sends and receives in a turn validates against the models."""
    async with httpx.AsyncClient(timeout=5) as http:
        games = await http.get(
            f"{server.url}/games", headers={"Authorization": f"Bearer {server.token()}"}
        )
    game_id = games.json()["games"][0]["id"]
    sent: list[dict[str, Any]] = [
        {"type": "auth", "token": server.token()},
        {"type": "ping", "id": 7},
        {"type": "session.start", "game_id": game_id, "language": "en"},
    ]
    received: list[dict[str, Any]] = []
    async with ws_client(server.ws_url, server.token(), auth_frame=True, ready=False) as ws:
        for frame in sent:
            if frame["type"] != "auth":
                await ws.send(frame)
            received.append(await ws.recv())
        question = {"type": "message", "text": "How do I set up?", "client_id": "c1"}
        await ws.send(question)
        sent.append(question)
        received += await ws.until("turn.completed")
        cancel = {"type": "cancel"}
        await ws.send(cancel)  # nothing runs: an error frame
        sent.append(cancel)
        received.append(await ws.recv())
    for frame in sent:
        parse_frame(json.dumps(frame))
    for frame in received:
        validate_outbound(frame)
    assert {f["type"] for f in received} == SERVER_FRAMES
