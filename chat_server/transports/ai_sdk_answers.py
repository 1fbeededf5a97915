"""What both AI SDK dialects ask of the session core: open a chat, ask, follow, stop.

A chat id is a session id. ``ask`` attaches (or creates, from ``body.game_id``) the
session and starts a turn through ``ChatService`` exactly as ``/ws/chat``'s
``message`` does (flag, quota, grounding, fallback, storage); ``follow`` re-attaches
to the session's running turn from the answer's beginning, on this instance or,
through the ``TurnRelay``, on the one that runs it. Either gives an ``Answer``: the
turn's events arrive in its ``Outbox`` and ``chunks()`` turns them into the AI SDK's
UI message chunks. ``detach`` (the client went away) leaves the turn to the resume
grace; ``stop`` (``abort``, ``DELETE``) cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ..frames import MessageFrame, SessionResumeFrame, SessionStartFrame
from ..sessions.chat import Attached, Who
from ..sessions.outbox import Outbox
from ..storage import chat as chat_store
from .ai_sdk_chunks import AnswerChunks, Chunk
from .ai_sdk_frames import ChatBody

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["Answer", "ask", "follow", "stop_running"]

log = logging.getLogger(__name__)
#: How long a resume waits for the instance that runs the turn to answer.
FOLLOW_TIMEOUT = 5.0


@dataclass(eq=False)
class Answer:
    """One request's view of a turn: where its events arrive and how to map them."""

    services: Services
    turn_id: str
    message_id: str
    outbox: Outbox
    mapper: AnswerChunks
    relay: asyncio.Task[Any] | None = None
    attached: Attached | None = None
    aborted: bool = False
    ended: bool = False
    #: chunks to send before the first event (a resume's ``start`` and ``text-start``)
    opening: list[Chunk] = field(default_factory=list)
    _detached: bool = field(default=False, repr=False)

    async def chunks(self) -> AsyncGenerator[list[Chunk]]:
        """The answer's chunks, in batches as events arrive, up to its last."""
        if self.opening:
            yield self.opening
            self.opening = []
        while not self.ended:
            frame = await self.outbox.get()
            if frame is None:
                return
            if frame.get("type") == "turn.completed":
                self.ended = True
            batch = self.mapper.from_core(frame, self.message_id, aborted=self.aborted)
            if batch:
                yield batch

    async def stop(self) -> None:
        """``abort``: cancel the turn (the upstream request is closed at once)."""
        self.aborted = True
        if self.services.manager.cancel(self.turn_id, "client"):
            return
        if self.relay is not None and not self.relay.done():
            await self.services.relay.cancel(self.turn_id)

    def detach(self) -> None:
        """The client went away: the turn runs on for the resume grace period."""
        if self._detached:
            return
        self._detached = True
        if self.relay is not None:
            self.relay.cancel()
        self.services.manager.detach(self.turn_id, self.outbox)
        self.outbox.close()


async def _session(services: Services, who: Who, chat_id: str) -> dict[str, Any] | None:
    session = await chat_store.get_session(services.db, chat_id)
    if session is not None and session["user_id"] != who.user_id:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    return session


async def _attach(
    services: Services, who: Who, chat_id: str, body: ChatBody
) -> tuple[Attached, dict[str, Any]]:
    """The chat's session, created under ``chat_id`` on its first request."""
    if await _session(services, who, chat_id) is None:
        if not body.game_id:
            raise InvalidInput("body.game_id: a new chat needs the game it is about")
        start = SessionStartFrame(
            type="session.start",
            game_id=body.game_id,
            language=body.language,
            provider=body.provider,
        )
        try:
            return await services.chat.start_session(who, start, session_id=chat_id)
        except Exception:
            # Two first requests of one chat raced (the other created it), or the id
            # is taken by another user's session (``_session`` says not_found).
            if await _session(services, who, chat_id) is None:
                raise
    resume = SessionResumeFrame(type="session.resume", session_id=chat_id)
    attached, ready, _ = await services.chat.resume_session(who, resume, Outbox())
    return attached, ready


async def ask(
    services: Services,
    who: Who,
    chat_id: str,
    body: ChatBody,
    text: str | None,
    attached: Attached | None = None,
) -> Answer:
    """Start a turn in the chat: ``text``, or (``None``: regenerate) its last question.

    ``attached``: the chat's session as this caller attached it before (a socket keeps
    its chats attached, as ``/ws/chat`` keeps its session: no reads per turn).
    """
    if attached is None or text is None:
        attached, ready = await _attach(services, who, chat_id, body)
        if text is None:
            asked = [m["content"] for m in ready["history"] if m["role"] == "user"]
            if not asked:
                raise InvalidInput("regenerate-message: this chat has no question yet")
            text = asked[-1]
    outbox = Outbox(max_frames=1024)
    message = MessageFrame(type="message", text=text)
    turn = await services.chat.start_turn(who, attached, message, outbox)
    answer = Answer(services, turn.id, turn.message_id, outbox, AnswerChunks())
    answer.attached = attached
    return answer


async def follow(services: Services, who: Who, chat_id: str) -> Answer | None:
    """Follow the chat's running turn from the answer's beginning; None when none runs."""
    session = await _session(services, who, chat_id)
    if session is None:
        return None
    outbox = Outbox(max_frames=1024)
    live = services.manager.running_in_session(chat_id)
    turn_id = live.turn.id if live is not None else None
    resume = SessionResumeFrame(
        type="session.resume", session_id=chat_id, turn_id=turn_id, after_seq=0
    )
    _, ready, resumed = await services.chat.resume_session(who, resume, outbox)
    if resumed is not None and live is not None:
        answer = Answer(services, resumed, live.turn.message_id, outbox, AnswerChunks())
        answer.mapper.quota = ready["quota"]
        answer.opening = answer.mapper.start(answer.message_id, resumed)
        return answer
    streaming = [m for m in ready["history"] if m["status"] == "streaming" and m.get("turn_id")]
    if not (services.relay.enabled and streaming):
        return None
    message = streaming[-1]
    attached = asyncio.Event()

    async def on_attached() -> None:
        attached.set()

    task = asyncio.create_task(
        services.relay.follow(message["turn_id"], 0, outbox.put, on_attached),
        name=f"ai-sdk-follow-{message['turn_id']}",
    )
    waiter = asyncio.ensure_future(attached.wait())
    try:
        await asyncio.wait((task, waiter), timeout=FOLLOW_TIMEOUT, return_when="FIRST_COMPLETED")
    finally:
        waiter.cancel()
    if not attached.is_set():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return None
    answer = Answer(
        services, message["turn_id"], message["id"], outbox, AnswerChunks(ready["quota"])
    )
    answer.relay = task
    answer.opening = answer.mapper.start(answer.message_id, answer.turn_id)
    return answer


async def stop_running(services: Services, who: Who, chat_id: str) -> None:
    """Cancel the chat's running turn wherever it runs (nothing runs: nothing to do)."""
    session = await _session(services, who, chat_id)
    if session is None:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    live = services.manager.running_in_session(chat_id)
    if live is not None:
        services.manager.cancel(live.turn.id, "client")
        return
    if services.relay.enabled:
        for message in await chat_store.history(services.db, chat_id, limit=2):
            if message["status"] == "streaming" and message.get("turn_id"):
                await services.relay.cancel(message["turn_id"])
