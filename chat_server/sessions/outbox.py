"""A connection's bounded send queue, where a slow reader gets merged deltas.

Frames wait in order. A turn's deltas are not queued one per token: the outbox holds
at most one "pull" marker per turn at its tail, and the writer asks the turn for all
of its pending text when it reaches the marker. So memory stays bounded (the answer's
text plus ``max_frames`` other frames) however slowly the client reads, and no text
is dropped. More than ``max_frames`` queued frames means the client stopped reading:
``put`` raises ``SlowClient`` and the connection is closed.

One writer (``get``) and any number of producers in one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .turn import Turn

__all__ = ["Outbox", "SlowClient"]


class SlowClient(Exception):
    """The client has not read its frames for too long."""


class Outbox:
    def __init__(self, max_frames: int = 256) -> None:
        self._items: deque[dict[str, Any] | Turn] = deque()
        self._max = max_frames
        self._ready = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        if len(self._items) >= self._max:
            raise SlowClient(f"more than {self._max} frames unsent")
        self._items.append(frame)
        self._ready.set()

    def pull(self, turn: Turn) -> None:
        """The turn has new text: make sure a pull for it is queued (never blocks)."""
        if self.closed:
            return
        if self._items and self._items[-1] is turn:
            return
        # Never raises: at most one marker follows each queued frame, so markers are
        # bounded by max_frames too.
        self._items.append(turn)
        self._ready.set()

    async def get(self) -> dict[str, Any] | None:
        """The next frame to send (waits); None once closed and drained."""
        while True:
            while self._items:
                item = self._items.popleft()
                if isinstance(item, Turn):
                    frame = item.take_delta()
                    if frame is not None:
                        return frame
                    continue
                return item
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """No more frames; ``get`` drains what is queued, then returns None."""
        self.closed = True
        self._ready.set()
