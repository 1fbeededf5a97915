"""Concurrent writes of one kind sent as one statement: group commit.

In a burst every turn wrote its question, then its answer, with a statement of its
own: per turn a round trip, a commit (a WAL flush) and the driver's CPU, and the later
turns queued for a pooled connection while their first token waited for the write.
A ``GroupCommit`` keeps at most one batch of its kind in flight; rows that arrive
meanwhile wait for it and go out together as the next batch, one statement for all
(``write_many``: the rows as arrays that Postgres unnests). A row that arrives alone
goes out at once from its caller's task: no timer, no task, nothing added to a quiet
turn's latency (and cancelling that caller cancels its statement, as before).

What a caller sees is what its own statement would have done:

- a batch refused for one row's sake (its session deleted meanwhile, text Postgres
  cannot hold) is written again row by row (``write_one``), so only that row's caller
  gets the error; an outage (``Unavailable``) is every row's error at once;
- a caller cancelled before its row went out takes the row back (nothing written); one
  cancelled while its batch is in flight cannot: when the batch commits, ``undo`` (if
  given) runs for its row, as the cancelled statement would have been rolled back.

Not thread-safe; used from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ..errors import Unavailable

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

R = TypeVar("R")

MAX_ROWS = 256  # rows of one statement at most (bounds its size and the time it holds locks)


class _Pending(Generic[R]):
    __slots__ = ("done", "row")

    def __init__(self, row: R, done: asyncio.Future[None]) -> None:
        self.row = row
        self.done = done


class GroupCommit(Generic[R]):
    """Writes rows of one kind, batching those that arrive while a batch is in flight."""

    def __init__(
        self,
        name: str,
        write_many: Callable[[Sequence[R]], Awaitable[None]],
        write_one: Callable[[R], Awaitable[None]],
        *,
        undo: Callable[[R], Awaitable[None]] | None = None,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.name = name
        self._write_many = write_many
        self._write_one = write_one
        self._undo = undo
        self._max_rows = max_rows
        self._queue: list[_Pending[R]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._alone = False  # a lone row's statement is in flight in its caller's task
        self._undoing: set[asyncio.Task[None]] = set()
        #: statements sent and rows written by them (what tests and benches read)
        self.statements = 0
        self.rows = 0

    async def write(self, row: R) -> None:
        """Write ``row``; returns once it is committed, raises what its write raised."""
        if self._flushing is None and not self._alone and not self._queue:
            # Nothing in flight: this row's statement goes out from here, at once (no
            # task). Rows that come meanwhile wait for it, then go out together.
            self._alone = True
            try:
                self.statements += 1
                await self._write_one(row)
                self.rows += 1
            finally:
                self._alone = False
                self._start_flushing()
            return
        pending = _Pending(row, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._start_flushing()
        try:
            # shielded: one caller cancelled must not cancel the batch it shares
            await asyncio.shield(pending.done)
        except asyncio.CancelledError:
            if pending in self._queue:  # not sent yet: take it back
                self._queue.remove(pending)
                pending.done.cancel()
            else:
                pending.done.add_done_callback(lambda done: self._abandoned(done, row))
            raise

    def _start_flushing(self) -> None:
        if self._queue and self._flushing is None and not self._alone:
            self._flushing = asyncio.create_task(self._flush(), name=f"group-commit-{self.name}")

    async def _flush(self) -> None:
        """Send batches until no row waits; one batch in flight at a time."""
        try:
            while self._queue:
                batch = self._queue[: self._max_rows]
                del self._queue[: self._max_rows]
                await self._send(batch)
        finally:
            self._flushing = None
            if self._queue:  # cancelled (shutdown) with rows waiting: fail them, do not hang
                _settle(self._queue, _stopped())
                self._queue.clear()

    async def _send(self, batch: list[_Pending[R]]) -> None:
        if len(batch) == 1:
            await self._one(batch[0])
            return
        rows = [pending.row for pending in batch]
        try:
            self.statements += 1
            await self._write_many(rows)
        except Unavailable as exc:  # the database, not a row: every row's error
            _settle(batch, exc)
            return
        except Exception:
            log.info(
                "group commit %s: batch of %d refused; writing row by row", self.name, len(rows)
            )
            await asyncio.gather(*(self._one(pending) for pending in batch))
            return
        except BaseException:  # cancelled: whether it committed is unknown
            _settle(batch, _stopped())
            raise
        self.rows += len(rows)
        _settle(batch, None)

    async def _one(self, pending: _Pending[R]) -> None:
        try:
            self.statements += 1
            await self._write_one(pending.row)
        except Exception as exc:
            _settle([pending], exc)
            return
        except BaseException:
            _settle([pending], _stopped())
            raise
        self.rows += 1
        _settle([pending], None)

    def _abandoned(self, done: asyncio.Future[None], row: R) -> None:
        """A cancelled caller's row went out: undo it if it was written."""
        if done.cancelled() or done.exception() is not None or self._undo is None:
            return
        task = asyncio.create_task(self._undo_quietly(self._undo, row), name=f"undo-{self.name}")
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _undo_quietly(self, undo: Callable[[R], Awaitable[None]], row: R) -> None:
        try:
            await undo(row)
        except Exception:
            log.warning("group commit %s: could not undo a cancelled caller's row", self.name)

    async def aclose(self) -> None:
        """Wait for the batch in flight and the undos under way (at shutdown)."""
        tasks = [t for t in (self._flushing, *self._undoing) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _stopped() -> Unavailable:
    return Unavailable("the database write was stopped")


def _settle(batch: Sequence[_Pending[Any]], error: BaseException | None) -> None:
    for pending in batch:
        if pending.done.done():
            continue
        if error is None:
            pending.done.set_result(None)
        else:
            pending.done.set_exception(error)
