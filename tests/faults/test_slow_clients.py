"""Silent and slow connections cannot hold the server (issue 23): a connection without a
whole request head (the WebSocket handshake included) within HTTP_HEADER_TIMEOUT is
closed, and so is one idle that long between requests; a burst of unfinished
connections past HTTP_MAX_PENDING is refused at once; keep-alive clients and
established WebSockets are not affected."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from chat_server.admission import ChatH11Protocol
from tests.processes import ServerProcess, server_process
from tests.server import SECRET, make_settings, running_server

from .support import RawWebSocket, first_game, metric, scaled

pytestmark = pytest.mark.faults

HEADER_TIMEOUT = 1.0
SLACK = 2.0  # scheduling on a loaded machine
WS_HEAD = (
    "GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
HTTP_HEAD = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: drip\r\n\r\n"


def _env(**extra: str) -> dict[str, str]:
    return {"HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT), **extra}


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    start = time.monotonic()
    received = b""
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionError:
                break
            if not chunk:
                break
            received += chunk
    return time.monotonic() - start, received


async def _silent(port: int) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _until_closed(reader, HEADER_TIMEOUT + SLACK + 5)
    finally:
        writer.close()


async def _drip(port: int, head: str, every: float) -> tuple[float, bytes]:
    """Sends ``head`` one byte every ``every`` seconds (slower than the deadline allows)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def dribble() -> None:
        for byte in head.encode():
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)

    sender = asyncio.create_task(dribble())
    try:
        return await _until_closed(reader, HEADER_TIMEOUT + SLACK + 5)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def _healthz_times(url: str, until: asyncio.Event) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=10) as http:
        while not until.is_set():
            start = time.monotonic()
            response = await http.get(f"{url}/healthz")
            assert response.status_code == 200
            times.append(time.monotonic() - start)
            await asyncio.sleep(0.1)
    return times


async def _settled_descriptors(server: ServerProcess, at_most: int, wait: float) -> int:
    deadline = time.monotonic() + wait
    count = server.descriptors()
    while count > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = server.descriptors()
    return count


async def test_silent_and_dripping_connections_are_closed_within_the_timeout(
    tmp_path: Path,
) -> None:
    """Hundreds of connections that send nothing, or a request head (HTTP or WebSocket
    handshake) a byte at a time, are all closed within HTTP_HEADER_TIMEOUT plus slack,
    with nothing answered; /healthz stays fast meanwhile, and the server's descriptor
    count returns to where it was."""
    silent, drippers = scaled(1000, 50), scaled(200, 20)
    with server_process(_env(HTTP_MAX_PENDING="100000"), tmp_path) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{server.url}/healthz")).status_code == 200
        baseline = server.descriptors()
        done = asyncio.Event()
        probe = asyncio.create_task(_healthz_times(server.url, done))
        results = await asyncio.gather(
            *(_silent(server.port) for _ in range(silent)),
            *(
                _drip(server.port, WS_HEAD if i % 2 else HTTP_HEAD, every=0.3)
                for i in range(drippers)
            ),
        )
        done.set()
        health = await probe
        assert len(results) == silent + drippers
        slowest = max(seconds for seconds, _ in results)
        assert slowest < HEADER_TIMEOUT + SLACK, slowest
        assert all(sent == b"" for _, sent in results)
        assert health and max(health) < 1.0, health
        assert await _settled_descriptors(server, baseline, wait=5) <= baseline


async def test_the_h11_protocol_has_the_same_deadline(tmp_path: Path) -> None:
    """With uvicorn's h11 parser instead of httptools, silent and dripping connections
    are closed within the timeout too, and a whole request is still answered."""
    settings = make_settings(tmp_path, http_header_timeout=HEADER_TIMEOUT)
    with running_server(settings, http=ChatH11Protocol) as server:
        results = await asyncio.gather(
            *(_silent(server.port) for _ in range(20)),
            *(_drip(server.port, WS_HEAD if i % 2 else HTTP_HEAD, every=0.3) for i in range(10)),
        )
        assert max(seconds for seconds, _ in results) < HEADER_TIMEOUT + SLACK
        assert all(sent == b"" for _, sent in results)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{server.url}/healthz")).status_code == 200


async def test_keep_alive_client_is_served_and_idle_one_is_closed(tmp_path: Path) -> None:
    """A client sending a request on one connection every half timeout keeps it for
    three timeouts; once it falls idle, it is closed HTTP_HEADER_TIMEOUT later."""
    with server_process(_env(), tmp_path) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            start = time.monotonic()
            served = 0
            while time.monotonic() - start < 3 * HEADER_TIMEOUT:
                writer.write(HTTP_HEAD.encode())
                status = await asyncio.wait_for(reader.readline(), 5)
                assert status.startswith(b"HTTP/1.1 200"), status
                length = 0
                while (line := await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                served += 1
                await asyncio.sleep(HEADER_TIMEOUT / 2)
            assert served >= 5
            idle, sent = await _until_closed(reader, HEADER_TIMEOUT + SLACK + 5)
            assert sent == b""
            assert HEADER_TIMEOUT - HEADER_TIMEOUT / 2 - 0.2 <= idle < HEADER_TIMEOUT + SLACK
        finally:
            writer.close()


async def test_established_websocket_outlives_the_header_timeout(tmp_path: Path) -> None:
    """An authenticated WebSocket quiet for three header timeouts is still open and
    answers a session.start."""
    with server_process(_env(), tmp_path) as server:
        token = _token()
        game = await first_game(server.url, token)
        ws = await asyncio.to_thread(RawWebSocket, server.port, token)
        try:
            assert (await asyncio.to_thread(ws.read_json))["type"] == "ready"
            await asyncio.sleep(3 * HEADER_TIMEOUT)
            start = json.dumps({"type": "session.start", "game_id": game})
            await asyncio.to_thread(ws.send_text, start)
            assert (await asyncio.to_thread(ws.read_json))["type"] == "session.ready"
        finally:
            ws.close()


async def test_burst_past_the_pending_cap_is_refused_at_once(tmp_path: Path) -> None:
    """With HTTP_MAX_PENDING=20, silent connections and unauthenticated WebSockets fill
    the cap; the next connection is answered 503 at once, counted in
    chat_connections_refused_total{reason="pending"} and logged; after the timeouts the
    server takes connections again."""
    env = _env(HTTP_MAX_PENDING="20", WS_AUTH_TIMEOUT=str(HEADER_TIMEOUT))
    with server_process(env, tmp_path) as server:
        sockets = [await asyncio.to_thread(RawWebSocket, server.port, None) for _ in range(8)]
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(12)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            seconds, sent = await _until_closed(reader, 5)
            writer.close()
            assert sent.startswith(b"HTTP/1.1 503"), sent
            assert seconds < 1.0  # answered as it opened, not at the header timeout
        finally:
            for ws in sockets:
                ws.close()
            for _, w in held:
                w.close()
        await asyncio.sleep(HEADER_TIMEOUT)
        assert await metric(server.url, "chat_connections_refused_total", reason="pending") >= 1
        assert "HTTP_MAX_PENDING" in server.log.read_text()


def _token() -> str:
    from chat_server.auth import mint_token

    return mint_token(secret=SECRET, user_id="alice", role="basic", ttl=600)
