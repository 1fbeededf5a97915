"""The ``profiles`` table: the app role of a user when the token carries none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy import select

from .engine import Database
from .ids import utcnow
from .schema import profiles
from .upsert import upsert

__all__ = ["RoleReader", "get_roles", "set_role"]

#: Users one query asks for at most.
MAX_BATCH = 500
_BY_IDS = "SELECT id, role FROM profiles WHERE id = ANY($1::text[])"


async def get_roles(db: Database, user_ids: Sequence[str]) -> dict[str, str | None]:
    """The ``profiles`` role of each user (None: no row).

    On Postgres through the driver, one statement for any number of users (``ANY`` of
    an array): every connection's handshake looks a role up, and SQLAlchemy's layers
    would double the CPU of each lookup (see ``Database.driver``)."""
    found: dict[str, str | None]
    if db.is_postgres:
        async with db.driver() as driver:
            rows = await driver.fetch(_BY_IDS, list(user_ids))
        found = {row["id"]: row["role"] for row in rows}
    else:
        async with db.read() as conn:
            result = await conn.execute(
                select(profiles.c.id, profiles.c.role).where(profiles.c.id.in_(list(user_ids)))
            )
            found = {row.id: row.role for row in result}
    return {user_id: found.get(user_id) for user_id in user_ids}


class RoleReader:
    """Role lookups that share queries: while one query runs, the users asked for
    meanwhile wait and are looked up together in the next one.

    A crowd connecting at once (a deploy's reconnect, a class starting) would otherwise
    cost one query per connection; alone, a lookup is one query as before. Each caller
    waits on its own future, so a cancelled caller (a handshake that timed out) cancels
    nobody else's lookup, and a query's error reaches every caller of its batch.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, user_id: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="profiles-roles")
        return await future

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        batch: dict[str, list[asyncio.Future[str | None]]] = {}
        try:
            while self._waiting:
                batch = {}
                for user_id in list(self._waiting)[:MAX_BATCH]:
                    futures = [f for f in self._waiting.pop(user_id) if not f.done()]
                    if futures:
                        batch[user_id] = futures
                if not batch:
                    continue
                try:
                    roles = await get_roles(self._db, list(batch))
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for user_id, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(roles[user_id])
        finally:
            self._task = None
            # Cancelled (shutdown): nobody waits for an answer that will not come.
            for futures in (*batch.values(), *self._waiting.values()):
                for future in futures:
                    future.cancel()
            self._waiting.clear()


async def set_role(db: Database, user_id: str, role: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            upsert(db.dialect, profiles, keys=("id",), update=("role",)),
            {"id": user_id, "role": role, "created_at": utcnow()},
        )
