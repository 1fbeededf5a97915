"""Daily quota counters, in Redis and in process: exact under bursts, idempotent, daily.

Every behaviour test runs on both ``RedisQuotaCounter`` (a real Redis) and
``MemoryQuotaCounter``; the Redis-only tests cover what only Redis has: other processes,
key expiry, and Redis going away and coming back (through a loopback TCP proxy).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time as clock
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from chat_server.errors import Unavailable
from chat_server.quotas import (
    MemoryQuotaCounter,
    Quota,
    QuotaCounter,
    RedisQuotaCounter,
    next_midnight,
    quota_key,
)
from tests.private_redis import private_redis
from tests.redis_cluster import RedisClusterNodes, RedisTarget

USER, GAME, FEATURE = "user-1", "game-1", "chat"
WAIT = 30.0  # the most any one test may wait on its awaits


def utc_now() -> datetime:
    """The real clock: Redis expiry times are absolute, so Redis tests use today."""
    return datetime.now(UTC)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def counter(request: pytest.FixtureRequest) -> AsyncIterator[QuotaCounter]:
    """Each behaviour test runs on the in-process counter, a real Redis and a real
    Redis Cluster."""
    if request.param == "memory":
        yield MemoryQuotaCounter()
        return
    if request.param == "redis":
        target = RedisTarget(str(request.getfixturevalue("redis_url")), cluster=False)
    else:
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_nodes")
        nodes.flush()
        target = RedisTarget(nodes.url, cluster=True)
    client = await target.client()
    try:
        yield RedisQuotaCounter(client)
    finally:
        await client.aclose()


async def reserve(
    counter: QuotaCounter,
    turn_id: str,
    *,
    limit: int | None,
    now: datetime,
    game_id: str = GAME,
) -> bool:
    result = await counter.reserve(
        feature=FEATURE, user_id=USER, game_id=game_id, turn_id=turn_id, limit=limit, now=now
    )
    return result.granted


async def used(counter: QuotaCounter, *, now: datetime, limit: int | None = None) -> int:
    quota = await counter.usage(feature=FEATURE, user_id=USER, game_id=GAME, limit=limit, now=now)
    return quota.used


async def refund(counter: QuotaCounter, turn_id: str, *, now: datetime) -> None:
    await counter.refund(feature=FEATURE, user_id=USER, game_id=GAME, turn_id=turn_id, now=now)


async def test_burst_grants_exactly_the_limit(counter: QuotaCounter) -> None:
    """Of 500 turns started at once with a limit of 37, exactly 37 start."""
    now = utc_now()
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(
            *(
                counter.reserve(
                    feature=FEATURE, user_id=USER, game_id=GAME, turn_id=f"t{i}", limit=37, now=now
                )
                for i in range(500)
            )
        )
        quota = await counter.usage(feature=FEATURE, user_id=USER, game_id=GAME, limit=37, now=now)
    assert sum(r.granted for r in results) == 37
    assert max(r.quota.used for r in results) == 37
    assert all(r.quota.remaining == 0 for r in results if not r.granted)
    assert (quota.used, quota.remaining) == (37, 0)


def _reserve_in_process(
    target: RedisTarget, now_iso: str, limit: int, name: str, barrier: Any, results: Any
) -> None:
    """Child process: its own client and event loop, 250 concurrent reservations."""

    async def run() -> int:
        client = await target.client(5)
        try:
            counter = RedisQuotaCounter(client, timeout=10)
            await counter.ping()
            barrier.wait(timeout=WAIT)
            async with asyncio.timeout(WAIT):
                granted = await asyncio.gather(
                    *(reserve(counter, f"{name}-{i}", limit=limit, now=now) for i in range(250))
                )
            return sum(granted)
        finally:
            await client.aclose()

    now = datetime.fromisoformat(now_iso)
    results.put((name, asyncio.run(run())))


def test_two_processes_grant_exactly_the_limit(shared_redis: RedisTarget) -> None:
    """Two server processes sharing a Redis (or a Redis Cluster) start exactly the limit
    between them."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    now, limit = utc_now(), 173
    procs = [
        ctx.Process(
            target=_reserve_in_process,
            args=(shared_redis, now.isoformat(), limit, name, barrier, results),
        )
        for name in ("a", "b")
    ]
    try:
        for proc in procs:
            proc.start()
        granted = dict(results.get(timeout=WAIT * 2) for _ in procs)
        for proc in procs:
            proc.join(timeout=WAIT)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=WAIT)
        results.close()
        results.join_thread()

    assert granted["a"] + granted["b"] == limit

    async def check() -> int:
        client = await shared_redis.client()
        try:
            async with asyncio.timeout(WAIT):
                return await used(RedisQuotaCounter(client), now=now)
        finally:
            await client.aclose()

    assert asyncio.run(check()) == limit


async def test_retried_turn_counts_once(counter: QuotaCounter) -> None:
    """Retrying the same turn is granted again but uses one place, even at the limit."""
    now = utc_now()
    async with asyncio.timeout(WAIT):
        assert await reserve(counter, "t1", limit=1, now=now)
        assert await reserve(counter, "t1", limit=1, now=now)
        assert not await reserve(counter, "t2", limit=1, now=now)
        again = await counter.reserve(
            feature=FEATURE, user_id=USER, game_id=GAME, turn_id="t1", limit=1, now=now
        )
        assert await used(counter, now=now) == 1
    assert again.granted
    assert (again.quota.used, again.quota.remaining) == (1, 0)


async def test_refund_frees_exactly_one_place(counter: QuotaCounter) -> None:
    """A failed turn gives back its place once; refunding twice frees nothing more."""
    now = utc_now()
    async with asyncio.timeout(WAIT):
        for turn in ("a", "b"):
            assert await reserve(counter, turn, limit=2, now=now)
        assert not await reserve(counter, "c", limit=2, now=now)
        await refund(counter, "a", now=now)
        await refund(counter, "a", now=now)
        assert await used(counter, now=now) == 1
        assert await reserve(counter, "c", limit=2, now=now)
        assert not await reserve(counter, "d", limit=2, now=now)
        for turn in ("b", "c", "b", "c", "never-reserved"):
            await refund(counter, turn, now=now)
        assert await used(counter, now=now) == 0


async def test_day_rollover_resets_at_utc_midnight(counter: QuotaCounter) -> None:
    """At UTC midnight the count starts again and resets_at moves to the next midnight."""
    today = utc_now().date()
    late = datetime(today.year, today.month, today.day, 23, 59, 59, tzinfo=UTC)
    after = late + timedelta(seconds=1)
    async with asyncio.timeout(WAIT):
        first = await counter.reserve(
            feature=FEATURE, user_id=USER, game_id=GAME, turn_id="t1", limit=1, now=late
        )
        assert not await reserve(counter, "t2", limit=1, now=late)
        second = await counter.reserve(
            feature=FEATURE, user_id=USER, game_id=GAME, turn_id="t2", limit=1, now=after
        )
        # A refund names its day: the late turn's place is given back to yesterday only.
        await refund(counter, "t1", now=late)
        assert (await used(counter, now=late), await used(counter, now=after)) == (0, 1)
    assert first.quota.resets_at == after
    assert second.granted
    assert second.quota.resets_at == after + timedelta(days=1)
    assert (
        second.quota.to_dict()["resets_at"] == f"{(today + timedelta(days=2)):%Y-%m-%d}T00:00:00Z"
    )


async def test_days_are_utc_whatever_the_clock_zone(counter: QuotaCounter) -> None:
    """A clock in another time zone counts in the same UTC day."""
    now = utc_now()
    elsewhere = now.astimezone(timezone(timedelta(hours=-11)))
    async with asyncio.timeout(WAIT):
        assert await reserve(counter, "t1", limit=None, now=elsewhere)
        assert await used(counter, now=now) == 1
        quota = await counter.usage(
            feature=FEATURE, user_id=USER, game_id=GAME, limit=None, now=elsewhere
        )
    assert quota.resets_at == next_midnight(now)


async def test_unlimited_still_counts(counter: QuotaCounter) -> None:
    """With no limit every turn starts and is still counted."""
    now = utc_now()
    async with asyncio.timeout(WAIT):
        granted = [await reserve(counter, f"t{i}", limit=None, now=now) for i in range(5)]
        quota = await counter.usage(
            feature=FEATURE, user_id=USER, game_id=GAME, limit=None, now=now
        )
    assert all(granted)
    assert quota.to_dict() == {
        "feature": FEATURE,
        "daily_limit": None,
        "used": 5,
        "remaining": None,
        "resets_at": next_midnight(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def test_counts_are_per_game_and_limit_zero_refuses(counter: QuotaCounter) -> None:
    """Each game has its own count, and a limit of 0 starts nothing."""
    now = utc_now()
    async with asyncio.timeout(WAIT):
        assert await reserve(counter, "t1", limit=1, now=now, game_id="g1")
        assert await reserve(counter, "t2", limit=1, now=now, game_id="g2")
        assert not await reserve(counter, "t3", limit=0, now=now, game_id="g3")
        await counter.ping()  # raises when the store is down


def test_quota_dict_has_contract_shape() -> None:
    """A quota shows its limit, use, what is left (never negative) and the reset time."""
    resets = next_midnight(datetime(2026, 11, 26, 15, 30, tzinfo=UTC))
    assert Quota("chat", 20, 3, resets).to_dict() == {
        "feature": "chat",
        "daily_limit": 20,
        "used": 3,
        "remaining": 17,
        "resets_at": "2026-11-27T00:00:00Z",
    }
    assert Quota("chat", 2, 5, resets).remaining == 0
    assert next_midnight(datetime(2026, 11, 26, 0, 0)) == datetime(2026, 11, 27, tzinfo=UTC)


async def test_redis_key_layout_and_expiry(redis_client: Redis) -> None:
    """A day's Redis key holds the turn ids and expires a little after the next midnight."""
    now = utc_now()
    counter = RedisQuotaCounter(redis_client, prefix="svc")
    key = quota_key("svc", user_id=USER, feature=FEATURE, game_id=GAME, day=now.date())
    assert key == f"svc:quota:{{{USER}}}:{FEATURE}:{GAME}:{now:%Y%m%d}"
    async with asyncio.timeout(WAIT):
        assert await reserve(counter, "turn-9", limit=3, now=now)
        members = await redis_client.smembers(key)
        ttl = await redis_client.ttl(key)
    assert members == {b"turn-9"}
    expires = now + timedelta(seconds=ttl)
    assert next_midnight(now) < expires <= next_midnight(now) + timedelta(hours=2)


async def test_script_is_reloaded_after_redis_forgets_it(redis_client: Redis) -> None:
    """After a Redis restart or failover empties the script cache, reservations still work."""
    now = utc_now()
    counter = RedisQuotaCounter(redis_client)
    async with asyncio.timeout(WAIT):
        assert await reserve(counter, "t1", limit=2, now=now)
        await redis_client.script_flush()
        assert await reserve(counter, "t2", limit=2, now=now)
        assert not await reserve(counter, "t3", limit=2, now=now)


# --- Redis going away -------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FlakyRedis:
    """A loopback TCP stand-in for Redis: forwards to the real one, drops, or stays silent."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Literal["up", "drop", "silent"] = "up"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FlakyRedis:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self.drop_all()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def drop_all(self) -> None:
        """Cut every open connection, like a Redis restart."""
        for writer in list(self._writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "silent":
                while await reader.read(65536):
                    pass
            elif self.mode == "up":
                up_reader, up_writer = await asyncio.open_connection(*self.target)
                self._writers.add(up_writer)
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
                await _closed(up_writer)
        except ConnectionError:
            pass
        finally:
            await _closed(writer)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionError):
        await writer.wait_closed()


@asynccontextmanager
async def client_for(port: int, *, db: int = 0, socket_timeout: float = 5) -> AsyncIterator[Redis]:
    client = Redis(
        host="127.0.0.1", port=port, db=db, socket_timeout=socket_timeout, socket_connect_timeout=5
    )
    try:
        yield client
    finally:
        await client.aclose()


async def assert_unavailable_within(counter: RedisQuotaCounter, seconds: float) -> None:
    """Every counter call raises Unavailable, each within ``seconds``."""
    now = utc_now()
    calls = [
        lambda: counter.reserve(
            feature=FEATURE, user_id=USER, game_id=GAME, turn_id="t", limit=5, now=now
        ),
        lambda: counter.usage(feature=FEATURE, user_id=USER, game_id=GAME, limit=5, now=now),
        counter.ping,
    ]
    for call in calls:
        started = clock.monotonic()
        async with asyncio.timeout(WAIT):
            with pytest.raises(Unavailable) as caught:
                await call()
        assert clock.monotonic() - started < seconds
        assert caught.value.code == "unavailable"
    # A refund never fails: it is owed, and paid once Redis answers again.
    started = clock.monotonic()
    async with asyncio.timeout(WAIT):
        await counter.refund(feature=FEATURE, user_id=USER, game_id=GAME, turn_id="t", now=now)
    assert clock.monotonic() - started < seconds
    assert counter.owed >= 1


@pytest.mark.parametrize("made_by", ["from_url", "constructor"])
async def test_unreachable_redis_is_unavailable_fast(made_by: str) -> None:
    """With nothing listening where Redis should be, turns fail with unavailable in ~1 s."""
    port = closed_port()
    # redis-py 8: from_url() clients do not retry; Redis(...) retries 10 times with backoff.
    client = (
        Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=5, socket_connect_timeout=5)
        if made_by == "from_url"
        else Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5)
    )
    try:
        await assert_unavailable_within(RedisQuotaCounter(client), 1.5)
    finally:
        await client.aclose()


async def test_silent_redis_is_unavailable_within_the_timeout() -> None:
    """A Redis that accepts but never answers fails within our timeout, not the socket's."""
    async with FlakyRedis("127.0.0.1", 0) as fake, client_for(fake.port, socket_timeout=10) as c:
        fake.mode = "silent"
        await assert_unavailable_within(RedisQuotaCounter(c, timeout=0.3), 1.0)


async def test_recovers_when_redis_comes_back(redis_url: str) -> None:
    """After Redis drops out and returns, the same counter works again without a restart."""
    now = utc_now()
    target = urlsplit(redis_url)
    db = int(target.path.lstrip("/") or 0)
    async with (
        FlakyRedis(target.hostname or "127.0.0.1", target.port or 6379) as fake,
        client_for(fake.port, db=db) as client,
    ):
        counter = RedisQuotaCounter(client, timeout=0.5)
        async with asyncio.timeout(WAIT):
            assert await reserve(counter, "before", limit=None, now=now)
        fake.mode = "drop"
        fake.drop_all()
        await assert_unavailable_within(counter, 1.0)
        fake.mode = "up"
        async with asyncio.timeout(WAIT):
            assert await reserve(counter, "after", limit=None, now=now)
            key = quota_key("chat", user_id=USER, feature=FEATURE, game_id=GAME, day=now.date())
            assert await client.smembers(key) == {b"before", b"after"}


async def test_a_reservation_cancelled_mid_flight_gives_its_place_back(tmp_path: Path) -> None:
    """Redis hangs while a turn reserves its place, and the turn is cancelled (its
    asker left): once Redis answers again the script runs, and the place it took is
    given back, so the user's count is what it was."""
    now = utc_now()
    with private_redis(tmp_path) as server:
        async with client_for(server.port) as client:
            counter = RedisQuotaCounter(client, timeout=5)
            await counter.start()
            try:
                async with asyncio.timeout(WAIT):
                    assert await reserve(counter, "kept", limit=5, now=now)
                server.freeze()
                asking = asyncio.ensure_future(reserve(counter, "left", limit=5, now=now))
                await asyncio.sleep(0.3)  # the script is on its way to a hung Redis
                asking.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asking
                server.thaw()
                key = quota_key("chat", user_id=USER, feature=FEATURE, game_id=GAME, day=now.date())
                async with asyncio.timeout(WAIT):
                    while counter.owed:  # noqa: ASYNC110 (a state of another process)
                        await asyncio.sleep(0.05)
                assert await client.smembers(key) == {b"kept"}
                assert await used(counter, now=now) == 1
            finally:
                server.thaw()
                await counter.aclose()
