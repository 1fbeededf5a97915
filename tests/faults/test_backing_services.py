"""Our own Redis and Postgres going away mid-run: turns refused quickly with `unavailable`,
/readyz naming the service, service again without a restart, and no turn counted twice
or counted for nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from chat_server.sessions.chat import STARTS_AT_ONCE
from tests.private_redis import PrivateRedis, private_redis
from tests.server import RunningServer, make_settings, running_server
from tests.tcp_proxy import TcpProxy
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import Client, ws_client

from .support import bearer, first_game

pytestmark = pytest.mark.faults

REDIS_TIMEOUT = 0.5
QUICK = 2.0  # "quickly": a refusal within this many seconds, never a hang
# The same for a hung database: DATABASE_TIMEOUT (2.5 s by default) plus the 2 s that
# SQLAlchemy's asyncpg adapter gives a hung connection to close gracefully.
DB_QUICK = 5.0


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path, durable=True) as server:
        yield server


def settings_for(tmp_path: Path, upstream: OpenAIUpstream, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        redis_timeout=REDIS_TIMEOUT,
        openai_api_key="sk-test",
        openai_base_url=upstream.base_url,
        provider_first_token_timeout=5.0,
        **extra,
    )


async def counted(redis_url: str) -> int:
    """Every reservation held in Redis, all users and games."""
    client = Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = await client.keys("chat:quota:*")
        return sum([int(await client.scard(k)) for k in keys])
    finally:
        await client.aclose()


async def readyz(server: RunningServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{server.url}/readyz")


async def refused_quickly(client: Client, text: str = "Refused?") -> dict[str, Any]:
    started = time.monotonic()
    await client.send({"type": "message", "text": text})
    frame = await client.recv(timeout=QUICK + 8)
    assert time.monotonic() - started < QUICK, time.monotonic() - started
    assert (frame["type"], frame["code"]) == ("error", "unavailable"), frame
    return frame


async def test_redis_killed_mid_turn_then_started(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream
) -> None:
    """Redis dies while an answer streams: the answer finishes, the next turn gets
    `unavailable` quickly, /readyz names redis; Redis back: the very next turns work
    (the pool's connections to the dead server are replaced, not failed on), each
    counted once."""
    upstream.script = Script(tokens=[f"t{i} " for i in range(40)], token_delay=0.01)
    with running_server(settings_for(tmp_path, upstream, redis_url=redis.url)) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            assert (await client.ask("First?"))[-1]["finish_reason"] == "stop"
            await client.send({"type": "message", "text": "Second?"})
            await client.expect("turn.started")
            await client.expect("turn.delta")
            redis.stop()
            frames = await client.until("turn.completed")
            assert frames[-1]["finish_reason"] == "stop"

            await refused_quickly(client)
            ready = await readyz(server)
            assert ready.status_code == 503
            assert ready.json()["context"]["failed"] == ["redis"]

            redis.start()
            for used in (3, 4, 5):
                await client.send({"type": "message", "text": f"Turn {used}?"})
                started = await client.recv()
                assert started["type"] == "turn.started", started
                assert started["quota"]["used"] == used
                assert (await client.until("turn.completed"))[-1]["finish_reason"] == "stop"
            assert (await readyz(server)).status_code == 200
    assert await counted(redis.url) == 5


async def test_hung_redis_refuses_quickly_and_counts_nothing_for_it(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream
) -> None:
    """Redis stops answering (SIGSTOP): the turn gets `unavailable` within the timeout;
    once it answers again, the refused turn is not counted."""
    with running_server(settings_for(tmp_path, upstream, redis_url=redis.url)) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            await client.ask("First?")
            redis.freeze()
            try:
                await refused_quickly(client)
            finally:
                redis.thaw()
            await asyncio.sleep(REDIS_TIMEOUT)
            again = await client.ask("Again?")
            assert again[-1]["finish_reason"] == "stop"
    assert await counted(redis.url) == 2


async def test_refund_owed_during_a_redis_outage_is_paid_when_it_returns(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream
) -> None:
    """A turn fails before its first token while Redis is down: once Redis is back its
    place is given back, as for any turn that never streamed."""
    upstream.script = Script(first_token_delay=0.5, drop_after=0)
    with running_server(settings_for(tmp_path, upstream, redis_url=redis.url)) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            await client.send({"type": "message", "text": "Never answered?"})
            await client.expect("turn.started")
            redis.stop()
            frames = await client.until("turn.completed")
            assert frames[-1]["finish_reason"] == "error"
            redis.start()
            upstream.script = Script()
            deadline = time.monotonic() + 2
            while await counted(redis.url) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                await client.send({"type": "ping", "id": 1})  # any traffic, Redis is back
                await client.expect("pong")
    assert await counted(redis.url) == 0


# -- Postgres ------------------------------------------------------------------------


@pytest.fixture
def database(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """The test database behind a proxy the test can cut or stall."""
    parts = urlsplit(postgres_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
        yield proxy, parts._replace(netloc=netloc).geturl()


async def history(server: RunningServer, token: str, session_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.url}/me/sessions/{session_id}", headers=bearer(token))
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def test_database_cut_refuses_turns_and_streams_nothing(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream, database: tuple[TcpProxy, str]
) -> None:
    """Postgres unreachable: a new turn gets `unavailable` quickly with no turn.started
    and no answer, its place is not kept, /readyz names the database; back: turns work."""
    proxy, url = database
    settings = settings_for(
        tmp_path, upstream, redis_url=redis.url, database_url=url, seed_demo=True
    )
    with running_server(settings) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            await client.ask("First?")
            proxy.cut()
            await refused_quickly(client)
            assert len(upstream.requests) == 1  # nothing asked of the provider
            ready = await readyz(server)
            assert ready.status_code == 503
            assert ready.json()["context"]["failed"] == ["database"]
            assert await counted(redis.url) == 1

            proxy.restore()
            again = await client.ask("Again?")
            assert again[-1]["finish_reason"] == "stop"
            assert again[0]["quota"]["used"] == 2
            assert (await readyz(server)).status_code == 200


async def test_database_cut_mid_turn_leaves_no_answer_streaming(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream, database: tuple[TcpProxy, str]
) -> None:
    """Postgres goes away while an answer streams and comes back: the stored answer
    soon has a final status (never `streaming` for good)."""
    proxy, url = database
    upstream.script = Script(tokens=[f"t{i} " for i in range(40)], token_delay=0.01)
    settings = settings_for(
        tmp_path, upstream, redis_url=redis.url, database_url=url, seed_demo=True
    )
    with running_server(settings) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            session_id = (await client.start(game))["session"]["id"]
            await client.send({"type": "message", "text": "Mid-turn?"})
            await client.expect("turn.started")
            await client.expect("turn.delta")
            proxy.cut()
            await client.until("turn.completed")
            proxy.restore()
        deadline = time.monotonic() + 3
        while True:
            statuses = [m["status"] for m in await history(server, token, session_id)]
            if "streaming" not in statuses or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
    assert statuses[0] == "complete"
    assert statuses[1] in {"complete", "error"}


async def test_hung_database_refuses_turns_quickly(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream, database: tuple[TcpProxy, str]
) -> None:
    """Postgres stops answering (connections open, nothing comes back): the next turn
    gets `unavailable` within a few seconds, not after a hang."""
    proxy, url = database
    settings = settings_for(
        tmp_path, upstream, redis_url=redis.url, database_url=url, seed_demo=True
    )
    with running_server(settings) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            await client.ask("First?")
            proxy.stall()
            started = time.monotonic()
            try:
                await client.send({"type": "message", "text": "Hung?"})
                frame = await client.recv(timeout=DB_QUICK + 0.5)
            finally:
                proxy.restore()
                waited = time.monotonic() - started
            assert (frame["type"], frame.get("code")) == ("error", "unavailable")
            assert waited < DB_QUICK


async def test_turns_beyond_those_starting_at_once_do_not_wait_behind_a_hung_database(
    tmp_path: Path, redis: PrivateRedis, upstream: OpenAIUpstream, database: tuple[TcpProxy, str]
) -> None:
    """Twice as many turns as start at once (``STARTS_AT_ONCE``) ask while Postgres hangs:
    none waits for another's place to free up; each gets `unavailable` within the time
    one turn alone would (a queue behind the hung ones would double it)."""
    proxy, url = database
    settings = settings_for(
        tmp_path, upstream, redis_url=redis.url, database_url=url, seed_demo=True
    )
    with running_server(settings) as server:
        tokens = [server.token(f"asker-{i}") for i in range(2 * STARTS_AT_ONCE)]
        game = await first_game(server.url, tokens[0])
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(ws_client(server.ws_url, t)) for t in tokens]
            for client in clients:
                await client.start(game)
            await clients[0].ask("First?")
            proxy.stall()
            started = time.monotonic()
            try:
                for client in clients:
                    await client.send({"type": "message", "text": "Hung?"})
                frames = await asyncio.gather(*(c.recv(timeout=DB_QUICK + 5) for c in clients))
            finally:
                proxy.restore()
                waited = time.monotonic() - started
            assert [(f["type"], f.get("code")) for f in frames] == [("error", "unavailable")] * len(
                clients
            )
            assert waited < DB_QUICK
