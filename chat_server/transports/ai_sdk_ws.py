"""``GET /ws/ai-sdk``: the Vercel AI SDK's ``WebSocketChatTransport`` protocol (CONTRACT §8).

One socket multiplexes requests, each named by the client's ``requestId``: ``send``
(ask), ``resume`` (follow the chat's running turn from its beginning, or
``no-active``) and ``abort``. Every request answers ``start``, then its chunks as
``chunk {requestId, sequence, chunk}`` numbered from 0 (``Sequencer``), then ``end``;
a refusal is ``error {requestId, errorText}`` whose text starts with the contract's
code.

The socket is a ``ClientConnection`` (admission and the user's slots, the frame rate
limit, token expiry, the writer and its send watchdog, admin kills and restarts), as
``/ws/chat``'s is; its own outbox carries this dialect's frames. The chats it asks in
are ``ChatLink``s (one follower each, attached once, their events pumped into
chunks by one task per chat); a ``resume`` gets a follower of its own. This module
owns only the wire: authentication from the handshake's ``Authorization`` or each
frame's ``headers.authorization`` (one ``sub`` per socket, never the URL; without
the handshake's, the first frame signs in, within ``WS_AUTH_TIMEOUT``, as on
``/ws/chat``), requests and their sequences. A socket that drops detaches every
follower (the turns run on for the resume grace); only ``abort`` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import (
    ChatServerError,
    Forbidden,
    InvalidInput,
    RateLimited,
    TurnInProgress,
    Unauthorized,
)
from ..frames import encode
from ..logs import add_context
from ..sessions.protocol import Event
from .ai_sdk_answers import Answer, ChatLink, follow, open_chat
from .ai_sdk_chunks import Sequencer
from .ai_sdk_frames import (
    AbortFrame,
    ResumeFrame,
    SendFrame,
    body_of,
    parse_client_frame,
    question,
)
from .client import ClientConnection, CloseReason, accept

if TYPE_CHECKING:
    from starlette.types import Message

    from ..auth import Principal
    from ..services import Services

__all__ = ["AI_SDK_WS_PATH", "ai_sdk_endpoint"]

log = logging.getLogger(__name__)
AI_SDK_WS_PATH = "/ws/ai-sdk"
#: Query parameters that would carry a token in the URL (refused: URLs get logged).
URL_TOKENS = frozenset({"token", "access_token", "authorization", "auth", "jwt"})
#: Chats one socket keeps attached (beyond: the oldest idle one is let go; with none
#: idle, a new chat is ``rate_limited``).
MAX_CHATS = 32
#: Requests open at once on one socket (sends and resumes): past it, ``rate_limited``.
MAX_REQUESTS = MAX_CHATS
#: A pump waits while the socket has this many frames unsent (deltas merge meanwhile).
BACKLOG = 64
SIGN_IN = "send 'Authorization: Bearer <token>' (handshake or headers)"


async def ai_sdk_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    if not await accept(websocket, services.settings):
        return
    if URL_TOKENS & {k.lower() for k in websocket.query_params}:
        await websocket.close(4401, "tokens in URLs are refused")
        return
    if not services.connections.open_socket():
        await websocket.close(1008, "this instance is at its connection limit")
        return
    socket = AiSdkSocket(websocket, services)
    try:
        add_context(connection_id=socket.id)
        try:
            await socket.run()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("ai-sdk connection failed")
            with contextlib.suppress(Exception):
                await websocket.close(1011)
    finally:
        services.connections.close_socket()


def _ours(exc: Exception, what: str, request_id: str) -> ChatServerError:
    """The error a request ends with: ours as it is; any other (a bug) logged once and
    answered as ``internal_error``, so the client never waits for an end that won't come."""
    if isinstance(exc, ChatServerError):
        return exc
    log.error("ai-sdk %s %s failed", what, request_id[:40], exc_info=exc)
    return ChatServerError()


def _first_then(
    first: Message, receive: Callable[[], Awaitable[Message]]
) -> Callable[[], Awaitable[Message]]:
    """``receive``, answering ``first`` (a frame already received) before reading on."""
    waiting = [first]

    async def next_message() -> Message:
        return waiting.pop() if waiting else await receive()

    return next_message


class _Request:
    __slots__ = ("answer", "link", "pending", "sequencer", "skip", "task")

    def __init__(self, request_id: str, skip: int | None = None) -> None:
        self.sequencer = Sequencer(request_id)
        #: a resume's ``lastSequence``: the client has the chunks up to it
        self.skip = -1 if skip is None else skip
        self.answer: Answer | None = None
        self.link: ChatLink | None = None
        #: the chat's events that came while the turn was being started
        self.pending: list[Event] = []
        self.task: asyncio.Task[None] | None = None


class AiSdkSocket(ClientConnection):
    """One ``WebSocketChatTransport`` connection."""

    __slots__ = ("_opening", "chats", "held", "requests", "ws")

    CODES: ClassVar[dict[CloseReason, int]] = {
        "abuse": 1008,
        "error": 1011,
        "forbidden": 4403,
        "killed": 4000,
        "restart": 1012,
        "unauthorized": 4401,
    }
    DISCONNECTED = (WebSocketDisconnect, RuntimeError, OSError)

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        super().__init__(services, websocket.send_text, self._frame_text)
        self.ws = websocket
        self.requests: dict[str, _Request] = {}
        self.chats: dict[str, tuple[ChatLink, _Request | None]] = {}
        self._opening: set[str] = set()  # chats whose link is being made
        #: chats whose events wait while this socket's client lags (see ``_drain``)
        self.held: set[str] = set()

    @property
    def session_id(self) -> str | None:
        """A chat whose answer streams here (the token expiry waits for its turn)."""
        for chat_id, (_, request) in self.chats.items():
            if request is not None:
                return chat_id
        return None

    def _frame_text(self, event: Event) -> str:
        """One frame of the socket's outbox (this dialect's frames; the core's own
        ``error`` events, rate limit and token expiry, belong to no request). The
        writer calls it per frame: a lagging client that caught up gets the held
        chats' events again."""
        if self.held and len(self.outbox) < BACKLOG // 2:
            for chat_id in list(self.held):
                self.held.discard(chat_id)
                self._drain(chat_id)
        if event.get("type") == "error" and "code" in event:
            event = Sequencer("").error(str(event["code"]), str(event.get("message", "")))
        return encode(event)

    # -- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        try:
            header = self.ws.headers.get("authorization")
            receive: Callable[[], Awaitable[Message]] = self.ws.receive
            if header:
                if not await self._sign_in(header, None):
                    return
            else:  # as on /ws/chat: the first frame, in time, signs the socket in or closes it
                first = await self.receive_first(receive)
                if first is None:
                    await self.ws.close(4408, "no signed-in frame within WS_AUTH_TIMEOUT")
                    return
                receive = _first_then(first, receive)
            await self.read(receive)
            await self.flush()
            if self.close_reason is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self.ws.close(self.CODES[self.close_reason])
        finally:
            await self._leave_all()
            await self.finish()

    async def _leave_all(self) -> None:
        """The socket is gone: every follower detaches (the turns run on for the grace)."""
        tasks = [r.task for r in self.requests.values() if r.task is not None]
        links = [link for link, _ in self.chats.values()]
        self.chats.clear()
        for link in links:
            link.leave()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- authentication ----------------------------------------------------------------
    async def _sign_in(self, header: str, request_id: str | None) -> bool:
        """Verify ``Bearer <token>``: the first signs the socket in (and takes the user's
        connection slot), later ones refresh it (another user: forbidden, close)."""
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("authorization must be 'Bearer <token>'")
            principal: Principal = await self.services.verifier.verify(token.strip())
        except ChatServerError as exc:
            if self.principal is None:
                await self._refuse(request_id, exc)
                return False
            raise
        if self.principal is not None:
            if principal.user_id != self.principal.user_id:
                self.close("forbidden")
                raise Forbidden("a token for another user")
            self.reauth(principal)
            return True
        refusal = await self.admit(principal)
        if refusal is not None:
            self.principal = None
            await self._refuse(
                request_id, refusal, code=1008 if isinstance(refusal, RateLimited) else 1011
            )
            return False
        self.arm_expiry()
        return True

    async def _refuse(self, request_id: str | None, exc: ChatServerError, code: int = 4401) -> None:
        with contextlib.suppress(Exception):
            if request_id is not None:
                await self.send_now(Sequencer(request_id).error(exc.code, exc.message))
            await self.ws.close(code, exc.message[:120])
        self.close(None)

    # -- frames in ---------------------------------------------------------------------
    async def on_frame(self, raw: str) -> None:
        request_id = ""
        try:
            frame = parse_client_frame(raw)
            request_id = frame.requestId
            if isinstance(frame, AbortFrame):
                if self.principal is None:  # it carries no headers: it cannot sign in
                    raise Unauthorized(SIGN_IN)
                await self._abort(frame.requestId)
                return
            if request_id in self.requests:
                request_id = ""  # the error must not end the request that has this id
                raise InvalidInput("requestId is already in use on this socket")
            header = next(
                (v for k, v in frame.headers.items() if k.lower() == "authorization"), None
            )
            if header is not None:
                if not await self._sign_in(header, request_id):
                    return
            elif self.principal is None:
                raise Unauthorized(SIGN_IN)
            if self.closing:
                return
            self.check_token()  # a fresh one in this frame's headers counts
            if len(self.requests) >= MAX_REQUESTS:
                raise RateLimited(f"at most {MAX_REQUESTS} requests open at once on a socket")
            self._start(frame)
        except ChatServerError as exc:
            self.frame_error(exc, request_id)

    def frame_error(self, exc: ChatServerError, request_id: str = "") -> None:
        """The request's ``error`` (no request: ``requestId`` ""); a socket not yet
        signed in closes after it."""
        self.put(Sequencer(request_id).error(exc.code, exc.message))
        if self.principal is None:
            self.close("unauthorized")

    def _start(self, frame: SendFrame | ResumeFrame) -> None:
        request = _Request(frame.requestId, getattr(frame, "lastSequence", None))
        self.requests[frame.requestId] = request
        serve = self._send_request if isinstance(frame, SendFrame) else self._resume_request
        task = asyncio.create_task(serve(frame, request), name=f"ai-sdk-{frame.requestId[:40]}")  # type: ignore[arg-type]
        request.task = task
        task.add_done_callback(lambda _t: self._done(request))

    def _done(self, request: _Request) -> None:
        """A request's task ended: the request too, unless its chat's follower still
        streams its answer (``_drain`` ends it)."""
        answer = request.answer
        if answer is None or answer.ended or request.link is None:
            self.requests.pop(request.sequencer.request_id, None)
            return
        known = self.chats.get(request.link.chat_id)
        if known is None or known[1] is not request:
            self.requests.pop(request.sequencer.request_id, None)

    async def _abort(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is None:
            return  # finished already, or never known: nothing to stop
        if request.answer is not None and request.link is not None:
            await request.link.stop(request.answer)
        elif request.task is not None:
            request.task.cancel()  # still being admitted: no turn yet to stop

    # -- requests ----------------------------------------------------------------------
    async def _send_request(self, frame: SendFrame, request: _Request) -> None:
        out = request.sequencer
        try:
            text = None if frame.trigger == "regenerate-message" else question(frame.messages)
            link = await self._link(frame, request)
            request.link = link
            answer = await link.ask(text)
        except Exception as exc:
            failed = _ours(exc, "send", frame.requestId)
            self.put(out.error(failed.code, failed.message))
            self._release(frame.id, request)
            return
        except BaseException:
            self._release(frame.id, request)
            raise
        request.answer = answer
        self.put(out.control("start"))
        pending, request.pending = request.pending, []
        for event in pending:  # in order, before what still waits (no await here)
            self._feed(request, event)
        self._drain(frame.id)

    async def _link(self, frame: SendFrame, request: _Request) -> ChatLink:
        """The chat's link (attached on its first request), now serving ``request``."""
        known = self.chats.get(frame.id)
        if known is not None:
            link, busy = known
            if busy is not None:
                raise TurnInProgress()
            self.chats[frame.id] = (link, request)
            return link
        if len(self.chats) + len(self._opening) >= MAX_CHATS:
            idle = next((cid for cid, (_, r) in self.chats.items() if r is None), None)
            if idle is None:  # every chat is answering: no room for one more
                raise RateLimited(f"at most {MAX_CHATS} chats at once on a socket")
            self._forget(idle)
        chat_id = frame.id
        self._opening.add(chat_id)  # counted from now: another send cannot pass the cap
        try:
            await self.refresh_role()  # a new chat is a new session (as /ws/chat's attach)
            link = await open_chat(
                self.services,
                self.who,
                chat_id,
                body_of(frame),
                on_end=self.end,
                wake=lambda: self._drain(chat_id),
            )
        finally:
            self._opening.discard(chat_id)
        if chat_id in self.chats:  # two first requests of one chat raced: keep one link
            link.leave()
            return await self._link(frame, request)
        self.chats[chat_id] = (link, request)
        self._drain(chat_id)
        return link

    def _forget(self, chat_id: str) -> None:
        link, _ = self.chats.pop(chat_id)
        self.held.discard(chat_id)
        link.leave()

    def _release(self, chat_id: str, request: _Request) -> None:
        known = self.chats.get(chat_id)
        if known is not None and known[1] is request:
            self.chats[chat_id] = (known[0], None)

    def _drain(self, chat_id: str) -> None:
        """The chat's follower has events (its outbox calls this): turn what waits into
        the current request's chunks, in this step (no task per chat). Events with no
        request waiting (another device's turn) are dropped. While the client lags,
        what waits stays in the follower's outbox, where the turn's text merges."""
        known = self.chats.get(chat_id)
        if known is None:
            return
        link, request = known
        outbox = link.follower.outbox
        while True:
            lagging = len(self.outbox) > BACKLOG and not self.closing
            if lagging and request is not None and request.answer is not None:
                self.held.add(chat_id)
                return
            event = outbox.pop()
            if event is None:
                return
            if request is None:
                continue
            if request.answer is None:
                request.pending.append(event)
                continue
            self._feed(request, event)
            if request.answer.ended:
                request = None

    def _feed(self, request: _Request, event: Event) -> None:
        """Queue the chunks of one event; the ``end`` once the answer is over."""
        answer = request.answer
        assert answer is not None
        self._put_chunks(request, answer.feed(event))
        if answer.ended:
            self.put(request.sequencer.control("end"))
            self.requests.pop(request.sequencer.request_id, None)
            if request.link is not None:
                self._release(request.link.chat_id, request)

    def _put_chunks(self, request: _Request, chunks: list[Any]) -> None:
        out = request.sequencer
        for chunk in chunks:
            if out.next > request.skip:
                self.put(out.frame(chunk))
            else:
                out.next += 1

    async def _backlog(self) -> None:
        """A slow reader: wait while its frames pile up (the turn's text merges
        meanwhile). The outbox has no "drained" signal; this only runs while it lags."""
        while len(self.outbox) > BACKLOG and not self.closing:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def _resume_request(self, frame: ResumeFrame, request: _Request) -> None:
        out = request.sequencer
        link: ChatLink | None = None
        try:
            await self.refresh_role()
            followed = await follow(self.services, self.who, frame.id)
            if followed is None:
                self.put(out.control("no-active"))
                return
            link, answer = followed
            request.link, request.answer = link, answer
            self.put(out.control("start"))
            self._put_chunks(request, answer.take_opening())
            async for event in link.events():
                self._put_chunks(request, answer.feed(event))
                await self._backlog()
                if answer.ended:
                    break
            self.put(out.control("end"))
        except Exception as exc:
            failed = _ours(exc, "resume", frame.requestId)
            self.put(out.error(failed.code, failed.message))
        finally:
            if link is not None:
                link.leave()
