"""``RoleReader``: a crowd's role lookups share queries, and each user gets their own role."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from chat_server.storage import Database
from chat_server.storage.profiles import RoleReader, set_role

from .conftest import WAIT


async def test_concurrent_lookups_share_queries_and_each_gets_its_own_role(db: Database) -> None:
    roles = {f"user-{i}": ("admin" if i % 3 == 0 else "developer") for i in range(40)}
    for user_id, role in roles.items():
        await set_role(db, user_id, role)
    asked = [*roles, "nobody-1", "nobody-2", "user-7"]  # no row twice; one user asked twice
    checkouts = 0  # each lookup's query takes a connection from a pool

    def count(*_args: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    pool = db.engine.sync_engine.pool
    event.listen(pool, "checkout", count)
    lent = db.driver_lends  # Postgres: the lookups run on driver()'s own pool
    reader = RoleReader(db)
    try:
        async with asyncio.timeout(WAIT):
            got = await asyncio.gather(*(reader.get(u) for u in asked))
            alone = await reader.get("user-1")
    finally:
        event.remove(pool, "checkout", count)
        await reader.aclose()
    queries = checkouts + db.driver_lends - lent
    assert got == [roles.get(u) for u in asked]
    assert alone == "developer"
    # The first lookup runs alone; the 42 asked while it ran go together.
    assert 1 <= queries <= 3, queries


async def test_a_cancelled_lookup_leaves_the_others_answered(db: Database) -> None:
    await set_role(db, "kept", "admin")
    reader = RoleReader(db)
    try:
        async with asyncio.timeout(WAIT):
            gone = asyncio.ensure_future(reader.get("kept"))
            kept = asyncio.ensure_future(reader.get("kept"))
            await asyncio.sleep(0)
            gone.cancel()
            assert await kept == "admin"
            assert gone.cancelled()
    finally:
        await reader.aclose()
