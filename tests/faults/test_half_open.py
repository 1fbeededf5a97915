"""A client that vanishes without closing (half-open TCP: it stops reading, answers no
ping and never sends a FIN) is found by the keepalive pings within
WS_PING_INTERVAL + WS_PING_TIMEOUT, and its running turn is handled as a disconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.upstreams import OpenAIUpstream, Script

from .support import RawWebSocket, bearer, first_game

pytestmark = pytest.mark.faults

PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
SLACK = 1.5  # scheduling on a loaded machine, the turn's final write

SCRIPTS = {
    # a long, slow answer: the turn is running when the client goes silent
    "idle": Script(tokens=[f"t{i} " for i in range(3000)], token_delay=0.01),
    # a fast, big answer into a client that reads nothing: every buffer on the way fills
    "full-buffers": Script(tokens=["x" * 2000] * 20000, token_delay=0.0005),
}


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


async def _server_state(server: RunningServer) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:
        return (
            len(server.services.connections),
            len(server.services.manager),
            len(server.server.server_state.connections),
        )

    state: tuple[int, int, int] = await asyncio.to_thread(server.call, read())
    return state


@pytest.mark.parametrize("case", list(SCRIPTS))
async def test_silent_client_is_found_by_pings_and_its_turn_cancelled(
    tmp_path: Path, upstream: OpenAIUpstream, case: str
) -> None:
    """The client goes silent mid-turn: within ping interval + timeout the server has
    dropped the connection (socket included), cancelled the turn, closed the upstream
    request and stored the answer as cancelled."""
    upstream.script = SCRIPTS[case]
    settings = make_settings(
        tmp_path,
        openai_api_key="sk-test",
        openai_base_url=upstream.base_url,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        ws_resume_grace=0.0,
    )
    with running_server(settings) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        raw = await asyncio.to_thread(
            RawWebSocket, server.port, token, rcvbuf=4096 if case == "full-buffers" else None
        )
        try:
            session_id = await asyncio.to_thread(raw.start_turn, game, "Tell me everything.")
            silent_since = time.monotonic()
            # From here on the client reads nothing, answers no ping, closes nothing.
            while await _server_state(server) != (0, 0, 0):
                assert time.monotonic() - silent_since < PING_INTERVAL + PING_TIMEOUT + SLACK
                await asyncio.sleep(0.05)
            found_after = time.monotonic() - silent_since
            assert upstream.disconnected.wait(timeout=2)
            messages = await _messages(server, token, session_id)
        finally:
            raw.close()
    print(f"\nhalf-open client ({case}) dropped after {found_after:.2f} s")
    assert [m["status"] for m in messages] == ["complete", "cancelled"]


async def _messages(server: RunningServer, token: str, session_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.url}/me/sessions/{session_id}", headers=bearer(token))
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages
