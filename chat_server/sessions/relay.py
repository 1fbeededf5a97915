"""Resuming a turn that runs on another instance.

A client that dropped mid-turn may reconnect anywhere. When ``session.resume`` names a
turn that runs elsewhere, this instance (the *replica*) asks every instance over the
backplane; the one that runs the turn (the *owner*) attaches a remote sink to it, as
if the client were local: the turn's usual rules number the deltas (``after_seq``
rewinds delivery, pending text is merged), and the sink writes each frame to a
per-resume Redis Stream (``{prefix}:relay:{<replica tag>}:{turn_id}:{nonce}``, capped,
expiring). The replica reads that stream (with all its other relays, in one ``XREAD``:
``stream_mux.py``) and forwards the frames to its client up to ``turn.completed``.

Nothing is written to Redis per token unless a client actually resumed elsewhere,
so the common path (the client stays, or comes back to the same instance) costs no
Redis traffic at all. If the owner died, nobody answers: the replica gives up after
``answer_timeout`` and the client gets the history (where the answer will be marked
``error`` by the orphan sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from ..backplane import Backplane
from ..redis_client import REDIS_ERRORS, RedisClient
from ..stream_mux import StreamMux
from .manager import TurnManager
from .outbox import Outbox

__all__ = ["TurnRelay"]

log = logging.getLogger(__name__)
CHANNEL = "turn-relay"
Forward = Callable[[dict[str, Any]], None]


class TurnRelay:
    """Both sides of a cross-instance resume; needs Redis (absent: nothing to relay)."""

    def __init__(
        self,
        *,
        redis: RedisClient | None,
        backplane: Backplane,
        manager: TurnManager,
        prefix: str = "chat",
        answer_timeout: float = 2.0,
        stream_ttl: int = 120,
    ) -> None:
        self._redis = redis
        self._backplane = backplane
        self._manager = manager
        self._prefix = prefix
        self._answer_timeout = answer_timeout
        self._stream_ttl = stream_ttl
        self._owned: dict[str, tuple[Outbox, asyncio.Task[None]]] = {}
        self._mux = StreamMux(redis, prefix=prefix) if redis is not None else None
        backplane.subscribe(CHANNEL, self._on_request)

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    # -- owner side ----------------------------------------------------------------
    async def _on_request(self, _channel: str, message: str) -> None:
        request = json.loads(message)
        stream = request["stream"]
        if request.get("op") == "cancel":
            self._manager.cancel(request["turn_id"], "client")
            return
        if request.get("op") == "detach":
            owned = self._owned.get(stream)
            if owned is not None:
                self._manager.detach(request["turn_id"], owned[0])
            return
        if self._manager.get(request["turn_id"]) is None or self._redis is None:
            return
        sink = Outbox(max_frames=1024)
        if self._manager.attach(request["turn_id"], sink, int(request["after_seq"])) is None:
            return
        task = asyncio.create_task(self._pump(stream, sink), name=f"relay-{stream}")
        self._owned[stream] = (sink, task)
        task.add_done_callback(lambda _t: self._owned.pop(stream, None))

    async def _pump(self, stream: str, sink: Outbox) -> None:
        assert self._redis is not None
        redis = self._redis
        await self._add(redis, stream, {"type": "relay.attached"})
        while True:
            frame = await sink.get()
            if frame is None:
                return
            await self._add(redis, stream, frame)
            if frame.get("type") == "turn.completed":
                return

    async def _add(self, redis: RedisClient, stream: str, frame: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(3.0):
                pipe = redis.pipeline(transaction=False)
                pipe.xadd(
                    stream, {"f": json.dumps(frame, default=str)}, maxlen=10_000, approximate=True
                )
                pipe.expire(stream, self._stream_ttl)
                await pipe.execute()
        except REDIS_ERRORS:
            log.warning("relay: could not write to %s", stream)

    # -- replica side ----------------------------------------------------------------
    async def follow(
        self,
        turn_id: str,
        after_seq: int,
        forward: Forward,
        on_attached: Callable[[], Awaitable[None]],
    ) -> bool:
        """Ask the owner of ``turn_id`` to stream it here; forward its frames.

        Returns False when no instance answered (the turn is over or its owner died).
        Cancelling it (the client left) tells the owner to detach again.
        """
        if self._mux is None:
            return False
        stream = self._mux.key(f"{turn_id}:{secrets.token_hex(8)}")
        request = {"turn_id": turn_id, "after_seq": after_seq, "stream": stream}
        subscription = self._mux.subscribe(stream)
        await self._backplane.publish(CHANNEL, json.dumps(request))
        attached = False
        try:
            while True:
                wait = self._answer_timeout if not attached else 30.0
                result = await subscription.read(wait)
                if not result:
                    if not attached:
                        return False
                    continue
                for _key, entries in result:
                    for _entry_id, fields in entries:
                        raw = fields.get(b"f") or fields.get("f")
                        frame = json.loads(raw)
                        if frame.get("type") == "relay.attached":
                            attached = True
                            await on_attached()
                            continue
                        forward(frame)
                        if frame.get("type") == "turn.completed":
                            return True
        except asyncio.CancelledError:
            if attached:
                with contextlib.suppress(Exception):
                    await self._backplane.publish(CHANNEL, json.dumps({**request, "op": "detach"}))
            raise
        finally:
            subscription.close()

    async def cancel(self, turn_id: str) -> None:
        """Cancel a turn that runs on another instance (its owner closes the upstream)."""
        message = {"op": "cancel", "turn_id": turn_id, "stream": ""}
        await self._backplane.publish(CHANNEL, json.dumps(message))

    async def aclose(self) -> None:
        for sink, task in list(self._owned.values()):
            sink.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._mux is not None:
            await self._mux.aclose()
