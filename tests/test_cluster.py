"""Several instances as one (real Postgres and Redis): the live registry, kills, the
event feed, resuming a turn on another instance, SIGKILL and SIGTERM.

Every test that shares Redis between instances runs twice: on a single Redis and on
a three-primary Redis Cluster."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_server.storage.audit import list_actions
from chat_server.storage.chat import begin_turn
from chat_server.storage.ids import new_id
from tests.processes import server_process
from tests.redis_cluster import RedisTarget
from tests.server import RunningServer, make_settings, running_server
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


def cluster_settings(tmp_path: Path, postgres_url: str, redis: RedisTarget, **extra: Any) -> Any:
    values: dict[str, Any] = {
        "database_url": postgres_url,
        **redis.settings(),
        "seed_demo": True,
        "registry_heartbeat": 0.5,
        "registry_ttl": 3.0,
        "ws_resume_grace": 10.0,
    }
    values.update(extra)
    return make_settings(tmp_path, **values)


@pytest.fixture
def pair(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget, upstream: OpenAIUpstream
) -> Iterator[tuple[RunningServer, RunningServer]]:
    settings = cluster_settings(
        tmp_path, postgres_url, shared_redis, openai_api_key="sk", openai_base_url=upstream.base_url
    )
    with running_server(settings) as a, running_server(settings) as b:
        yield a, b


def admin(server: RunningServer | Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('root', 'admin')}"}


async def catan(server: RunningServer) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        games = (
            await http.get(f"{server.url}/games", params={"search": "catan"}, headers=admin(server))
        ).json()["games"]
    return str(games[0]["id"])


async def live_sessions(server: RunningServer | Any, headers: dict[str, str]) -> list[Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{server.url}/admin/sessions", headers=headers)
    response.raise_for_status()
    return list(response.json()["sessions"])


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_session_on_b_is_listed_by_a_and_killed_through_a(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """A session on B is listed by A; DELETE through A closes it on B with 4000; audited."""
    a, b = pair
    game = await catan(a)
    async with ws_client(b.ws_url, b.token("alice")) as client:
        session_id = (await client.start(game))["session"]["id"]

        async def listed() -> list[Any]:
            return [s for s in await live_sessions(a, admin(a)) if s["id"] == session_id]

        found = await eventually(listed)
        assert found and found[0]["instance"] == b.services.instance_id
        assert found[0]["user_id"] == "alice"
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.delete(
                f"{a.url}/admin/sessions/{session_id}",
                params={"reason": "test kill"},
                headers=admin(a),
            )
        assert response.status_code == 204
        assert await client.closed() == 4000
    actions = a.call(list_actions(a.services.db, target=session_id))
    assert [(x["actor_id"], x["action"], x["reason"]) for x in actions] == [
        ("root", "session.kill", "test kill")
    ]

    async def unlisted() -> bool:
        return not [s for s in await live_sessions(a, admin(a)) if s["id"] == session_id]

    assert await eventually(unlisted)
    async with httpx.AsyncClient(timeout=5) as http:
        gone = await http.delete(f"{a.url}/admin/sessions/{session_id}", headers=admin(a))
    assert gone.status_code == 404


async def test_basic_users_cannot_list_or_kill(pair: tuple[RunningServer, RunningServer]) -> None:
    """Every admin session path refuses a basic user with 403."""
    a, _b = pair
    headers = {"Authorization": f"Bearer {a.token('eve', 'basic')}"}
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{a.url}/admin/sessions", headers=headers)).status_code == 403
        assert (await http.delete(f"{a.url}/admin/sessions/x", headers=headers)).status_code == 403
        events = await http.get(f"{a.url}/admin/sessions/events", headers=headers)
        assert events.status_code == 403


async def test_resume_on_another_instance_continues_the_turn(
    pair: tuple[RunningServer, RunningServer],
    upstream: OpenAIUpstream,
) -> None:
    """A client drops mid-turn on A and resumes on B with after_seq: the text it saw
    plus what B sends equals what the upstream sent, with no delta twice."""
    a, b = pair
    tokens = [f"w{i} " for i in range(150)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    game = await catan(a)
    seen: list[dict[str, Any]] = []
    async with ws_client(a.ws_url, a.token("alice")) as client:
        session_id = (await client.start(game))["session"]["id"]
        await client.send({"type": "message", "text": "robber"})
        turn_id = (await client.expect("turn.started"))["turn_id"]
        while len(seen) < 10:
            frame = await client.recv()
            if frame["type"] == "turn.delta":
                seen.append(frame)
    # the first connection is gone; the turn goes on on A for the grace period
    last = seen[-1]["seq"]
    async with ws_client(b.ws_url, b.token("alice")) as client:
        await client.send(
            {
                "type": "session.resume",
                "session_id": session_id,
                "turn_id": turn_id,
                "after_seq": last,
            }
        )
        ready = await client.expect("session.ready")
        assert ready["history"][-1]["status"] == "streaming"
        rest = await client.until("turn.completed")
    deltas = seen + [f for f in rest if f["type"] == "turn.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == "".join(tokens)
    assert rest[-1]["finish_reason"] == "stop"


async def test_resume_on_the_same_instance_replays_what_was_missed(
    pair: tuple[RunningServer, RunningServer],
    upstream: OpenAIUpstream,
) -> None:
    """Resuming with an older after_seq gets the missed text again, exactly once."""
    a, _b = pair
    tokens = [f"v{i} " for i in range(100)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    game = await catan(a)
    seen: list[dict[str, Any]] = []
    async with ws_client(a.ws_url, a.token("alice")) as client:
        session_id = (await client.start(game))["session"]["id"]
        await client.send({"type": "message", "text": "robber"})
        turn_id = (await client.expect("turn.started"))["turn_id"]
        while len(seen) < 8:
            frame = await client.recv()
            if frame["type"] == "turn.delta":
                seen.append(frame)
    kept = seen[:5]  # pretend the last three never arrived
    async with ws_client(a.ws_url, a.token("alice")) as client:
        await client.send(
            {"type": "session.resume", "session_id": session_id, "turn_id": turn_id, "after_seq": 5}
        )
        await client.expect("session.ready")
        rest = await client.until("turn.completed")
    deltas = kept + [f for f in rest if f["type"] == "turn.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == "".join(tokens)


async def test_event_feed_orders_a_turn_and_resumes_with_last_event_id(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """The feed delivers session.started, turn.started, turn.completed in order, from
    either instance; reconnecting with Last-Event-ID misses nothing."""
    a, b = pair
    game = await catan(a)
    received: list[tuple[str, str, dict[str, Any]]] = []

    async def read_feed(
        server: RunningServer, last_id: str | None, stop_after: str, ready: asyncio.Event
    ) -> None:
        headers = admin(server)
        if last_id:
            headers["Last-Event-ID"] = last_id
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5, read=20)) as http,
            http.stream("GET", f"{server.url}/admin/sessions/events", headers=headers) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event_id, kind = "", ""
            async for line in response.aiter_lines():
                ready.set()
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    received.append((event_id, kind, json.loads(line[6:])))
                    if kind == stop_after:
                        return

    ready = asyncio.Event()
    reader = asyncio.create_task(read_feed(a, None, "turn.completed", ready))
    async with asyncio.timeout(10):
        await ready.wait()
    async with ws_client(b.ws_url, b.token("alice")) as client:
        session_id = (await client.start(game))["session"]["id"]
        await client.ask("robber")
        async with asyncio.timeout(15):
            await reader
        mine = [(i, k) for i, k, d in received if d.get("session_id") == session_id]
        assert [k for _i, k in mine][:3] == ["session.started", "turn.started", "turn.completed"]
        first_id = mine[0][0]
        await client.ask("how do I win")
    received_before = len(received)
    ready = asyncio.Event()
    async with asyncio.timeout(15):
        await read_feed(b, first_id, "turn.completed", ready)
    again = [(i, k) for i, k, d in received[received_before:] if d.get("session_id") == session_id]
    # Resumed right after the first event: the next one is the first turn's start.
    assert [k for _i, k in again][:2] == ["turn.started", "turn.completed"]
    assert again[0][0] == mine[1][0]


async def test_killed_instance_leaves_the_listing_and_its_answer_is_marked(
    tmp_path: Path,
    postgres_url: str,
    shared_redis: RedisTarget,
    upstream: OpenAIUpstream,
) -> None:
    """SIGKILL an instance mid-turn: its session leaves the listing within the TTL and
    its half-finished answer gets status error (the orphan sweep of another instance)."""
    upstream.script = Script(tokens=[f"x{i} " for i in range(1000)], token_delay=0.02)
    env = {
        "DATABASE_URL": postgres_url,
        **shared_redis.env(),
        "SEED_DEMO": "true",
        "REGISTRY_TTL": "2",
        "REGISTRY_HEARTBEAT": "0.5",
        "OPENAI_API_KEY": "sk",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    settings = cluster_settings(tmp_path, postgres_url, shared_redis, orphan_sweep_interval=0.5)
    with running_server(settings) as a, server_process(env, tmp_path) as doomed:
        game = await catan(a)
        async with ws_client(doomed.ws_url, a.token("alice")) as client:
            session_id = (await client.start(game))["session"]["id"]
            await client.send({"type": "message", "text": "robber"})
            await client.expect("turn.started")
            await client.expect("turn.delta")

            async def listed() -> bool:
                return any(s["id"] == session_id for s in await live_sessions(a, admin(a)))

            assert await eventually(listed)
            doomed.signal(signal.SIGKILL)
            doomed.wait(5)

        async def gone() -> bool:
            return not await listed()

        started = time.monotonic()
        assert await eventually(gone, timeout=6)
        assert time.monotonic() - started < 4

        async def marked() -> bool:
            async with ws_client(a.ws_url, a.token("alice")) as client:
                await client.send({"type": "session.resume", "session_id": session_id})
                history = (await client.expect("session.ready"))["history"]
            return history[-1]["status"] == "error"

        assert await eventually(marked, timeout=15)


async def test_sigterm_lets_the_running_turn_finish_then_closes_1012(
    tmp_path: Path,
    upstream: OpenAIUpstream,
) -> None:
    """SIGTERM during a turn: the turn completes (within the grace) and then the client
    is closed with 1012; the answer is stored complete."""
    tokens = [f"y{i} " for i in range(60)]
    upstream.script = Script(tokens=tokens, token_delay=0.02)
    env = {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": upstream.base_url, "SHUTDOWN_GRACE": "10"}
    with server_process(env, tmp_path) as server:
        headers = {"Authorization": f"Bearer {RunningServerToken.mint('alice')}"}
        async with httpx.AsyncClient(timeout=5) as http:
            games = (await http.get(f"{server.url}/games", headers=headers)).json()["games"]
        game = next(g for g in games if g["name"] == "Catan")["id"]
        async with ws_client(server.ws_url, RunningServerToken.mint("alice")) as client:
            await client.start(game)
            await client.send({"type": "message", "text": "robber"})
            await client.expect("turn.started")
            await client.expect("turn.delta")
            server.signal(signal.SIGTERM)
            frames = await client.until("turn.completed")
            assert frames[-1]["finish_reason"] == "stop"
            text = "".join(f["text"] for f in frames if f["type"] == "turn.delta")
            assert text.endswith("y59 ")
            assert await client.closed() == 1012
        # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly.
        assert server.wait(15) in (0, -signal.SIGTERM)


class RunningServerToken:
    @staticmethod
    def mint(user: str, role: str = "basic") -> str:
        from chat_server.auth import mint_token
        from tests.server import SECRET

        return mint_token(secret=SECRET, user_id=user, role=role)


async def test_cancel_after_resuming_on_another_instance_stops_the_turn(
    pair: tuple[RunningServer, RunningServer],
    upstream: OpenAIUpstream,
) -> None:
    """A client that resumed on B can cancel the turn that runs on A: A closes the
    upstream and B's client gets turn.completed cancelled."""
    a, b = pair
    upstream.script = Script(tokens=[f"z{i} " for i in range(3000)], token_delay=0.01)
    game = await catan(a)
    async with ws_client(a.ws_url, a.token("alice")) as client:
        session_id = (await client.start(game))["session"]["id"]
        await client.send({"type": "message", "text": "robber"})
        turn_id = (await client.expect("turn.started"))["turn_id"]
        first = await client.expect("turn.delta")
    async with ws_client(b.ws_url, b.token("alice")) as client:
        await client.send(
            {
                "type": "session.resume",
                "session_id": session_id,
                "turn_id": turn_id,
                "after_seq": first["seq"],
            }
        )
        await client.expect("session.ready")
        await client.expect("turn.delta")
        await client.send({"type": "cancel"})
        frames = await client.until("turn.completed")
    assert frames[-1]["finish_reason"] == "cancelled"
    assert upstream.disconnected.wait(2)


async def test_connections_per_user_count_across_instances(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget
) -> None:
    """WS_MAX_CONNECTIONS_PER_USER spans instances: two on A and one on B is three."""
    settings = cluster_settings(tmp_path, postgres_url, shared_redis, ws_max_connections_per_user=2)
    with running_server(settings) as a, running_server(settings) as b:
        token = a.token("greedy")
        async with (
            ws_client(a.ws_url, token),
            ws_client(b.ws_url, token),
            ws_client(b.ws_url, token, ready=False) as third,
        ):
            assert (await third.expect("error"))["code"] == "rate_limited"
            assert await third.closed() == 1008
        async with ws_client(b.ws_url, token) as again:
            await again.send({"type": "ping", "id": 1})
            await again.expect("pong")


async def test_a_game_hidden_through_a_is_closed_on_b_at_once(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """A basic user attached on B; staff hide the game through A: B's next message
    is not_found (the backplane's ``games`` signal), and no turn starts."""
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, headers=admin(a), timeout=5) as http:
        game_id = (await http.post("/admin/games", json={"name": "Hidden on A"})).json()["id"]
        async with ws_client(b.ws_url, b.token("bea")) as client:
            await client.start(game_id)
            patched = await http.patch(f"/admin/games/{game_id}", json={"status": "hidden"})
            assert patched.status_code == 200
            await asyncio.sleep(0.5)  # the signal's way through Redis
            await client.send({"type": "message", "text": "robber"})
            frames = await client.until("error")
    assert frames[-1]["code"] == "not_found"
    assert not [f for f in frames if f["type"].startswith("turn.")]


async def test_a_resume_dropped_while_it_waits_leaves_nothing_attached(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """A session whose answer is still `streaming` on an instance that is gone: a resume
    waits for that turn's owner; a client that leaves meanwhile leaves nothing behind
    (the session is not listed live for want of a connection)."""
    a, _b = pair
    async with ws_client(a.ws_url, a.token("gil")) as client:
        session_id = (await client.start(await catan(a)))["session"]["id"]
    a.call(
        begin_turn(
            a.services.db, session_id=session_id, turn_id=new_id(), text="q", instance_id="gone"
        )
    )
    ai_sdk = a.url.replace("http", "ws") + "/ws/ai-sdk"
    for n in range(3):  # the AI SDK's resume, on a socket closed while it waits
        async with ws_client(ai_sdk, a.token("gil"), ready=False) as client:
            resume = {"type": "resume", "requestId": f"r{n}", "id": session_id, "headers": {}}
            await client.send(resume)
            await asyncio.sleep(0.3)  # it waits (up to about 2 s) for the turn's owner
    await asyncio.sleep(2.5)  # any registry write has landed
    assert session_id not in {s["id"] for s in await live_sessions(a, admin(a))}
