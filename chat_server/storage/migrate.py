"""Run the Alembic migrations, safely when several instances start at once.

Postgres: the upgrade runs in one transaction that first takes a transaction-level
advisory lock, so a second instance waits, then finds the schema at head and does
nothing. SQLite: an exclusive file lock beside the database file does the same.
``exclusive()`` is that lock for any other start-up work (the demo seeding): one
instance at a time does it, the others wait and then find it done.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from .engine import Database, sync_url

__all__ = ["alembic_config", "exclusive", "offline_sql", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
LOCK_KEY = 0x63686174  # "chat"
LOCK_KEYS = {"migrate": LOCK_KEY, "seed": LOCK_KEY + 1}
LOCK_POLL = 0.05
MIGRATE_TIMEOUT = 600.0  # waiting for another instance's migration included


def alembic_config(url: str, stdout: Any = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def _run_upgrade(sync_conn: Any, cfg: Config) -> str | None:
    """Upgrade to head (under the caller's lock); the revision the schema was at."""
    from alembic.runtime.migration import MigrationContext

    before: str | None = MigrationContext.configure(sync_conn).get_current_revision()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
    return before


async def upgrade(db: Database) -> str | None:
    """Bring the schema to head; a no-op when it is there already. Answers the revision
    the schema was at, read under the lock (None: no schema), so that of several
    instances migrating at once exactly one reports the work it did."""
    cfg = alembic_config(db.url)
    if db.is_postgres:
        async with db.write(timeout=MIGRATE_TIMEOUT) as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            before: str | None = await conn.run_sync(_run_upgrade, cfg)
        return before
    async with _sqlite_lock(db, "migrate"), db.write(timeout=MIGRATE_TIMEOUT) as conn:
        before = await conn.run_sync(_run_upgrade, cfg)
    return before


@asynccontextmanager
async def exclusive(db: Database, name: str) -> AsyncIterator[None]:
    """Held by one process at a time among all those on this database (``name`` is a
    key of ``LOCK_KEYS``). On Postgres a transaction holds an advisory lock while the
    block does its work on other pooled connections (so the pool needs two); works
    behind a transaction pooler too, the lock's transaction keeping its server
    connection. On SQLite, a file lock beside the database file."""
    if db.is_postgres:
        async with db.write(timeout=MIGRATE_TIMEOUT) as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEYS[name]})
            yield
        return
    async with _sqlite_lock(db, name):
        yield


@asynccontextmanager
async def _sqlite_lock(db: Database, name: str) -> AsyncIterator[None]:
    """An exclusive ``flock`` on ``<database>.<name>.lock``, polled without blocking
    (so waiting for it can be cancelled and has a deadline)."""
    database = make_url(db.url).database or ":memory:"
    if database == ":memory:":
        yield
        return
    path = Path(f"{database}.{name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def offline_sql(url: str) -> str:
    """The migrations as SQL for ``url``'s dialect (for ``supabase/migrations/``)."""
    buffer = io.StringIO()
    cfg = alembic_config(url, stdout=buffer)
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    return buffer.getvalue()
