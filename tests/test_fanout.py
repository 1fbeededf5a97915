"""One session, many screens, on one instance: every connection attached to a session
gets its turns live with the same seq, may cancel them, and a late joiner catches up;
an admin watches over SSE (CONTRACT §2 "Several connections", §3 watch row)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, running_server
from tests.test_ws_providers import catan, openai_settings
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import Client, ws_client


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


@pytest.fixture
def server(tmp_path: Path, upstream: OpenAIUpstream) -> Iterator[RunningServer]:
    with running_server(openai_settings(tmp_path, upstream, ws_resume_grace=5.0)) as running:
        yield running


def deltas(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["seq"], f["text"]) for f in frames if f["type"] == "turn.delta"]


@asynccontextmanager
async def followers(server: RunningServer, count: int) -> AsyncIterator[tuple[str, list[Client]]]:
    """``count`` connections of one user on one new session (the first started it)."""
    token = server.token("alice")
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(ws_client(server.ws_url, token))
        session_id = (await first.start(catan(server)))["session"]["id"]
        clients = [first]
        for _ in range(count - 1):
            client = await stack.enter_async_context(ws_client(server.ws_url, token))
            await client.send({"type": "session.resume", "session_id": session_id})
            assert (await client.expect("session.ready"))["running"] is None
            clients.append(client)
        yield session_id, clients


@pytest.mark.parametrize("count", [2, 3])
async def test_every_connection_gets_every_turn_with_the_same_seq(
    server: RunningServer, upstream: OpenAIUpstream, count: int
) -> None:
    """Two or three connections on one session: each turn, asked from any of them,
    reaches all with the same turn.started, the same deltas (same seq and text) and
    the same turn.completed."""
    tokens = [f"w{i} " for i in range(60)]
    upstream.script = Script(tokens=tokens, token_delay=0.002)
    async with followers(server, count) as (_session_id, clients):
        for asker in (clients[0], clients[-1]):
            await asker.send({"type": "message", "text": "robber", "client_id": "c1"})
            seen = [await client.until("turn.completed") for client in clients]
            started = [frames[0] for frames in seen]
            assert all(f["type"] == "turn.started" for f in started)
            assert len({(f["turn_id"], f["message_id"], f["client_id"]) for f in started}) == 1
            assert all(deltas(frames) == deltas(seen[0]) for frames in seen)
            assert [seq for seq, _text in deltas(seen[0])] == list(
                range(1, len(deltas(seen[0])) + 1)
            )
            assert "".join(text for _seq, text in deltas(seen[0])) == "".join(tokens)
            assert len({json.dumps(frames[-1], sort_keys=True) for frames in seen}) == 1


async def test_a_late_joiner_gets_running_then_the_deltas_after_after_seq(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """session.resume mid-turn: session.ready carries running (turn, message, seq);
    without after_seq the joiner gets every delta from seq 1, with after_seq the ones
    after it, then the rest live, with the asker's seq."""
    tokens = [f"j{i} " for i in range(200)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    token = server.token("alice")
    async with followers(server, 1) as (session_id, [asker]):
        await asker.send({"type": "message", "text": "robber"})
        turn_id = (await asker.expect("turn.started"))["turn_id"]
        for _ in range(5):
            await asker.expect("turn.delta")
        async with (
            ws_client(server.ws_url, token) as late,
            ws_client(server.ws_url, token) as other,
        ):
            await late.send({"type": "session.resume", "session_id": session_id})
            ready = await late.expect("session.ready")
            running = ready["running"]
            assert running["turn_id"] == turn_id and running["seq"] >= 5
            assert running["message_id"] == ready["history"][-1]["id"]
            await other.send(
                {
                    "type": "session.resume",
                    "session_id": session_id,
                    "turn_id": turn_id,
                    "after_seq": 3,
                }
            )
            assert (await other.expect("session.ready"))["running"]["turn_id"] == turn_id
            mine = await asker.until("turn.completed")
            theirs = await late.until("turn.completed")
            others = await other.until("turn.completed")
    assert "".join(text for _seq, text in deltas(theirs)) == "".join(tokens)
    assert [seq for seq, _t in deltas(theirs)] == list(range(1, len(deltas(theirs)) + 1))
    assert deltas(others) == deltas(theirs)[3:]
    assert deltas(theirs)[-len(deltas(mine)) :] == deltas(mine)


async def test_any_follower_may_cancel_and_a_second_message_is_refused_on_every_one(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """While a turn asked on one connection runs, a message on another is
    turn_in_progress; a cancel from that other one stops it for both (upstream closed)."""
    upstream.script = Script(tokens=[f"c{i} " for i in range(3000)], token_delay=0.01)
    async with followers(server, 2) as (_session_id, [asker, follower]):
        await asker.send({"type": "message", "text": "robber"})
        await follower.expect("turn.started")
        await follower.expect("turn.delta")
        await follower.send({"type": "message", "text": "again"})
        frames = await follower.until("error")
        assert frames[-1]["code"] == "turn_in_progress"
        await follower.send({"type": "cancel"})
        for client in (asker, follower):
            assert (await client.until("turn.completed"))[-1]["finish_reason"] == "cancelled"
        assert upstream.disconnected.wait(2)


async def test_two_messages_at_the_same_moment_start_one_turn(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """Two connections of a session send a message at once: one turn starts (on both),
    the other message is turn_in_progress, and a cancel from either stops that turn."""
    upstream.script = Script(tokens=[f"r{i} " for i in range(3000)], token_delay=0.01)
    async with followers(server, 2) as (_session_id, clients):
        message = {"type": "message", "text": "robber"}
        await asyncio.gather(*(client.send(message) for client in clients))
        started: list[str] = []
        refused = 0
        for client in clients:
            frames: list[dict[str, Any]] = []
            while not any(f["type"] == "turn.delta" for f in frames):
                frames.append(await client.recv())
            started += [f["turn_id"] for f in frames if f["type"] == "turn.started"]
            refused += sum(f["type"] == "error" for f in frames)
            assert all(f["code"] == "turn_in_progress" for f in frames if f["type"] == "error")
        assert len(started) == 2 and len(set(started)) == 1  # one turn, seen on both
        assert refused == 1
        await clients[1].send({"type": "cancel", "turn_id": started[0]})
        for client in clients:
            assert (await client.until("turn.completed"))[-1]["finish_reason"] == "cancelled"
        assert upstream.disconnected.wait(2)


async def test_a_follower_that_does_not_read_does_not_slow_the_others(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """One connection stops reading while a long answer streams: the asker still gets
    all of it at once, the server holds a bounded queue for the idle one, and once it
    reads it gets the same text, with no seq missing."""
    tokens = [f"{i:05d}" + "y" * 195 for i in range(1500)]
    upstream.script = Script(tokens=tokens)
    token = server.token("alice")
    async with (
        ws_client(server.ws_url, token) as asker,
        ws_client(server.ws_url, token, max_queue=1) as idle,
    ):
        session_id = (await asker.start(catan(server)))["session"]["id"]
        await idle.send({"type": "session.resume", "session_id": session_id})
        await idle.expect("session.ready")
        await asker.send({"type": "message", "text": "robber"})
        async with asyncio.timeout(10):
            mine = await asker.until("turn.completed")
        assert "".join(t for _s, t in deltas(mine)) == "".join(tokens)

        async def queued() -> int:
            return max(len(c.outbox) for c in server.services.connections.all())

        assert server.call(queued()) <= 3
        theirs = await idle.until("turn.completed")
    assert "".join(t for _s, t in deltas(theirs)) == "".join(tokens)
    assert [s for s, _t in deltas(theirs)] == list(range(1, len(deltas(theirs)) + 1))


async def test_admin_sessions_counts_the_connections_of_a_session(server: RunningServer) -> None:
    """GET /admin/sessions lists a session followed by three sockets once, with
    connections 3, then 2 when one leaves."""
    headers = {"Authorization": f"Bearer {server.token('root', 'admin')}"}

    async def row(session_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            listed = (await http.get(f"{server.url}/admin/sessions", headers=headers)).json()
        rows = [s for s in listed["sessions"] if s["id"] == session_id]
        assert len(rows) == 1
        return dict(rows[0])

    async with followers(server, 3) as (session_id, clients):
        assert (await row(session_id))["connections"] == 3
        await clients[1].ws.close()
        for _ in range(50):
            if (await row(session_id))["connections"] == 2:
                break
            await asyncio.sleep(0.05)
        assert (await row(session_id))["connections"] == 2


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each event of an SSE response, as they come."""
    block: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line:
            key, _, value = line.partition(": ")
            block[key] = value
            continue
        if "data" in block:
            yield block.get("id", ""), block.get("event", ""), json.loads(block["data"])
        block = {}


async def read_sse(response: httpx.Response, until: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each event up to and including the first ``until``."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    async for event in sse_events(response):
        events.append(event)
        if event[1] == until:
            break
    return events


async def test_admin_watch_streams_the_turn_and_refuses_non_staff(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """Staff watch a session over SSE: turn.started, the deltas (id <turn_id>:<seq>,
    the same seq as the user's) and turn.completed; a basic user gets 403, an unknown
    session 404."""
    tokens = [f"a{i} " for i in range(40)]
    upstream.script = Script(tokens=tokens, token_delay=0.005)
    staff = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
    basic = {"Authorization": f"Bearer {server.token('eve', 'basic')}"}
    async with (
        followers(server, 1) as (session_id, [user]),
        httpx.AsyncClient(timeout=httpx.Timeout(5, read=20)) as http,
    ):
        url = f"{server.url}/admin/sessions/{session_id}/stream"
        assert (await http.get(url, headers=basic)).status_code == 403
        missing = await http.get(f"{server.url}/admin/sessions/nope/stream", headers=staff)
        assert missing.status_code == 404
        async with http.stream("GET", url, headers=staff) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            await asyncio.sleep(0.2)  # the watch is attached before the question
            await user.send({"type": "message", "text": "robber"})
            watched = await read_sse(response, "turn.completed")
        frames = await user.until("turn.completed")
    kinds = [kind for _id, kind, _data in watched]
    assert kinds[0] == "turn.started" and kinds[-1] == "turn.completed"
    turn_id = frames[0]["turn_id"]
    seen = [(d["seq"], d["text"]) for _i, k, d in watched if k == "turn.delta"]
    assert seen == deltas(frames)
    assert [i for i, k, _d in watched if k == "turn.delta"] == [f"{turn_id}:{s}" for s, _ in seen]


async def test_admin_streams_end_when_the_staff_token_expires(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """The watch of a session and the live feed, opened with a token that expires in
    2 s, end then (as a WebSocket is closed): a stream does not outlive the right to
    read it."""
    with running_server(openai_settings(tmp_path, upstream, jwt_leeway=0.0)) as srv:
        staff = {"Authorization": f"Bearer {srv.token('root', 'admin', ttl=2)}"}
        async with (
            followers(srv, 1) as (session_id, _clients),
            httpx.AsyncClient(base_url=srv.url, timeout=httpx.Timeout(5, read=20)) as http,
        ):

            async def read_until_closed(path: str) -> float:
                started = time.monotonic()
                async with http.stream("GET", path, headers=staff) as response:
                    assert response.status_code == 200
                    async for _chunk in response.aiter_bytes():
                        pass
                return time.monotonic() - started

            async with asyncio.timeout(10):
                ended = await asyncio.gather(
                    read_until_closed(f"/admin/sessions/{session_id}/stream"),
                    read_until_closed("/admin/sessions/events"),
                )
            assert all(0.5 < seconds < 4 for seconds in ended), ended
            again = await http.get("/admin/sessions/events", headers=staff)
            assert again.status_code == 401  # the same token now: refused
