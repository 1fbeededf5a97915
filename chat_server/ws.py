"""``GET /ws/chat``: the adapter between this dialect's WebSocket and the session core.

What is about this wire only lives here: authentication from the handshake header or
an ``auth`` frame, parsing frames into the core's commands (``sessions/protocol.py``),
this dialect's close codes, and its encoding (the core's events are this dialect's
frames: ``frames.encode``). Everything else a client connection needs (admission and
slots, rate limits, token expiry, the writer and its send watchdog, the session) is
the shared ``transports.client.ClientConnection``.

An idle connection costs one task: the endpoint's own, which authenticates and then
reads frames (exactly one reader); the writer exists only while frames are queued.
``close()`` (from the writer, the watchdog, the expiry, an admin kill, a shutdown)
interrupts the reader; the endpoint then sends what is queued and closes. Turns are
owned by the ``TurnManager`` (they may outlive the connection for the resume grace
period); a disconnect detaches the connection. Domain errors become ``error`` frames
here, in one place (``frames.error_from``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, ClassVar

from starlette.websockets import WebSocket, WebSocketDisconnect

from .errors import ChatServerError, Forbidden, InvalidInput, RateLimited
from .errors import Unauthorized as UnauthorizedError
from .frames import (
    AuthFrame,
    CancelFrame,
    MessageFrame,
    PingFrame,
    SessionResumeFrame,
    SessionStartFrame,
    encode,
    error_frame,
    error_from,
    parse_frame,
)
from .logs import add_context
from .sessions.outbox import SlowClient
from .sessions.protocol import Ask, Resume, Start
from .transports.client import ClientConnection, CloseReason, accept

if TYPE_CHECKING:
    from .auth import Principal
    from .services import Services

__all__ = ["chat_endpoint"]

log = logging.getLogger(__name__)

CLOSE_ABUSE = 1008
CLOSE_RESTART = 1012
CLOSE_ERROR = 1011
CLOSE_KILLED = 4000
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408


async def chat_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    if not await accept(websocket, services.settings):
        return
    if not services.connections.open_socket():
        with contextlib.suppress(Exception):
            message = "this instance is at its connection limit; try another or retry"
            await websocket.send_text(encode(error_frame("rate_limited", message)))
            await websocket.close(CLOSE_ABUSE)
        return
    connection = Connection(websocket, services)
    try:
        add_context(connection_id=connection.id)  # the rest of this task is the connection
        try:
            await connection.run()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("connection failed")
            with contextlib.suppress(Exception):
                await websocket.close(CLOSE_ERROR)
    finally:
        services.connections.close_socket()


class Connection(ClientConnection):
    """One client's ``/ws/chat`` WebSocket, from authentication to close."""

    __slots__ = ("ws",)

    CODES: ClassVar[dict[CloseReason, int]] = {
        "abuse": CLOSE_ABUSE,
        "error": CLOSE_ERROR,
        "forbidden": CLOSE_FORBIDDEN,
        "killed": CLOSE_KILLED,
        "restart": CLOSE_RESTART,
        "unauthorized": CLOSE_UNAUTHORIZED,
    }
    DISCONNECTED = (WebSocketDisconnect, RuntimeError, OSError)

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        super().__init__(services, websocket.send_text, encode)
        self.ws = websocket

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        principal = await self._authenticate()
        if principal is None:
            return
        refusal = await self.admit(principal)
        if refusal:
            await self.send_now(error_from(refusal))
            await self.ws.close(CLOSE_ABUSE if isinstance(refusal, RateLimited) else CLOSE_ERROR)
            return
        try:
            await self.send_now(
                {
                    "type": "ready",
                    "user_id": principal.user_id,
                    "role": principal.role,
                    "connection_id": self.id,
                }
            )
            self.arm_expiry()
            await self.read(self.ws.receive)
            await self.flush()  # closing: what is queued goes out first
            if self.close_reason is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self.ws.close(self.CODES[self.close_reason])
        finally:
            await self.finish()

    # -- authentication --------------------------------------------------------------
    async def _authenticate(self) -> Principal | None:
        header = self.ws.headers.get("authorization", "")
        token: str | None = None
        if header:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        else:
            message = await self.receive_first(self.ws.receive)
            if message is None:
                await self.ws.close(CLOSE_AUTH_TIMEOUT)
                return None
            if message["type"] == "websocket.disconnect":
                return None
            raw = message.get("text")
            try:
                if raw is None:
                    raise InvalidInput("binary frames are not accepted")
                frame = parse_frame(raw)
            except InvalidInput:
                frame = None
            if not isinstance(frame, AuthFrame):
                await self._refuse(UnauthorizedError("authenticate first: send an auth frame"))
                return None
            token = frame.token
        try:
            if not token:
                raise UnauthorizedError("missing bearer token")
            return await self.services.verifier.verify(token)
        except ChatServerError as exc:
            await self._refuse(exc)
            return None

    async def _refuse(self, exc: ChatServerError) -> None:
        await self.send_now(error_frame(exc.code, exc.message))
        await self.ws.close(
            CLOSE_UNAUTHORIZED if isinstance(exc, UnauthorizedError) else CLOSE_ERROR
        )

    # -- frames in -------------------------------------------------------------------
    async def on_frame(self, raw: str) -> None:
        try:
            await self._dispatch(parse_frame(raw))
        except ChatServerError as exc:
            self.frame_error(exc)
        except SlowClient:
            self.close(None)

    def frame_error(self, exc: ChatServerError) -> None:
        """An ``error`` frame; a provider's error names the running turn."""
        live = self.services.hub.local_turn(self.session_id) if self.session_id else None
        turn_id = live.turn.id if live is not None and exc.code.startswith("provider") else None
        self.put(error_from(exc, turn_id=turn_id))

    async def _dispatch(self, frame: object) -> None:
        if isinstance(frame, PingFrame):
            self.put({"type": "pong", "id": frame.id})
        elif isinstance(frame, MessageFrame):
            await self.ask(Ask(frame.text, frame.client_id))
        elif isinstance(frame, CancelFrame):
            await self.cancel(frame.turn_id)
        elif isinstance(frame, SessionStartFrame):
            await self.attach(Start(frame.game_id, frame.language, frame.provider))
        elif isinstance(frame, SessionResumeFrame):
            await self.attach(Resume(frame.session_id, frame.turn_id, frame.after_seq))
        elif isinstance(frame, AuthFrame):
            self.reauth(await self.services.verifier.verify(frame.token))
        else:  # pragma: no cover - parse_frame returns only the types above
            raise Forbidden("unexpected frame")
