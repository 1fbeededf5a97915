"""Instances started at the same moment on one empty database all start, and the demo
games are seeded once (migrations and seeding each run by one instance at a time)."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from chat_server.demo import DEMO
from chat_server.storage import Database
from chat_server.storage.migrate import upgrade
from chat_server.storage.schema import feature_flags, games
from tests.processes import ServerProcess

from .conftest import WAIT

INSTANCES = 3
SQLITE_HOLD = 4.0  # long enough for the instances to reach the seeding on a loaded machine


async def test_three_instances_started_at_once_seed_the_demo_once(
    database_url: str, tmp_path: Path
) -> None:
    """Three instances with demo seeding on, started together on an empty database: each
    starts and answers /healthz, and each demo game and the demo flag exist once."""
    db = Database(database_url)
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(db)  # so that the instances meet at the seeding, not the migration
        env = {"DATABASE_URL": database_url, "SEED_DEMO": "true", "DATABASE_TIMEOUT": "60"}
        pool = ThreadPoolExecutor(INSTANCES)
        futures = [pool.submit(ServerProcess, env, tmp_path) for _ in range(INSTANCES)]
        # The games table is held until every instance is at its seeding, then all go at once.
        async with asyncio.timeout(3 * WAIT):
            await _hold_games_until_all_wait(db)
        started: list[ServerProcess] = []
        errors: list[BaseException] = []
        for future in futures:
            try:
                started.append(await asyncio.wrap_future(future))
            except Exception as exc:
                errors.append(exc)
        pool.shutdown()
        try:
            assert not errors, errors
            async with asyncio.timeout(WAIT), db.read() as conn:
                names = Counter((await conn.execute(sa.select(games.c.name))).scalars())
                count = sa.select(sa.func.count()).select_from(feature_flags)
                flags = (await conn.execute(count)).scalar_one()
            assert names == Counter(data["name"] for data, _rules in DEMO)
            assert flags == 1
        finally:
            for server in started:
                server.stop()
    finally:
        await db.dispose()


async def _hold_games_until_all_wait(db: Database) -> None:
    """Postgres: lock the games table until INSTANCES sessions wait on a lock (ours, or
    the seeding's advisory lock). SQLite: hold the write lock for SQLITE_HOLD seconds."""
    async with db.engine.connect() as conn:
        if db.is_postgres:
            await conn.execute(sa.text("BEGIN"))
            await conn.execute(sa.text("LOCK TABLE games IN ACCESS EXCLUSIVE MODE"))
            waiting = sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            while True:
                async with db.read() as probe:
                    if (await probe.execute(waiting)).scalar_one() >= INSTANCES:
                        break
                await asyncio.sleep(0.05)
            await conn.execute(sa.text("COMMIT"))
        else:
            await conn.exec_driver_sql("BEGIN EXCLUSIVE")
            await asyncio.sleep(SQLITE_HOLD)
            await conn.exec_driver_sql("COMMIT")
