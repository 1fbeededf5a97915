"""Running the app under uvicorn, with a shutdown that lets running turns finish.

uvicorn's own shutdown closes every WebSocket with 1012 at once. ``ChatServer`` first
stops accepting connections, then drains the app (new turns are refused with
``server_shutting_down``, running turns get up to ``SHUTDOWN_GRACE`` seconds, then each
connection is closed with 1012), and only then lets uvicorn finish.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from .admission import Admission, ChatConfig, http_protocol
from .config import Settings
from .ws_protocol import LeanWebSocketProtocol

__all__ = ["ChatServer", "listening_sockets", "uvicorn_config"]


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings of ``chat-server serve``: limits, keepalive, no compression,
    and the guarded protocol classes of ``admission.py`` (head deadline, pending cap,
    descriptor guard)."""
    values: dict[str, Any] = {
        "http": http_protocol(),
        # Idle between two requests: closed after the same time as a slow head.
        "timeout_keep_alive": settings.http_header_timeout,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # uvicorn's websockets-sansio, holding less per idle connection (ws_protocol.py)
        "ws": LeanWebSocketProtocol,
        "ws_max_size": settings.ws_max_frame_bytes,
        # permessage-deflate multiplies memory per connection for no CPU gain here.
        "ws_per_message_deflate": False,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "timeout_graceful_shutdown": 5,
        "proxy_headers": True,
        "server_header": False,
        "lifespan": "on",
        "log_config": None,
    }
    values.update(overrides)
    admission = Admission(
        header_timeout=settings.http_header_timeout,
        max_pending=settings.http_max_pending,
        fd_reserve=settings.fd_reserve,
    )
    return ChatConfig(app, admission, **values)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The sockets to serve on, bound (not yet listening) as uvicorn would bind them, so
    that ``serve`` can say "port in use" before the app starts. Raises OSError."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ChatServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        app = self.config.loaded_app if hasattr(self.config, "loaded_app") else None
        services = _services_of(self.config.app) or _services_of(app)
        if services is not None:
            await services.drain(services.settings.shutdown_grace)
        await super().shutdown(sockets)


def _services_of(app: Any) -> Any:
    state = getattr(app, "state", None)
    return getattr(state, "services", None) if state is not None else None
