"""A client's connection, whatever its dialect: what is not about the wire.

``ClientConnection`` is the follower (``sessions/follower.py``) that every adapter of a
long-lived client connection subclasses (``/ws/chat``'s ``ws.Connection``, the AI
SDK's WebSocket). It holds what they all need and none of their frames:

- admission: this instance's connection count and the user's connection slots on
  every instance (``admit``; released by ``finish``);
- the per-connection limits: the frame token bucket and the abuse counter
  (``allow_frame``);
- token expiry: one loop timer, moved by a fresh token (``arm_expiry``/``reauth``),
  that ends the connection once the running turn (if any) has ended;
- the writer: a task started when an event is queued in the outbox, which sends until
  the outbox is empty and ends (never more than one, so events go out in order), and
  the send watchdog, one timer armed while sending, which closes the connection when a
  send stays blocked for ``WS_SEND_TIMEOUT`` (a client that stopped reading);
- the reader (``read``): what every wire does with an inbound frame (a disconnect, the
  frame rate limit, the refusal of binary frames) before the adapter's ``on_frame``;
  ``close()`` from any task interrupts it, cancelling the frame being handled; before
  it, the sign-in deadline (``receive_first``): a socket its handshake did not sign in
  must sign in with its first frame, sent within ``WS_AUTH_TIMEOUT``;
- the session: ``attach``/``ask``/``cancel``/``detach`` through the ``SessionHub``.

Before any of that, ``accept`` takes the WebSocket handshake for every adapter (the
``WS_ALLOWED_ORIGINS`` check).

A subclass implements ``on_frame`` (one text frame) and ``frame_error`` (the error
frame for a frame it never parsed), passes ``send`` (one encoded frame on its wire:
its socket's own method, so a delta costs no extra call) and ``encode`` (an event in
its dialect, None to skip it), sets ``DISCONNECTED`` (what ``send`` raises once the
peer is gone), and maps close reasons (``CloseReason``) to its codes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ChatServerError, InvalidInput, RateLimited, SessionRequired, TokenExpired
from ..logs import add_context
from ..sessions.chat import Attached, Who
from ..sessions.follower import Follower
from ..sessions.limits import AbuseCounter, TokenBucket
from ..sessions.outbox import Outbox, SlowClient
from ..sessions.protocol import Ask, Event, Resume, Start, error_event
from ..sessions.turn import Turn
from ..storage.ids import new_id

if TYPE_CHECKING:
    from starlette.types import Message
    from starlette.websockets import WebSocket

    from ..auth import Principal
    from ..config import Settings
    from ..services import Services

__all__ = ["ClientConnection", "CloseReason", "accept"]

log = logging.getLogger(__name__)

#: Why a connection closes; each adapter maps these to its wire's close codes.
CloseReason = Literal["abuse", "error", "forbidden", "killed", "restart", "unauthorized"]

# The connection's timers run in this empty context: a copy of the connection's own
# would keep its logging fields alive for as long as the timer waits.
_TIMERS = contextvars.Context()


async def accept(websocket: WebSocket, settings: Settings) -> bool:
    """Accept a client's WebSocket handshake; False (refused with HTTP 403, not accepted)
    when it names an ``Origin`` outside ``WS_ALLOWED_ORIGINS``."""
    allowed = settings.allowed_origins
    origin = websocket.headers.get("origin")
    # A browser always names its page's origin; a client that names none is no browser
    # (cross-site hijacking needs one), and is let through.
    if allowed is not None and origin is not None and origin.rstrip("/").lower() not in allowed:
        await websocket.close()  # before accept: HTTP 403 at the handshake
        return False
    await websocket.accept()
    return True


class ClientConnection(Follower):
    """One client's connection, from admission to close (see the module docstring)."""

    __slots__ = (
        "_encode",
        "_expiry",
        "_interrupted",
        "_reader",
        "_send",
        "_send_started",
        "_stuck",
        "_watchdog",
        "_writer",
        "abuse",
        "attached",
        "bucket",
        "close_reason",
        "closing",
        "principal",
        "services",
    )

    #: what ``send`` raises when the peer is gone (the connection then closes quietly)
    DISCONNECTED: ClassVar[tuple[type[BaseException], ...]] = (RuntimeError, OSError)

    def __init__(
        self,
        services: Services,
        send: Callable[[str], Awaitable[None]],
        encode: Callable[[Event], str | None],
    ) -> None:
        super().__init__(new_id(), "client", Outbox(wake=self._wake))
        self.services = services
        self._send = send
        self._encode = encode
        self.principal: Principal | None = None
        self.attached: Attached | None = None
        self.close_reason: CloseReason | None = None
        self.closing = False
        settings = services.settings
        self.bucket = TokenBucket(
            settings.ws_max_frames_per_second, settings.ws_frame_burst, time.monotonic()
        )
        self.abuse = AbuseCounter(limit=10, window=60.0)
        self._reader: asyncio.Task[Any] | None = None  # the task reading frames, while it does
        self._interrupted = False  # close() cancelled the reader
        self._writer: asyncio.Task[None] | None = None
        self._send_started: float | None = None  # loop time the current send began
        self._stuck = False  # a send stayed blocked: nothing more is written
        self._watchdog: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- properties ----------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def session_id(self) -> str | None:
        return self.attached.session_id if self.attached else None

    @property
    def who(self) -> Who:
        assert self.principal is not None
        return Who(self.principal.user_id, self.principal.role)

    # -- admission -----------------------------------------------------------------------
    async def admit(self, principal: Principal) -> ChatServerError | None:
        """Claim this instance's and this user's connection slots; the refusal if any
        (``rate_limited`` at the per-user limit, ``unavailable`` if Redis is down)."""
        self.principal = principal
        add_context(user_id=principal.user_id)
        self.services.connections.add(self)
        try:
            granted = await self.services.slots.take(principal.user_id, self.id)
        except ChatServerError as exc:
            self.services.connections.remove(self)
            return exc
        if not granted:
            self.services.connections.remove(self)
            limit = self.settings.ws_max_connections_per_user
            return RateLimited(f"at most {limit} connections per user")
        return None

    async def finish(self) -> None:
        """The connection is over: timers, writer, slots and the session let go."""
        self.closing = True
        for handle in (self._expiry, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._expiry = self._watchdog = None
        if self._writer is not None:
            self._writer.cancel()
        self.services.connections.remove(self)
        if self.principal is not None:
            await self.services.slots.release(self.principal.user_id, self.id)
        self.detach()
        self.outbox.close()

    # -- limits --------------------------------------------------------------------------
    def allow_frame(self) -> bool:
        """Count one inbound frame against the rate limit. False when refused (a
        ``rate_limited`` error is queued; sustained abuse closes the connection)."""
        now = time.monotonic()
        self.last_activity = time.time()
        if self.bucket.allow(now):
            return True
        self.put(error_event("rate_limited", "too many frames; slow down"))
        if self.abuse.hit(now):
            self.close("abuse")
        return False

    # -- token expiry --------------------------------------------------------------------
    def reauth(self, principal: Principal) -> None:
        """A fresh token came: the same user moves the expiry; another closes (forbidden)."""
        assert self.principal is not None
        if principal.user_id != self.principal.user_id:
            self.put(error_event("forbidden", "a token for another user"))
            self.close("forbidden")
            return
        self.principal = principal
        self.arm_expiry()

    def arm_expiry(self) -> None:
        """(Re)schedule the expiry check for when the token, plus leeway, runs out."""
        assert self.principal is not None
        if self._expiry is not None:
            self._expiry.cancel()
        delay = self._valid_for()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + max(0.0, delay), self._on_expiry, context=_TIMERS)

    def _on_expiry(self) -> None:
        """The token ran out: once the running turn (if any) has ended, close."""
        self._expiry = None
        if self.closing:
            return
        if self._valid_for() > 0:
            self.arm_expiry()  # the wall clock and the loop's clock drifted apart
            return
        live = self.services.hub.local_turn(self.session_id) if self.session_id else None
        if live is not None and live.task is not None and not live.task.done():
            live.task.add_done_callback(self._after_turn)
            return
        self.put(error_event("token_expired", "the token expired; connect again"))
        self.close("unauthorized")

    def _valid_for(self) -> float:
        """Seconds until the token, plus leeway, runs out (0 or less: it has)."""
        assert self.principal is not None
        return self.principal.expires_at + self.settings.jwt_leeway - time.time()

    def check_token(self) -> None:
        """Refuse a new session or turn once the token ran out (``token_expired``): the
        turn running then may finish (``_on_expiry`` closes after it), nothing more."""
        if self._valid_for() <= 0:
            raise TokenExpired("the token expired; connect again (or send a fresh one)")

    async def refresh_role(self) -> None:
        """Resolve the role again (a changed ``profiles`` row, within ``ROLE_CACHE_TTL``),
        before a new session: it applies to an open connection from then on."""
        assert self.principal is not None
        self.principal = await self.services.verifier.refresh_role(self.principal)

    def _after_turn(self, _task: asyncio.Task[None]) -> None:
        if self._expiry is None:  # still expired: no fresh token came meanwhile
            self._on_expiry()

    # -- the session ---------------------------------------------------------------------
    async def attach(self, command: Start | Resume) -> None:
        """Attach to a new or existing session (leaving the one before).

        The role is resolved again first: a changed ``profiles`` row (within
        ``ROLE_CACHE_TTL``) applies to an open connection from its next session on.
        """
        self.check_token()
        await self.refresh_role()
        self.detach()
        attached = await self.services.hub.attach(self.who, command, self)
        self.attached = attached
        add_context(session_id=attached.session_id, game_id=attached.game.id)

    async def ask(self, ask: Ask) -> Turn:
        self.check_token()
        if self.attached is None:
            raise SessionRequired()
        return await self.services.hub.ask(self.who, self.attached, ask, self)

    async def cancel(self, turn_id: str | None = None) -> None:
        if self.attached is None:
            raise SessionRequired()
        await self.services.hub.cancel(self.attached, self, turn_id)

    def detach(self) -> None:
        if self.attached is not None:
            attached, self.attached = self.attached, None
            self.services.hub.detach(attached, self)

    def end(self, reason: str) -> None:
        """The session was ended for this connection by an admin: close (``killed``)."""
        self.close("killed")

    def shutdown(self) -> None:
        """The server is restarting: close once what is queued is sent."""
        self.close("restart")

    # -- closing and the reader ------------------------------------------------------------
    def close(self, reason: CloseReason | None) -> None:
        """Send what is queued, then close for ``reason`` (None: the peer is gone).

        Safe from any task or callback; the first call wins. Interrupts the reader
        (cancelling whatever frame it was handling, as a disconnect would).
        """
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            self._interrupted = True
            reader.cancel()

    async def receive_first(self, receive: Callable[[], Awaitable[Message]]) -> Message | None:
        """The first frame of a socket its handshake did not sign in (the frame that must
        sign it in), within ``WS_AUTH_TIMEOUT``; None when none came in time (the adapter
        then closes with 4408)."""
        try:
            async with asyncio.timeout(self.settings.ws_auth_timeout):
                return await receive()
        except TimeoutError:
            return None

    async def read(self, receive: Callable[[], Awaitable[Message]]) -> None:
        """Read frames until the connection closes: exactly one reader, the calling
        task, which ``close()`` interrupts. What every wire does with an inbound frame
        is here (a disconnect closes, the rate limit counts it, a binary frame is
        refused through ``frame_error``); the adapter handles only text frames
        (``on_frame``)."""
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        try:
            while not self.closing:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.close(None)
                    break
                if not self.allow_frame():
                    continue
                raw = message.get("text")
                if raw is None:
                    self.frame_error(InvalidInput("binary frames are not accepted; send JSON text"))
                else:
                    await self.on_frame(raw)
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
        finally:
            self._reader = None
        if self._interrupted and task.uncancel() > 0:
            raise asyncio.CancelledError  # cancelled by someone else as well

    async def on_frame(self, raw: str) -> None:
        """Handle one inbound text frame (the adapter's dialect); errors it answers itself."""
        raise NotImplementedError

    def frame_error(self, exc: ChatServerError) -> None:
        """Answer a frame refused before the adapter parsed it, in the adapter's dialect."""
        raise NotImplementedError

    async def send_now(self, event: Event) -> None:
        """Send one event at once, outside the outbox (before the writer exists)."""
        text = self._encode(event)
        if text is not None:
            await self._send(text)

    async def flush(self) -> None:
        """Closing: let the writer send what is queued (the send watchdog bounds it)."""
        self.outbox.close()
        if self._writer is not None:
            await asyncio.wait((self._writer,))

    def put(self, event: Event) -> None:
        try:
            self.outbox.put(event)
        except SlowClient:
            log.info("connection %s: client stopped reading; closing", self.id)
            self.close("abuse")

    # -- the writer ----------------------------------------------------------------------
    def _wake(self) -> None:
        """The outbox changed (``Outbox`` calls this): have one writer send what waits."""
        if self._writer is None and len(self.outbox) and not self._stuck:
            self._writer = asyncio.create_task(self._write())
        if self.outbox.closed and not self.closing:
            # A turn found the outbox full (SlowClient) and closed it.
            log.info("connection %s: client stopped reading; closing", self.id)
            self.close("abuse")

    async def _write(self) -> None:
        """Send queued events in order until none is left, then end."""
        loop = asyncio.get_running_loop()
        send, encode = self._send, self._encode
        try:
            while (event := self.outbox.pop()) is not None:
                try:
                    text = encode(event)
                except (ValueError, TypeError):  # a bug: that event is lost, not the socket
                    log.exception(
                        "connection %s: a %s event could not be encoded", self.id, event.get("type")
                    )
                    continue
                if text is None:
                    continue
                self._send_started = started = loop.time()
                if self._watchdog is None:
                    self._watchdog = loop.call_at(
                        started + self.settings.ws_send_timeout, self._check_send, context=_TIMERS
                    )
                await send(text)
                self._send_started = None
        except self.DISCONNECTED:
            self.close(None)
        finally:
            # In the step that found the outbox empty: an event queued from now on
            # starts a new writer.
            self._send_started = None
            self._writer = None
        if self._watchdog is not None and not self.services.hub.streaming(self.attached, self):
            # Idle: no timer. While a turn streams the watchdog stays armed, so a
            # delta costs no timer handle.
            self._watchdog.cancel()
            self._watchdog = None

    def _check_send(self) -> None:
        """The send watchdog: close once a send has been blocked too long.

        Fires at most once per ``WS_SEND_TIMEOUT`` while events are sent; a send only
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
        self.close("abuse")
