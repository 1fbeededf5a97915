"""``GET /ws/ai-sdk``: the Vercel AI SDK's ``WebSocketChatTransport`` protocol (CONTRACT §8).

One socket multiplexes requests, each named by the client's ``requestId``: ``send``
(ask), ``resume`` (follow the chat's running turn from its beginning, or
``no-active``) and ``abort``. Every request answers ``start``, then its chunks as
``chunk {requestId, sequence, chunk}`` numbered from 0 (``Sequencer``), then ``end``;
a refusal is ``error {requestId, errorText}`` whose text starts with the contract's
code. Turns are the session core's (``ai_sdk_answers``); this module owns only the
wire: authentication (the handshake's ``Authorization`` or each frame's
``headers.authorization``, one ``sub`` per socket, never the URL), the frame rate
limit, the user's connection slots, and one writer.

A socket that drops detaches its requests' turns (they run on for the resume grace);
only ``abort`` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth import Principal
from ..errors import (
    ChatServerError,
    Forbidden,
    InvalidInput,
    RateLimited,
    TokenExpired,
    Unauthorized,
)
from ..frames import encode
from ..sessions.chat import Attached, Who
from ..sessions.limits import AbuseCounter, TokenBucket
from ..sessions.outbox import SlowClient
from ..storage.ids import new_id
from .ai_sdk_answers import Answer, ask, follow
from .ai_sdk_chunks import Sequencer
from .ai_sdk_frames import (
    AbortFrame,
    ResumeFrame,
    SendFrame,
    body_of,
    parse_client_frame,
    question,
)

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["AI_SDK_WS_PATH", "ai_sdk_endpoint"]

log = logging.getLogger(__name__)
AI_SDK_WS_PATH = "/ws/ai-sdk"
CLOSE_ABUSE = 1008
CLOSE_ERROR = 1011
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
#: Chats one socket keeps attached (beyond: each request attaches again).
MAX_CHATS = 64
#: Query parameters that would carry a token in the URL (refused: URLs get logged).
URL_TOKENS = frozenset({"token", "access_token", "authorization", "auth", "jwt"})


async def ai_sdk_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    if URL_TOKENS & {k.lower() for k in websocket.query_params}:
        await websocket.close(CLOSE_UNAUTHORIZED, "tokens in URLs are refused")
        return
    if not services.connections.open_socket():
        await websocket.close(CLOSE_ABUSE, "this instance is at its connection limit")
        return
    socket = AiSdkSocket(websocket, services)
    try:
        await socket.run()
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("ai-sdk connection failed")
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_ERROR)
    finally:
        await socket.cleanup()
        services.connections.close_socket()


class AiSdkSocket:
    """One ``WebSocketChatTransport`` connection."""

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.ws = websocket
        self.services = services
        self.id = new_id()
        self.principal: Principal | None = None
        self.slot = False
        self.requests: dict[str, tuple[asyncio.Task[None], list[Answer]]] = {}
        #: the chats this socket asked in, attached (their sessions are not read again)
        self.chats: dict[str, Attached] = {}
        self.send_lock = asyncio.Lock()
        self.close_code: int | None = None
        settings = services.settings
        self.bucket = TokenBucket(
            settings.ws_max_frames_per_second, settings.ws_frame_burst, time.monotonic()
        )
        self.abuse = AbuseCounter(limit=10, window=60.0)

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        header = self.ws.headers.get("authorization")
        if header:
            try:
                await self._sign_in(header)
            except ChatServerError as exc:
                await self.ws.close(CLOSE_UNAUTHORIZED, exc.message[:120])
                return
        while self.close_code is None:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self._on_text(message.get("text"))
        await self._send_all_then_close()

    async def _send_all_then_close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.ws.close(self.close_code or 1000)

    async def cleanup(self) -> None:
        """The socket is gone: every request's turn runs on for the grace; none waits."""
        for task, answers in list(self.requests.values()):
            for answer in answers:
                answer.detach()
            task.cancel()
        for task, _ in list(self.requests.values()):
            with contextlib.suppress(BaseException):
                await task
        self.requests.clear()
        if self.slot and self.principal is not None:
            await self.services.slots.release(self.principal.user_id, self.id)

    # -- authentication ----------------------------------------------------------
    async def _sign_in(self, header: str) -> Principal:
        """Verify a ``Bearer`` token; the socket's first ``sub`` is its only one."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("authorization must be 'Bearer <token>'")
        principal = await self.services.verifier.verify(token.strip())
        if self.principal is not None and principal.user_id != self.principal.user_id:
            self.close_code = CLOSE_FORBIDDEN
            raise Forbidden("a token for another user")
        if not self.slot:
            if not await self.services.slots.take(principal.user_id, self.id):
                self.close_code = CLOSE_ABUSE
                limit = self.services.settings.ws_max_connections_per_user
                raise RateLimited(f"at most {limit} connections per user")
            self.slot = True
        self.principal = principal
        return principal

    async def _who(self, headers: dict[str, str]) -> Who:
        header = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if header is not None:
            principal = await self._sign_in(header)
        elif self.principal is None:
            raise Unauthorized("send 'Authorization: Bearer <token>' (handshake or headers)")
        else:
            principal = self.principal
            leeway = self.services.settings.jwt_leeway
            if principal.expires_at + leeway < time.time():
                raise TokenExpired("the token expired; send a fresh one in headers.authorization")
        return Who(principal.user_id, principal.role)

    # -- frames in ---------------------------------------------------------------
    async def _on_text(self, raw: str | None) -> None:
        now = time.monotonic()
        allowed = self.bucket.allow(now)  # every frame counts, a malformed one too
        request_id = ""
        try:
            if raw is None:
                raise InvalidInput("binary frames are not accepted; send JSON text")
            frame = parse_client_frame(raw)
            request_id = frame.requestId
            if not allowed:
                if self.abuse.hit(now):
                    self.close_code = CLOSE_ABUSE
                raise RateLimited("too many frames; slow down")
            if isinstance(frame, AbortFrame):
                await self._abort(frame.requestId)
                return
            if request_id in self.requests:
                raise InvalidInput("requestId is already in use on this socket")
            who = await self._who(frame.headers)
            self._start(frame, who)
        except ChatServerError as exc:
            await self._send(Sequencer(request_id).error(exc.code, exc.message))
            if exc.code in ("unauthorized", "token_expired") and self.principal is None:
                self.close_code = CLOSE_UNAUTHORIZED

    def _start(self, frame: SendFrame | ResumeFrame, who: Who) -> None:
        answers: list[Answer] = []
        task = asyncio.create_task(self._serve(frame, who, answers), name=f"ai-sdk-{self.id}")
        self.requests[frame.requestId] = (task, answers)
        task.add_done_callback(lambda _t: self.requests.pop(frame.requestId, None))

    async def _abort(self, request_id: str) -> None:
        entry = self.requests.get(request_id)
        if entry is None:
            return  # finished already, or never known: nothing to stop
        task, answers = entry
        if answers:
            await answers[0].stop()
        else:
            task.cancel()  # still being admitted: no turn yet to cancel

    # -- one request ---------------------------------------------------------------
    async def _serve(self, frame: SendFrame | ResumeFrame, who: Who, answers: list[Answer]) -> None:
        out = Sequencer(frame.requestId)
        answer: Answer | None = None
        try:
            if isinstance(frame, SendFrame):
                body = body_of(frame)
                text = None if frame.trigger == "regenerate-message" else question(frame.messages)
                known = self.chats.get(frame.id)
                answer = await ask(self.services, who, frame.id, body, text, known)
                if answer.attached is not None and len(self.chats) < MAX_CHATS:
                    self.chats[frame.id] = answer.attached
            else:
                answer = await follow(self.services, who, frame.id)
                if answer is None:
                    await self._send(out.control("no-active"))
                    return
            answers.append(answer)
            await self._send(out.control("start"))
            skip = frame.lastSequence if isinstance(frame, ResumeFrame) else None
            async for batch in answer.chunks():
                for chunk in batch:
                    sent = out.frame(chunk)
                    if skip is None or sent["sequence"] > skip:
                        await self._send(sent)
            await self._send(out.control("end"))
        except ChatServerError as exc:
            await self._send(out.error(exc.code, exc.message))
        except SlowClient:
            self.close_code = CLOSE_ABUSE
        finally:
            if answer is not None and not answer.ended:
                answer.detach()

    # -- frames out ----------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        """Send one frame; a client that stopped reading is closed (1008)."""
        async with self.send_lock:
            try:
                async with asyncio.timeout(self.services.settings.ws_send_timeout):
                    await self.ws.send_text(encode(frame))
            except TimeoutError:
                self.close_code = CLOSE_ABUSE
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_ABUSE)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
