"""A turn that runs on another instance, as this instance's followers see it.

When a session followed here has a turn running elsewhere, the relay (``relay.py``)
carries that turn's events here once per instance, not once per follower, into a
``Mirror``: a ``Turn`` that takes the owner's deltas as they were cut (same ``seq``)
and gives each local follower a ``Cursor``, exactly like a local turn. So a follower
here pulls, merges nothing it should not, lags at its own pace and joins mid-turn
from ``after_seq`` the same way whichever instance runs the turn.

No I/O; one event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .follower import Cursor, Follower
from .protocol import Event, error_event
from .turn import Turn

__all__ = ["Mirror"]


class Mirror:
    __slots__ = (
        "attached",
        "cursors",
        "done",
        "greet",
        "held",
        "started",
        "stream",
        "task",
        "turn",
    )

    def __init__(self, turn_id: str, session_id: str) -> None:
        self.turn = Turn(
            id=turn_id,
            session_id=session_id,
            user_id="",
            game_id="",
            provider="",
            model="",
            client_id=None,
            started_at=time.monotonic(),
        )
        self.cursors: list[Cursor] = []
        self.greet: set[Follower] = set()  # followers that get turn.started when it comes
        self.started: Event | None = None
        self.attached = asyncio.Event()  # the owner answered
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.stream = ""  # the relay stream it reads, once asked for
        self.held: bool | None = None  # whether the owner was told it keeps the turn alive

    @property
    def holds(self) -> bool:
        """A follower here keeps the turn alive (a user's connection, not a watch)."""
        return any(cursor.follower.holds for cursor in self.cursors)

    @property
    def session_id(self) -> str:
        return self.turn.session_id

    @property
    def running(self) -> dict[str, Any]:
        """``session.ready``'s ``running`` for this turn."""
        turn = self.turn
        return {"turn_id": turn.id, "message_id": turn.message_id, "seq": turn.seq}

    def join(self, follower: Follower, after_seq: int, *, from_start: bool = False) -> None:
        """``follower`` follows the turn from ``after_seq`` (``from_start``: it also
        gets ``turn.started``, now if it came already, else when it comes)."""
        self.leave(follower)
        if from_start:
            if self.started is not None:
                follower.put(self.started)
            else:
                self.greet.add(follower)
        cursor = Cursor(self.turn, follower, after_seq)
        self.cursors.append(cursor)
        if cursor.pending:
            cursor.pull()

    def leave(self, follower: Follower) -> bool:
        """``follower`` stops following; True when nobody here follows any more."""
        self.cursors = [c for c in self.cursors if c.follower is not follower]
        self.greet.discard(follower)
        return not self.cursors

    def apply(self, event: Event) -> None:
        """One event from the owner, in order."""
        kind = event.get("type")
        turn = self.turn
        if kind == "turn.delta":
            if turn.add_delta(event, time.monotonic()):
                for cursor in self.cursors:
                    cursor.outbox.pull(cursor)
        elif kind == "relay.attached":
            turn.message_id = event["message_id"]
            turn.provider = event.get("provider", "")
            self.attached.set()
        elif kind == "turn.started":
            self.started = event
            for follower in self.greet:
                follower.put(event)
            self.greet.clear()
        else:  # error, turn.completed
            if kind == "turn.completed":
                self.done = True
                turn.finish(event.get("finish_reason") or "stop", time.monotonic())
            for cursor in self.cursors:
                cursor.follower.put(event)

    def fail(self) -> None:
        """The owner stopped answering mid-turn (it died): end the turn for the
        followers here (the orphan sweep gives the stored answer its status)."""
        if self.done:
            return
        message = "the instance that ran this turn stopped answering"
        self.apply(error_event("unavailable", message, turn_id=self.turn.id))
        self.turn.finish("error", time.monotonic(), "unavailable")
        completed = self.turn.completed_frame()
        self.apply(completed)
