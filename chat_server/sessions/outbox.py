"""A connection's bounded send queue, where a slow reader gets merged deltas.

Frames wait in order. A turn's deltas are not queued one per token: the outbox holds
at most one "pull" marker per turn at its tail, and the writer asks the turn for all
of its pending text when it reaches the marker. So memory stays bounded (the answer's
text plus ``max_frames`` other frames) however slowly the client reads, and no text
is dropped. More than ``max_frames`` queued frames means the client stopped reading:
``put`` raises ``SlowClient`` and the connection is closed.

One consumer and any number of producers in one event loop. The consumer either
awaits ``get()`` (a long-lived writer task), or is woken through the ``wake``
callback (called after each ``put``/``pull``, and on ``close``) and takes frames with
``pop()`` until it returns None. An idle outbox holds no queue and no event: both
are made when first needed, and the queue is dropped again once drained.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Outbox", "Pullable", "SlowClient"]


class Pullable(Protocol):
    """A pull marker: a turn (one reader), or a follower's cursor in a turn."""

    def take_delta(self) -> dict[str, Any] | None: ...

    @property
    def pending(self) -> bool:
        """More to take (``pop`` keeps the marker in front while True)."""
        ...


class SlowClient(Exception):
    """The client has not read its frames for too long."""


class Outbox:
    __slots__ = ("_items", "_max", "_ready", "_wake", "closed")

    def __init__(self, max_frames: int = 256, wake: Callable[[], None] | None = None) -> None:
        self._items: deque[dict[str, Any] | Pullable] | None = None
        self._max = max_frames
        self._ready: asyncio.Event | None = None
        self._wake = wake
        self.closed = False

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def put(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque()
        elif len(items) >= self._max:
            raise SlowClient(f"more than {self._max} frames unsent")
        items.append(frame)
        self._notify()

    def pull(self, turn: Pullable) -> None:
        """The turn has new text: make sure a pull for it is queued (never blocks)."""
        if self.closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque()
        elif items and items[-1] is turn:
            return
        # Never raises: at most one marker follows each queued frame, so markers are
        # bounded by max_frames too.
        items.append(turn)
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake()
        elif self._ready is not None:
            self._ready.set()

    def pop(self) -> dict[str, Any] | None:
        """The next frame to send, or None when nothing is queued (never waits)."""
        items = self._items
        while items:
            item = items.popleft()
            if isinstance(item, dict):
                return item
            frame = item.take_delta()
            if frame is not None:
                if item.pending:  # a follower catching up: one delta at a time
                    items.appendleft(item)
                return frame
        self._items = None  # an idle outbox keeps no queue
        return None

    async def get(self) -> dict[str, Any] | None:
        """The next frame to send (waits); None once closed and drained."""
        while True:
            frame = self.pop()
            if frame is not None:
                return frame
            if self.closed:
                return None
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """No more frames; what is queued can still be taken, then ``get`` returns None."""
        if self.closed:
            return
        self.closed = True
        self._notify()
        self._wake = None  # nothing more to wake for; and no cycle with the consumer
