"""The admin event feed: session started, turn started, turn completed, session ended.

Events get ids a client can resume from (SSE ``Last-Event-ID``):

- ``MemoryEvents`` (one instance): a ring buffer of the last ``capacity`` events.
- ``RedisEvents``: the Redis Stream ``{prefix}:events`` (capped at about
  ``capacity`` entries), so every instance's events are in one ordered feed and a
  reconnecting admin misses nothing recent whichever instance it reaches. The events
  queued together (a burst of turns) go in one entry, a JSON list under ``events``
  (an ``XADD`` per event was 6 % of a short turn's CPU in bursts); an event alone
  is an entry of its own (``kind``, ``data``). An event's id is its entry's, with
  ``/n`` for the n-th event of a shared entry, and resuming from it skips the
  entry's earlier events. After a write the writer waits ``flush_interval`` (0.05 s) before
  the next, so what comes meanwhile shares an entry: in a burst of turns the feed
  costs a few writes a second, not one per turn (an admin sees events that much later).

``publish`` never waits: events are queued (bounded; the oldest are dropped when
Redis is down for long) and written by one background task, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..redis_client import REDIS_ERRORS, RedisClient

__all__ = ["Event", "EventFeed", "MemoryEvents", "RedisEvents"]

log = logging.getLogger(__name__)
Event = tuple[str, str, dict[str, Any]]  # id, kind, data
ENTRY_EVENTS = 500  # events in one shared stream entry, at most


class EventFeed(Protocol):
    def publish(self, kind: str, data: dict[str, Any]) -> None: ...

    def subscribe(self, last_id: str | None, wait: float = 15.0) -> AsyncIterator[list[Event]]:
        """Batches of events after ``last_id`` (None: from now); an empty batch after
        ``wait`` seconds of quiet (time for a keep-alive)."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryEvents:
    def __init__(self, capacity: int = 1000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._next = 1
        self._changed = asyncio.Condition()
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self._events.append((str(self._next), kind, data))
        self._next += 1
        task = asyncio.create_task(self._notify())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def subscribe(
        self, last_id: str | None, wait: float = 15.0
    ) -> AsyncIterator[list[Event]]:
        cursor = int(last_id) if last_id and last_id.isdigit() else self._next - 1
        while True:
            batch = [e for e in self._events if int(e[0]) > cursor]
            if batch:
                cursor = int(batch[-1][0])
                yield batch
                continue
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
            if not any(int(e[0]) > cursor for e in self._events):
                yield []

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        for task in list(self._pending):
            task.cancel()


class RedisEvents:
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "chat",
        capacity: int = 10_000,
        queue_limit: int = 10_000,
        timeout: float = 1.0,
        flush_interval: float = 0.05,
    ) -> None:
        self._redis = redis
        self._flush_interval = flush_interval
        self._key = f"{prefix}:events"
        self._capacity = capacity
        self._queue: deque[tuple[str, dict[str, Any]]] = deque(maxlen=queue_limit)
        self._wake = asyncio.Event()
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self._queue.append((kind, data))
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = list(itertools.islice(self._queue, ENTRY_EVENTS))
                fields: dict[Any, Any]
                if len(batch) == 1:
                    kind, data = batch[0]
                    fields = {"kind": kind, "data": json.dumps(data, default=str)}
                else:
                    fields = {"events": json.dumps(batch, default=str)}
                try:
                    async with asyncio.timeout(self._timeout * 3):
                        await self._redis.xadd(
                            self._key, fields, maxlen=self._capacity, approximate=True
                        )
                except REDIS_ERRORS as exc:
                    log.warning("events: Redis write failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                for _ in batch:
                    self._queue.popleft()
                await asyncio.sleep(self._flush_interval)  # what comes meanwhile: one entry

    async def subscribe(
        self, last_id: str | None, wait: float = 15.0
    ) -> AsyncIterator[list[Event]]:
        cursor, _, seen = (last_id or "").partition("/")
        if not cursor:
            cursor = await self._newest_id()
        elif seen.isdigit():  # inside a shared entry: the rest of it first
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(self._timeout * 3):
                    entries: Any = await self._redis.xrange(self._key, cursor, cursor)
                rest = [e for e in _events(entries) if _index(e[0]) > int(seen)]
                if rest:
                    yield rest
        while True:
            try:
                async with asyncio.timeout(wait + self._timeout * 3):
                    result: Any = await self._redis.xread(
                        {self._key: cursor}, count=500, block=int(wait * 1000)
                    )
            except REDIS_ERRORS:
                await asyncio.sleep(1.0)
                yield []
                continue
            batch: list[Event] = []
            for _stream, entries in result or []:
                batch.extend(_events(entries))
                if entries:
                    cursor = _text(entries[-1][0])
            yield batch

    async def _newest_id(self) -> str:
        """The id of the newest event, so a new subscriber gets what comes after it."""
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(self._timeout):
                newest: Any = await self._redis.xrevrange(self._key, count=1)
            if newest:
                return _text(newest[0][0])
        return "0-0"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name="event-writer")

    async def aclose(self) -> None:
        if self._task is not None:
            # Give queued events a moment to reach Redis.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while self._queue:  # noqa: ASYNC110 - the writer empties it
                        await asyncio.sleep(0.05)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _events(entries: Any) -> list[Event]:
    """The events of stream entries: one per entry, or a shared entry's list."""
    events: list[Event] = []
    for entry_id, fields in entries or []:
        eid = _text(entry_id)
        values = {_text(k): _text(v) for k, v in fields.items() if v is not None}
        if "events" in values:
            shared = json.loads(values["events"])
            events.extend((f"{eid}/{n}", kind, data) for n, (kind, data) in enumerate(shared))
        else:
            events.append((eid, values["kind"], json.loads(values["data"])))
    return events


def _index(event_id: str) -> int:
    """An event's place in its entry (0 for an entry of its own)."""
    _, _, n = event_id.partition("/")
    return int(n) if n else 0
