"""``GET /ws/chat``: the thin adapter between a WebSocket and the chat service.

An idle connection costs one task: the endpoint's own, which authenticates and then
reads frames (exactly one reader). The rest exists only while needed:

- the writer, a task started when a frame is queued in the connection's ``Outbox``
  (the outbox calls back), which sends until the outbox is empty and ends; there is
  never more than one, so frames go out in the order they were queued;
- the send watchdog, one timer armed while frames are being sent, which closes the
  connection (1008) when one send stays blocked for ``WS_SEND_TIMEOUT`` (a client
  that stopped reading), instead of a timeout around every send;
- the token expiry, one ``loop.call_at`` handle, moved when a fresh token comes.

``close()`` (from the writer, the watchdog, the expiry, an admin kill, a shutdown)
interrupts the reader; the endpoint then sends what is queued and closes. Turns are
owned by the ``TurnManager`` (they may outlive the connection for the resume grace
period); a disconnect detaches them. Domain errors become ``error`` frames here, in
one place (``frames.error_from``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import metrics
from .auth import Principal
from .errors import (
    ChatServerError,
    Forbidden,
    InvalidInput,
    NotFound,
    SessionRequired,
    TurnInProgress,
)
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
from .sessions.chat import Attached, Who
from .sessions.limits import AbuseCounter, TokenBucket
from .sessions.outbox import Outbox, SlowClient
from .storage.ids import new_id

if TYPE_CHECKING:
    from .config import Settings
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

# The connection's timers run in this empty context: a copy of the connection's own
# would keep its logging fields alive for as long as the timer waits.
_TIMERS = contextvars.Context()


async def chat_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    allowed = services.settings.allowed_origins
    origin = websocket.headers.get("origin")
    # A browser always names its page's origin; a client that names none is no browser
    # (cross-site hijacking needs one), and is let through.
    if allowed is not None and origin is not None and origin.rstrip("/").lower() not in allowed:
        await websocket.close()  # before accept: HTTP 403 at the handshake
        return
    await websocket.accept()
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


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class Connection:
    """One client's WebSocket, from authentication to close."""

    __slots__ = (
        "_expiry",
        "_interrupted",
        "_reader",
        "_relay",
        "_relay_turn",
        "_send_started",
        "_stuck",
        "_watchdog",
        "_writer",
        "abuse",
        "attached",
        "bucket",
        "close_code",
        "closing",
        "connected_at",
        "id",
        "last_activity",
        "outbox",
        "principal",
        "services",
        "turn_id",
        "turns",
        "ws",
    )

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.ws = websocket
        self.services = services
        self.id = new_id()
        self.outbox = Outbox(wake=self._wake)
        self.principal: Principal | None = None
        self.attached: Attached | None = None
        self.turn_id: str | None = None
        self.close_code: int | None = None
        self.closing = False
        self.connected_at = self.last_activity = time.time()
        self.turns = 0
        settings = services.settings
        self.bucket = TokenBucket(
            settings.ws_max_frames_per_second, settings.ws_frame_burst, time.monotonic()
        )
        self.abuse = AbuseCounter(limit=10, window=60.0)
        self._relay: asyncio.Task[None] | None = None
        self._relay_turn: str | None = None
        self._reader: asyncio.Task[Any] | None = None  # the endpoint's task, while reading
        self._interrupted = False  # close() cancelled the reader
        self._writer: asyncio.Task[None] | None = None
        self._send_started: float | None = None  # loop time the current send began
        self._stuck = False  # a send stayed blocked: nothing more is written
        self._watchdog: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def session_id(self) -> str | None:
        return self.attached.session_id if self.attached else None

    def snapshot(self) -> dict[str, Any]:
        """This connection's live session, as ``GET /admin/sessions`` lists it."""
        assert self.attached is not None and self.principal is not None
        live = self.services.manager.get(self.turn_id) if self.turn_id else None
        turn = live.turn if live is not None and not live.turn.done else None
        first = turn.completed_frame()["timing"]["first_token_ms"] if turn else None
        return {
            "id": self.attached.session_id,
            "user_id": self.principal.user_id,
            "game_id": self.attached.game.id,
            "instance": self.services.instance_id,
            "connection_id": self.id,
            "connected_at": _utc(self.connected_at),
            "last_activity_at": _utc(self.last_activity),
            "turns": self.turns,
            "streaming": turn is not None,
            "provider": self.attached.provider,
            "turn_id": turn.id if turn else None,
            "tokens": turn.tokens if turn else 0,
            "first_token_ms": first,
        }

    def _attach(self, attached: Attached) -> None:
        self._detach_session()
        self.attached = attached
        add_context(session_id=attached.session_id, game_id=attached.game.id)
        metrics.SESSIONS.inc()
        self.services.registry.put(attached.session_id, self.snapshot)
        self.services.monitor.session_event("session.started", self.snapshot())

    def _detach_session(self) -> None:
        self._detach_turn()
        if self.attached is not None:
            snapshot = self.snapshot()
            self.services.registry.remove(snapshot["id"], self.snapshot)
            self.services.monitor.session_event("session.ended", snapshot)
            self.attached = None
            metrics.SESSIONS.dec()

    async def kill(self) -> None:
        """An admin ended this session: cancel the turn now (no grace), close 4000."""
        live = self.services.manager.get(self.turn_id) if self.turn_id else None
        if live is not None:
            self.services.manager.cancel(live.turn.id, "admin")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await live.done.wait()
        self.close(CLOSE_KILLED)

    def shutdown(self) -> None:
        """The server is restarting: close 1012 once the running turn has ended."""
        self.close(CLOSE_RESTART)

    @property
    def who(self) -> Who:
        assert self.principal is not None
        return Who(self.principal.user_id, self.principal.role)

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        if not await self._authenticate():
            return
        assert self.principal is not None
        user_id = self.principal.user_id
        add_context(user_id=user_id)
        refusal = await self._take_slots(user_id)
        if refusal:
            await self._send_now(refusal)
            await self.ws.close(CLOSE_ABUSE if refusal["code"] == "rate_limited" else CLOSE_ERROR)
            return
        try:
            await self._send_now(
                {
                    "type": "ready",
                    "user_id": user_id,
                    "role": self.principal.role,
                    "connection_id": self.id,
                }
            )
            self._arm_expiry()
            await self._read()
            # Closing: what is queued goes out first (the send watchdog bounds it).
            self.outbox.close()
            if self._writer is not None:
                await asyncio.wait((self._writer,))
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self.ws.close(self.close_code)
        finally:
            self.closing = True
            for handle in (self._expiry, self._watchdog):
                if handle is not None:
                    handle.cancel()
            self._expiry = self._watchdog = None
            if self._writer is not None:
                self._writer.cancel()
            self.services.connections.remove(self)
            await self.services.slots.release(user_id, self.id)
            if self._relay is not None:
                self._relay.cancel()
            self._detach_session()
            self.outbox.close()

    async def _take_slots(self, user_id: str) -> dict[str, Any] | None:
        """Claim this instance's and this user's connection slots; the refusal if any."""
        self.services.connections.add(self)
        try:
            granted = await self.services.slots.take(user_id, self.id)
        except ChatServerError as exc:
            self.services.connections.remove(self)
            return error_from(exc)
        if not granted:
            self.services.connections.remove(self)
            limit = self.settings.ws_max_connections_per_user
            return error_frame("rate_limited", f"at most {limit} connections per user")
        return None

    def close(self, code: int | None) -> None:
        """Send what is queued, then close with ``code`` (None: the peer is gone).

        Safe from any task or callback; the first call wins. Interrupts the reader
        (cancelling whatever frame it was handling, as a disconnect would).
        """
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            self._interrupted = True
            reader.cancel()

    async def _send_now(self, frame: dict[str, Any]) -> None:
        await self.ws.send_text(encode(frame))

    # -- authentication --------------------------------------------------------------
    async def _authenticate(self) -> bool:
        header = self.ws.headers.get("authorization", "")
        token: str | None = None
        if header:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        else:
            try:
                async with asyncio.timeout(self.settings.ws_auth_timeout):
                    message = await self.ws.receive()
            except TimeoutError:
                await self.ws.close(CLOSE_AUTH_TIMEOUT)
                return False
            if message["type"] == "websocket.disconnect":
                return False
            raw = message.get("text")
            try:
                if raw is None:
                    raise InvalidInput("binary frames are not accepted")
                frame = parse_frame(raw)
            except InvalidInput:
                frame = None
            if not isinstance(frame, AuthFrame):
                await self._refuse(UnauthorizedError("authenticate first: send an auth frame"))
                return False
            token = frame.token
        try:
            if not token:
                raise UnauthorizedError("missing bearer token")
            self.principal = await self.services.verifier.verify(token)
        except ChatServerError as exc:
            await self._refuse(exc)
            return False
        return True

    async def _refuse(self, exc: ChatServerError) -> None:
        await self._send_now(error_frame(exc.code, exc.message))
        await self.ws.close(
            CLOSE_UNAUTHORIZED if isinstance(exc, UnauthorizedError) else CLOSE_ERROR
        )

    async def _reauth(self, frame: AuthFrame) -> None:
        assert self.principal is not None
        principal = await self.services.verifier.verify(frame.token)
        if principal.user_id != self.principal.user_id:
            self.put(error_frame("forbidden", "a token for another user"))
            self.close(CLOSE_FORBIDDEN)
            return
        self.principal = principal
        self._arm_expiry()

    async def _refresh_role(self) -> None:
        """A changed ``profiles`` role applies from the next session on an open socket."""
        assert self.principal is not None
        self.principal = await self.services.verifier.refresh_role(self.principal)

    def _arm_expiry(self) -> None:
        """(Re)schedule the expiry check for when the token, plus leeway, runs out."""
        assert self.principal is not None
        if self._expiry is not None:
            self._expiry.cancel()
        delay = self.principal.expires_at + self.settings.jwt_leeway - time.time()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + max(0.0, delay), self._on_expiry, context=_TIMERS)

    def _on_expiry(self) -> None:
        """The token ran out: once the running turn (if any) has ended, close 4401."""
        self._expiry = None
        if self.closing:
            return
        assert self.principal is not None
        if self.principal.expires_at + self.settings.jwt_leeway > time.time():
            self._arm_expiry()  # the wall clock and the loop's clock drifted apart
            return
        live = self.services.manager.get(self.turn_id) if self.turn_id else None
        if live is not None and live.task is not None and not live.task.done():
            live.task.add_done_callback(self._after_turn)
            return
        self.put(error_frame("token_expired", "the token expired; connect again"))
        self.close(CLOSE_UNAUTHORIZED)

    def _after_turn(self, _task: asyncio.Task[None]) -> None:
        if self._expiry is None:  # still expired: no fresh token came meanwhile
            self._on_expiry()

    # -- frames in -------------------------------------------------------------------
    async def _read(self) -> None:
        """Handle frames until the connection closes; ``close()`` interrupts it."""
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        receive = self.ws.receive
        try:
            while not self.closing:
                await self._on_message(await receive())
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
        finally:
            self._reader = None
        if self._interrupted and task.uncancel() > 0:
            raise asyncio.CancelledError  # cancelled by someone else as well

    async def _on_message(self, message: Message) -> None:
        if message["type"] == "websocket.disconnect":
            self.close(None)
            return
        now = time.monotonic()
        self.last_activity = time.time()
        if not self.bucket.allow(now):
            self.put(error_frame("rate_limited", "too many frames; slow down"))
            if self.abuse.hit(now):
                self.close(CLOSE_ABUSE)
            return
        raw = message.get("text")
        try:
            if raw is None:
                raise InvalidInput("binary frames are not accepted; send JSON text")
            await self._dispatch(parse_frame(raw))
        except ChatServerError as exc:
            turn_id = self.turn_id if exc.code.startswith("provider") else None
            self.put(error_from(exc, turn_id=turn_id))
        except SlowClient:
            self.close(None)

    def put(self, frame: dict[str, Any]) -> None:
        try:
            self.outbox.put(frame)
        except SlowClient:
            log.info("connection %s: client stopped reading; closing", self.id)
            self.close(CLOSE_ABUSE)

    async def _dispatch(self, frame: object) -> None:
        if isinstance(frame, PingFrame):
            self.put({"type": "pong", "id": frame.id})
        elif isinstance(frame, MessageFrame):
            if self.attached is None:
                raise SessionRequired()
            if self._relay is not None and not self._relay.done():
                raise TurnInProgress()
            turn = await self.services.chat.start_turn(self.who, self.attached, frame, self.outbox)
            self.turn_id = turn.id
            self.turns += 1
        elif isinstance(frame, CancelFrame):
            live = self.services.manager.get(self.turn_id) if self.turn_id else None
            if live is None and self._relay is not None and not self._relay.done():
                assert self._relay_turn is not None
                await self.services.relay.cancel(self._relay_turn)
                return
            if live is None or (frame.turn_id and frame.turn_id != live.turn.id):
                raise NotFound("no running turn to cancel", error_code="TURN_NOT_FOUND")
            self.services.manager.cancel(live.turn.id)
        elif isinstance(frame, SessionStartFrame):
            await self._refresh_role()
            attached, ready = await self.services.chat.start_session(self.who, frame)
            self._attach(attached)
            self.put(ready)
        elif isinstance(frame, SessionResumeFrame):
            await self._refresh_role()
            self._detach_session()
            attached, ready, resumed = await self.services.chat.resume_session(
                self.who, frame, self.outbox
            )
            self._attach(attached)
            self.turn_id = resumed
            following = resumed is None and self._follow_remote(frame, ready)
            if frame.turn_id:
                outcome = "local" if resumed else "remote" if following else "not_running"
                metrics.RESUMES.labels(outcome).inc()
            if resumed is None and not following:
                self.put(ready)
        elif isinstance(frame, AuthFrame):
            await self._reauth(frame)
        else:  # pragma: no cover - parse_frame returns only the types above
            raise Forbidden("unexpected frame")

    def _detach_turn(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None
        if self.turn_id is not None:
            self.services.manager.detach(self.turn_id, self.outbox)
            self.turn_id = None

    def _follow_remote(self, frame: SessionResumeFrame, ready: dict[str, Any]) -> bool:
        """The resumed turn may run on another instance: relay it from there.

        Sends ``session.ready`` once the owner answered, or alone if nobody did.
        Returns False when there is nothing to follow (``ready`` is still to be sent).
        """
        relay = self.services.relay
        turn_id = frame.turn_id
        streaming = any(
            m.get("turn_id") == turn_id and m["status"] == "streaming" for m in ready["history"]
        )
        if not (relay.enabled and turn_id and streaming):
            return False

        sent = False

        async def on_attached() -> None:
            nonlocal sent
            sent = True
            self.put(ready)

        async def follow() -> None:
            try:
                await relay.follow(turn_id, frame.after_seq or 0, self.put, on_attached)
            except ChatServerError as exc:
                if not sent:
                    self.put(ready)
                self.put(error_from(exc))
                return
            if not sent:
                self.put(ready)

        self._relay = asyncio.create_task(follow(), name=f"follow-{turn_id}")
        self._relay_turn = turn_id
        return True

    # -- frames out ------------------------------------------------------------------
    def _wake(self) -> None:
        """The outbox changed (``Outbox`` calls this): have one writer send what waits."""
        if self._writer is None and len(self.outbox) and not self._stuck:
            self._writer = asyncio.create_task(self._write())
        if self.outbox.closed and not self.closing:
            # A turn found the outbox full (SlowClient) and closed it.
            log.info("connection %s: client stopped reading; closing", self.id)
            self.close(CLOSE_ABUSE)

    async def _write(self) -> None:
        """Send queued frames in order until none is left, then end."""
        loop = asyncio.get_running_loop()
        send = self.ws.send_text
        try:
            while (frame := self.outbox.pop()) is not None:
                self._send_started = started = loop.time()
                if self._watchdog is None:
                    self._watchdog = loop.call_at(
                        started + self.settings.ws_send_timeout, self._check_send, context=_TIMERS
                    )
                try:
                    data = encode(frame)
                except (ValueError, TypeError):  # a bug: that frame is lost, not the socket
                    log.exception(
                        "connection %s: a %s frame could not be encoded", self.id, frame.get("type")
                    )
                    continue
                await send(data)
                self._send_started = None
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close(None)
        finally:
            # In the step that found the outbox empty: a frame queued from now on
            # starts a new writer.
            self._send_started = None
            self._writer = None
        if self._watchdog is not None and not self._streaming():
            # Idle: no timer. While a turn streams the watchdog stays armed, so a
            # delta costs no timer handle.
            self._watchdog.cancel()
            self._watchdog = None

    def _streaming(self) -> bool:
        """A turn is streaming to this connection (from this instance or relayed)."""
        if self._relay is not None and not self._relay.done():
            return True
        return self.turn_id is not None and self.services.manager.get(self.turn_id) is not None

    def _check_send(self) -> None:
        """The send watchdog: close (1008) once a send has been blocked too long.

        Fires at most once per ``WS_SEND_TIMEOUT`` while frames are sent; a send only
        moves ``_send_started``. With nothing being sent it disarms until the next send.
        """
        self._watchdog = None
        started = self._send_started
        if started is None:
            return
        loop = asyncio.get_running_loop()
        deadline = started + self.settings.ws_send_timeout
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check_send, context=_TIMERS)
            return
        log.info("connection %s: client stopped reading; closing", self.id)
        self._stuck = True
        if self._writer is not None:
            self._writer.cancel()
        self.close(CLOSE_ABUSE)
