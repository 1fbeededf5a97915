"""What fan-out costs in Redis, counted by a private Redis server (INFO commandstats):
a session followed on one instance sends no Redis command per token; a follower on
another instance costs writes per flush, not per token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.private_redis import private_redis
from tests.redis_cluster import RedisTarget
from tests.server import RunningServer, running_server
from tests.test_cluster import catan, cluster_settings
from tests.test_fanout import deltas
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

TOKENS = 400


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as up:
        yield up


@pytest.fixture
def counted(
    tmp_path: Path, postgres_url: str, upstream: OpenAIUpstream
) -> Iterator[tuple[RunningServer, RunningServer, redis.Redis]]:
    with private_redis(tmp_path) as server:
        target = RedisTarget(server.url, cluster=False)
        settings = cluster_settings(
            tmp_path, postgres_url, target, openai_api_key="sk", openai_base_url=upstream.base_url
        )
        with (
            running_server(settings) as a,
            running_server(settings) as b,
            redis.Redis.from_url(server.url) as client,
        ):
            yield a, b, client


def calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def spent(before: dict[str, int], after: dict[str, int], command: str) -> int:
    return after.get(command, 0) - before.get(command, 0)


async def test_a_turn_nobody_follows_elsewhere_costs_no_redis_command_per_token(
    counted: tuple[RunningServer, RunningServer, redis.Redis], upstream: OpenAIUpstream
) -> None:
    """Two instances share Redis; a 400-token turn whose only connection is on the
    instance that runs it writes the admin feed and one announcement, not its tokens."""
    a, _b, client = counted
    upstream.script = Script(tokens=[f"t{i} " for i in range(TOKENS)], token_delay=0.002)
    async with ws_client(a.ws_url, a.token("alice")) as user:
        await user.start(await catan(a))
        before = calls(client)
        frames = await user.ask("robber")
        after = calls(client)
    assert len(deltas(frames)) >= 1
    assert spent(before, after, "xadd") <= 3  # the admin feed's turn.started/completed
    assert spent(before, after, "publish") == 1  # "a turn started here"
    assert spent(before, after, "evalsha") <= 2  # the quota
    assert sum(after.values()) - sum(before.values()) < 60  # background work included


async def test_a_follower_on_another_instance_costs_a_write_per_flush(
    counted: tuple[RunningServer, RunningServer, redis.Redis], upstream: OpenAIUpstream
) -> None:
    """The same turn followed from the other instance: it is carried in batches (far
    fewer stream writes than tokens), and the follower gets every token."""
    a, b, client = counted
    upstream.script = Script(tokens=[f"t{i} " for i in range(TOKENS)], token_delay=0.002)
    token = a.token("alice")
    async with ws_client(a.ws_url, token) as user, ws_client(b.ws_url, token) as other:
        session_id = (await user.start(await catan(a)))["session"]["id"]
        await other.send({"type": "session.resume", "session_id": session_id})
        await other.expect("session.ready")
        before = calls(client)
        mine = await user.ask("robber")
        theirs = await other.until("turn.completed")
        after = calls(client)
    assert deltas(theirs) == deltas(mine)
    assert "".join(t for _s, t in deltas(theirs)) == "".join(f"t{i} " for i in range(TOKENS))
    assert spent(before, after, "xadd") < TOKENS / 10
