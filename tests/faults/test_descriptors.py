"""Near its file-descriptor limit an instance refuses new connections early (503, a log
line, a metric), and the descriptors it keeps in reserve serve the database and Redis
of the connections it already has (issue 25)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.processes import server_process
from tests.server import SECRET

from .support import RawWebSocket, first_game, metric

pytestmark = pytest.mark.faults

NOFILE = 256
RESERVE = 64
FLOOD = 300  # more sockets than the limit leaves


async def _answer(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(64), 1.0)
    except TimeoutError:
        return b""  # held open: admitted, waiting for a request head


async def test_near_the_descriptor_limit_new_connections_are_refused_early(
    tmp_path: Path, redis_url: str
) -> None:
    """With RLIMIT_NOFILE 256 and FD_RESERVE 64, a flood of 300 silent sockets: those past
    the limit minus the reserve are answered 503 at once, and meanwhile an established
    WebSocket still runs a whole turn (database and Redis); afterwards the refusals are
    on /metrics and in the log."""
    env = {
        "REDIS_URL": redis_url,
        "REDIS_MAX_CONNECTIONS": "8",
        "HTTP_HEADER_TIMEOUT": "60",
        "HTTP_MAX_PENDING": "100000",
        "FD_RESERVE": str(RESERVE),
    }
    with server_process(env, tmp_path, nofile=NOFILE) as server:
        from chat_server.auth import mint_token

        token = mint_token(secret=SECRET, user_id="alice", role="basic", ttl=600)
        game = await first_game(server.url, token)
        ws = await asyncio.to_thread(RawWebSocket, server.port, token)
        flood = []
        try:
            assert (await asyncio.to_thread(ws.read_json))["type"] == "ready"
            for _ in range(FLOOD):
                flood.append(await asyncio.open_connection("127.0.0.1", server.port))
            answers = await asyncio.gather(*(_answer(reader) for reader, _ in flood))
            refused = sum(1 for a in answers if a.startswith(b"HTTP/1.1 503"))
            held = sum(1 for a in answers if a == b"")
            assert refused + held == FLOOD
            assert refused >= FLOOD - (NOFILE - RESERVE)
            assert server.descriptors() <= NOFILE - RESERVE + 2

            # The reserve serves the connections already in: a turn, start to finish.
            frames = [
                {"type": "session.start", "game_id": game},
                {"type": "message", "text": "How do I win?"},
            ]
            for frame in frames:
                await asyncio.to_thread(ws.send_text, json.dumps(frame))
            seen: list[str] = []
            while not seen or seen[-1] not in ("turn.completed", "error"):
                seen.append((await asyncio.to_thread(ws.read_json))["type"])
            assert seen[-1] == "turn.completed", seen
        finally:
            for _, writer in flood:
                writer.close()
            ws.close()
        await asyncio.sleep(0.5)
        counted = await metric(server.url, "chat_connections_refused_total", reason="descriptors")
        assert counted >= refused
        assert "near the file-descriptor limit" in server.log.read_text()
