"""What admins see and do with live sessions: the registry, the event feed, kills,
and the sweep that gives a final status to answers left behind by a dead instance."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..backplane import Backplane
from ..errors import NotFound, Unavailable
from ..quotas import QuotaCounter
from ..storage.audit import record_action
from ..storage.chat import ClosedTurn, fail_stale_turns, streaming_instances
from ..storage.engine import Database
from ..storage.ids import utcnow
from .events import EventFeed
from .registry import Registry
from .turn import Turn

if TYPE_CHECKING:
    from .hub import SessionHub

__all__ = ["Monitor"]

log = logging.getLogger(__name__)
KILL_CHANNEL = "kill"


class Monitor:
    def __init__(
        self,
        *,
        db: Database,
        registry: Registry,
        events: EventFeed,
        backplane: Backplane,
        hub: SessionHub,
        quotas: QuotaCounter,
        sweep_interval: float = 30.0,
        orphan_age: float = 20.0,
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.registry = registry
        self.events = events
        self.backplane = backplane
        self.hub = hub
        self._sweep_interval = sweep_interval
        self._orphan_age = orphan_age
        self._sweeper: asyncio.Task[None] | None = None
        backplane.subscribe(KILL_CHANNEL, self._on_kill)

    # -- events ----------------------------------------------------------------------
    def on_turn(self, event: str, turn: Turn) -> None:
        """TurnManager listener: turn started / completed."""
        data: dict[str, Any] = {
            "session_id": turn.session_id,
            "turn_id": turn.id,
            "user_id": turn.user_id,
            "game_id": turn.game_id,
            "provider": turn.provider,
            "instance": self.registry.instance_id,
        }
        if event == "turn.completed":
            data.update(
                finish_reason=turn.finish_reason,
                output_tokens=turn.usage.output_tokens,
                first_token_ms=turn.completed_frame()["timing"]["first_token_ms"],
            )
        self.events.publish(event, data)
        self.registry.touch(turn.session_id)

    # -- kills -----------------------------------------------------------------------
    async def kill(self, session_id: str, *, actor_id: str, reason: str | None) -> None:
        """End the session wherever it runs: its turn is cancelled and every follower
        ended (a connection closes 4000); audited."""
        live = {s["id"] for s in await self.registry.list()}
        if session_id not in live:
            raise NotFound("no live session with this id", error_code="SESSION_NOT_LIVE")
        await record_action(
            self.db, actor_id=actor_id, action="session.kill", target=session_id, reason=reason
        )
        await self.backplane.publish(KILL_CHANNEL, json.dumps({"session_id": session_id}))

    async def _on_kill(self, _channel: str, message: str) -> None:
        await self.hub.kill(json.loads(message)["session_id"])

    # -- orphans ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.events.start()
        await self.registry.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orphan-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("orphan sweep failed; will retry", exc_info=True)

    async def sweep_orphans(self) -> int:
        """Mark ``error`` the answers still streaming on instances that are gone, and
        this instance's own that no turn here runs or still stores: a placeholder whose
        write committed as its asker left, or an answer that could not be stored for
        ``PERSIST_RETRY_FOR``."""
        cutoff = utcnow() - timedelta(seconds=self._orphan_age)
        manager = self.hub.manager
        own = await fail_stale_turns(
            self.db,
            instance_id=self.hub.chat.instance_id,
            older_than=cutoff,
            sparing=manager.busy(),
        )
        await self._refund(own)
        count = len(own)
        if own:
            log.warning("marked %d answers this instance no longer runs as error", len(own))
        alive = await self.registry.live_instances()
        if alive is None:
            return count
        dead = 0
        for instance in await streaming_instances(self.db, older_than=cutoff):
            if instance not in alive:
                closed = await fail_stale_turns(self.db, instance_id=instance, older_than=cutoff)
                dead += len(closed)
                await self._refund(closed)
        if dead:
            log.warning("marked %d answers of dead instances as error", dead)
        return count + dead

    async def _refund(self, closed: list[ClosedTurn]) -> None:
        """A turn cut short by a dead instance is our failure: its quota is given back."""
        for turn in closed:
            try:
                await self.quotas.refund(
                    feature="chat",
                    user_id=turn.user_id,
                    game_id=turn.game_id,
                    turn_id=turn.turn_id,
                    now=turn.started_at,
                )
            except Unavailable:
                log.warning("could not give back the quota of turn %s", turn.turn_id)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.registry.aclose()
        await self.events.aclose()
