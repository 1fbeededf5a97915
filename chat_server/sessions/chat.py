"""The chat service: sessions and turns, the rules that need storage.

It holds the rules that need storage (visibility, ownership, flags, quota, history,
grounding) and hands running turns to the ``TurnManager``. It knows nothing of
transports: it takes the core's commands (``protocol.py``) and returns its events;
adapters reach it through the ``SessionHub``, which also attaches their followers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import metrics
from ..access import can_see_game
from ..config import Settings
from ..denials import Denial, DenialLog
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
from ..flags import Decision
from ..providers.base import ChatMessage, Provider, ProviderRequest
from ..quotas import Quota, QuotaCounter, Reservation, next_midnight
from ..retrieval.index import Indexes
from ..rulebooks import Passage
from ..storage import chat as chat_store
from ..storage.documents import Retrieval, game_languages, retrieve
from ..storage.engine import Database
from ..storage.games import get_game
from ..storage.ids import new_id, utcnow
from ..tracing import TurnSpan, start_turn_span
from .history import History
from .manager import LiveTurn, TurnManager
from .protocol import Ask, Event, Resume, Start
from .turn import Turn

__all__ = ["GAMES_CHANNEL", "Attached", "ChatService", "Game", "Who"]

FEATURE = "chat"
#: The backplane channel on which a changed game's id is announced (its status, section
#: or name): every instance reads it again before the next turn asked on it.
GAMES_CHANNEL = "games"
#: How long an instance trusts what it read of a game's rulebook languages when no
#: ``documents`` signal says otherwise. A change is seen at once through the signal
#: (``rulebook_added``, on every instance); this bounds only a lost signal (Redis down
#: while the change was published, or this instance's subscription broken then).
LANGUAGES_BACKSTOP = 60.0
#: Turns of this instance between their question and their release, at once at most,
#: and how long one waits for a place before it starts anyway (``start_turn``).
STARTS_AT_ONCE = 8
START_QUEUE_WAIT = 0.1
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Who:
    """The signed-in user of a connection."""

    user_id: str
    role: str


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Game:
    """What a session needs of its game; one object per game, shared by its sessions."""

    id: str
    name: str
    section: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Game:
        """From a stored game row."""
        return cls(row["id"], row["name"], row.get("section"))


@dataclass(slots=True)
class Attached:
    """The session a connection is attached to (what its turns need, nothing more)."""

    session_id: str
    language: str
    provider: str
    game: Game
    history: History


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
        indexes: Indexes,
        denials: DenialLog | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.flags = flags
        self.quotas = quotas
        self.providers = providers
        self.manager = manager
        self.instance_id = instance_id
        self.denials = denials
        self.indexes = indexes  # the games' passages as searched, per app
        self.draining = False
        # Shared while some connection holds them: one game object per game, one
        # history per session attached on this instance.
        self._games: weakref.WeakValueDictionary[str, Game] = weakref.WeakValueDictionary()
        self._histories: weakref.WeakValueDictionary[str, History] = weakref.WeakValueDictionary()
        # game id -> (good until, the languages its rulebooks are in): read per turn else;
        # and the read under way, which every turn that misses meanwhile waits for (a
        # burst of turns of one game reads them once, not once each).
        self._languages: dict[str, tuple[float, frozenset[str]]] = {}
        self._languages_reads: dict[str, asyncio.Task[frozenset[str]]] = {}
        # Turns starting at once, at most (see ``start_turn``).
        self._starting = asyncio.Semaphore(STARTS_AT_ONCE)
        # Sessions whose turn is starting here (not yet in the manager): a second
        # message meanwhile, from another connection, is turn_in_progress too.
        self._asking: set[str] = set()

    @property
    def _history_size(self) -> int:
        return 2 * self.settings.history_turns

    # -- sessions --------------------------------------------------------------
    async def _visible_game(self, who: Who, game_id: str) -> Game:
        return self._game(who, await get_game(self.db, game_id))

    def _game(self, who: Who, row: dict[str, Any] | None) -> Game:
        """The shared ``Game`` of a stored game row, if ``who`` may see it (else
        ``not_found``, as for a game that does not exist)."""
        if not can_see_game(who.role, row):
            raise NotFound("game not found", error_code="GAME_NOT_FOUND")
        assert row is not None
        game = Game.from_row(row)
        shared = self._games.get(game.id)
        if shared == game:
            return shared
        self._games[game.id] = game
        return game

    def _history(self, session_id: str) -> History:
        history = self._histories.get(session_id)
        if history is None:
            history = History(self._history_size, self.settings.history_chars)
            self._histories[session_id] = history
        return history

    def _decide(self, who: Who, feature: str, game: Game) -> Decision:
        """The flag that applies to ``who`` on ``game`` (decided in memory)."""
        return self.flags.decide(
            feature=feature,
            user_id=who.user_id,
            role=who.role,
            game_id=game.id,
            section=game.section,
        )

    def _provider_allowed(self, who: Who, name: str, game: Game) -> bool:
        """``chat.provider.<name>`` flags switch a provider off; no flag means on."""
        decision = self._decide(who, f"chat.provider.{name}", game)
        return decision.enabled or decision.flag_id is None

    async def start_session(self, who: Who, frame: Start) -> tuple[Attached, Event]:
        game = await self._visible_game(who, frame.game_id)
        name = frame.provider or self.settings.default_provider or "local"
        if name not in self.providers:
            raise InvalidInput(
                f"provider {name!r} is not configured; available: {', '.join(self.providers)}"
            )
        if not self._provider_allowed(who, name, game):
            raise FeatureDisabled(f"provider {name!r} is switched off for you")
        quota = await self._usage(who, game)  # before writing: Redis down leaves nothing
        session = await chat_store.create_session(
            self.db,
            user_id=who.user_id,
            game_id=game.id,
            language=frame.language,
            provider=name,
            model=self.providers[name].model,
            session_id=frame.session_id,
        )
        attached = Attached(
            session["id"], session["language"], name, game, self._history(session["id"])
        )
        return attached, self._ready(session, [], quota)

    async def resume_session(
        self, who: Who, frame: Resume
    ) -> tuple[Attached, Event, LiveTurn | None]:
        """Re-attach: the attachment, the ``session.ready`` event (``running`` is None:
        the hub fills it in) and this instance's running turn of the session, if any.
        """
        # One statement in all: the session (only the user's own), its game (whose
        # visibility is checked here, on what is stored now) and its history. A resume
        # storm on a fresh instance costs the database one round trip per client.
        found = await chat_store.session_with_history(self.db, frame.session_id, who.user_id)
        if found is None:
            raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
        session, history = found.session, found.messages
        game = self._game(who, found.game)
        live = self.manager.running_in_session(session["id"])
        attached = Attached(
            session["id"],
            session["language"],
            session["provider"],
            game,
            self._history(session["id"]),
        )
        # The freshest view there is: what was stored, and this instance's running turn.
        attached.history.load(history, live.turn.message_id if live is not None else None)
        if live is not None:
            for message in history:
                if message["id"] == live.turn.message_id:
                    message.update(live.turn.live_message())
        ready = self._ready(session, history, await self._usage(who, game))
        return attached, ready, self.manager.running_in_session(session["id"])

    def _ready(
        self, session: dict[str, Any], history: list[dict[str, Any]], quota: Quota
    ) -> dict[str, Any]:
        public = {
            k: session[k] for k in ("id", "game_id", "language", "provider", "model", "created_at")
        }
        return {
            "type": "session.ready",
            "session": public,
            "history": history,
            "quota": quota.to_dict(),
            "running": None,
        }

    async def quota(self, who: Who, game: dict[str, Any]) -> Quota:
        """The user's ``chat`` quota on ``game`` (a stored game row)."""
        return await self._usage(who, Game.from_row(game))

    async def _usage(self, who: Who, game: Game) -> Quota:
        decision = self._decide(who, FEATURE, game)
        return await self.quotas.usage(
            feature=FEATURE,
            user_id=who.user_id,
            game_id=game.id,
            limit=decision.daily_limit,
            now=utcnow(),
        )

    # -- turns -----------------------------------------------------------------
    async def start_turn(self, who: Who, attached: Attached, frame: Ask) -> Turn:
        """Check flag then quota, store the question, start streaming the answer.

        Every follower of the session here gets ``turn.started`` before any delta can
        follow (``TurnManager.release``). The provider
        is asked while the question is being stored, but nothing of the answer is sent
        or stored before the question is: whatever fails before that stops the
        provider request, gives the quota back and stores nothing.
        """
        if self.draining:
            raise ShuttingDown()
        if len(frame.text) > self.settings.ws_max_text_chars:
            raise InvalidInput(f"text is longer than {self.settings.ws_max_text_chars} characters")
        session_id = attached.session_id
        if self.manager.running_in_session(session_id) is not None or session_id in self._asking:
            raise TurnInProgress()
        self._asking.add(session_id)
        try:
            return await self._queue_turn(who, attached, frame)
        finally:
            self._asking.discard(session_id)

    async def _queue_turn(self, who: Who, attached: Attached, frame: Ask) -> Turn:
        if self._games.get(attached.game.id) is not attached.game:
            # The game changed since this connection attached (``game_changed``): read
            # it again; one the user may no longer see (hidden) is not_found, at once.
            attached.game = await self._visible_game(who, attached.game.id)
        # In a burst, every starting turn's steps (admission, search, request, write)
        # took turns on the one event loop, so each turn's first token came only when
        # all of them were nearly done: the median as late as the last. Turns start
        # STARTS_AT_ONCE at a time, in order of arrival, so the first ones finish
        # starting first (the last one's wait is what it was; the total CPU is the
        # same). A turn that waited START_QUEUE_WAIT goes on regardless: when the wait
        # is for a slow database or Redis rather than for the CPU, the queue must not
        # become the limit.
        turn_id, now = new_id(), utcnow()
        span = start_turn_span(
            turn_id=turn_id,
            session_id=attached.session_id,
            game_id=attached.game.id,
            user_id=who.user_id,
        )
        try:
            # In the trace: the time a turn waited for its place, and whether it got one.
            with span.child("chat.start_queue", queue_full=self._starting.locked()):
                slotted = await self._take_place()
        except BaseException as exc:  # cancelled while waiting (the client left)
            span.end(error=type(exc).__name__)
            raise
        try:
            return await self._start_turn(who, attached, frame, turn_id, now, span)
        finally:
            if slotted:
                self._starting.release()

    async def _take_place(self) -> bool:
        """One of the ``STARTS_AT_ONCE`` places (True), or none after ``START_QUEUE_WAIT``."""
        if not self._starting.locked():
            await self._starting.acquire()  # at once
            return True
        try:
            async with asyncio.timeout(START_QUEUE_WAIT):
                await self._starting.acquire()
        except TimeoutError:
            return False
        return True

    async def _start_turn(
        self, who: Who, attached: Attached, frame: Ask, turn_id: str, now: datetime, span: TurnSpan
    ) -> Turn:
        session_id, game = attached.session_id, attached.game
        try:
            chain = self._chain(who, attached.provider, game)
            # The admission check and the grounding read are independent: run them
            # together (one Redis and one database round trip in parallel). The quota
            # script goes out first, so that the grounding's CPU (the question's
            # embedding) runs while Redis answers.
            prepare = asyncio.ensure_future(self._prepare(attached, frame.text, span))
            try:
                reservation = await self._admit(who, game, turn_id, now, span)
            except BaseException:
                prepare.cancel()
                with contextlib.suppress(BaseException):
                    await prepare
                raise
            try:
                found = await prepare
            except BaseException:
                prepare.cancel()
                await self._refund_quietly(who, game, turn_id, now)
                raise
            turn = Turn(
                id=turn_id,
                session_id=session_id,
                user_id=who.user_id,
                game_id=game.id,
                provider=chain[0].name,
                model=chain[0].model,
                client_id=frame.client_id,
                started_at=time.monotonic(),
                quota_at=now,
                passages=found.passages,
                max_delta=self.settings.ws_max_delta_chars,
            )
            request = self._request(attached, frame.text, found.passages, rules_silent=found.silent)
            # The provider request and the question's write go out together; the turn
            # holds its text back until ``release``.
            live = self.manager.begin(turn, chain, request, span)
            try:
                # The provider task builds and sends its request first: that is on the
                # first token's path, and the question's write (its CPU, its round
                # trip) fits in the time the provider takes to answer.
                await asyncio.sleep(0)
                with span.child("chat.store_question"):
                    user_message, assistant_id = await chat_store.begin_turn(
                        self.db,
                        session_id=session_id,
                        turn_id=turn_id,
                        text=frame.text,
                        instance_id=self.instance_id,
                    )
            except BaseException:
                self.manager.abandon(live)
                await self._refund_quietly(who, game, turn_id, now)
                raise
        except BaseException as exc:
            span.end(error=getattr(exc, "code", type(exc).__name__))
            if isinstance(exc, FeatureDisabled | QuotaExceeded):
                self._record_denial(who, attached, exc.code, now)
            raise
        turn.user_message_id, turn.message_id = user_message["id"], assistant_id
        attached.history.begin(frame.text, assistant_id)
        self.manager.release(live, turn.started_frame(reservation.quota.to_dict()))
        return turn

    def rulebook_added(self, game_id: str) -> None:
        """A document of ``game_id`` was stored, replaced or deleted: ground its next turns
        on what is stored now (its languages and its retrieval index are read again).
        A read under way may have seen the old documents: it is not kept, and later
        turns do not wait for it."""
        self._languages.pop(game_id, None)
        self._languages_reads.pop(game_id, None)
        self.indexes.forget(game_id)

    def game_changed(self, game_id: str) -> None:
        """``game_id`` was changed (status, section, name): every connection attached to
        it reads it again at its next turn, and a hidden game is then not_found."""
        self._games.pop(game_id, None)

    def games_unknown(self) -> None:
        """Signals may have been missed: read every game again at its next turn."""
        self._games.clear()

    def rulebooks_unknown(self) -> None:
        """Signals may have been missed (the backplane's subscription was lost): read
        every game's rulebook languages again."""
        self._languages.clear()
        self._languages_reads.clear()

    async def _game_languages(self, game_id: str) -> frozenset[str]:
        """The game's rulebook languages: remembered until a ``documents`` signal (or
        ``LANGUAGES_BACKSTOP``), read once for all the turns that miss together."""
        cached = self._languages.get(game_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        read = self._languages_reads.get(game_id)
        if read is None:
            read = asyncio.create_task(self._read_languages(game_id), name="game-languages")
            # every waiter may be gone (cancelled) when it fails: retrieve its error
            read.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._languages_reads[game_id] = read
        # shielded: one waiter cancelled does not cancel the others' read
        return await asyncio.shield(read)

    async def _read_languages(self, game_id: str) -> frozenset[str]:
        mine = asyncio.current_task()
        try:
            languages = await game_languages(self.db, game_id)
        finally:
            current = self._languages_reads.get(game_id) is mine
            if current:
                del self._languages_reads[game_id]
        if current:  # no signal came while reading: what was read is what is stored
            self._languages[game_id] = (time.monotonic() + LANGUAGES_BACKSTOP, languages)
        return languages

    async def _retrieve(self, attached: Attached, question: str) -> Retrieval:
        game_id = attached.game.id
        languages = await self._game_languages(game_id)
        return await retrieve(
            self.db,
            game_id=game_id,
            language=attached.language,
            question=question,
            limit=self.settings.grounding_passages,
            indexes=self.indexes,
            languages=languages,
        )

    async def _prepare(self, attached: Attached, question: str, span: TurnSpan) -> Retrieval:
        """The passages for ``question``; reads the history too if memory cannot tell it."""
        with span.child("chat.prepare"):
            retrieval = self._retrieve(attached, question)
            if not attached.history.stale:
                return await retrieval
            found, rows = await asyncio.gather(
                retrieval,
                chat_store.history(self.db, attached.session_id, limit=self._history_size),
            )
            attached.history.load(rows)
            return found

    async def _admit(
        self, who: Who, game: Game, turn_id: str, now: datetime, span: TurnSpan
    ) -> Reservation:
        """The ``chat`` flag, then the daily quota: one Redis round trip in all."""
        with span.child("chat.flag_check"):
            decision = self._decide(who, FEATURE, game)
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
                    game_id=game.id,
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

    def _record_denial(self, who: Who, attached: Attached, code: str, now: datetime) -> None:
        """A refused turn, for the usage report (buffered: no round trip here)."""
        if self.denials is not None:
            provider = self.providers.get(attached.provider)
            self.denials.record(
                Denial(
                    session_id=attached.session_id,
                    user_id=who.user_id,
                    game_id=attached.game.id,
                    provider=attached.provider,
                    model=provider.model if provider is not None else "",
                    code=code,
                    at=now,
                )
            )

    async def _refund_quietly(self, who: Who, game: Game, turn_id: str, now: datetime) -> None:
        try:
            await self.quotas.refund(
                feature=FEATURE, user_id=who.user_id, game_id=game.id, turn_id=turn_id, now=now
            )
        except Unavailable:
            log.warning("could not give back the quota of turn %s", turn_id)

    def _chain(self, who: Who, first: str, game: Game) -> list[Provider]:
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
        self, attached: Attached, question: str, passages: list[Passage], *, rules_silent: bool
    ) -> ProviderRequest:
        """The conversation sent to a provider: the latest turns within a budget."""
        messages = attached.history.conversation()
        messages.append(ChatMessage("user", question))
        return ProviderRequest(
            model="",  # each provider of the fallback chain uses its own model
            system="",  # providers build the grounded prompt from the passages themselves
            messages=messages,
            passages=passages,
            language=attached.language,
            game_name=attached.game.name,
            max_output_tokens=self.settings.provider_max_output_tokens,
            rules_silent=rules_silent,
        )

    # -- what the manager calls back ---------------------------------------------
    async def persist(self, turn: Turn) -> None:
        record = turn.record()
        history = self._histories.get(turn.session_id)
        if history is not None:
            history.finish(record.message_id, record.content, record.status)
        await chat_store.finish_turn(self.db, record)

    async def refund(self, turn: Turn) -> None:
        await self.quotas.refund(
            feature=FEATURE,
            user_id=turn.user_id,
            game_id=turn.game_id,
            turn_id=turn.id,
            now=turn.quota_at or utcnow(),
        )
