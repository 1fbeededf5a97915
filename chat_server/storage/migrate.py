"""Run the Alembic migrations, safely when several instances start at once.

Postgres: the upgrade runs in one transaction that first takes a transaction-level
advisory lock, so a second instance waits, then finds the schema at head and does
nothing. SQLite: an exclusive file lock beside the database file does the same.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from .engine import Database, sync_url

__all__ = ["alembic_config", "offline_sql", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
LOCK_KEY = 0x63686174  # "chat"
MIGRATE_TIMEOUT = 600.0  # waiting for another instance's migration included


def alembic_config(url: str, stdout: Any = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def _run_upgrade(sync_conn: Any, cfg: Config) -> None:
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def upgrade(db: Database) -> None:
    """Bring the schema to head; a no-op when it is there already."""
    cfg = alembic_config(db.url)
    if db.is_postgres:
        async with db.write(timeout=MIGRATE_TIMEOUT) as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            await conn.run_sync(_run_upgrade, cfg)
        return
    database = make_url(db.url).database or ":memory:"
    lock_path = None if database == ":memory:" else Path(database + ".migrate.lock")
    with _file_lock_cm(lock_path) as acquire:
        await asyncio.to_thread(acquire)
        async with db.write(timeout=MIGRATE_TIMEOUT) as conn:
            await conn.run_sync(_run_upgrade, cfg)


@contextmanager
def _file_lock_cm(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield lambda: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield lambda: fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def offline_sql(url: str) -> str:
    """The migrations as SQL for ``url``'s dialect (for ``supabase/migrations/``)."""
    buffer = io.StringIO()
    cfg = alembic_config(url, stdout=buffer)
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    return buffer.getvalue()
