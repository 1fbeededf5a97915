"""An instance works within its Redis budget (issue 25): a burst of connections and
turns against REDIS_MAX_CONNECTIONS=8 is served in full, the instance never holds more
than 8 Redis connections (counted by client name in CLIENT LIST), and after the burst
the idle ones are closed."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.processes import server_process
from tests.server import SECRET, make_settings, running_server
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

from .support import first_game, scaled

pytestmark = pytest.mark.faults

POOL = 8
IDLE = 1.0


async def _instance_clients(client: aioredis.Redis, prefix: str) -> int:
    clients = await client.client_list()
    return sum(1 for c in clients if str(c.get("name", "")).startswith(f"{prefix}:"))


async def _sample(
    client: aioredis.Redis, prefix: str, seen: list[int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        seen.append(await _instance_clients(client, prefix))
        await asyncio.sleep(0.01)


async def test_burst_stays_within_the_redis_pool_and_idle_connections_are_closed(
    tmp_path: Path, redis_url: str
) -> None:
    """200 connections at once, each then running a turn, on an instance with
    REDIS_MAX_CONNECTIONS=8: every one gets `ready` and `turn.completed`; CLIENT LIST
    never shows more than 8 of the instance's connections; REDIS_IDLE_TIMEOUT after the
    burst, at most the pub/sub one and two kept warm remain."""
    from chat_server.auth import mint_token

    prefix = f"budget{secrets.token_hex(4)}"
    env = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "REDIS_MAX_CONNECTIONS": str(POOL),
        "REDIS_IDLE_TIMEOUT": str(IDLE),
    }
    burst = scaled(200, 40)
    observer = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    with server_process(env, tmp_path) as server:
        tokens = [
            mint_token(secret=SECRET, user_id=f"user-{i}", role="basic", ttl=600)
            for i in range(burst)
        ]
        game = await first_game(server.url, tokens[0])
        seen: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(observer, prefix, seen, stop))

        async def one(token: str) -> str:
            async with ws_client(server.ws_url, token) as client:  # `ready` awaited
                await client.start(game)
                frames = await client.ask("How do I win?")
                return str(frames[-1]["type"])

        try:
            async with asyncio.timeout(120):
                results = await asyncio.gather(*(one(t) for t in tokens))
        finally:
            stop.set()
            await sampler
        assert results == ["turn.completed"] * burst
        assert seen and max(seen) <= POOL, max(seen)
        assert max(seen) >= 2  # the burst did use the pool
        deadline = time.monotonic() + 5 * IDLE + 5
        remaining = await _instance_clients(observer, prefix)
        while remaining > 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            remaining = await _instance_clients(observer, prefix)
        assert remaining <= 3, remaining
    await observer.aclose()


async def test_many_turns_resumed_on_another_instance_share_its_small_pool(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """Twenty clients drop mid-turn on A and resume on B, both with
    REDIS_MAX_CONNECTIONS=8: every one gets the whole answer through B (its relays
    read in one XREAD, not one held connection each), and the two instances never
    hold more than 2 x 8 Redis connections."""
    prefix = f"relay{secrets.token_hex(4)}"
    clients = scaled(40, 20)
    tokens = [f"w{i} " for i in range(60)]
    with OpenAIUpstream() as upstream:
        upstream.script = Script(tokens=tokens, token_delay=0.03)
        settings = make_settings(
            tmp_path,
            database_url=postgres_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            redis_max_connections=POOL,
            seed_demo=True,
            ws_resume_grace=10.0,
            openai_api_key="sk-test",
            openai_base_url=upstream.base_url,
        )
        observer = aioredis.Redis.from_url(redis_url, socket_timeout=5)
        with running_server(settings) as a, running_server(settings) as b:
            game = await first_game(a.url, a.token("admin", "admin"))
            seen: list[int] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(observer, prefix, seen, stop))

            async def one(i: int) -> str:
                user = f"mover-{i}"
                async with ws_client(a.ws_url, a.token(user)) as client:
                    session_id = (await client.start(game))["session"]["id"]
                    await client.send({"type": "message", "text": "How do I win?"})
                    turn_id = (await client.expect("turn.started"))["turn_id"]
                    first = await client.expect("turn.delta")
                resume = {
                    "type": "session.resume",
                    "session_id": session_id,
                    "turn_id": turn_id,
                    "after_seq": first["seq"],
                }
                async with ws_client(b.ws_url, b.token(user)) as client:
                    await client.send(resume)
                    await client.expect("session.ready")
                    rest = await client.until("turn.completed", timeout=30)
                deltas = [first, *(f for f in rest if f["type"] == "turn.delta")]
                return "".join(d["text"] for d in deltas)

            try:
                async with asyncio.timeout(120):
                    answers = await asyncio.gather(*(one(i) for i in range(clients)))
            finally:
                stop.set()
                await sampler
        await observer.aclose()
    assert answers == ["".join(tokens)] * clients
    assert seen and max(seen) <= 2 * POOL, max(seen)
