"""``GET /ws/chat``: the thin adapter between a WebSocket and the chat service.

Per connection: exactly one reader (this module's receive loop), one writer draining
the bounded ``Outbox``, and a watcher for token expiry, in one task group; when any of
them ends the others are cancelled. Turns are owned by the ``TurnManager`` (they may
outlive the connection for the resume grace period); a disconnect detaches them.
Domain errors become ``error`` frames here, in one place (``frames.error_from``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

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
from .logs import add_context, bind
from .sessions.chat import Attached, Who
from .sessions.limits import AbuseCounter, TokenBucket
from .sessions.outbox import Outbox, SlowClient
from .storage.ids import new_id, utcnow

if TYPE_CHECKING:
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
    await websocket.accept()
    if not services.connections.open_socket():
        with contextlib.suppress(Exception):
            message = "this instance is at its connection limit; try another or retry"
            await websocket.send_text(encode(error_frame("rate_limited", message)))
            await websocket.close(CLOSE_ABUSE)
        return
    connection = Connection(websocket, services)
    try:
        with bind(connection_id=connection.id):
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


class Connection:
    """One client's WebSocket, from authentication to close."""

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.ws = websocket
        self.services = services
        self.settings = services.settings
        self.id = new_id()
        self.outbox = Outbox()
        self.principal: Principal | None = None
        self.attached: Attached | None = None
        self.turn_id: str | None = None
        self.close_code: int | None = None
        self.connected_at = utcnow()
        self.last_activity_at = self.connected_at
        self.turns = 0
        self._relay: asyncio.Task[None] | None = None
        self._relay_turn: str | None = None
        self._closing = asyncio.Event()
        self._refreshed = asyncio.Event()
        now = time.monotonic()
        self.bucket = TokenBucket(
            self.settings.ws_max_frames_per_second, self.settings.ws_frame_burst, now
        )
        self.abuse = AbuseCounter(limit=10, window=60.0)

    @property
    def session_id(self) -> str | None:
        return self.attached.session["id"] if self.attached else None

    def snapshot(self) -> dict[str, Any]:
        """This connection's live session, as ``GET /admin/sessions`` lists it."""
        assert self.attached is not None and self.principal is not None
        live = self.services.manager.get(self.turn_id) if self.turn_id else None
        turn = live.turn if live is not None and not live.turn.done else None
        first = turn.completed_frame()["timing"]["first_token_ms"] if turn else None
        return {
            "id": self.attached.session["id"],
            "user_id": self.principal.user_id,
            "game_id": self.attached.session["game_id"],
            "instance": self.services.instance_id,
            "connection_id": self.id,
            "connected_at": self.connected_at,
            "last_activity_at": self.last_activity_at,
            "turns": self.turns,
            "streaming": turn is not None,
            "provider": self.attached.session["provider"],
            "turn_id": turn.id if turn else None,
            "tokens": turn.tokens if turn else 0,
            "first_token_ms": first,
        }

    def _attach(self, attached: Attached) -> None:
        self._detach_session()
        self.attached = attached
        add_context(session_id=attached.session["id"], game_id=attached.game["id"])
        metrics.SESSIONS.inc()
        self.services.registry.put(attached.session["id"], self.snapshot)
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
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._reader())
                writer = group.create_task(self._writer())
                watcher = group.create_task(self._watch_expiry())
                await self._closing.wait()
                reader.cancel()
                watcher.cancel()
                self.outbox.close()
                await writer
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self.ws.close(self.close_code)
        finally:
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
        """Send what is queued, then close with ``code`` (None: the peer is gone)."""
        if not self._closing.is_set():
            self.close_code = code
            self._closing.set()

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
        self._refreshed.set()

    async def _watch_expiry(self) -> None:
        while True:
            assert self.principal is not None
            delay = self.principal.expires_at + self.settings.jwt_leeway - time.time()
            self._refreshed.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._refreshed.wait()
                continue
            live = self.services.manager.get(self.turn_id) if self.turn_id else None
            if live is not None:
                await live.done.wait()
                continue
            self.put(error_frame("token_expired", "the token expired; connect again"))
            self.close(CLOSE_UNAUTHORIZED)
            return

    # -- frames in -------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.close(None)
                return
            now = time.monotonic()
            self.last_activity_at = utcnow()
            if not self.bucket.allow(now):
                self.put(error_frame("rate_limited", "too many frames; slow down"))
                if self.abuse.hit(now):
                    self.close(CLOSE_ABUSE)
                    return
                continue
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
                return

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
            attached, ready = await self.services.chat.start_session(self.who, frame)
            self._attach(attached)
            self.put(ready)
        elif isinstance(frame, SessionResumeFrame):
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
    async def _writer(self) -> None:
        timeout = self.settings.ws_send_timeout
        while True:
            frame = await self.outbox.get()
            if frame is None:
                return
            try:
                async with asyncio.timeout(timeout):
                    await self.ws.send_text(encode(frame))
            except TimeoutError:
                log.info("connection %s: client stopped reading; closing", self.id)
                self.close(CLOSE_ABUSE)
                return
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.close(None)
                return
