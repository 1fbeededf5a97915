"""Cross-instance signals: publish a message, every instance's subscribers get it.

Two implementations behind one interface: ``RedisBackplane`` (pub/sub, for several
instances) and ``MemoryBackplane`` (the embedded single-instance default). Used for
flag invalidation and, by the session registry, for admin kills.

Delivery is at most once (Redis pub/sub); users of it that cannot afford a lost
message also poll (the flag cache checks a version key every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from .errors import Unavailable
from .redis_client import REDIS_ERRORS, RedisClient

__all__ = ["Backplane", "Handler", "MemoryBackplane", "RedisBackplane"]

log = logging.getLogger(__name__)
Handler = Callable[[str, str], Awaitable[None]]


class Backplane(Protocol):
    async def publish(self, channel: str, message: str) -> None: ...

    def publish_soon(self, channel: str, message: str) -> None:
        """``publish`` without waiting: sent with the other messages queued in the same
        loop iteration (one round trip for a burst of turns); a failure is logged."""
        ...

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(channel, message)`` for every message; register before start()."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryBackplane:
    """One process: a publish calls the local handlers (each in its own task)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    async def publish(self, channel: str, message: str) -> None:
        self.publish_soon(channel, message)

    def publish_soon(self, channel: str, message: str) -> None:
        for handler in self._handlers.get(channel, []):
            task = asyncio.create_task(_call(handler, channel, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RedisBackplane:
    """Redis pub/sub; the listener reconnects by itself after an outage."""

    def __init__(self, redis: RedisClient, *, prefix: str = "chat", timeout: float = 1.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._handlers: dict[str, list[Handler]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        #: called when a lost subscription is back: signals sent meanwhile were missed
        self.on_resubscribed: list[Callable[[], None]] = []
        self._outgoing: list[tuple[str, str]] = []  # (key, message) for publish_soon
        self._writer: asyncio.Task[None] | None = None

    def _key(self, channel: str) -> str:
        return f"{self._prefix}:signal:{channel}"

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(self._key(channel), []).append(handler)

    async def publish(self, channel: str, message: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.publish(self._key(channel), message)
        except REDIS_ERRORS as exc:
            raise Unavailable("Redis is unavailable", context={"service": "redis"}) from exc

    def publish_soon(self, channel: str, message: str) -> None:
        self._outgoing.append((self._key(channel), message))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_soon(), name="backplane-writer")

    async def _write_soon(self) -> None:
        """What ``publish_soon`` queued, in order: one pipeline per batch."""
        await asyncio.sleep(0)  # the loop iteration's other turns queue theirs first
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            try:
                async with asyncio.timeout(self._timeout):
                    if len(batch) == 1:
                        await self._redis.publish(*batch[0])
                    else:
                        pipe = self._redis.pipeline(transaction=False)
                        for key, message in batch:
                            pipe.publish(key, message)
                        await pipe.execute()
            except REDIS_ERRORS as exc:
                log.warning(
                    "backplane: %d message(s) not sent, Redis is unavailable (%s)",
                    len(batch),
                    type(exc).__name__,
                )

    async def start(self) -> None:
        if self._handlers and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="backplane-listener")

    async def _listen(self) -> None:
        prefix_len = len(self._prefix) + len(":signal:")
        lost = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                self.connected.set()
                if lost:
                    lost = False
                    for hook in self.on_resubscribed:
                        try:
                            hook()
                        except Exception:
                            log.exception("backplane: a resubscription hook failed")
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    channel = _text(msg["channel"])
                    for handler in self._handlers.get(channel, []):
                        await _call(handler, channel[prefix_len:], _text(msg["data"]))
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.connected.clear()
                lost = True
                log.warning("backplane: Redis subscription lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        if self._writer is not None:  # what was queued goes out (each write is bounded)
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _call(handler: Handler, channel: str, message: str) -> None:
    try:
        await handler(channel, message)
    except Exception:
        log.exception("backplane handler for %s failed", channel)
