"""Shared fixtures: real databases (SQLite and Postgres) and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chat_server.redis_client import RedisClient
from chat_server.storage import Database
from chat_server.storage.migrate import upgrade
from tests import services
from tests.redis_cluster import RedisClusterNodes, RedisTarget, redis_cluster

pytest.register_assert_rewrite("tests.providers")

DATABASE_WAIT = 30.0  # migrating or disposing of a test's database


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path, for the page tests (skipped without it, failing in CI)."""
    from tests.browser import find_chromium

    executable = find_chromium()
    if executable is None:
        services.missing("Chromium", "no chromium on PATH (apt-get install -y chromium)")
        raise AssertionError("unreachable")
    return executable


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    reason = services.reachable(services.POSTGRES_URL, 5432)
    if reason:
        services.missing("PostgreSQL", reason)
    return services.POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty Postgres database for one test, dropped afterwards."""
    url = asyncio.run(services.create_database(postgres_admin_url))
    try:
        yield url
    finally:
        asyncio.run(services.drop_database(postgres_admin_url, url))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each storage test runs on SQLite and on Postgres."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A database at the latest schema (SQLite, then Postgres), disposed after the test."""
    database = Database(database_url, pool_size=4)
    try:
        async with asyncio.timeout(DATABASE_WAIT):
            await upgrade(database)
        yield database
    finally:
        async with asyncio.timeout(DATABASE_WAIT):
            await database.dispose()


def _flush_test_redis() -> None:
    import redis

    url = services.with_database(services.REDIS_URL, services.REDIS_TEST_DB)
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis, emptied for this test (its own logical database) and after it.

    ``TEST_REDIS_DB`` (default 9) picks the logical database, so two test runs on one
    machine can use one Redis without emptying each other's keys. Nothing is left
    there when the test ends (a server still running may write a last key, which the
    next test's flush, or the session's end, removes).
    """
    reason = services.reachable(services.REDIS_URL, 6379)
    if reason:
        services.missing("Redis", reason)
    import redis

    _flush_test_redis()
    _redis_used.set()
    try:
        yield services.with_database(services.REDIS_URL, services.REDIS_TEST_DB)
    finally:
        # A test that paused or broke the connection: the session's end flushes.
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            _flush_test_redis()


_redis_used = threading.Event()  # a test of this run used the test Redis database


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the test Redis database empty (servers stopped late may have written to it);
    a run that used no Redis leaves it alone."""
    import redis

    if _redis_used.is_set() and services.reachable(services.REDIS_URL, 6379) is None:
        with contextlib.suppress(redis.RedisError, OSError):
            _flush_test_redis()


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A private three-primary Redis Cluster, started once for the session."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as nodes:
        yield nodes


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_redis(request: pytest.FixtureRequest) -> RedisTarget:
    """Several instances on one Redis: a single server, then a Redis Cluster."""
    if request.param == "redis":
        return RedisTarget(str(request.getfixturevalue("redis_url")), cluster=False)
    nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_nodes")
    nodes.flush()
    return RedisTarget(nodes.url, cluster=True)


@pytest.fixture
async def shared_client(shared_redis: RedisTarget) -> AsyncIterator[RedisClient]:
    """A client of ``shared_redis`` (a single Redis, then a Redis Cluster), closed after."""
    redis = await shared_redis.client()
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()
