"""Refused turns (the ``chat`` flag off, the daily quota spent), recorded in batches.

A refusal must not cost its user a database round trip, so ``record()`` only appends
to a bounded in-memory buffer; a task owned by the app writes the buffer to
``usage_events`` (``finish_reason`` ``denied``) every ``interval`` seconds, and once
more at shutdown. When the buffer is full the oldest refusals are dropped and counted
(``chat_denials_dropped_total``); when the database is down the batch is kept and
written at the next flush. A crash loses at most ``interval`` seconds of refusals.

One event loop; ``record()`` never waits and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from . import metrics
from .storage.engine import Database
from .storage.ids import new_id
from .storage.usage import insert_denials

__all__ = ["Denial", "DenialLog"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Denial:
    session_id: str
    user_id: str
    game_id: str
    provider: str
    model: str
    code: str  # feature_disabled or quota_exceeded
    at: datetime

    def row(self) -> dict[str, object]:
        return {
            "turn_id": new_id(),  # the refused turn's own id: one row each
            "session_id": self.session_id,
            "user_id": self.user_id,
            "game_id": self.game_id,
            "provider": self.provider,
            "model": self.model,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
            "estimated": False,
            "cost_usd": None,
            "first_token_ms": None,
            "total_ms": 0,
            "finish_reason": "denied",
            "error_code": self.code,
            "created_at": self.at,
        }


class DenialLog:
    """A bounded buffer of refusals, flushed to the database periodically."""

    def __init__(self, db: Database, *, interval: float = 1.0, max_pending: int = 10_000):
        self._db = db
        self._interval = interval
        self._pending: deque[Denial] = deque(maxlen=max_pending)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, denial: Denial) -> None:
        if len(self._pending) == self._pending.maxlen:
            metrics.DENIALS_DROPPED.inc()  # the deque drops the oldest
        self._pending.append(denial)

    def __len__(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="denial-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered; returns how many rows were written (0 on failure)."""
        async with self._lock:
            if not self._pending:
                return 0
            batch = list(self._pending)
            try:
                await insert_denials(self._db, [d.row() for d in batch])
            except Exception as exc:  # the database is down: keep them for the next flush
                log.warning("recording %d refusals failed (%s)", len(batch), type(exc).__name__)
                return 0
            # New ones may have arrived meanwhile (and pushed old ones out): drop only
            # what was written.
            written = {id(d) for d in batch}
            while self._pending and id(self._pending[0]) in written:
                self._pending.popleft()
            return len(batch)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the flushing task and write what is left (within ``timeout``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()
