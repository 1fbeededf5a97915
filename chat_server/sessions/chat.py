"""The chat service: sessions and turns as the WebSocket endpoint asks for them.

It holds the rules that need storage (visibility, ownership, flags, quota, history,
grounding) and hands running turns to the ``TurnManager``. It knows nothing of
sockets: it takes validated frames and an ``Outbox`` and returns frames to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import metrics
from ..access import can_see_game
from ..config import Settings
from ..errors import (
    FeatureDisabled,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    ShuttingDown,
    TurnInProgress,
    Unavailable,
)
from ..flag_cache import FlagCache
from ..frames import MessageFrame, SessionResumeFrame, SessionStartFrame
from ..providers.base import ChatMessage, Passage, Provider, ProviderRequest
from ..quotas import Quota, QuotaCounter, Reservation, next_midnight
from ..storage import chat as chat_store
from ..storage.documents import retrieve
from ..storage.engine import Database
from ..storage.games import get_game
from ..storage.ids import new_id, utcnow
from ..tracing import TurnSpan, start_turn_span
from .manager import TurnManager
from .outbox import Outbox
from .turn import Turn

__all__ = ["Attached", "ChatService", "Who"]

FEATURE = "chat"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Who:
    """The signed-in user of a connection."""

    user_id: str
    role: str


@dataclass(slots=True)
class Attached:
    """The session a connection is attached to."""

    session: dict[str, Any]
    game: dict[str, Any]


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        flags: FlagCache,
        quotas: QuotaCounter,
        providers: dict[str, Provider],
        manager: TurnManager,
        instance_id: str,
    ) -> None:
        self.settings = settings
        self.db = db
        self.flags = flags
        self.quotas = quotas
        self.providers = providers
        self.manager = manager
        self.instance_id = instance_id
        self.draining = False

    # -- sessions --------------------------------------------------------------
    async def _visible_game(self, who: Who, game_id: str) -> dict[str, Any]:
        game = await get_game(self.db, game_id)
        if not can_see_game(who.role, game):
            raise NotFound("game not found", error_code="GAME_NOT_FOUND")
        assert game is not None
        return game

    def _provider_allowed(self, who: Who, name: str, game: dict[str, Any]) -> bool:
        """``chat.provider.<name>`` flags switch a provider off; no flag means on."""
        decision = self.flags.decide(
            feature=f"chat.provider.{name}",
            user_id=who.user_id,
            role=who.role,
            game_id=game["id"],
            section=game.get("section"),
        )
        return decision.enabled or decision.flag_id is None

    async def start_session(
        self, who: Who, frame: SessionStartFrame
    ) -> tuple[Attached, dict[str, Any]]:
        game = await self._visible_game(who, frame.game_id)
        name = frame.provider or self.settings.default_provider or "local"
        if name not in self.providers:
            raise InvalidInput(
                f"provider {name!r} is not configured; available: {', '.join(self.providers)}"
            )
        if not self._provider_allowed(who, name, game):
            raise FeatureDisabled(f"provider {name!r} is switched off for you")
        quota = await self.quota(who, game)  # before writing: Redis down leaves nothing
        session = await chat_store.create_session(
            self.db,
            user_id=who.user_id,
            game_id=game["id"],
            language=frame.language,
            provider=name,
            model=self.providers[name].model,
        )
        attached = Attached(session, game)
        return attached, self._ready(attached, [], quota)

    async def resume_session(
        self, who: Who, frame: SessionResumeFrame, sink: Outbox
    ) -> tuple[Attached, dict[str, Any], str | None]:
        """Re-attach; also re-attach the running turn when ``turn_id`` names it.

        Returns the attachment, the ``session.ready`` frame, and the id of the turn now
        streaming to ``sink`` (if any).
        """
        session = await chat_store.get_session(self.db, frame.session_id)
        if session is None or session["user_id"] != who.user_id:
            raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
        game = await self._visible_game(who, session["game_id"])
        attached = Attached(session, game)
        history = await chat_store.history(self.db, session["id"])
        live = self.manager.running_in_session(session["id"])
        resumed: str | None = None
        if live is not None:
            for message in history:
                if message["id"] == live.turn.message_id:
                    message.update(live.turn.live_message())
        ready = self._ready(attached, history, await self.quota(who, game))
        if live is not None and frame.turn_id == live.turn.id:
            resumed = live.turn.id
            sink.put(ready)
            self.manager.attach(live.turn.id, sink, frame.after_seq or 0)
        return attached, ready, resumed

    def _ready(
        self, attached: Attached, history: list[dict[str, Any]], quota: Quota
    ) -> dict[str, Any]:
        session = attached.session
        public = {
            k: session[k] for k in ("id", "game_id", "language", "provider", "model", "created_at")
        }
        return {
            "type": "session.ready",
            "session": public,
            "history": history,
            "quota": quota.to_dict(),
        }

    async def quota(self, who: Who, game: dict[str, Any]) -> Quota:
        decision = self.flags.decide(
            feature=FEATURE,
            user_id=who.user_id,
            role=who.role,
            game_id=game["id"],
            section=game.get("section"),
        )
        return await self.quotas.usage(
            feature=FEATURE,
            user_id=who.user_id,
            game_id=game["id"],
            limit=decision.daily_limit,
            now=utcnow(),
        )

    # -- turns -----------------------------------------------------------------
    async def start_turn(
        self, who: Who, attached: Attached, frame: MessageFrame, sink: Outbox
    ) -> Turn:
        """Check flag then quota, store the question, start streaming the answer.

        Puts ``turn.started`` into ``sink`` before any delta can follow. Whatever fails
        before the question is stored gives the quota back and stores nothing.
        """
        if self.draining:
            raise ShuttingDown()
        if len(frame.text) > self.settings.ws_max_text_chars:
            raise InvalidInput(f"text is longer than {self.settings.ws_max_text_chars} characters")
        session, game = attached.session, attached.game
        if self.manager.running_in_session(session["id"]) is not None:
            raise TurnInProgress()
        turn_id, now = new_id(), utcnow()
        span = start_turn_span(
            turn_id=turn_id, session_id=session["id"], game_id=game["id"], user_id=who.user_id
        )
        try:
            chain = self._chain(who, session["provider"], game)
            # The admission check and the two reads the turn needs are independent:
            # run them together (one Redis and two database round trips in parallel).
            admit = asyncio.ensure_future(self._admit(who, game, turn_id, now, span))
            try:
                with span.child("chat.prepare"):
                    found, history = await asyncio.gather(
                        retrieve(
                            self.db,
                            game_id=game["id"],
                            language=session["language"],
                            question=frame.text,
                            limit=self.settings.grounding_passages,
                        ),
                        chat_store.history(
                            self.db, session["id"], limit=2 * self.settings.history_turns
                        ),
                    )
            except BaseException:
                admit.cancel()
                with contextlib.suppress(BaseException):
                    await admit
                await self._refund_quietly(who, game, turn_id, now)
                raise
            reservation = await admit
            try:
                with span.child("chat.store_question"):
                    user_message, assistant_id = await chat_store.begin_turn(
                        self.db,
                        session_id=session["id"],
                        turn_id=turn_id,
                        text=frame.text,
                        instance_id=self.instance_id,
                    )
            except BaseException:
                await self._refund_quietly(who, game, turn_id, now)
                raise
        except BaseException as exc:
            span.end(error=getattr(exc, "code", type(exc).__name__))
            raise
        turn = Turn(
            id=turn_id,
            session_id=session["id"],
            user_id=who.user_id,
            game_id=game["id"],
            provider=chain[0].name,
            model=chain[0].model,
            user_message_id=user_message["id"],
            message_id=assistant_id,
            client_id=frame.client_id,
            started_at=time.monotonic(),
            quota_at=now,
            passages=found.passages,
        )
        sink.put(turn.started_frame(reservation.quota.to_dict()))
        request = self._request(session, game, history, frame.text, found.passages)
        self.manager.start(turn, chain, request, sink, span)
        return turn

    async def _admit(
        self, who: Who, game: dict[str, Any], turn_id: str, now: datetime, span: TurnSpan
    ) -> Reservation:
        """The ``chat`` flag, then the daily quota: one Redis round trip in all."""
        with span.child("chat.flag_check"):
            decision = self.flags.decide(
                feature=FEATURE,
                user_id=who.user_id,
                role=who.role,
                game_id=game["id"],
                section=game.get("section"),
            )
        if not decision.enabled:
            metrics.DENIALS.labels("feature_disabled").inc()
            raise FeatureDisabled(
                "chat is not enabled for you on this game", error_code="FEATURE_DISABLED"
            )
        try:
            with span.child("chat.quota_reserve", daily_limit=decision.daily_limit):
                reservation = await self.quotas.reserve(
                    feature=FEATURE,
                    user_id=who.user_id,
                    game_id=game["id"],
                    turn_id=turn_id,
                    limit=decision.daily_limit,
                    now=now,
                )
        except Unavailable:
            if not self.settings.quota_fail_open:
                metrics.DENIALS.labels("unavailable").inc()
                raise
            # QUOTA_FAIL_OPEN: serve the turn uncounted rather than refuse it.
            log.warning("quota store unavailable: turn allowed uncounted (QUOTA_FAIL_OPEN)")
            quota = Quota(
                feature=FEATURE,
                daily_limit=decision.daily_limit,
                used=0,
                resets_at=next_midnight(now),
            )
            return Reservation(granted=True, quota=quota)
        if not reservation.granted:
            metrics.DENIALS.labels("quota_exceeded").inc()
            raise QuotaExceeded(context=reservation.quota.to_dict())
        return reservation

    async def _refund_quietly(
        self, who: Who, game: dict[str, Any], turn_id: str, now: datetime
    ) -> None:
        try:
            await self.quotas.refund(
                feature=FEATURE, user_id=who.user_id, game_id=game["id"], turn_id=turn_id, now=now
            )
        except Unavailable:
            log.warning("could not give back the quota of turn %s", turn_id)

    def _chain(self, who: Who, first: str, game: dict[str, Any]) -> list[Provider]:
        names = [first] + [n for n in self.settings.fallback_providers if n != first]
        chain = [
            self.providers[n]
            for n in names
            if n in self.providers and self._provider_allowed(who, n, game)
        ]
        if not chain:
            raise FeatureDisabled(
                f"provider {first!r} is switched off for you", error_code="PROVIDER_DISABLED"
            )
        return chain

    def _request(
        self,
        session: dict[str, Any],
        game: dict[str, Any],
        history: list[dict[str, Any]],
        question: str,
        passages: list[Passage],
    ) -> ProviderRequest:
        """The conversation sent to a provider: the latest turns within a budget."""
        messages: list[ChatMessage] = []
        budget = self.settings.history_chars
        for message in reversed(history):
            if message["status"] not in ("complete",) or not message["content"]:
                continue
            budget -= len(message["content"])
            if budget < 0:
                break
            messages.append(ChatMessage(message["role"], message["content"]))
        messages.reverse()
        while messages and messages[0].role != "user":
            messages.pop(0)
        messages.append(ChatMessage("user", question))
        return ProviderRequest(
            model="",  # each provider of the fallback chain uses its own model
            system="",  # providers build the grounded prompt from the passages themselves
            messages=messages,
            passages=passages,
            language=session["language"],
            game_name=game["name"],
            max_output_tokens=self.settings.provider_max_output_tokens,
        )

    # -- what the manager calls back ---------------------------------------------
    async def persist(self, turn: Turn) -> None:
        await chat_store.finish_turn(self.db, turn.record())

    async def refund(self, turn: Turn) -> None:
        await self.quotas.refund(
            feature=FEATURE,
            user_id=turn.user_id,
            game_id=turn.game_id,
            turn_id=turn.id,
            now=turn.quota_at or utcnow(),
        )
