"""Running turns: their tasks, where their events go, cancel, grace, shutdown.

A turn outlives its connections for ``resume_grace`` seconds (a client that drops
mid-turn can come back), so turns are owned here, by the app, not by a connection:
every task has a handle in ``self._live`` and is cancelled or awaited at shutdown.

A turn's events go to every follower of its session on this instance (``followers``)
when it is released, and to those that join later (``join``): each gets a ``Cursor``
(``follower.py``). The grace period starts when no follower that holds the turn is
left, and ends when one joins again.

A turn starts in two steps: ``begin`` asks the provider at once, while the caller
stores the question; ``release`` then lets its frames out and makes it a turn that
will be stored, or ``abandon`` drops it (the question could not be stored) with
nothing sent, stored or announced. Until released the turn keeps its text to itself
and does not end.

Each turn runs its provider stream in an inner task. ``cancel()`` cancels that inner
task, which raises ``CancelledError`` at the provider's current ``await`` and closes
the upstream HTTP response at once; the outer task then stores the turn and sends
``turn.completed``. A provider that fails before its first token is followed by the
next one in the fallback chain; after the first token there is no silent switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..errors import ChatServerError, ProviderError, Unavailable
from ..logs import add_context
from ..prices import PriceTable, load_prices
from ..providers.base import (
    CitationRef,
    Finish,
    Provider,
    ProviderRequest,
    TextDelta,
    Usage,
    UsageReport,
)
from ..providers.timing import with_timeouts
from ..tracing import TurnSpan
from .follower import Cursor, Follower, SessionFollowers
from .protocol import Event, error_event
from .turn import Turn

__all__ = ["LiveTurn", "TurnManager"]

log = logging.getLogger(__name__)
PERSIST_RETRY_FOR = 600.0

Persist = Callable[[Turn], Awaitable[None]]
Refund = Callable[[Turn], Awaitable[None]]
Listener = Callable[[str, Turn], None]


@dataclass(eq=False, slots=True)
class LiveTurn:
    turn: Turn
    chain: list[Provider]
    request: ProviderRequest
    #: one per follower on this instance; the turn pulls each when text arrives
    cursors: list[Cursor] = field(default_factory=list)
    #: the ``turn.started`` event, once released (a relay that joins later sends it)
    started: Event | None = None
    span: TurnSpan = field(default_factory=lambda: TurnSpan(None))
    task: asyncio.Task[None] | None = None
    inner: asyncio.Task[None] | None = None
    grace: asyncio.TimerHandle | None = None
    provider_finish: str | None = None
    error: ChatServerError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: True once released (the question is stored), False once abandoned
    stored: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TurnManager:
    """Starts, streams, cancels and finishes turns. One per app; one event loop."""

    def __init__(
        self,
        *,
        persist: Persist,
        refund: Refund,
        first_token_timeout: float,
        idle_timeout: float,
        resume_grace: float,
        prices: PriceTable | None = None,
        followers: SessionFollowers | None = None,
    ) -> None:
        self._persist = persist
        self._prices = prices or load_prices(None)
        self._refund = refund
        self._first_token_timeout = first_token_timeout
        self._idle_timeout = idle_timeout
        self.resume_grace = resume_grace
        self._live: dict[str, LiveTurn] = {}
        self._storing: set[str] = set()  # finished turns whose answer is stored later
        self._background: set[asyncio.Task[None]] = set()
        self._by_session: dict[str, str] = {}
        self.listeners: list[Listener] = []
        self.followers = followers if followers is not None else SessionFollowers()

    # -- queries ---------------------------------------------------------------
    def running_in_session(self, session_id: str) -> LiveTurn | None:
        turn_id = self._by_session.get(session_id)
        return self._live.get(turn_id) if turn_id else None

    def get(self, turn_id: str) -> LiveTurn | None:
        return self._live.get(turn_id)

    def __len__(self) -> int:
        return len(self._live)

    def busy(self) -> frozenset[str]:
        """The turns whose placeholder this instance still owns: running, or finished
        and being stored (``_persist_later``); the rest the orphan sweep may close."""
        return frozenset(self._live) | self._storing

    # -- lifecycle -------------------------------------------------------------
    def begin(
        self,
        turn: Turn,
        chain: list[Provider],
        request: ProviderRequest,
        span: TurnSpan | None = None,
    ) -> LiveTurn:
        """Start the turn's provider stream in a task owned by the manager; returns at once.

        Its text is held back, and it does not end, until ``release`` or ``abandon``.
        """
        live = LiveTurn(turn=turn, chain=chain, request=request)
        if span is not None:
            live.span = span
        self._live[turn.id] = live
        self._by_session[turn.session_id] = turn.id
        live.task = asyncio.create_task(self._run(live), name=f"turn-{turn.id}")
        return live

    def release(self, live: LiveTurn, started: Event) -> None:
        """The question is stored: ``started`` (``turn.started``) goes to every follower
        of the session here, then the turn streams to them."""
        live.started = started
        turn = live.turn
        for follower in self.followers.of(turn.session_id):
            follower.put(started)
            live.cursors.append(Cursor(turn, follower, 0))
        if turn.pending:
            for cursor in live.cursors:
                cursor.pull()
        live.stored.set_result(True)
        self._grace_if_unheld(live)
        self._notify("turn.started", turn)

    def abandon(self, live: LiveTurn) -> None:
        """The question could not be stored: stop the turn; nothing of it is sent or stored.

        The caller gives the quota back. Never waits.
        """
        if not live.stored.done():
            live.stored.set_result(False)
        if live.task is not None:
            live.task.cancel()

    def cancel(self, turn_id: str, cause: str = "client") -> bool:
        """Stop the turn's provider stream now; ``turn.completed`` follows.

        ``cause`` (client, disconnect, admin, shutdown) only labels the metric.
        """
        live = self._live.get(turn_id)
        if live is None or live.turn.done or live.turn.cancel_requested:
            return False
        metrics.CANCELS.labels(cause).inc()
        live.turn.cancel_requested = True
        if live.inner is not None:
            live.inner.cancel()
        return True

    def leave(self, turn_id: str, follower: Follower) -> None:
        """``follower`` stops following the turn (it went away). Without a follower
        that holds it, the turn is kept for the grace period, then cancelled."""
        live = self._live.get(turn_id)
        if live is None:
            return
        live.cursors = [c for c in live.cursors if c.follower is not follower]
        self._grace_if_unheld(live)

    def recheck(self, turn_id: str) -> None:
        """A follower of the turn changed whether it holds it: end or start the grace."""
        live = self._live.get(turn_id)
        if live is None:
            return
        if any(cursor.follower.holds for cursor in live.cursors):
            if live.grace is not None:
                live.grace.cancel()
                live.grace = None
        else:
            self._grace_if_unheld(live)

    def _grace_if_unheld(self, live: LiveTurn) -> None:
        if live.grace is not None or live.turn.done or not live.stored.done():
            return
        if any(cursor.follower.holds for cursor in live.cursors):
            return
        if self.resume_grace <= 0:
            self.cancel(live.turn.id, "disconnect")
        else:
            loop = asyncio.get_running_loop()
            live.grace = loop.call_later(self.resume_grace, self.cancel, live.turn.id, "disconnect")

    def join(
        self, turn_id: str, follower: Follower, after_seq: int, ready: Event | None = None
    ) -> LiveTurn | None:
        """``follower`` follows the running turn from ``after_seq`` on: the deltas
        after it, then the rest live. None when the turn is not running here.

        ``ready`` (``session.ready``) is queued first, its ``running`` filled in. A
        client that comes back alone (nobody else follows the turn) gets what it
        missed as one delta (``Turn.resume``); beside other followers it takes the
        deltas they took, with their ``seq``.
        """
        live = self._live.get(turn_id)
        if live is None or live.turn.done:
            return None
        turn = live.turn
        if live.started is None:  # not released yet: it starts for the session's followers
            if ready is not None:
                follower.put(ready)
            return live
        live.cursors = [c for c in live.cursors if c.follower is not follower]
        if follower.holds and live.grace is not None:
            live.grace.cancel()
            live.grace = None
        if not live.cursors and follower.kind == "client":
            turn.resume(after_seq)
        if ready is not None:
            ready["running"] = {"turn_id": turn.id, "message_id": turn.message_id, "seq": turn.seq}
            follower.put(ready)
        cursor = Cursor(turn, follower, after_seq)
        live.cursors.append(cursor)
        if cursor.pending:
            cursor.pull()
        return live

    async def shutdown(self, grace: float) -> None:
        """Let running turns finish for ``grace`` seconds, then cancel the rest."""
        tasks = [lt.task for lt in self._live.values() if lt.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for live in list(self._live.values()):
                self.cancel(live.turn.id, "shutdown")
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for live in list(self._live.values()):
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
        for task in list(self._background):  # unstored answers: the next start sweeps them
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the turn itself -------------------------------------------------------
    async def _run(self, live: LiveTurn) -> None:
        turn = live.turn
        add_context(
            turn_id=turn.id, session_id=turn.session_id, user_id=turn.user_id, game_id=turn.game_id
        )
        try:
            try:
                await self._stream(live)
            except asyncio.CancelledError:
                turn.finish("cancelled", time.monotonic())
                if await asyncio.shield(live.stored):
                    await asyncio.shield(self._complete(live))
                raise
            except Exception:  # a bug in our own code: the turn ends, the server stays up
                log.exception("turn %s failed", turn.id)
                live.error = ChatServerError("internal error")
                turn.finish("error", time.monotonic(), "internal_error")
            if await live.stored:
                await self._complete(live)
        finally:
            self._forget(turn)

    def _forget(self, turn: Turn) -> None:
        self._live.pop(turn.id, None)
        if self._by_session.get(turn.session_id) == turn.id:
            del self._by_session[turn.session_id]

    async def _stream(self, live: LiveTurn) -> None:
        turn = live.turn
        for index, provider in enumerate(live.chain):
            if index:  # the next provider answers: only its usage counts
                turn.provider, turn.model = provider.name, provider.model
                turn.usage, turn.usage_reported = Usage(), False
            live.inner = asyncio.create_task(self._consume(live, provider))
            try:
                with live.span.child("chat.provider", provider=provider.name, model=provider.model):
                    await live.inner
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if turn.cancel_requested and not (task and task.cancelling()):
                    turn.finish("cancelled", time.monotonic())
                    return
                live.inner.cancel()
                raise
            except ProviderError as exc:
                metrics.PROVIDER_ERRORS.labels(provider.name, exc.code).inc()
                last = index + 1 >= len(live.chain)
                if turn.has_text or last or turn.cancel_requested:
                    live.error = exc
                    turn.finish("error", time.monotonic(), exc.code)
                    return
                log.warning(
                    "provider %s failed before its first token (%s); trying %s",
                    provider.name,
                    exc.code,
                    live.chain[index + 1].name,
                )
                continue
            finally:
                live.inner = None
            turn.finish("length" if live.provider_finish == "length" else "stop", time.monotonic())
            return

    async def _consume(self, live: LiveTurn, provider: Provider) -> None:
        turn = live.turn
        events = with_timeouts(
            provider.stream(live.request),
            first_token=self._first_token_timeout,
            idle=self._idle_timeout,
        )
        gaps = metrics.INTER_TOKEN_GAP.labels(provider.name)
        last = 0.0
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    now = time.monotonic()
                    if turn.tokens % metrics.GAP_SAMPLE_EVERY == 1:
                        gaps.observe(now - last)
                    last = now
                    if turn.cancel_requested:
                        metrics.TOKENS_AFTER_CANCEL.inc()
                    if not turn.has_text:
                        live.span.event("chat.first_token")
                    turn.add_text(event.text, now)
                    for cursor in live.cursors:
                        cursor.outbox.pull(cursor)
                elif isinstance(event, CitationRef):
                    turn.cite(event)
                elif isinstance(event, UsageReport):
                    turn.report_usage(event.usage, event.final)
                elif isinstance(event, Finish):
                    live.provider_finish = event.reason
        finally:
            await events.aclose()

    async def _complete(self, live: LiveTurn) -> None:
        turn = live.turn
        if live.grace is not None:
            live.grace.cancel()
        turn.settle_usage(self._prices, live.request)
        _observe(turn)
        live.span.end(
            error=turn.error_code if turn.finish_reason == "error" else None,
            finish_reason=turn.finish_reason,
            provider=turn.provider,
            output_tokens=turn.usage.output_tokens,
        )
        try:
            await self._persist(turn)
        except Exception as exc:
            # The client still gets its turn.completed; the answer is stored as soon as
            # the database is back (its placeholder is never left `streaming` for good).
            log.warning(
                "turn %s: storing the answer failed (%s); retrying in the background",
                turn.id,
                type(exc).__name__,
            )
            self._storing.add(turn.id)
            self._spawn(self._persist_later(turn))
        if turn.finish_reason == "error" and not turn.has_text:
            try:
                await self._refund(turn)
            except Exception:
                log.warning("turn %s: quota refund failed", turn.id, exc_info=True)
        log.info(
            "turn completed",
            extra={
                "finish_reason": turn.finish_reason,
                "provider": turn.provider,
                "error_code": turn.error_code,
                "output_tokens": turn.usage.output_tokens,
                "first_token_ms": turn.record().first_token_ms,
            },
        )
        self._forget(turn)
        events = [turn.completed_frame()]
        if live.error is not None:
            events.insert(0, error_event(live.error.code, live.error.message, turn_id=turn.id))
        for cursor in live.cursors:
            for event in events:
                cursor.follower.put(event)
        live.done.set()
        self._notify("turn.completed", turn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _persist_later(self, turn: Turn) -> None:
        """Retry storing a finished turn with backoff for up to ``PERSIST_RETRY_FOR``.

        A failure that is not the database being away (``Unavailable``), twice in a
        row, does not go away by storing the same record again: the turn is then stored
        as an ``internal_error`` without its text, usage or cost (``Turn.drop_text``), so
        that it never stays ``streaming``.
        """
        try:
            await self._persist_until(turn, time.monotonic() + PERSIST_RETRY_FOR)
        finally:
            self._storing.discard(turn.id)  # stored, or left to the orphan sweep

    async def _persist_until(self, turn: Turn, deadline: float) -> None:
        delay = 0.25
        refused = 0  # failures in a row that were not an outage
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._persist(turn)
                log.info("turn %s: stored after a retry", turn.id)
                return
            except Exception as exc:
                refused = 0 if isinstance(exc, Unavailable) else refused + 1
                if refused >= 2 and turn.drop_text():
                    log.error(
                        "turn %s: the answer cannot be stored (%s); storing it as an error",
                        turn.id,
                        type(exc).__name__,
                    )
                    delay = 0.0
                    continue
                log.warning("turn %s: storing still fails (%s)", turn.id, type(exc).__name__)
                delay = min(max(delay, 0.25) * 2, 5.0)
        log.error("turn %s: gave up storing the answer; the orphan sweep will close it", turn.id)

    def _notify(self, event: str, turn: Turn) -> None:
        for listener in self.listeners:
            try:
                listener(event, turn)
            except Exception:
                log.exception("turn listener failed")


def _observe(turn: Turn) -> None:
    """A finished turn's metrics, in one place."""
    provider = turn.provider
    metrics.TURNS.labels(provider, turn.finish_reason or "error").inc()
    if turn.first_token_at is not None:
        metrics.FIRST_TOKEN.labels(provider).observe(turn.first_token_at - turn.started_at)
    if turn.finished_at is not None:
        metrics.TURN_DURATION.labels(provider).observe(turn.finished_at - turn.started_at)
    metrics.TOKENS.labels(provider, "input").inc(turn.usage.input_tokens)
    metrics.TOKENS.labels(provider, "output").inc(turn.usage.output_tokens)
    if turn.cost_usd:
        metrics.COST.labels(provider).inc(turn.cost_usd)
