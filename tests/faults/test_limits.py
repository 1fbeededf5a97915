"""Limits under abuse: connections per instance (authenticated or not), refused frames
that do nothing, text length counted in characters, live sessions per user, request
bodies at the byte, and a flood from one user that does not slow another's stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from chat_server.auth import mint_token
from tests.processes import server_process
from tests.server import SECRET, make_settings, running_server
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

from .support import bearer, first_game, p99

pytestmark = pytest.mark.faults

FLOOD_SECONDS = 3


async def test_connections_per_instance_count_every_user(tmp_path: Path) -> None:
    """WS_MAX_CONNECTIONS: the next connection, whoever it is, gets rate_limited and
    close 1008; once one leaves, a newcomer is welcome."""
    with running_server(make_settings(tmp_path, ws_max_connections=3)) as server:
        async with ws_client(server.ws_url, server.token("u1")):
            async with (
                ws_client(server.ws_url, server.token("u2")),
                ws_client(server.ws_url, server.token("u3")),
                ws_client(server.ws_url, server.token("u4"), ready=False) as fourth,
            ):
                assert (await fourth.expect("error"))["code"] == "rate_limited"
                assert await fourth.closed() == 1008
            async with ws_client(server.ws_url, server.token("u5")) as newcomer:
                await newcomer.send({"type": "ping", "id": 5})
                assert (await newcomer.expect("pong"))["id"] == 5


async def test_unauthenticated_sockets_count_against_the_instance_limit(tmp_path: Path) -> None:
    """Sockets that never authenticate are bounded too: past WS_MAX_CONNECTIONS they are
    refused at once instead of being held until the auth timeout."""
    limit, opened = 3, 12
    settings = make_settings(tmp_path, ws_max_connections=limit, ws_auth_timeout=30)
    with running_server(settings) as server:
        sockets = [
            await connect(server.ws_url, open_timeout=5, close_timeout=1) for _ in range(opened)
        ]
        try:
            await asyncio.sleep(0.5)
            held = sum(ws.close_code is None for ws in sockets)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
    assert held <= limit, f"{held} unauthenticated sockets held open"


async def test_refused_frames_do_nothing(tmp_path: Path) -> None:
    """Frames past the rate are refused, not queued: a burst of session.start creates
    only the sessions the bucket allowed, then the connection closes 1008."""
    settings = make_settings(tmp_path, ws_max_frames_per_second=1, ws_frame_burst=3)
    with running_server(settings) as server:
        token = server.token("burst")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            for _ in range(30):
                await client.send({"type": "session.start", "game_id": game})
            frames = await _until_closed(client)
            assert await client.closed() == 1008
        ready = sum(f["type"] == "session.ready" for f in frames)
        async with httpx.AsyncClient(timeout=10) as http:
            stored = (await http.get(f"{server.url}/me/sessions", headers=bearer(token))).json()
    assert ready == len(stored["sessions"]) <= 5  # the burst of 3, and refills meanwhile
    assert sum(f.get("code") == "rate_limited" for f in frames) >= 10


async def _until_closed(client: Any) -> list[dict[str, Any]]:
    frames = []
    try:
        while True:
            frames.append(await client.recv(timeout=5))
    except Exception:
        return frames


async def test_text_limit_counts_characters_not_bytes(tmp_path: Path) -> None:
    """WS_MAX_TEXT_CHARS characters are welcome even when each takes 4 bytes; one more
    is invalid_frame and the connection stays."""
    settings = make_settings(tmp_path, ws_max_text_chars=1000)
    with running_server(settings) as server:
        token = server.token("writer")
        async with ws_client(server.ws_url, token) as client:
            await client.start(await first_game(server.url, token))
            frames = await client.ask("🎲" * 1000)
            assert frames[-1]["finish_reason"] == "stop"
            await client.send({"type": "message", "text": "🎲" * 1001})
            assert (await client.expect("error"))["code"] == "invalid_frame"
            await client.send({"type": "ping", "id": "after"})
            assert (await client.expect("pong"))["id"] == "after"


async def test_live_sessions_per_user_are_bounded_by_connections(tmp_path: Path) -> None:
    """One attached session per connection: a user starting sessions over and over on
    their connections has at most WS_MAX_CONNECTIONS_PER_USER live ones."""
    settings = make_settings(tmp_path, ws_max_connections_per_user=2)
    with running_server(settings) as server:
        token, staff = server.token("hoarder"), bearer(server.token("ops", "admin"))
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as one, ws_client(server.ws_url, token) as two:
            for client in (one, two) * 5:
                await client.start(game)
            async with httpx.AsyncClient(timeout=10) as http:
                live = (await http.get(f"{server.url}/admin/sessions", headers=staff)).json()
    mine = [s for s in live["sessions"] if s["user_id"] == "hoarder"]
    assert len(mine) == 2


async def test_body_limit_is_exact_to_the_byte(tmp_path: Path) -> None:
    """A body of exactly HTTP_MAX_BODY_BYTES is served; one byte more is 413 with the
    error body, declared or streamed; the server stays ready."""
    limit = 4096
    with running_server(make_settings(tmp_path, http_max_body_bytes=limit)) as server:
        headers = {**bearer(server.token("root", "admin")), "content-type": "application/json"}

        def body(size: int, name: str) -> bytes:
            raw = json.dumps({"name": name}).encode()
            return raw[:-1] + b" " * (size - len(raw)) + b"}"

        async def streamed(data: bytes) -> Any:
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            exact = await http.post("/admin/games", content=body(limit, "Exact"), headers=headers)
            assert exact.status_code == 201, exact.text
            over = await http.post("/admin/games", content=body(limit + 1, "Over"), headers=headers)
            assert over.status_code == 413
            assert over.json()["error_code"] == "PAYLOAD_TOO_LARGE"
            chunked = await http.post(
                "/admin/games", content=streamed(body(limit + 1, "Chunked")), headers=headers
            )
            assert chunked.status_code == 413
            assert (await http.get("/readyz")).status_code == 200


async def _gaps(url: str, token: str, game: str) -> list[float]:
    """The gaps between the deltas of one streamed answer, as the client sees them."""
    async with ws_client(url, token) as client:
        await client.start(game)
        await client.send({"type": "message", "text": "Tell me about trading."})
        arrivals = []
        while True:
            frame = await client.recv()
            if frame["type"] == "turn.delta":
                arrivals.append(time.monotonic())
            elif frame["type"] == "turn.completed":
                assert frame["finish_reason"] == "stop"
                break
    return [b - a for a, b in itertools.pairwise(arrivals)]


async def test_a_flood_from_one_user_does_not_slow_another_users_stream(tmp_path: Path) -> None:
    """Another user floods with ten connections (pings, junk, 32 KB frames, reconnecting
    after every 1008): a victim's stream keeps its pace (p99 gap printed, loose bound)."""
    with OpenAIUpstream() as upstream:
        upstream.script = Script(tokens=[f"w{i} " for i in range(120)], token_delay=0.01)
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": upstream.base_url}
        with server_process(env, tmp_path) as server:
            victim = mint_token(secret=SECRET, user_id="victim", role="basic")
            flooder = mint_token(secret=SECRET, user_id="mallory", role="basic")
            game = await first_game(server.url, victim)
            await _gaps(server.ws_url, victim, game)  # warm up
            quiet = await _gaps(server.ws_url, victim, game)
            flood = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.faults.flood",
                server.ws_url,
                flooder,
                str(FLOOD_SECONDS),
                "10",
                stdout=asyncio.subprocess.PIPE,
                cwd=Path(__file__).parents[2],
            )
            try:
                await asyncio.sleep(1.0)  # the flood is in full swing
                loud = await _gaps(server.ws_url, victim, game)
                async with asyncio.timeout(FLOOD_SECONDS + 20):
                    out, _ = await flood.communicate()
            finally:
                if flood.returncode is None:
                    flood.kill()
                    await flood.wait()
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.get(f"{server.url}/readyz")).status_code == 200
    counts = json.loads(out)
    print(
        f"\nflood: {counts['frames']} frames over {counts['connects']} connections "
        f"in {FLOOD_SECONDS} s; "
        f"victim's inter-delta gap p99 {p99(quiet) * 1000:.1f} ms quiet, "
        f"{p99(loud) * 1000:.1f} ms under the flood (upstream sends every 10 ms)"
    )
    assert counts["frames"] > 1000 and counts["connects"] > 10  # it was a flood
    assert p99(loud) < max(0.25, 5 * p99(quiet))
