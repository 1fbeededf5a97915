"""The session core's door: what every adapter calls, with the follower it serves.

An adapter (``/ws/chat``, the AI SDK dialects, the admin watch) holds one ``Follower``
per client and speaks to the core only through this hub, in the core's commands:

- ``attach(who, Start | Resume, follower)``: the session is created or checked, its
  ``session.ready`` event is queued first, then the follower gets every turn of the
  session from here on, wherever it was started, and the running one (if any) from
  ``after_seq``, whether it runs on this instance or on another (relayed);
- ``ask(who, attached, Ask, follower)``: a turn in the attached session (its events
  reach every follower of the session);
- ``cancel(attached, turn_id)``: stop the session's running turn, here or elsewhere;
- ``detach(attached, follower)``: the follower leaves (the turn's grace may start).

Events arrive in the follower's ``Outbox``; the adapter's writer encodes them. The hub
also keeps what admins see of this instance's sessions (the registry entry with its
``connections`` count, the feed's session events) and ends them on a kill.

One event loop; safe to call from any adapter task. A follower attaches to one session
at a time (``attach`` detaches it from the one before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..errors import ChatServerError, NotFound, TurnInProgress
from .chat import Attached, ChatService, Who
from .follower import Follower, SessionFollowers
from .manager import LiveTurn, TurnManager
from .protocol import Ask, Event, Resume, Start, error_from
from .turn import Turn

if TYPE_CHECKING:
    from .events import EventFeed
    from .registry import Registry
    from .relay import TurnRelay

__all__ = ["SessionHub"]

log = logging.getLogger(__name__)


class _Session:
    """What the hub keeps of one session followed on this instance."""

    __slots__ = ("attached", "user_id")

    def __init__(self, attached: Attached, user_id: str) -> None:
        self.attached = attached
        self.user_id = user_id


class SessionHub:
    def __init__(
        self,
        *,
        chat: ChatService,
        manager: TurnManager,
        relay: TurnRelay,
        registry: Registry,
        feed: EventFeed,
        instance_id: str,
    ) -> None:
        self.chat = chat
        self.manager = manager
        self.relay = relay
        self.registry = registry
        self.feed = feed
        self.instance_id = instance_id
        self.followers: SessionFollowers = manager.followers
        self._sessions: dict[str, _Session] = {}
        # follower -> its task following a turn that runs on another instance
        self._remote: dict[Follower, tuple[str, asyncio.Task[None]]] = {}

    # -- commands --------------------------------------------------------------------
    async def attach(self, who: Who, command: Start | Resume, follower: Follower) -> Attached:
        """Attach ``follower`` to a new or existing session; ``session.ready`` is queued
        in its outbox before any of the session's turn events.

        Raises the core's errors (``not_found``, ``feature_disabled``, ``unavailable``…)
        with nothing attached. Cancelling it leaves the follower detached.
        """
        if isinstance(command, Start):
            attached, ready = await self.chat.start_session(who, command)
            self._follow(who, attached, follower)
            follower.put(ready)
            return attached
        attached, ready, live = await self.chat.resume_session(who, command)
        self._follow(who, attached, follower)
        wanted = command.turn_id
        if live is not None:
            after = command.after_seq or 0 if wanted in (None, live.turn.id) else 0
            if self.manager.join(live.turn.id, follower, after, ready) is None:
                follower.put(ready)  # it ended meanwhile: the history has it
            if wanted:
                metrics.RESUMES.labels("local").inc()
            return attached
        streaming = [
            m.get("turn_id")
            for m in ready["history"]
            if m["role"] == "assistant" and m["status"] == "streaming" and m.get("turn_id")
        ]
        remote = streaming[-1] if streaming else None
        if remote is not None and self.relay.enabled:
            after = command.after_seq or 0 if wanted in (None, remote) else 0
            self._follow_remote(follower, remote, after, ready)
            if wanted:
                metrics.RESUMES.labels("remote").inc()
            return attached
        if wanted:
            metrics.RESUMES.labels("not_running").inc()
        follower.put(ready)
        return attached

    async def ask(self, who: Who, attached: Attached, ask: Ask, follower: Follower) -> Turn:
        """Start a turn in ``attached``'s session (``turn_in_progress`` if one runs)."""
        remote = self._remote.get(follower)
        if remote is not None and not remote[1].done():
            raise TurnInProgress()
        turn = await self.chat.start_turn(who, attached, ask)
        follower.turns += 1
        self.registry.touch(attached.session_id)
        return turn

    async def cancel(self, attached: Attached, follower: Follower, turn_id: str | None) -> None:
        """Stop the session's running turn (``turn_id``: only if it is that one)."""
        live = self.manager.running_in_session(attached.session_id)
        if live is not None and turn_id in (None, live.turn.id):
            self.manager.cancel(live.turn.id)
            return
        remote = self._remote.get(follower)
        following = live is None and remote is not None and not remote[1].done()
        if following and remote is not None and turn_id in (None, remote[0]):
            await self.relay.cancel(remote[0])
            return
        raise NotFound("no running turn to cancel", error_code="TURN_NOT_FOUND")

    def detach(self, attached: Attached, follower: Follower) -> None:
        """``follower`` leaves the session (never waits). A running turn it held goes
        on for the resume grace period if no other follower holds it."""
        session_id = attached.session_id
        remote = self._remote.pop(follower, None)
        if remote is not None:
            remote[1].cancel()
        live = self.manager.running_in_session(session_id)
        if live is not None:
            self.manager.leave(live.turn.id, follower)
        session = self._sessions.get(session_id)
        if session is not None and follower.kind == "client":
            self.feed.publish("session.ended", self._event_data(session))
            metrics.SESSIONS.dec()
        if self.followers.remove(session_id, follower):
            self._sessions.pop(session_id, None)
            self.registry.remove(session_id)
        else:
            self.registry.touch(session_id)

    # -- queries ---------------------------------------------------------------------
    def local_turn(self, session_id: str) -> LiveTurn | None:
        """The session's turn running on this instance, if any."""
        return self.manager.running_in_session(session_id)

    def streaming(self, attached: Attached | None, follower: Follower) -> bool:
        """A turn of the follower's session is streaming to it (from here or relayed)."""
        if attached is None:
            return False
        remote = self._remote.get(follower)
        if remote is not None and not remote[1].done():
            return True
        return self.manager.running_in_session(attached.session_id) is not None

    def snapshot(self, session_id: str) -> dict[str, Any]:
        """The session as ``GET /admin/sessions`` lists it, from this instance's view."""
        session = self._sessions[session_id]
        clients = [f for f in self.followers.of(session_id) if f.kind == "client"]
        live = self.manager.running_in_session(session_id)
        turn = live.turn if live is not None and not live.turn.done else None
        first = turn.completed_frame()["timing"]["first_token_ms"] if turn else None
        oldest = min(clients, key=lambda f: f.connected_at) if clients else None
        return {
            "id": session_id,
            "user_id": session.user_id,
            "game_id": session.attached.game.id,
            "instance": self.instance_id,
            "connection_id": oldest.id if oldest else None,
            "connected_at": _utc(oldest.connected_at if oldest else 0.0),
            "last_activity_at": _utc(max((f.last_activity for f in clients), default=0.0)),
            "turns": sum(f.turns for f in clients),
            "streaming": turn is not None,
            "provider": session.attached.provider,
            "turn_id": turn.id if turn else None,
            "tokens": turn.tokens if turn else 0,
            "first_token_ms": first,
            "connections": len(clients),
        }

    # -- kills -----------------------------------------------------------------------
    async def kill(self, session_id: str) -> None:
        """An admin ended the session: its turn here is cancelled now (no grace), then
        every follower here is ended (``Follower.end("killed")``)."""
        live = self.manager.running_in_session(session_id)
        if live is not None:
            self.manager.cancel(live.turn.id, "admin")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await live.done.wait()
        for follower in self.followers.of(session_id):
            follower.end("killed")

    # -- inside ----------------------------------------------------------------------
    def _follow(self, who: Who, attached: Attached, follower: Follower) -> None:
        session_id = attached.session_id
        if session_id not in self._sessions:
            self._sessions[session_id] = _Session(attached, who.user_id)
        self.followers.add(session_id, follower)
        if follower.kind == "client":
            metrics.SESSIONS.inc()
            self.feed.publish("session.started", self._event_data(self._sessions[session_id]))
        self.registry.put(session_id, self._snapshotter(session_id))

    def _snapshotter(self, session_id: str) -> Callable[[], dict[str, Any]]:
        return lambda: self.snapshot(session_id)

    def _event_data(self, session: _Session) -> dict[str, Any]:
        return {
            "session_id": session.attached.session_id,
            "user_id": session.user_id,
            "game_id": session.attached.game.id,
            "instance": self.instance_id,
        }

    def _follow_remote(self, follower: Follower, turn_id: str, after: int, ready: Event) -> None:
        """The running turn is on another instance: relay it here. ``ready`` goes out
        once the owner answered (with ``running``), or alone if nobody did."""
        sent = False

        async def on_attached(seq: int, message_id: str) -> None:
            nonlocal sent
            sent = True
            ready["running"] = {"turn_id": turn_id, "message_id": message_id, "seq": seq}
            follower.put(ready)

        async def follow() -> None:
            try:
                await self.relay.follow(turn_id, after, follower.put, on_attached)
            except ChatServerError as exc:
                if not sent:
                    follower.put(ready)
                follower.put(error_from(exc))
                return
            if not sent:
                follower.put(ready)

        task = asyncio.create_task(follow(), name=f"follow-{turn_id}")
        self._remote[follower] = (turn_id, task)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
