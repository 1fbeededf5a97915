"""What both AI SDK dialects ask of the session core: open a chat, ask, follow, stop.

A chat id is a session id. Everything goes through the ``SessionHub`` with a
``Follower`` of kind ``client``, as ``/ws/chat`` does: ``open_chat`` attaches one to
the chat's session (creating the session under the chat's id on its first request,
from ``body.game_id``); ``ChatLink.ask`` starts a turn (flag, quota, grounding,
fallback, storage are the core's); ``follow`` attaches a fresh follower from the
answer's beginning (``after_seq`` 0), on this instance or, through the relay, on the
one that runs the turn. An ``Answer`` maps the events of its turn to the AI SDK's UI
message chunks (``AnswerChunks``). Leaving (a dropped socket or request) detaches, so
the turn runs on for the resume grace; ``abort`` and ``DELETE`` cancel.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ..sessions.chat import Attached, Who
from ..sessions.follower import Follower
from ..sessions.outbox import Outbox
from ..sessions.protocol import Ask, Event, Resume, Start
from ..storage import chat as chat_store
from ..storage.ids import new_id
from .ai_sdk_chunks import AnswerChunks, Chunk
from .ai_sdk_frames import ChatBody

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["Answer", "ChatLink", "follow", "open_chat", "stop_running"]

#: Events a follower may hold unsent (a lagging reader's deltas are not counted: they
#: are pulled, one marker per turn).
OUTBOX_FRAMES = 1024


@dataclass(eq=False)
class Answer:
    """One request's view of one turn: its events in, its chunks out."""

    turn_id: str
    message_id: str
    mapper: AnswerChunks
    aborted: bool = False
    ended: bool = False
    #: chunks to send before the first event (a resume's ``start`` and ``text-start``)
    opening: list[Chunk] = field(default_factory=list)

    def take_opening(self) -> list[Chunk]:
        chunks, self.opening = self.opening, []
        return chunks

    def feed(self, event: Event) -> list[Chunk]:
        """The chunks for one of the session's events (other turns' events: none)."""
        if self.ended:
            return []
        turn_id = event.get("turn_id")
        if turn_id is not None and turn_id != self.turn_id:
            return []
        kind = event.get("type")
        if kind == "turn.completed":
            self.ended = True
        elif kind not in ("turn.started", "turn.delta", "error"):
            return []
        chunks = self.opening + self.mapper.from_core(event, self.message_id, aborted=self.aborted)
        self.opening = []
        return chunks


class ChatLink:
    """A follower attached to one chat's session, for one caller (a request, or a socket
    that asks in the chat again and again: the session is not read again per turn)."""

    __slots__ = ("attached", "follower", "services", "who")

    def __init__(self, services: Services, who: Who, attached: Attached, follower: Follower):
        self.services = services
        self.who = who
        self.attached = attached
        self.follower = follower

    @property
    def chat_id(self) -> str:
        return self.attached.session_id

    async def ask(self, text: str | None) -> Answer:
        """Start a turn: ``text``, or (``None``: regenerate) the chat's last question."""
        if text is None:
            stored = await chat_store.history(self.services.db, self.chat_id, limit=50)
            asked = [m["content"] for m in stored if m["role"] == "user"]
            if not asked:
                raise InvalidInput("regenerate-message: this chat has no question yet")
            text = asked[-1]
        turn = await self.services.hub.ask(self.who, self.attached, Ask(text), self.follower)
        return Answer(turn.id, turn.message_id, AnswerChunks())

    async def stop(self, answer: Answer) -> None:
        """``abort``: cancel the answer's turn (the upstream request is closed at once)."""
        answer.aborted = True
        with contextlib.suppress(NotFound):  # it ended meanwhile
            await self.services.hub.cancel(self.attached, self.follower, answer.turn_id)

    def leave(self) -> None:
        """Detach (never waits): a running turn goes on for the resume grace."""
        self.services.hub.detach(self.attached, self.follower)
        self.follower.outbox.close()

    async def events(self) -> AsyncGenerator[Event]:
        """The follower's events as they come (ends when it is closed)."""
        outbox = self.follower.outbox
        while (event := await outbox.get()) is not None:
            yield event


class ChatFollower(Follower):
    """A request's (or a socket's chat's) follower; an admin kill calls ``on_end``."""

    __slots__ = ("on_end",)

    def __init__(
        self,
        on_end: Callable[[str], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(new_id(), "client", Outbox(max_frames=OUTBOX_FRAMES, wake=wake))
        self.on_end = on_end

    def end(self, reason: str) -> None:
        super().end(reason)
        if self.on_end is not None:
            self.on_end(reason)


def _follower(
    on_end: Callable[[str], None] | None = None, wake: Callable[[], None] | None = None
) -> Follower:
    return ChatFollower(on_end, wake)


async def _owned(services: Services, who: Who, chat_id: str) -> dict[str, Any] | None:
    session = await chat_store.get_session(services.db, chat_id)
    if session is not None and session["user_id"] != who.user_id:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    return session


async def open_chat(
    services: Services,
    who: Who,
    chat_id: str,
    body: ChatBody,
    on_end: Callable[[str], None] | None = None,
    wake: Callable[[], None] | None = None,
) -> ChatLink:
    """Attach a new follower to the chat's session, created on the chat's first request
    (``on_end``: called when an admin ends the session; ``wake``: called when an event
    waits in the follower's outbox, for a caller that takes them with ``pop()``)."""
    follower = _follower(on_end, wake)
    hub = services.hub
    if await _owned(services, who, chat_id) is None:
        if not body.game_id:
            raise InvalidInput("body.game_id: a new chat needs the game it is about")
        start = Start(body.game_id, body.language, body.provider, session_id=chat_id)
        try:
            attached = await hub.attach(who, start, follower)
            return ChatLink(services, who, attached, follower)
        except Exception:
            # Two first requests of one chat raced (the other created it), or another
            # user took the id meanwhile (``_owned`` says not_found).
            if await _owned(services, who, chat_id) is None:
                raise
    attached = await hub.attach(who, Resume(chat_id), follower)
    return ChatLink(services, who, attached, follower)


async def follow(services: Services, who: Who, chat_id: str) -> tuple[ChatLink, Answer] | None:
    """Follow the chat's running turn from the answer's beginning; None when none runs."""
    if await _owned(services, who, chat_id) is None:
        return None
    follower = _follower()
    attached = await services.hub.attach(who, Resume(chat_id, after_seq=0), follower)
    link = ChatLink(services, who, attached, follower)
    # The hub queues session.ready first; with ``running`` once the turn's owner (this
    # instance or another) has it streaming here.
    try:
        ready = await follower.outbox.get()
    except BaseException:  # the asker left meanwhile: nothing stays attached
        link.leave()
        raise
    running = ready.get("running") if ready is not None else None
    if ready is None or not running:
        link.leave()
        return None
    answer = Answer(running["turn_id"], running["message_id"], AnswerChunks(ready["quota"]))
    answer.opening = answer.mapper.start(answer.message_id, answer.turn_id)
    return link, answer


async def stop_running(services: Services, who: Who, chat_id: str) -> None:
    """Cancel the chat's running turn wherever it runs (nothing runs: nothing to do)."""
    if await _owned(services, who, chat_id) is None:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    live = services.hub.local_turn(chat_id)
    if live is not None:
        services.manager.cancel(live.turn.id, "client")
        return
    if services.relay.enabled:
        for message in await chat_store.history(services.db, chat_id, limit=2):
            if message["status"] == "streaming" and message.get("turn_id"):
                await services.relay.cancel(message["turn_id"])
