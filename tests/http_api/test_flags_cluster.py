"""A flag change on one instance is in force on every other within a second (CONTRACT §4).

Two servers share one Postgres and one Redis, as two replicas behind a load balancer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chat_server.config import Settings
from chat_server.storage.flags import upsert_flag
from tests.redis_cluster import RedisTarget
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import TIMEOUT, bearer

WITHIN = 1.0  # the contract's bound


@dataclass(frozen=True)
class Cluster:
    a: RunningServer
    b: RunningServer
    game_id: str


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, shared_redis: RedisTarget) -> Iterator[Cluster]:
    def settings(name: str) -> Settings:
        return make_settings(
            tmp_path / name, database_url=postgres_url, seed_demo=True, **shared_redis.settings()
        )

    with running_server(settings("a")) as a, running_server(settings("b")) as b:
        headers = bearer(a.token("adm", "admin"))
        games = httpx.get(
            a.url + "/games", params={"search": "Catan"}, headers=headers, timeout=TIMEOUT
        ).json()["games"]
        yield Cluster(a, b, games[0]["id"])


async def daily_limit(http: httpx.AsyncClient, server: RunningServer, game_id: str) -> int | None:
    response = await http.get(
        server.url + "/me/usage",
        params={"game_id": game_id},
        headers=bearer(server.token("watcher")),
    )
    assert response.status_code == 200, response.text
    limit: int | None = response.json()["quotas"][0]["daily_limit"]
    return limit


async def seconds_until_limit(
    http: httpx.AsyncClient, server: RunningServer, game_id: str, want: int, budget: float
) -> float:
    """Poll ``server``'s /me/usage until the daily limit reads ``want``; the time it took."""
    started = time.monotonic()
    while time.monotonic() - started < budget:
        if await daily_limit(http, server, game_id) == want:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"the limit did not become {want} within {budget}s")


async def test_flag_disabled_on_a_is_in_force_on_b_within_a_second(cluster: Cluster) -> None:
    """Chat switched off for a game through A: a message on B gets feature_disabled."""
    async with (
        asyncio.timeout(30),
        httpx.AsyncClient(timeout=TIMEOUT) as http,
        ws_client(cluster.b.ws_url, cluster.b.token("player-b")) as ws,
    ):
        await ws.start(cluster.game_id)
        assert (await ws.ask("What happens on a seven?"))[-1]["finish_reason"] == "stop"
        response = await http.put(
            cluster.a.url + "/admin/flags",
            json={
                "feature_key": "chat",
                "scope_type": "game",
                "scope_id": cluster.game_id,
                "enabled": False,
            },
            headers=bearer(cluster.a.token("adm", "admin")),
        )
        assert response.status_code == 200, response.text
        await asyncio.sleep(WITHIN)
        await ws.send({"type": "message", "text": "And the robber?"})
        error = await ws.expect("error", timeout=5)
        assert error["code"] == "feature_disabled"


async def test_flag_limit_set_on_a_reaches_b_within_a_second(cluster: Cluster) -> None:
    """A daily limit set through A is what B reports within a second (signal path)."""
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert await daily_limit(http, cluster.b, cluster.game_id) != 7
        response = await http.put(
            cluster.a.url + "/admin/flags",
            json={
                "feature_key": "chat",
                "scope_type": "game",
                "scope_id": cluster.game_id,
                "enabled": True,
                "metadata": {"daily_limit": 7},
            },
            headers=bearer(cluster.a.token("adm", "admin")),
        )
        assert response.status_code == 200
        assert await daily_limit(http, cluster.a, cluster.game_id) == 7
        took = await seconds_until_limit(http, cluster.b, cluster.game_id, 7, budget=5)
        assert took < WITHIN


async def test_lost_signal_converges_through_the_version_poll(cluster: Cluster) -> None:
    """With no pub/sub message (DB write plus version bump only), A and B still converge."""
    redis = cluster.a.services.redis
    assert redis is not None
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
        cluster.a.call(
            upsert_flag(
                cluster.a.services.db,
                feature_key="chat",
                scope_type="game",
                scope_id=cluster.game_id,
                role=None,
                environment=cluster.a.settings.environment,
                enabled=True,
                metadata={"daily_limit": 3},
            )
        )
        # Written behind the servers' backs: nobody reloads until the version moves.
        await asyncio.sleep(1.5)
        assert await daily_limit(http, cluster.b, cluster.game_id) != 3
        # Through A's own client (its loop): the same Redis, single or cluster.
        cluster.a.call(redis.incr(f"{cluster.a.settings.redis_prefix}:flags:version"))
        took_b = await seconds_until_limit(http, cluster.b, cluster.game_id, 3, budget=5)
        took_a = await seconds_until_limit(http, cluster.a, cluster.game_id, 3, budget=5)
        assert took_b < WITHIN + 0.5
        assert took_a < WITHIN + 0.5
