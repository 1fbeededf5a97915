"""The open WebSocket connections of this instance: per-user limits and broadcast close."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import metrics

if TYPE_CHECKING:
    from .ws import Connection

__all__ = ["Connections"]


class Connections:
    """This instance's sockets and authenticated connections.

    ``open_socket`` counts every accepted socket, authenticated or not, against
    ``total`` (a socket waiting to authenticate holds memory too); ``add`` indexes an
    authenticated one by user. The per-user limit spans every instance:
    ``user_slots.py``.
    """

    def __init__(self, total: int = 10_000) -> None:
        self.total = total
        self.sockets = 0
        self._count = 0
        self._by_user: dict[str, set[Connection]] = {}
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
        mine = self._by_user.setdefault(connection.principal.user_id, set())
        mine.add(connection)
        self._count += 1
        self.empty.clear()
        metrics.CONNECTIONS.inc()
        return True

    def remove(self, connection: Connection) -> None:
        if connection.principal is None:
            return
        mine = self._by_user.get(connection.principal.user_id)
        if mine is not None and connection in mine:
            mine.discard(connection)
            self._count -= 1
            metrics.CONNECTIONS.dec()
            if not mine:
                del self._by_user[connection.principal.user_id]
        if not self._by_user:
            self.empty.set()

    def __len__(self) -> int:
        return self._count

    def all(self) -> list[Connection]:
        return [c for conns in self._by_user.values() for c in conns]
