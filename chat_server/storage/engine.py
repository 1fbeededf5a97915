"""The database engine: URL handling, per-database connection settings, error mapping.

``Database`` is made in the app's lifespan (never at import) and shared. ``read()`` and
``write()`` hand out a connection (``write()`` inside a transaction) and turn "the
database is not there" failures into ``Unavailable`` (and text Postgres cannot hold,
NUL, into ``InvalidInput``), so callers never see a driver exception for those.
``driver()`` lends the same pool's asyncpg connection itself, for the few statements
every turn runs (see there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from .. import metrics
from ..errors import InvalidInput, Unavailable

__all__ = ["Database", "async_url", "sync_url"]

CONNECT_TIMEOUT = 5.0
NUL_IN_TEXT = "22021"  # Postgres: character_not_in_repertoire


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a contract URL (``postgresql://``, ``sqlite:///``)."""
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        return "postgresql+asyncpg://" + rest
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        return "sqlite+aiosqlite://" + rest
    raise ValueError(f"unsupported database URL scheme {scheme!r}")


def sync_url(url: str) -> str:
    """The plain URL (for Alembic's offline SQL mode and display)."""
    return async_url(url).replace("+asyncpg", "").replace("+aiosqlite", "")


def _plain_loopback(host: str | None, query: Mapping[str, Any]) -> bool:
    """A loopback Postgres host with no TLS asked for (by the URL or ``PGSSLMODE``)."""
    if host is None or "ssl" in query or os.environ.get("PGSSLMODE"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'chat.db').resolve()}"


class Database:
    """An async engine plus what differs between Postgres and SQLite."""

    def __init__(
        self,
        url: str,
        *,
        prepared_statement_cache: bool = True,
        pool_size: int = 10,
        echo: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.timeout = timeout
        # SQLite has one writer at a time, and its busy handler lets waiting writers
        # poll with growing sleeps: under 20 concurrent writers some waited past the
        # deadline while the lock was mostly free. Queue this process's writers here
        # instead, in order (Postgres needs no such thing).
        self._one_writer: asyncio.Lock | None = None
        parsed = make_url(async_url(url))
        if parsed.get_backend_name() == "postgresql" and "sslmode" in parsed.query:
            # libpq spells it sslmode (Supabase's connection strings do); asyncpg, ssl.
            query = dict(parsed.query)
            query.setdefault("ssl", query.pop("sslmode"))
            parsed = parsed.set(query=query)
        self.url = parsed.render_as_string(hide_password=False)
        self.dialect = "postgresql" if parsed.get_backend_name() == "postgresql" else "sqlite"
        if self.dialect == "sqlite":
            self._one_writer = asyncio.Lock()
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": False}
        if self.dialect == "postgresql":
            connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT, "command_timeout": 30}
            if _plain_loopback(parsed.host, parsed.query):
                # asyncpg's default (sslmode "prefer") first asks a loopback server for
                # TLS, a round trip per new connection that no loopback server needs.
                connect_args["ssl"] = False
            if not prepared_statement_cache:
                # Supabase's transaction pooler (PgBouncer/Supavisor, port 6543) cannot
                # keep prepared statements across transactions.
                connect_args["statement_cache_size"] = 0
                connect_args["prepared_statement_cache_size"] = 0
                connect_args["prepared_statement_name_func"] = _statement_name
            # Up to 2 x pool_size connections, as before, but all kept once opened: an
            # overflow connection was closed when returned, so every burst of turns
            # paid for opening it again.
            kwargs.update(
                pool_size=2 * pool_size,
                max_overflow=0,
                pool_timeout=CONNECT_TIMEOUT,
                pool_recycle=1800,
                connect_args=connect_args,
            )
        else:
            db_path = parsed.database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(connect_args={"timeout": 15})
        # hide_parameters: a failed statement's message must not carry user text.
        self.engine: AsyncEngine = create_async_engine(self.url, hide_parameters=True, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(self.engine.sync_engine, "before_cursor_execute", _count_statement)
        # The same pool; its connections in autocommit while lent out (a flag on the
        # driver's connection, no round trip). Not behind a transaction pooler, where
        # statements are prepared and then run, and only a transaction keeps both on
        # the same server connection.
        self._autocommit: AsyncEngine | None = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql" and prepared_statement_cache
            else None
        )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def read(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; outages become ``Unavailable``.

        The whole block (getting a connection and every query in it) has a deadline:
        ``timeout`` or the database's default, so a hung server is ``Unavailable`` in
        seconds, not after a driver's own half-minute timeout. On Postgres the reads
        run in autocommit where they can (see ``_autocommit``): no BEGIN and ROLLBACK
        round trips around them, and no difference in what they see (at READ
        COMMITTED each statement takes its own snapshot, in a transaction or not).
        """
        engine = self._autocommit or self.engine
        with _mapped_errors():
            async with asyncio.timeout(timeout or self.timeout), engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def write(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed on success; deadline as ``read``
        (on SQLite, waiting for this process's other writers counts towards it)."""
        with _mapped_errors():
            async with asyncio.timeout(timeout or self.timeout):
                if self._one_writer is None:
                    async with self.engine.begin() as conn:
                        yield conn
                else:
                    async with self._one_writer, self.engine.begin() as conn:
                        yield conn

    @asynccontextmanager
    async def driver(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """Postgres only: a pooled connection's asyncpg driver, for a turn's hot statements.

        SQLAlchemy's connection and execution layers cost about 0.17 ms of CPU per
        statement on top of the driver's (measured on the search: 340-370 µs through
        ``read()``, 180-200 µs here), which a turn pays twice before its first token.
        Statements here are written for asyncpg (``$1``) and pass JSON as text (the
        codec SQLAlchemy installs).
        In autocommit, as ``read()``; behind a transaction pooler, in a transaction.
        Errors and the deadline as ``read()``; a connection left closed by a failure
        leaves the pool.
        """
        assert self.dialect == "postgresql", "driver() is for Postgres"
        with _mapped_errors():
            async with asyncio.timeout(timeout or self.timeout):
                raw = await self.engine.raw_connection()
                conn: asyncpg.Connection = raw.driver_connection
                idle = False
                try:
                    if self._autocommit is None:
                        async with conn.transaction():
                            yield conn
                    else:
                        yield conn
                    idle = True
                except asyncpg.PostgresError as exc:
                    if conn.is_closed():  # e.g. the server is shutting down
                        raise _unavailable() from exc
                    idle = True  # the server refused the statement; the connection is fine
                    raise
                finally:
                    # In a greenlet: the pool may close the connection. Not idle
                    # (cancelled or timed out mid-statement, or broken): asyncpg first
                    # has the server cancel the statement (shielded, at most 2 s), so
                    # that a write reported as failed is not committed later, then the
                    # connection leaves the pool.
                    if not idle and conn.is_closed():
                        # Lost, not just interrupted: the pool's other connections of
                        # its age are as stale (the database went away). Invalidate them
                        # all, as SQLAlchemy's own execution path does on a disconnect,
                        # so that each does not fail one more request.
                        await greenlet_spawn(self.engine.pool._invalidate, raw)
                    else:
                        await greenlet_spawn(raw.close if idle else raw.invalidate)

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise ``Unavailable`` unless a trivial query answers within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                async with self.read() as conn:
                    await conn.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise Unavailable(
                "the database did not answer", context={"service": "database"}
            ) from exc

    async def dispose(self) -> None:
        await self.engine.dispose()


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """Database outages as ``Unavailable``, text Postgres cannot hold as ``InvalidInput``."""
    try:
        yield
    except (OperationalError, InterfaceError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise _unavailable() from exc
    except DBAPIError as exc:  # through SQLAlchemy: the driver's error is ``orig``
        _raise_mapped(exc, exc.orig, lost=exc.connection_invalidated)
        raise
    except asyncpg.PostgresError as exc:  # through driver()
        lost = isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError)
        _raise_mapped(exc, exc, lost=lost)
        raise


def _raise_mapped(exc: BaseException, orig: object, *, lost: bool) -> None:
    """Raise our error for a driver error that is not a bug of ours; else return.

    ``lost``: the connection is gone (or the server going away).
    """
    if lost:
        raise _unavailable() from exc
    if getattr(orig, "sqlstate", None) == NUL_IN_TEXT:
        # Postgres text cannot hold U+0000, in a stored value or in a lookup key.
        raise InvalidInput("text must not contain NUL characters") from exc


def _unavailable() -> Unavailable:
    return Unavailable("the database is unavailable", context={"service": "database"})


def _statement_name() -> str:
    """Unique prepared-statement names, so a pooler's shared backends never collide."""
    return f"__chat_{uuid.uuid4().hex}__"


def _count_statement(*_args: Any) -> None:
    metrics.DB_STATEMENTS.inc()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # SQLite's own lower() folds ASCII only ("É" stays "É"); Postgres folds every
    # letter. Replacing it makes case-insensitive search agree on both databases.
    dbapi_conn.create_function("lower", 1, _unicode_lower, deterministic=True)


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value
