"""One session, many screens, across instances (real Postgres and Redis, single and
Cluster): followers on other instances get the same turns live, any may cancel, a
follower's instance may die mid-turn, staff watch from any instance and resume with
Last-Event-ID."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import server_process
from tests.redis_cluster import RedisTarget
from tests.server import RunningServer, running_server
from tests.test_cluster import admin, catan, cluster_settings, eventually, live_sessions
from tests.test_fanout import deltas, read_sse, sse_events
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import Client, ws_client


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


@pytest.fixture
def two(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget, upstream: OpenAIUpstream
) -> Iterator[tuple[RunningServer, RunningServer]]:
    settings = cluster_settings(
        tmp_path, postgres_url, shared_redis, openai_api_key="sk", openai_base_url=upstream.base_url
    )
    with running_server(settings) as a, running_server(settings) as b:
        yield a, b


@asynccontextmanager
async def on(servers: list[Any], token: str, game: str) -> AsyncIterator[tuple[str, list[Client]]]:
    """A connection to each of ``servers`` on one new session (the first starts it)."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ws_client(s.ws_url, token)) for s in servers]
        session_id = (await clients[0].start(game))["session"]["id"]
        for client in clients[1:]:
            await client.send({"type": "session.resume", "session_id": session_id})
            await client.expect("session.ready")
        yield session_id, clients


@pytest.mark.parametrize("layout", ["ab", "abb"])
async def test_followers_on_two_instances_get_every_turn_with_the_same_seq(
    two: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream, layout: str
) -> None:
    """Two or three connections on two instances: a turn asked on either reaches all
    of them with the same deltas (seq and text) and the same turn.completed."""
    a, b = two
    tokens = [f"m{i} " for i in range(80)]
    upstream.script = Script(tokens=tokens, token_delay=0.003)
    servers = [a if x == "a" else b for x in layout]
    async with on(servers, a.token("alice"), await catan(a)) as (_sid, clients):
        for asker in (clients[0], clients[-1]):
            await asker.send({"type": "message", "text": "robber"})
            seen = [await client.until("turn.completed") for client in clients]
            assert all(frames[0]["type"] == "turn.started" for frames in seen)
            assert len({frames[0]["turn_id"] for frames in seen}) == 1
            assert all(deltas(frames) == deltas(seen[0]) for frames in seen)
            assert "".join(t for _s, t in deltas(seen[0])) == "".join(tokens)
            assert len({frames[-1]["finish_reason"] for frames in seen}) == 1


async def test_a_late_joiner_on_another_instance_gets_running_and_the_rest(
    two: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream
) -> None:
    """session.resume on B while A streams: running names the turn, then every delta
    from seq 1 (after_seq 0), the same as the asker's, then turn.completed."""
    a, b = two
    tokens = [f"l{i} " for i in range(150)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    async with on([a], a.token("alice"), await catan(a)) as (session_id, [asker]):
        await asker.send({"type": "message", "text": "robber"})
        turn_id = (await asker.expect("turn.started"))["turn_id"]
        for _ in range(5):
            await asker.expect("turn.delta")
        async with ws_client(b.ws_url, b.token("alice")) as late:
            await late.send({"type": "session.resume", "session_id": session_id})
            ready = await late.expect("session.ready")
            assert ready["running"]["turn_id"] == turn_id
            assert ready["running"]["seq"] >= 5
            theirs = await late.until("turn.completed")
        mine = await asker.until("turn.completed")
    assert "".join(t for _s, t in deltas(theirs)) == "".join(tokens)
    assert deltas(theirs)[-len(deltas(mine)) :] == deltas(mine)


async def test_a_follower_on_another_instance_cancels_the_turn(
    two: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream
) -> None:
    """A turn asked on A, cancelled from B: the upstream is closed and both get
    turn.completed cancelled; a message on B meanwhile is turn_in_progress."""
    a, b = two
    upstream.script = Script(tokens=[f"k{i} " for i in range(3000)], token_delay=0.01)
    async with on([a, b], a.token("alice"), await catan(a)) as (_sid, [asker, follower]):
        await asker.send({"type": "message", "text": "robber"})
        await follower.expect("turn.started")
        await follower.expect("turn.delta")
        await follower.send({"type": "message", "text": "again"})
        assert (await follower.until("error"))[-1]["code"] == "turn_in_progress"
        await follower.send({"type": "cancel"})
        for client in (asker, follower):
            assert (await client.until("turn.completed"))[-1]["finish_reason"] == "cancelled"
    assert upstream.disconnected.wait(2)


async def test_killing_a_followers_instance_mid_turn_leaves_the_others_the_answer(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget, upstream: OpenAIUpstream
) -> None:
    """SIGKILL the instance of one follower mid-turn: the asker on A and a follower on
    B still get the whole answer."""
    tokens = [f"d{i} " for i in range(150)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    env = {
        "DATABASE_URL": postgres_url,
        **shared_redis.env(),
        "SEED_DEMO": "true",
        "OPENAI_API_KEY": "sk",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    settings = cluster_settings(
        tmp_path, postgres_url, shared_redis, openai_api_key="sk", openai_base_url=upstream.base_url
    )
    with (
        running_server(settings) as a,
        running_server(settings) as b,
        server_process(env, tmp_path) as doomed,
    ):
        token = a.token("alice")
        async with on([a, b, doomed], token, await catan(a)) as (_sid, [asker, other, dying]):
            await asker.send({"type": "message", "text": "robber"})
            await dying.expect("turn.started")
            for _ in range(3):
                await dying.expect("turn.delta")
            doomed.signal(signal.SIGKILL)
            doomed.wait(5)
            mine = await asker.until("turn.completed")
            theirs = await other.until("turn.completed")
    assert mine[-1]["finish_reason"] == theirs[-1]["finish_reason"] == "stop"
    assert "".join(t for _s, t in deltas(mine)) == "".join(tokens)
    assert deltas(theirs) == deltas(mine)


async def test_admin_watch_from_another_instance_resumes_with_last_event_id(
    two: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream
) -> None:
    """Staff watch on B a turn that runs on A; after dropping the stream they resume on
    A with Last-Event-ID and get exactly the deltas after it, then turn.completed."""
    a, b = two
    tokens = [f"s{i} " for i in range(200)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    async with (
        on([a], a.token("alice"), await catan(a)) as (session_id, [user]),
        httpx.AsyncClient(timeout=httpx.Timeout(5, read=20)) as http,
    ):
        path = f"/admin/sessions/{session_id}/stream"
        basic = {"Authorization": f"Bearer {b.token('eve', 'basic')}"}
        assert (await http.get(f"{b.url}{path}", headers=basic)).status_code == 403
        first: list[tuple[str, str, dict[str, Any]]] = []
        async with http.stream("GET", f"{b.url}{path}", headers=admin(b)) as response:
            await asyncio.sleep(0.3)
            await user.send({"type": "message", "text": "robber"})
            async for event in sse_events(response):
                first.append(event)
                if sum(1 for _i, k, _d in first if k == "turn.delta") >= 5:
                    break
        last_id = first[-1][0]
        headers = {**admin(a), "Last-Event-ID": last_id}
        async with http.stream("GET", f"{a.url}{path}", headers=headers) as response:
            rest = await read_sse(response, "turn.completed")
        frames = await user.until("turn.completed")
    assert first[0][1] == "turn.started"
    watched = [(d["seq"], d["text"]) for _i, k, d in first + rest if k == "turn.delta"]
    assert watched == deltas(frames)
    assert rest[-1][1] == "turn.completed"


async def test_admin_sessions_counts_connections_on_every_instance(
    two: tuple[RunningServer, RunningServer],
) -> None:
    """A session followed from A and twice from B is one row with connections 3."""
    a, b = two
    async with on([a, b, b], a.token("alice"), await catan(a)) as (session_id, _clients):

        async def counted() -> bool:
            rows = [s for s in await live_sessions(a, admin(a)) if s["id"] == session_id]
            return len(rows) == 1 and rows[0]["connections"] == 3

        assert await eventually(counted)


@pytest.fixture
def short_grace(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget, upstream: OpenAIUpstream
) -> Iterator[tuple[RunningServer, RunningServer]]:
    settings = cluster_settings(
        tmp_path,
        postgres_url,
        shared_redis,
        openai_api_key="sk",
        openai_base_url=upstream.base_url,
        ws_resume_grace=1.0,
    )
    with running_server(settings) as a, running_server(settings) as b:
        yield a, b


async def test_a_user_elsewhere_keeps_the_turn_alive_and_a_watch_elsewhere_does_not(
    short_grace: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream
) -> None:
    """The asker on A leaves mid-turn: with the user's other connection on B the turn
    runs to its end; with only an admin watching from B it is cancelled when the
    resume grace (1 s) runs out, and the watch sees that."""
    a, b = short_grace
    upstream.script = Script(tokens=[f"h{i} " for i in range(250)], token_delay=0.01)
    game = await catan(a)
    token = a.token("alice")
    async with ws_client(b.ws_url, token) as other:
        async with ws_client(a.ws_url, token) as asker:
            session_id = (await asker.start(game))["session"]["id"]
            await other.send({"type": "session.resume", "session_id": session_id})
            await other.expect("session.ready")
            await asker.send({"type": "message", "text": "robber"})
            await other.expect("turn.started")
            await other.expect("turn.delta")
        kept = await other.until("turn.completed", timeout=15)
    assert kept[-1]["finish_reason"] == "stop"

    upstream.script = Script(tokens=[f"g{i} " for i in range(1000)], token_delay=0.01)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=20)) as http:
        path = f"{b.url}/admin/sessions/{session_id}/stream"
        async with http.stream("GET", path, headers=admin(b)) as response:
            async with ws_client(a.ws_url, token) as asker:
                await asker.send({"type": "session.resume", "session_id": session_id})
                await asker.expect("session.ready")
                await asyncio.sleep(0.3)  # the watch is attached before the question
                await asker.send({"type": "message", "text": "robber"})
                await asker.expect("turn.started")
                await asker.expect("turn.delta")
            watched = await read_sse(response, "turn.completed")
    assert watched[0][1] == "turn.started"
    assert watched[-1][2]["finish_reason"] == "cancelled"
