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
- ``detach(attached, follower)``: the follower leaves (the turn's grace may start);
- ``watch(session_id, follower, last)``/``unwatch``: a staff member's follower of any
  user's session, resumable from ``(turn_id, seq)``.

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
from ..errors import NotFound, TurnInProgress
from ..storage import chat as chat_store
from .chat import Attached, ChatService, Who
from .follower import Follower, SessionFollowers
from .manager import LiveTurn, TurnManager
from .mirror import Mirror
from .protocol import Ask, Event, Resume, Start
from .turn import Turn

if TYPE_CHECKING:
    from .events import EventFeed
    from .registry import Registry
    from .relay import TurnRelay

__all__ = ["SessionHub"]

log = logging.getLogger(__name__)


class _Session:
    """What the hub keeps of a session that clients here are attached to."""

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
        answer_timeout: float = 2.0,
    ) -> None:
        self.chat = chat
        self.manager = manager
        self.relay = relay
        self.registry = registry
        self.feed = feed
        self.instance_id = instance_id
        self.answer_timeout = answer_timeout
        self.followers: SessionFollowers = manager.followers
        self._sessions: dict[str, _Session] = {}
        relay.on_started = self._on_remote_turn

    # -- commands --------------------------------------------------------------------
    async def attach(self, who: Who, command: Start | Resume, follower: Follower) -> Attached:
        """Attach ``follower`` to a new or existing session; ``session.ready`` is queued
        in its outbox before any of the session's turn events.

        Raises the core's errors (``not_found``, ``feature_disabled``, ``unavailable``…)
        with nothing attached.
        """
        if isinstance(command, Start):
            attached, ready = await self.chat.start_session(who, command)
            self._follow(who, attached, follower)
            follower.put(ready)
            return attached
        attached, ready, live = await self.chat.resume_session(who, command)
        self._follow(who, attached, follower)
        try:
            return await self._resume(attached, ready, live, command, follower)
        except BaseException:  # the asker left (or the relay failed) while it waited
            self.detach(attached, follower)
            raise

    async def _resume(
        self,
        attached: Attached,
        ready: Event,
        live: LiveTurn | None,
        command: Resume,
        follower: Follower,
    ) -> Attached:
        wanted = command.turn_id
        if live is not None:
            after = command.after_seq or 0 if wanted in (None, live.turn.id) else 0
            if self.manager.join(live.turn.id, follower, after, ready) is None:
                follower.put(ready)  # it ended meanwhile: the history has it
            if wanted:
                metrics.RESUMES.labels("local").inc()
            return attached
        remote = _streaming_turn(ready["history"])
        mirror = None
        if remote is not None:
            mirror = await self._mirror(attached.session_id, remote, follower, wait=True)
        if mirror is not None and remote is not None:
            after = command.after_seq or 0 if wanted in (None, remote) else 0
            ready["running"] = mirror.running
            follower.put(ready)
            mirror.join(follower, after)
            self.relay.hold(mirror)
            if wanted:
                metrics.RESUMES.labels("remote").inc()
            return attached
        if wanted:
            metrics.RESUMES.labels("not_running").inc()
        follower.put(ready)
        return attached

    async def ask(self, who: Who, attached: Attached, ask: Ask, follower: Follower) -> Turn:
        """Start a turn in ``attached``'s session (``turn_in_progress`` if one runs
        here or, as far as this instance knows, on another)."""
        if self.relay.mirror_in(attached.session_id) is not None:
            raise TurnInProgress()
        turn = await self.chat.start_turn(who, attached, ask)
        follower.turns += 1
        self.registry.touch(attached.session_id)
        return turn

    async def cancel(self, attached: Attached, follower: Follower, turn_id: str | None) -> None:
        """Stop the session's running turn (``turn_id``: only if it is that one),
        wherever it runs."""
        session_id = attached.session_id
        live = self.manager.running_in_session(session_id)
        if live is not None and turn_id in (None, live.turn.id):
            self.manager.cancel(live.turn.id)
            return
        mirror = self.relay.mirror_in(session_id)
        if live is None and mirror is not None and turn_id in (None, mirror.turn.id):
            await self.relay.cancel(mirror.turn.id)
            return
        raise NotFound("no running turn to cancel", error_code="TURN_NOT_FOUND")

    def detach(self, attached: Attached, follower: Follower) -> None:
        """``follower`` leaves the session (never waits). A running turn it held goes
        on for the resume grace period if no other follower holds it."""
        session_id = attached.session_id
        self._leave(session_id, follower)
        session = self._sessions.get(session_id)
        if session is not None:
            self.feed.publish("session.ended", self._event_data(session))
            metrics.SESSIONS.dec()
        if not any(f.kind == "client" for f in self.followers.of(session_id)):
            self._sessions.pop(session_id, None)
            self.registry.remove(session_id)
        else:
            self.registry.touch(session_id)

    async def watch(
        self, session_id: str, follower: Follower, last: tuple[str, int] | None = None
    ) -> None:
        """A staff member's ``follower`` watches any session: the running turn (from
        ``last``'s ``seq`` if it is that turn, else from its start) and every turn
        after it, wherever they run. ``not_found`` if the session does not exist."""
        if await chat_store.get_session(self.chat.db, session_id) is None:
            raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
        self.followers.add(session_id, follower)
        try:
            await self._watch_turn(session_id, follower, last)
        except BaseException:  # the watcher left (or the history read failed) meanwhile
            self._leave(session_id, follower)
            raise

    async def _watch_turn(
        self, session_id: str, follower: Follower, last: tuple[str, int] | None
    ) -> None:
        last_turn, last_seq = last if last is not None else ("", 0)
        live = self.manager.running_in_session(session_id)
        if live is not None and live.started is not None:
            if live.turn.id != last_turn:
                follower.put(live.started)
                last_seq = 0
            self.manager.join(live.turn.id, follower, last_seq)
            return
        if live is not None:
            return  # released in a moment, to every follower of the session
        rows = await chat_store.history(self.chat.db, session_id, limit=2)
        remote = _streaming_turn(rows)
        mirror = None
        if remote is not None:
            mirror = await self._mirror(session_id, remote, follower, wait=False)
        if mirror is not None:
            if mirror.turn.id == last_turn:
                mirror.join(follower, last_seq)
            else:
                mirror.join(follower, 0, from_start=True)
            self.relay.hold(mirror)

    def unwatch(self, session_id: str, follower: Follower) -> None:
        self._leave(session_id, follower)

    # -- queries ---------------------------------------------------------------------
    def local_turn(self, session_id: str) -> LiveTurn | None:
        """The session's turn running on this instance, if any."""
        return self.manager.running_in_session(session_id)

    def running(self, session_id: str) -> Turn | None:
        """The session's running turn, here or mirrored from another instance."""
        live = self.manager.running_in_session(session_id)
        if live is not None:
            return None if live.turn.done else live.turn
        mirror = self.relay.mirror_in(session_id)
        return mirror.turn if mirror is not None else None

    def streaming(self, attached: Attached | None, follower: Follower) -> bool:
        """A turn of the follower's session is streaming to it (from here or relayed)."""
        return attached is not None and self.running(attached.session_id) is not None

    def snapshot(self, session_id: str) -> dict[str, Any]:
        """The session as ``GET /admin/sessions`` lists it, from this instance's view."""
        session = self._sessions[session_id]
        clients = [f for f in self.followers.of(session_id) if f.kind == "client"]
        turn = self.running(session_id)
        first = turn.completed_frame()["timing"]["first_token_ms"] if turn else None
        oldest = min(clients, key=lambda f: f.connected_at) if clients else None
        return {
            "id": session_id,
            "user_id": session.user_id,
            "game_id": session.attached.game.id,
            "game_name": session.attached.game.name,
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
        mirror = self.relay.mirror_in(session_id)
        if mirror is not None and mirror.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(mirror.task)  # its turn.completed, from the owner
        for follower in self.followers.of(session_id):
            follower.end("killed")

    # -- inside ----------------------------------------------------------------------
    def _follow(self, who: Who, attached: Attached, follower: Follower) -> None:
        session_id = attached.session_id
        if session_id not in self._sessions:
            self._sessions[session_id] = _Session(attached, who.user_id)
        self.followers.add(session_id, follower)
        metrics.SESSIONS.inc()
        self.feed.publish("session.started", self._event_data(self._sessions[session_id]))
        self.registry.put(session_id, self._snapshotter(session_id))

    def _leave(self, session_id: str, follower: Follower) -> None:
        live = self.manager.running_in_session(session_id)
        if live is not None:
            self.manager.leave(live.turn.id, follower)
        mirror = self.relay.mirror_in(session_id)
        if mirror is not None:
            if mirror.leave(follower):
                self.relay.drop(mirror)
            else:
                self.relay.hold(mirror)
        self.followers.remove(session_id, follower)

    def _snapshotter(self, session_id: str) -> Callable[[], dict[str, Any]]:
        return lambda: self.snapshot(session_id)

    def _event_data(self, session: _Session) -> dict[str, Any]:
        return {
            "session_id": session.attached.session_id,
            "user_id": session.user_id,
            "game_id": session.attached.game.id,
            "instance": self.instance_id,
        }

    def _on_remote_turn(self, session_id: str, turn_id: str) -> None:
        """A turn started on another instance: mirror it if the session is followed here."""
        if session_id in self.followers and self.manager.get(turn_id) is None:
            self._start_mirror(session_id, turn_id)

    def _start_mirror(
        self, session_id: str, turn_id: str, joining: Follower | None = None
    ) -> Mirror:
        """The mirror of ``turn_id``; a new one is followed from its start by every
        follower of the session here but ``joining`` (which joins by itself)."""
        known = self.relay.mirrors.get(turn_id)
        if known is not None:
            return known
        mirror = self.relay.mirror(session_id, turn_id)
        for follower in self.followers.of(session_id):
            if follower is not joining:
                mirror.join(follower, 0, from_start=True)
        session = self._sessions.get(session_id)
        if session is not None:
            # Its question and answer are stored by the owner: the next turn asked here
            # reads the history again instead of trusting memory.
            session.attached.history.stale = True
        return mirror

    async def _mirror(
        self, session_id: str, turn_id: str, joining: Follower, *, wait: bool
    ) -> Mirror | None:
        """The mirror of a turn running on another instance (None: nobody runs it)."""
        if not self.relay.enabled or self.manager.get(turn_id) is not None:
            return None
        mirror = self._start_mirror(session_id, turn_id, joining)
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.answer_timeout + 1.0):
                    await mirror.attached.wait()
            if mirror.done or self.relay.mirrors.get(turn_id) is not mirror:
                return None
        return mirror


def _streaming_turn(history: list[dict[str, Any]]) -> str | None:
    """The turn whose answer the history shows still streaming (the newest), if any."""
    for message in reversed(history):
        if message["role"] == "assistant" and message["status"] == "streaming":
            turn_id = message.get("turn_id")
            return str(turn_id) if turn_id else None
    return None


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
