"""Postgres connections: a burst of statements opens connections once and keeps them
for the next burst (an overflow closed on return was opened again at every burst);
no more than twice ``pool_size`` are ever open, SQLAlchemy's and ``driver()``'s
together. A loopback server is not asked for TLS first unless the URL asks for it
(Supabase's ``sslmode=require`` still does), on either path."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from chat_server.errors import Unavailable
from chat_server.storage import Database

WAIT = 30.0
BACKEND = "SELECT pg_backend_pid() FROM pg_sleep(0.05)"


async def burst(db: Database, size: int) -> set[int]:
    """``size`` statements at once through ``read()`` and as many through ``driver()``:
    the server processes (connections) that ran them."""

    async def one() -> int:
        async with db.read() as conn:
            return int((await conn.execute(text(BACKEND))).scalar_one())

    async def hot() -> int:
        async with db.driver() as driver:
            return int(await driver.fetchval(BACKEND))

    async with asyncio.timeout(WAIT):
        return set(
            await asyncio.gather(*(one() for _ in range(size)), *(hot() for _ in range(size)))
        )


async def test_a_burst_keeps_its_connections_for_the_next(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=3)
    try:
        first = await burst(db, 12)  # more than allowed: the rest wait their turn
        assert len(first) == 6
        assert await burst(db, 3) <= first
        assert await burst(db, 3) <= first
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
    request for TLS when the URL asks for one (from either pool)."""
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
        by_engine, first[:] = first[:], []
        with pytest.raises(Unavailable):  # the same through driver()'s own pool
            async with db.driver(timeout=5) as driver:
                await driver.execute("SELECT 1")
    finally:
        async with asyncio.timeout(WAIT):
            await db.dispose()
        server.close()
        await server.wait_closed()
    assert by_engine, "SQLAlchemy's pool sent nothing"
    assert first, "driver()'s pool sent nothing"
    assert (by_engine[0] == SSL_REQUEST) is asks_tls
    assert (first[0] == SSL_REQUEST) is asks_tls
