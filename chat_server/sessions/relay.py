"""Carrying a turn to followers on other instances.

A session may be followed from several instances (devices, a resume elsewhere, an
admin's watch); its turn runs on one of them, the *owner*. When a turn starts, the
owner says so once on the backplane (``started``: one PUBLISH per turn, off the turn's
path, queued with the others of the same loop iteration: a burst of turns is one
pipeline). An instance with followers of that session (a *replica*) asks for the turn
(``follow``); the owner then attaches a relay follower to it, as if a client were
local: the turn's usual rules number the deltas, and the relay writes what its
cursor takes to a per-replica Redis Stream
(``{prefix}:relay:{<replica tag>}:{turn_id}:{nonce}``, capped, expiring), a batch per
write: everything that queued while the last write was in flight, at most one write
per ``flush_interval`` (0.1 s: a follower elsewhere sees the text up to that much later
than one on the owner). The replica reads that stream into a ``Mirror`` (``mirror.py``)
that its own followers follow; all of a replica's relay streams are read with one
``XREAD``, on one pooled connection (``stream_mux.py``).

So a session with its followers on one instance costs one PUBLISH per turn and
nothing per token; a replica costs one XADD per flush, whatever its number of
followers. A replica that joins mid-turn asks from ``seq`` 0 and keeps the owner's
numbering, so any of its followers can start from any ``after_seq``. If the owner
dies, nobody answers (the replica gives up after ``answer_timeout``) or the stream
falls silent (after ``silence`` seconds the mirror ends the turn with ``unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..backplane import Backplane
from ..errors import ChatServerError
from ..redis_client import REDIS_ERRORS, RedisClient
from ..stream_mux import StreamMux
from .follower import Follower, FollowerKind
from .manager import TurnManager
from .mirror import Mirror
from .outbox import Outbox
from .turn import Turn

__all__ = ["TurnRelay"]

log = logging.getLogger(__name__)
CHANNEL = "turn-relay"
#: called with (session_id, turn_id) when a turn starts on another instance
OnStarted = Callable[[str, str], None]


class TurnRelay:
    """Both sides of carrying turns between instances; needs Redis (absent: nothing
    to carry, every follower is local)."""

    def __init__(
        self,
        *,
        redis: RedisClient | None,
        backplane: Backplane,
        manager: TurnManager,
        instance_id: str = "",
        prefix: str = "chat",
        answer_timeout: float = 2.0,
        silence: float = 60.0,
        flush_interval: float = 0.1,
        stream_ttl: int = 120,
    ) -> None:
        self._redis = redis
        self._backplane = backplane
        self._manager = manager
        self._instance_id = instance_id
        self._prefix = prefix
        self._answer_timeout = answer_timeout
        self._silence = silence
        self._flush_interval = flush_interval
        self._stream_ttl = stream_ttl
        self._owned: dict[str, tuple[Follower, asyncio.Task[None]]] = {}
        self.mirrors: dict[str, Mirror] = {}  # turn id -> the mirror here
        self._by_session: dict[str, Mirror] = {}  # session id -> its newest mirror here
        self.on_started: OnStarted | None = None
        self._mux = StreamMux(redis, prefix=prefix) if redis is not None else None
        backplane.subscribe(CHANNEL, self._on_message)

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def mirror_in(self, session_id: str) -> Mirror | None:
        """The running turn of ``session_id`` mirrored here, if any."""
        mirror = self._by_session.get(session_id)
        return mirror if mirror is not None and not mirror.done else None

    # -- owner side ----------------------------------------------------------------
    def announce(self, event: str, turn: Turn) -> None:
        """TurnManager listener: tell the other instances a turn started here."""
        if event != "turn.started" or self._redis is None:
            return
        message = {"op": "started", "session_id": turn.session_id, "turn_id": turn.id}
        message["owner"] = self._instance_id
        self._backplane.publish_soon(CHANNEL, json.dumps(message))

    async def _on_message(self, _channel: str, message: str) -> None:
        request = json.loads(message)
        op = request.get("op")
        if op == "started":
            if request.get("owner") != self._instance_id and self.on_started is not None:
                self.on_started(request["session_id"], request["turn_id"])
            return
        if op == "cancel":
            self._manager.cancel(request["turn_id"], "client")
            return
        stream = request["stream"]
        if op == "detach":
            owned = self._owned.get(stream)
            if owned is not None:
                self._manager.leave(request["turn_id"], owned[0])
                owned[1].cancel()
            return
        if op == "hold":
            owned = self._owned.get(stream)
            if owned is not None:
                owned[0].kind = "relay" if request.get("holds", True) else "watch"
                self._manager.recheck(request["turn_id"])
            return
        live = self._manager.get(request["turn_id"])
        if live is None or live.turn.done or live.started is None or self._redis is None:
            return
        # A relay keeps the turn alive while a user's connection follows it over there
        # (a watch alone does not): "hold" changes it as they come and go.
        kind: FollowerKind = "relay" if request.get("holds", True) else "watch"
        follower = Follower(stream, kind, Outbox(max_frames=1024))
        turn = live.turn
        follower.put(
            {
                "type": "relay.attached",
                "seq": turn.seq,
                "message_id": turn.message_id,
                "provider": turn.provider,
            }
        )
        follower.put(live.started)
        if self._manager.join(turn.id, follower, int(request.get("after_seq", 0))) is None:
            return
        task = asyncio.create_task(self._pump(stream, follower.outbox), name=f"relay-{stream}")
        self._owned[stream] = (follower, task)
        task.add_done_callback(lambda _t: self._owned.pop(stream, None))

    async def _pump(self, stream: str, sink: Outbox) -> None:
        """Write what the turn has for the stream, a batch per Redis command: whatever
        queued while the last write was in flight (or in ``flush_interval``) goes
        out together."""
        assert self._redis is not None
        redis = self._redis
        loop = asyncio.get_running_loop()
        expires_at = 0.0  # the stream's TTL is renewed at most every third of it
        while True:
            frame = await sink.get()
            if frame is None:
                return
            began = loop.time()
            batch = [frame]
            while (more := sink.pop()) is not None:
                batch.append(more)
            renew = began >= expires_at
            if renew:
                expires_at = began + self._stream_ttl / 3
            await self._add(redis, stream, batch, renew=renew)
            if batch[-1].get("type") == "turn.completed":
                return
            rest = self._flush_interval - (loop.time() - began)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _add(
        self, redis: RedisClient, stream: str, batch: list[dict[str, Any]], *, renew: bool
    ) -> None:
        entry: dict[Any, Any] = {"f": json.dumps(batch, default=str)}
        try:
            async with asyncio.timeout(3.0):
                if not renew:
                    await redis.xadd(stream, entry, maxlen=10_000, approximate=True)
                    return
                pipe = redis.pipeline(transaction=False)
                pipe.xadd(stream, entry, maxlen=10_000, approximate=True)
                pipe.expire(stream, self._stream_ttl)
                await pipe.execute()
        except REDIS_ERRORS:
            log.warning("relay: could not write to %s", stream)

    # -- replica side ----------------------------------------------------------------
    def mirror(self, session_id: str, turn_id: str) -> Mirror:
        """The mirror of ``turn_id`` here, asked for from its owner if new (returns at
        once; ``mirror.attached`` is set when the owner answered)."""
        mirror = self.mirrors.get(turn_id)
        if mirror is not None:
            return mirror
        mirror = Mirror(turn_id, session_id)
        self.mirrors[turn_id] = mirror
        self._by_session[session_id] = mirror
        mirror.task = asyncio.create_task(self._follow(mirror), name=f"mirror-{turn_id}")
        return mirror

    def drop(self, mirror: Mirror) -> None:
        """Nobody here follows the mirror any more: stop reading (the owner is told)."""
        if mirror.task is not None:
            mirror.task.cancel()
        self._forget(mirror)

    def _forget(self, mirror: Mirror) -> None:
        if self.mirrors.get(mirror.turn.id) is mirror:
            del self.mirrors[mirror.turn.id]
        if self._by_session.get(mirror.session_id) is mirror:
            del self._by_session[mirror.session_id]

    async def _follow(self, mirror: Mirror) -> None:
        try:
            await self._read(mirror)
        except ChatServerError:
            log.warning("relay: could not ask for turn %s", mirror.turn.id)
        finally:
            mirror.attached.set()  # whoever waits for the owner's answer stops waiting
            self._forget(mirror)

    async def _read(self, mirror: Mirror) -> None:
        assert self._mux is not None
        turn_id = mirror.turn.id
        stream = mirror.stream = self._mux.key(f"{turn_id}:{secrets.token_hex(8)}")
        mirror.held = mirror.holds
        request = {
            "op": "follow",
            "turn_id": turn_id,
            "after_seq": 0,
            "stream": stream,
            "holds": mirror.held,
        }
        subscription = self._mux.subscribe(stream)
        heard = time.monotonic()
        try:
            await self._publish(request)
            while True:
                attached = mirror.attached.is_set()
                wait = self._answer_timeout if not attached else min(self._silence, 15.0)
                result = await subscription.read(wait)
                if not result:
                    if not attached:
                        return  # nobody runs it: over, or its owner died
                    if time.monotonic() - heard > self._silence:
                        mirror.fail()
                        return
                    continue
                heard = time.monotonic()
                for _key, entries in result:
                    for _entry_id, fields in entries:
                        raw = fields.get(b"f") or fields.get("f")
                        for event in json.loads(raw):
                            mirror.apply(event)
                if mirror.done:
                    return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._publish({**request, "op": "detach"})
            raise
        finally:
            subscription.close()

    def hold(self, mirror: Mirror) -> None:
        """Tell the owner whether followers here keep the mirrored turn alive, when
        that changed (a user's connection came or left; watches do not count)."""
        holds = mirror.holds
        if mirror.held is None or mirror.held == holds or mirror.done:
            return  # not asked for yet (the request says it), or nothing changed
        mirror.held = holds
        message: dict[str, Any] = {"op": "hold", "turn_id": mirror.turn.id, "holds": holds}
        message["stream"] = mirror.stream
        self._backplane.publish_soon(CHANNEL, json.dumps(message))

    async def cancel(self, turn_id: str) -> None:
        """Cancel a turn that runs on another instance (its owner closes the upstream)."""
        await self._publish({"op": "cancel", "turn_id": turn_id})

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._backplane.publish(CHANNEL, json.dumps(message))

    async def aclose(self) -> None:
        tasks = [m.task for m in self.mirrors.values() if m.task is not None]
        for mirror in list(self.mirrors.values()):
            self.drop(mirror)
        tasks += [task for _f, task in self._owned.values()]
        for follower, _task in list(self._owned.values()):
            follower.outbox.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._mux is not None:
            await self._mux.aclose()
