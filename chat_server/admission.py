"""Who gets in: a deadline on request heads, a cap on unfinished connections, and a
guard near the process's file-descriptor limit.

uvicorn arms its keep-alive timer only after a first response, and cancels it on every
byte received: a connection that sends nothing, or a request head one byte a second,
was held for as long as the client liked. The protocol classes here are uvicorn's own
(httptools and h11), subclassed, with three additions:

- **A head deadline** (``HTTP_HEADER_TIMEOUT``): armed when a connection opens and when
  a response completes, cancelled only when a whole request head has arrived (the
  WebSocket handshake is one); on expiry the connection is closed. Bytes that trickle
  in do not restart it. A WebSocket, once upgraded, is no longer the HTTP protocol's:
  its pings and ``WS_AUTH_TIMEOUT`` govern it.
- **A cap on pending connections** (``HTTP_MAX_PENDING``): opened connections without a
  first request head, plus WebSockets not yet authenticated. Past it a new connection
  is answered ``503`` and closed at once, before anything is parsed.
- **A descriptor guard** (``FD_RESERVE``): when the new socket's descriptor is within
  the reserve of the process's limit (``RLIMIT_NOFILE``), it is answered ``503`` and
  closed, so that the descriptors left serve Postgres, Redis and the providers. Linux
  gives each new descriptor the lowest free number, so the socket's number is a lower
  bound of how many are open: reading it costs nothing, unlike counting
  ``/proc/self/fd`` on every accept.

Refusals count in ``chat_connections_refused_total{reason}`` and are logged at most
once per ``LOG_EVERY`` seconds per reason, with how many since the last line.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import metrics

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["Admission", "ChatConfig", "http_protocol"]

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 25\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b"server busy; retry later\n"
)


class Admission:
    """One server's admission state: the deadline, the cap, the reserve and counts."""

    def __init__(self, header_timeout: float, max_pending: int, fd_reserve: int) -> None:
        self.header_timeout = header_timeout
        self.max_pending = max_pending
        self.fd_reserve = fd_reserve
        self.pending_heads = 0  # connections opened, no request head yet
        self.app: Any = None  # set by ChatConfig; its services count unauthenticated sockets
        self._refused: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def unauthenticated(self) -> int:
        """WebSockets accepted by the app and not authenticated yet."""
        services = getattr(getattr(self.app, "state", None), "services", None)
        if services is None:
            return 0
        count: int = services.connections.unauthenticated
        return count

    def refusal(self, transport: asyncio.BaseTransport) -> str | None:
        """Why a just-opened connection must be refused, or None."""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if limit != resource.RLIM_INFINITY:
                reserve = min(self.fd_reserve, limit // 4)
                descriptor = sock.fileno()
                if descriptor >= limit - reserve:
                    self._note("descriptors", f"descriptor {descriptor} of a limit of {limit}")
                    return "descriptors"
        if self.pending_heads + self.unauthenticated() >= self.max_pending:
            self._note("pending", f"{self.max_pending} connections pending")
            return "pending"
        return None

    def _note(self, reason: str, detail: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(reason=reason).inc()
        self._refused[reason] = self._refused.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY) < LOG_EVERY:
            return
        count, self._refused[reason] = self._refused[reason], 0
        self._logged[reason] = now
        if reason == "descriptors":
            log.warning(
                "refusing new connections: near the file-descriptor limit (%s; FD_RESERVE "
                "%d kept for the database, Redis and providers); %d refused",
                detail,
                self.fd_reserve,
                count,
            )
        else:
            log.warning(
                "refusing new connections: %s without a request head or authentication "
                "(HTTP_MAX_PENDING); %d refused",
                detail,
                count,
            )


class ChatConfig(Config):
    """uvicorn's Config, carrying the server's ``Admission`` to its protocol instances."""

    def __init__(self, app: Any, admission: Admission, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.admission = admission
        admission.app = app


class _Guarded:
    """What both protocol classes add; ``_head_done`` is called when a request head is
    whole, ``_waiting_for_head`` when a response completes and none is."""

    admission: Admission
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _head_timer: asyncio.TimerHandle | None = None
    _first_head = True

    def _admit(self, config: Config) -> bool:
        admission: Admission = config.admission  # type: ignore[attr-defined]
        self.admission = admission
        reason = admission.refusal(self.transport)
        if reason is not None:
            self.transport.write(REFUSAL)
            self.transport.close()
            self._first_head = False
            return False
        admission.pending_heads += 1
        self._arm()
        return True

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.admission.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_done(self) -> None:
        self._disarm()
        if self._first_head:
            self._first_head = False
            self.admission.pending_heads -= 1

    def _lost(self) -> None:
        self._disarm()
        if self._first_head:
            self._first_head = False
            self.admission.pending_heads -= 1

    def _expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


if HttpToolsProtocol is not None:

    class ChatHttpToolsProtocol(_Guarded, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._admit(self.config)

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._head_done()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Idle, unless a pipelined request's head was already read.
            if not self.transport.is_closing() and (
                self.cycle is None or self.cycle.response_complete
            ):
                self._arm()


class ChatH11Protocol(_Guarded, H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit(self.config)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._head_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()


def http_protocol(name: str = "auto") -> type[asyncio.Protocol]:
    """The guarded protocol class: httptools when installed (``auto``), else h11."""
    if name in ("auto", "httptools") and HttpToolsProtocol is not None:
        return ChatHttpToolsProtocol
    return ChatH11Protocol
