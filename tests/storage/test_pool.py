"""Postgres connections: a burst of statements opens connections once and keeps them
for the next burst (an overflow closed on return was opened again at every burst);
no more than twice ``pool_size`` are ever open. A loopback server is not asked for
TLS first unless the URL asks for it (Supabase's ``sslmode=require`` still does)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from chat_server.errors import Unavailable
from chat_server.storage import Database

WAIT = 30.0


async def burst(db: Database, size: int) -> None:
    async def one() -> None:
        async with db.read() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(one() for _ in range(size)))


async def test_a_burst_keeps_its_connections_for_the_next(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=3)
    opened: list[Any] = []
    event.listen(db.engine.sync_engine, "connect", lambda conn, _rec: opened.append(conn))
    try:
        await burst(db, 12)  # more than the 6 allowed: the rest wait their turn
        assert len(opened) == 6
        await burst(db, 6)
        await burst(db, 6)
        assert len(opened) == 6
    finally:
        async with asyncio.timeout(WAIT):
            await db.dispose()


SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")  # libpq's SSLRequest


@pytest.mark.parametrize(
    ("query", "asks_tls"), [("", False), ("?sslmode=require", True), ("?ssl=prefer", True)]
)
async def test_tls_is_asked_for_on_loopback_only_when_the_url_says(
    query: str, asks_tls: bool
) -> None:
    """What a client sends first to a loopback server: the startup message, or the
    request for TLS when the URL asks for one."""
    first: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            first.append(await reader.readexactly(8))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    db = Database(f"postgresql://nobody@127.0.0.1:{port}/nothing{query}", pool_size=1)
    try:
        with pytest.raises((Unavailable, DBAPIError)):  # the server hung up: no database
            await db.ping(timeout=5)
    finally:
        async with asyncio.timeout(WAIT):
            await db.dispose()
        server.close()
        await server.wait_closed()
    assert first, "the client sent nothing"
    assert (first[0] == SSL_REQUEST) is asks_tls
