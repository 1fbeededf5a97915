"""Followers: whatever receives a session's events on this instance.

A follower is a client's connection of any dialect, an admin's watch, or the relay
that carries a turn to another instance. The core knows only this: each follower has
an ``Outbox`` (the core puts events into it; the follower's writer takes them out and
encodes them for its wire), a ``kind`` that says whether it keeps a running turn
alive and whether ``/admin/sessions`` counts it, and ``end()``, which the core calls
when the session is ended for it (an admin kill).

A running turn gives each of its followers a ``Cursor``: the follower's place in the
turn (the last ``seq`` it took). Text is pulled, never pushed: the turn puts at most
one cursor in each outbox, and the follower's writer asks the cursor for the next
delta when it gets there. The first follower to pull cuts a new delta; the others take
the same one, with the same ``seq``. A follower that lags behind takes the deltas one
by one at its own pace (its backlog is one integer; the text is the turn's), and one
that stops reading is closed by its adapter (``WS_SEND_TIMEOUT``), so it never slows
the others and never holds an unbounded queue.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from .outbox import Outbox, SlowClient
from .turn import Turn

__all__ = ["Cursor", "Follower", "FollowerKind"]

#: ``client``: a user's connection (keeps a running turn alive, counted in
#: ``/admin/sessions``); ``relay``: carries the turn to followers on another instance
#: (keeps it alive); ``watch``: an admin's watch (neither).
FollowerKind = Literal["client", "relay", "watch"]


class Follower:
    """Base of every follower; adapters subclass it (``__slots__`` friendly)."""

    __slots__ = ("connected_at", "id", "kind", "last_activity", "outbox", "turns")

    def __init__(self, follower_id: str, kind: FollowerKind, outbox: Outbox) -> None:
        self.id = follower_id
        self.kind: FollowerKind = kind
        self.outbox = outbox
        self.connected_at = self.last_activity = time.time()
        self.turns = 0  # turns this follower asked

    @property
    def holds(self) -> bool:
        """Keeps a running turn alive while attached (the resume grace starts without)."""
        return self.kind != "watch"

    def put(self, event: dict[str, Any]) -> None:
        """Queue one event; a follower whose outbox overflows is closed, alone."""
        try:
            self.outbox.put(event)
        except SlowClient:
            self.outbox.close()

    def end(self, reason: str) -> None:
        """The session ended for this follower (``killed``): stop. Adapters override
        this to close their wire the way their protocol says."""
        self.outbox.close()


class Cursor:
    """One follower's place in one running turn (see the module docstring).

    Goes into the follower's outbox as the turn's pull marker: ``Outbox.pop`` calls
    ``take_delta`` and queues it again in front while ``pending``.
    """

    __slots__ = ("follower", "outbox", "seen", "turn")

    def __init__(self, turn: Turn, follower: Follower, seen: int) -> None:
        self.turn = turn
        self.follower = follower
        self.outbox = follower.outbox
        self.seen = max(0, min(seen, turn.seq))

    def take_delta(self) -> dict[str, Any] | None:
        """The next delta for this follower: one already cut, else a new cut, else None."""
        turn = self.turn
        seen = self.seen
        if seen < turn.seq:
            self.seen = seen + 1
            return turn.delta(seen + 1)
        frame = turn.take_delta()
        if frame is not None:
            self.seen = turn.seq
        return frame

    @property
    def pending(self) -> bool:
        turn = self.turn
        return self.seen < turn.seq or turn.pending

    def pull(self) -> None:
        """The turn has something new for this follower (never blocks)."""
        self.outbox.pull(self)


class SessionFollowers:
    """The followers of each session on this instance (one list per followed session).

    Changed only by the session hub; read by the turn manager and the relay when a turn
    starts or a relayed one arrives. One event loop.
    """

    __slots__ = ("_by_session",)

    def __init__(self) -> None:
        self._by_session: dict[str, list[Follower]] = {}

    def add(self, session_id: str, follower: Follower) -> None:
        followers = self._by_session.setdefault(session_id, [])
        if follower not in followers:
            followers.append(follower)

    def remove(self, session_id: str, follower: Follower) -> bool:
        """Forget ``follower``; True when it was the session's last one here."""
        followers = self._by_session.get(session_id)
        if followers is None:
            return False
        if follower in followers:
            followers.remove(follower)
        if followers:
            return False
        del self._by_session[session_id]
        return True

    def of(self, session_id: str) -> list[Follower]:
        """The session's followers here (a copy: safe to iterate while they change)."""
        return list(self._by_session.get(session_id, ()))

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._by_session

    def __len__(self) -> int:
        return len(self._by_session)
