"""The database engine: URL handling, per-database connection settings, error mapping.

``Database`` is made in the app's lifespan (never at import) and shared. ``read()`` and
``write()`` hand out a connection (``write()`` inside a transaction) and turn "the
database is not there" failures into ``Unavailable`` (and text Postgres cannot hold,
NUL, into ``InvalidInput``), so callers never see a driver exception for those.
``driver()`` lends an asyncpg connection of a pool of its own, for the few statements
every turn runs (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .. import metrics
from ..errors import InvalidInput, Unavailable
from .group_commit import GroupCommit

__all__ = ["Database", "async_url", "sync_url"]

CONNECT_TIMEOUT = 5.0
CANCEL_WAIT = 2.0  # how long a connection given back mid-statement waits for the cancel
# connect_args that SQLAlchemy's asyncpg adapter takes for itself (asyncpg has none).
_ADAPTER_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")
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
        self._connect_args: dict[str, Any] = {}
        if self.dialect == "postgresql":
            connect_args = self._connect_args
            connect_args |= {"timeout": CONNECT_TIMEOUT, "command_timeout": 30}
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
            # Up to 2 x pool_size connections in all, kept once opened (an overflow
            # connection was closed when returned, so every burst of turns paid for
            # opening it again): pool_size here, pool_size for driver().
            kwargs.update(
                pool_size=pool_size,
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
        if self.dialect == "postgresql":
            event.listen(self.engine.sync_engine.pool, "checkout", _not_closed)
        self._driver_size = pool_size
        #: Connections ``driver()`` has lent: its statements are not SQLAlchemy's, so
        #: the engine's events (what tests and benches count) do not see them.
        self.driver_lends = 0
        self._driver_pool: asyncpg.Pool | None = None
        self._driver_opening = asyncio.Lock()
        #: Postgres: each kind of per-turn write batched across concurrent turns
        #: (``group_commit.py``), made by the module that writes it on first use.
        self.group_commits: dict[str, GroupCommit[Any]] = {}
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
        """Postgres only: an asyncpg connection, for a turn's hot statements.

        SQLAlchemy's connection and execution layers cost about 0.17 ms of CPU per
        statement on top of the driver's (measured on the search: 340-370 µs through
        ``read()``, 180-200 µs on the driver), which a turn pays twice before its first
        token; its pool checkout and return cost about as much again (greenlets, the
        reset on return), so these statements have an asyncpg pool of their own:
        ``pool_size`` connections (SQLAlchemy's pool has the other ``pool_size``),
        opened as needed with the engine's connect arguments (TLS, timeouts, statement
        cache), given back with no reset query (nothing here changes session state).
        Statements here are written for asyncpg (``$1``) and exchange JSON as text
        (asyncpg's own codec: passed as ``str``, read as ``str``).
        In autocommit, as ``read()``; behind a transaction pooler, in a transaction.
        Errors and the deadline as ``read()``. A statement cancelled or timed out
        mid-flight: the connection goes back only once asyncpg has had the server
        cancel the statement (shielded, at most 2 s; else it is closed), so that a
        write reported as failed is not committed later. A connection lost makes the
        pool replace its others too (the database went away: each would fail once).
        """
        assert self.dialect == "postgresql", "driver() is for Postgres"
        with _mapped_errors():
            async with asyncio.timeout(timeout or self.timeout):
                pool = self._driver_pool
                if pool is None:
                    pool = await self._open_driver_pool()
                conn = await pool.acquire()
                self.driver_lends += 1
                idle = False
                try:
                    if self._autocommit is None:
                        async with conn.transaction():
                            yield conn
                    else:
                        yield conn
                    idle = True
                except asyncpg.PostgresError as exc:
                    if _lost(conn):  # e.g. the server is shutting down
                        raise _unavailable() from exc
                    idle = True  # the server refused the statement; the connection is fine
                    raise
                finally:
                    if idle:
                        await pool.release(conn)
                    else:
                        if _lost(conn):
                            # The database went away: every connection of its age, in
                            # both pools, is as stale; replace them at their next use
                            # (as SQLAlchemy's execution path does on a disconnect),
                            # so that each does not fail one more request.
                            await pool.expire_connections()
                            self.engine.pool._invalidate(None, _checkin=False)  # type: ignore[arg-type]
                        # Shielded by asyncpg, which first waits for the cancellation;
                        # a failure there closes the connection, and the error that
                        # brought us here is the one to report.
                        with contextlib.suppress(Exception):
                            await pool.release(conn, timeout=CANCEL_WAIT)

    async def _open_driver_pool(self) -> asyncpg.Pool:
        """``driver()``'s pool, made on first use (in the running loop; no connection yet)."""
        async with self._driver_opening:
            if self._driver_pool is None:
                # What SQLAlchemy's pool connects with: the URL's parts and query
                # (ssl=...), then connect_args, less the options only its adapter reads.
                _, params = self.engine.dialect.create_connect_args(self.engine.url)
                params.update(self._connect_args)
                for name in _ADAPTER_ONLY:
                    params.pop(name, None)
                # Opened as needed and kept, as SQLAlchemy's (no idle timer either:
                # asyncpg would rearm one at every release).
                self._driver_pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self._driver_size,
                    max_inactive_connection_lifetime=0,
                    reset=_keep_session,
                    **params,
                )
            return self._driver_pool

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
        """Close both pools (``driver()``'s waits for its connections, at most 5 s)."""
        for group in self.group_commits.values():
            await group.aclose()
        pool, self._driver_pool = self._driver_pool, None
        try:
            if pool is not None:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await pool.close()
                except TimeoutError:
                    pool.terminate()
        finally:
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


def _not_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pool: a connection that asyncpg already saw closed (the server went
    away) is replaced at checkout, not handed out to fail a request. No round trip:
    the driver's flag. (Before ``driver()`` had its own pool, its failures marked this
    pool's connections stale; now nothing else would after an outage.)"""
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("the connection was closed")


def _lost(conn: Any) -> bool:
    """``driver()``'s connection is gone: closed, or already taken back by its pool
    (asyncpg does that as soon as it sees the connection lost)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return True


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """``driver()``'s pool gives connections back as they are: its statements set no
    session state, and asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ...)
    would cost a round trip per statement. An open transaction is still rolled back
    (asyncpg does that before calling this)."""


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
