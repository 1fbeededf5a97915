"""The one Redis client of an instance: a single Redis server or a Redis Cluster.

Every Redis user (quotas, flags, the backplane, the registry, the live feed, the
relay, connection slots) takes a ``RedisClient`` and catches ``REDIS_ERRORS``, so the
same code runs on both. What keeps it valid on a cluster is the key layout: every
multi-key command or script touches keys of one hash slot (``{user_id}`` in quota and
connection-slot keys, ``{live}`` in every registry key), and pub/sub uses plain
``PUBLISH``, which a cluster delivers to subscribers on every node.

``REDIS_CLUSTER=true`` selects the cluster client: ``REDIS_URL`` names any one node,
the others are discovered from it (``CLUSTER SLOTS``) and followed through failovers
and resharding (``MOVED``/``ASK``).

The budget: one pool of at most ``REDIS_MAX_CONNECTIONS`` per instance (default 32),
shared by every user, pub/sub included; a burst of commands waits up to
``REDIS_TIMEOUT`` for a pooled connection instead of opening more. Connections idle in
the pool for ``REDIS_IDLE_TIMEOUT`` are closed (``release_idle``), so that after a
burst an instance holds only what it uses. Each connection carries the client name
``<REDIS_PREFIX>:<host>:<pid>``, so ``CLIENT LIST`` shows what each instance holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from .config import Settings

__all__ = [
    "REDIS_ERRORS",
    "RedisClient",
    "client_name",
    "connect_redis",
    "discover_cluster",
    "release_idle",
]

log = logging.getLogger(__name__)

RedisClient: TypeAlias = Redis | RedisCluster

# What a Redis call may raise when Redis is down, slow or mid-failover. The cluster
# client's own errors (no reachable node, a slot not covered) are not RedisErrors.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


KEEP_IDLE = 2  # connections kept open in the pool however long they are idle


def client_name(prefix: str) -> str:
    """The name this process's Redis connections carry (``CLIENT LIST``)."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


class IdleReleasingPool(BlockingConnectionPool):
    """A blocking pool that remembers when each connection came back, and can close
    those idle for long (they reconnect, lazily, when next taken)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def release(self, connection: Any) -> None:
        self._idle_since[connection] = time.monotonic()
        await super().release(connection)

    async def close_idle(self, idle: float, keep: int = KEEP_IDLE) -> int:
        """Disconnect pooled connections unused for ``idle`` seconds, but the ``keep``
        most recently used; returns how many were closed."""
        now = time.monotonic()
        closed = 0
        async with self._lock:
            # The pool hands out the most recently returned connection first (a stack):
            # the oldest ones are at the front.
            free = self._available_connections
            for connection in free[: max(0, len(free) - keep)]:
                since = self._idle_since.get(connection, now)
                if connection.is_connected and now - since >= idle:
                    await connection.disconnect()
                    closed += 1
        return closed


async def release_idle(client: RedisClient, idle: float) -> None:
    """Close the pool's connections idle for ``idle`` seconds, checking every half of
    it, until cancelled. (A cluster client's per-node pools are left alone.)"""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, IdleReleasingPool):
        return
    while True:
        await asyncio.sleep(idle / 2)
        try:
            closed = await pool.close_idle(idle)
        except REDIS_ERRORS as exc:
            log.warning("redis: closing idle connections failed (%s)", type(exc).__name__)
            continue
        if closed:
            log.debug("redis: closed %d idle connections", closed)


def connect_redis(settings: Settings) -> RedisClient:
    """The client for ``REDIS_URL``; connects lazily, on the first command."""
    assert settings.redis_url is not None
    timeout = settings.redis_timeout
    name = client_name(settings.redis_prefix)
    if settings.redis_cluster:
        # One pool per node. Unlike the single-server pool below, the cluster's pools
        # cannot wait for a free connection: the quota counter bounds what is in flight.
        return RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=15,
            client_name=name,
        )
    # redis-py 8's default pool refuses (MaxConnectionsError) past 100 connections
    # instead of waiting: a blocking pool waits up to the timeout. A pool built this
    # way retries nothing by default, so after a Redis restart each pooled connection
    # to the old server failed one command (a refused turn) before reconnecting: a
    # command that meets a broken connection is tried once more, at once, on a new one
    # (not on a timeout: a hung Redis is not asked twice).
    pool = IdleReleasingPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        client_name=name,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=15,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)


async def discover_cluster(client: RedisClient, timeout: float) -> None:
    """Learn a cluster's nodes and slots now, before the first burst of commands.

    redis-py 8's asyncio cluster client does this lazily on the first command; when
    many commands arrive together on a fresh client, some fail mid-discovery
    (``AttributeError`` on a connection that discovery closed, seen with 300
    concurrent quota reservations). Done once at startup, nothing races it. With the
    cluster unreachable now, the client still discovers it lazily later.
    """
    if not isinstance(client, RedisCluster):
        return
    try:
        async with asyncio.timeout(timeout):
            await client.initialize()
    except REDIS_ERRORS as exc:
        log.warning("redis: cluster not reachable at start (%s); will retry", type(exc).__name__)
