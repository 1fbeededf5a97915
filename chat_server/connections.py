"""The open client connections of this instance (every dialect): the instance's
connection limit, and the list a shutdown closes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import metrics

if TYPE_CHECKING:
    from .transports.client import ClientConnection as Connection

__all__ = ["Connections"]


class Connections:
    """This instance's sockets and authenticated connections.

    ``open_socket`` counts every accepted socket, authenticated or not, against
    ``total`` (a socket waiting to authenticate holds memory too); ``add`` registers
    an authenticated one. Every connection added is an accepted socket's (``/ws/chat``
    and ``/ws/ai-sdk`` alike), so the sockets not added are those not authenticated yet.
    The per-user limit spans every instance, so it is kept elsewhere: ``user_slots.py``.
    """

    def __init__(self, total: int = 10_000) -> None:
        self.total = total
        self.sockets = 0
        self._all: set[Connection] = set()
        self.empty = asyncio.Event()
        self.empty.set()

    def open_socket(self) -> bool:
        """Count a new socket; False (and not counted) when the instance is full."""
        if self.sockets >= self.total:
            return False
        self.sockets += 1
        return True

    def close_socket(self) -> None:
        self.sockets -= 1

    def add(self, connection: Connection) -> bool:
        assert connection.principal is not None
        self._all.add(connection)
        self.empty.clear()
        metrics.CONNECTIONS.inc()
        return True

    def remove(self, connection: Connection) -> None:
        if connection in self._all:
            self._all.discard(connection)
            metrics.CONNECTIONS.dec()
        if not self._all:
            self.empty.set()

    @property
    def unauthenticated(self) -> int:
        """Sockets accepted and not authenticated yet (``admission.py`` caps them)."""
        return max(0, self.sockets - len(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def all(self) -> list[Connection]:
        return list(self._all)
