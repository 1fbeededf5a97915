"""What each step of a client costs the backing services (issue 25): Postgres pool
checkouts (each a transaction behind a transaction pooler, a round trip or more
otherwise) and Redis round trips (pool checkouts: a command, a pipeline or a script),
for connect, session.start, a turn, and a reconnect with session.resume.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/backing_costs.py

The figures are for docs/deployment.md (sizing). It runs one instance in-process with
the local provider; nothing else may use that Redis database meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import make_settings, running_server
from tests.services import create_database, drop_database
from tests.wsclient import ws_client

STEPS = ("connect", "session.start", "turn", "resume")


async def measure(database_url: str, redis_url: str) -> dict[str, Counter[str]]:
    costs: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(
            Path(tmp), database_url=database_url, redis_url=redis_url, seed_demo=True
        )
        with running_server(settings) as server:
            counts: Counter[str] = Counter()
            db = server.services.db
            pool = db.engine.sync_engine.pool
            event.listen(pool, "checkout", lambda *_: counts.update(["postgres"]))
            lent = db.driver_lends  # driver()'s checkouts: its own pool, no events
            redis_pool: Any = server.services.redis.connection_pool  # type: ignore[union-attr]
            taking = redis_pool.get_connection

            async def counted(*args: Any, **kwargs: Any) -> Any:
                counts.update(["redis"])
                return await taking(*args, **kwargs)

            redis_pool.get_connection = counted
            token = server.token("bench-user")
            async with httpx.AsyncClient(timeout=10) as http:
                headers = {"Authorization": f"Bearer {token}"}
                games = (await http.get(f"{server.url}/games", headers=headers)).json()
            game = games["games"][0]["id"]

            def clear() -> None:
                nonlocal lent
                counts.clear()
                lent = db.driver_lends

            def step(name: str) -> None:
                costs[name] = Counter(counts)
                costs[name].update(postgres=db.driver_lends - lent)
                clear()

            await asyncio.sleep(0.5)
            clear()
            async with ws_client(server.ws_url, token) as client:
                step("connect")
                ready = await client.start(game)
                step("session.start")
                await client.ask("How do I win?")
                await asyncio.sleep(0.2)  # the final write
                step("turn")
            await asyncio.sleep(0.2)
            clear()
            async with ws_client(server.ws_url, token) as client:
                step("connect")
                await client.send({"type": "session.resume", "session_id": ready["session"]["id"]})
                await client.expect("session.ready")
                step("resume")
    return costs


async def main() -> None:
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5")
    url = await create_database(admin)
    try:
        costs = await measure(url, redis_url)
    finally:
        await drop_database(admin, url)
    print(f"{'step':<15} {'postgres':>9} {'redis':>6}")
    for name in STEPS:
        c = costs[name]
        print(f"{name:<15} {c['postgres']:>9} {c['redis']:>6}")


if __name__ == "__main__":
    asyncio.run(main())
