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
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from .config import Settings

__all__ = ["REDIS_ERRORS", "RedisClient", "connect_redis", "discover_cluster"]

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


def connect_redis(settings: Settings) -> RedisClient:
    """The client for ``REDIS_URL``; connects lazily, on the first command."""
    assert settings.redis_url is not None
    timeout = settings.redis_timeout
    if settings.redis_cluster:
        # One pool per node. Unlike the single-server pool below, the cluster's pools
        # cannot wait for a free connection: the quota counter bounds what is in flight.
        return RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=15,
        )
    # redis-py 8's default pool refuses (MaxConnectionsError) past 100 connections
    # instead of waiting: a blocking pool waits up to the timeout. A pool built this
    # way retries nothing by default, so after a Redis restart each pooled connection
    # to the old server failed one command (a refused turn) before reconnecting: a
    # command that meets a broken connection is tried once more, at once, on a new one
    # (not on a timeout: a hung Redis is not asked twice).
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
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
