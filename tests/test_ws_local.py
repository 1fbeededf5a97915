"""The WebSocket chat end to end on the embedded defaults (SQLite, in-process counters,
the local provider)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


def game_id(server: RunningServer, name: str) -> str:
    token = server.token()
    games = httpx.get(
        f"{server.url}/games",
        params={"search": name},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).json()["games"]
    return str(games[0]["id"])


async def test_local_answer_cites_the_right_passage(server: RunningServer) -> None:
    """A question about Catan's robber is answered from the robber passage, cited."""
    catan = game_id(server, "Catan")
    async with ws_client(server.ws_url, server.token()) as client:
        ready = await client.start(catan)
        assert ready["history"] == []
        frames = await client.ask("What happens when a seven is rolled and the robber moves?")
    started = frames[0]
    assert started["type"] == "turn.started"
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    text = "".join(d["text"] for d in deltas)
    assert "not a language model" in text
    assert "steals one random resource card" in text
    completed = frames[-1]
    assert completed["finish_reason"] == "stop"
    assert completed["citations"][0]["heading"] == "The robber"
    assert completed["usage"]["output_tokens"] > 0


async def test_a_cancelled_answer_cites_what_it_showed(tmp_path: Path) -> None:
    """Cancelled while quoting its first passage, the local answer's turn.completed
    cites that passage alone, not every passage it was given."""
    settings = make_settings(tmp_path, local_token_delay=0.02)
    with running_server(settings) as srv:
        catan = game_id(srv, "Catan")
        async with ws_client(srv.ws_url, srv.token()) as client:
            await client.start(catan)
            await client.send({"type": "message", "text": "What happens when a seven is rolled?"})
            shown = ""
            while "[p1]" not in shown:
                frame = await client.recv()
                shown += frame.get("text", "") if frame["type"] == "turn.delta" else ""
            await client.send({"type": "cancel"})
            frames = await client.until("turn.completed")
    shown += "".join(f["text"] for f in frames if f["type"] == "turn.delta")
    completed = frames[-1]
    assert completed["finish_reason"] == "cancelled"
    assert "[p2]" not in shown
    assert [c["heading"] for c in completed["citations"]] == ["The robber"]  # p1 alone
