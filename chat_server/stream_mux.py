"""Many blocking Redis Stream reads of one instance over one pooled connection.

A turn resumed on another instance is read from a per-resume stream until it ends
(``sessions/relay.py``). One blocking ``XREAD`` per relayed turn held one pooled
connection for the turn's whole length: after a restart moved hundreds of clients,
their relays alone would take every connection of a small pool
(``REDIS_MAX_CONNECTIONS``) and leave none for quotas or connection claims. Here one
task reads every subscribed stream with a single ``XREAD ... BLOCK`` and hands each
stream's entries to its subscriber: one connection at a time, however many relays.

A new subscription joins at the next read (within ``block`` seconds); one already
there gets its entries as soon as they are written. On a Redis Cluster one ``XREAD``
must stay in one hash slot: every stream name made by ``key()`` carries this reader's
hash tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from .redis_client import REDIS_ERRORS, RedisClient

__all__ = ["StreamMux", "Subscription"]

log = logging.getLogger(__name__)

Entries = list[tuple[Any, Any]]
MAX_QUEUED = 4  # batches waiting for a subscriber before its stream is skipped


class Subscription:
    """One stream's entries, in order, from ``cursor`` on."""

    def __init__(self, mux: StreamMux, stream: str) -> None:
        self.stream = stream
        self.cursor: Any = "0-0"
        self.queue: asyncio.Queue[Entries] = asyncio.Queue()
        self._mux = mux

    async def read(self, wait: float) -> list[tuple[str, Entries]]:
        """The next entries (shaped as ``XREAD``'s answer), or [] after ``wait`` s."""
        try:
            async with asyncio.timeout(wait):
                entries = await self.queue.get()
        except TimeoutError:
            return []
        self._mux.wake()  # a stream skipped for a full queue is read again
        return [(self.stream, entries)]

    def close(self) -> None:
        self._mux.drop(self.stream)


class StreamMux:
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        timeout: float = 1.0,
        block: float = 0.1,
        count: int = 200,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._tag = secrets.token_hex(6)
        self._timeout = timeout
        self._block = block
        self._count = count
        self._subs: dict[str, Subscription] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def key(self, name: str) -> str:
        """A stream name this reader can read along with its others (one hash slot)."""
        return f"{self._prefix}:relay:{{{self._tag}}}:{name}"

    def subscribe(self, stream: str) -> Subscription:
        sub = Subscription(self, stream)
        self._subs[stream] = sub
        self.wake()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stream-mux")
        return sub

    def drop(self, stream: str) -> None:
        self._subs.pop(stream, None)

    def wake(self) -> None:
        self._changed.set()

    async def _run(self) -> None:
        while True:
            streams: dict[Any, Any] = {
                name: sub.cursor
                for name, sub in self._subs.items()
                if sub.queue.qsize() < MAX_QUEUED
            }
            if not streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                async with asyncio.timeout(self._block + self._timeout * 3):
                    result: Any = await self._redis.xread(
                        streams, count=self._count, block=max(1, int(self._block * 1000))
                    )
            except REDIS_ERRORS as exc:
                log.warning("relay: reading streams failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            batches = result.items() if isinstance(result, dict) else (result or [])
            for key, entries in batches:
                name = key.decode() if isinstance(key, bytes) else str(key)
                sub = self._subs.get(name)
                if sub is not None and entries:
                    sub.cursor = entries[-1][0]
                    sub.queue.put_nowait(list(entries))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
