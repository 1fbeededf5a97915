"""The product under the bench: its database, Redis keys, settings and admin setup.

Every feature is on: Postgres (a database made for the run and dropped after it),
Redis (a db number of its own and a key prefix of its own, deleted after the run),
HS256 auth, a global ``chat`` flag with a daily limit, the OpenAI provider pointed at
the loopback upstream, a game with a rulebook to ground answers.

Also the accounting that shows where a turn's storage work goes: Postgres
transactions and written rows (``pg_stat_database``) and Redis commands (``MONITOR``,
filtered to our db number) over a set of turns.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx

RULEBOOK = """# Goal
The first player to reach ten victory points wins the game. You score points for
settlements, cities, the longest road and the largest army.

# A turn
On your turn you roll the dice, collect resources for every settlement next to the
rolled number, trade with other players or the bank, then build roads, settlements
and cities or buy development cards.

# Building
A settlement costs one brick, one lumber, one wool and one grain. It must be at least
two intersections away from any other settlement. A city replaces a settlement and
costs three ore and two grain.

# The robber
When a seven is rolled nobody collects resources; every player with more than seven
cards discards half of them, and the roller moves the robber and steals one card.
"""


class Product:
    """Names and settings of one bench run of the product."""

    def __init__(self, *, pg_admin_url: str, redis_host: str, redis_port: int, redis_db: int):
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.pg_admin_url = pg_admin_url
        self.db_name = f"chat_bench_{tag}"
        base = pg_admin_url.rsplit("/", 1)[0]
        self.database_url = f"{base}/{self.db_name}"
        self.redis_host, self.redis_port, self.redis_db = redis_host, redis_port, redis_db
        self.redis_url = f"redis://{redis_host}:{redis_port}/{redis_db}"
        self.redis_prefix = f"bench{tag}"
        self.secret = secrets.token_urlsafe(48)
        self.game_id: str | None = None
        self.created = False
        self.extra_env: dict[str, str] = {}

    # -- database ------------------------------------------------------------------
    def create_database(self) -> None:
        asyncio.run(self._admin_sql(f'CREATE DATABASE "{self.db_name}"'))
        self.created = True

    def drop_database(self) -> None:
        if self.created:
            asyncio.run(self._admin_sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self.created = False

    async def _admin_sql(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg_admin_url, timeout=10)
        try:
            await conn.execute(sql, timeout=30)
        finally:
            await conn.close(timeout=5)

    def db_counters(self) -> dict[str, int]:
        """Transactions and written rows of the bench database, once the counters settle.

        An idle backend reports its statistics up to 10 seconds late (PostgreSQL 15's
        ``PGSTAT_IDLE_INTERVAL``), so wait that long, then read until two reads a
        second apart agree (at most about 15 more seconds).
        """
        time.sleep(11.0)
        return asyncio.run(self._settled_counters())

    async def _settled_counters(self) -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(self.pg_admin_url, timeout=10)
        try:
            last: dict[str, int] | None = None
            for _ in range(15):
                row = await conn.fetchrow(
                    "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
                    "FROM pg_stat_database WHERE datname = $1",
                    self.db_name,
                    timeout=5,
                )
                now = {k: int(v) for k, v in dict(row or {}).items()}
                if now == last:
                    return now
                last = now
                await asyncio.sleep(1.0)
            return last or {}
        finally:
            await conn.close(timeout=5)

    # -- redis ----------------------------------------------------------------------
    def clean_redis(self) -> int:
        """Delete every key under our prefix; returns how many."""
        import redis

        client = redis.Redis(
            host=self.redis_host, port=self.redis_port, db=self.redis_db, socket_timeout=5
        )
        try:
            keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            return len(keys)
        finally:
            client.close()

    # -- the server ----------------------------------------------------------------
    def env(self, *, port: int, upstream: str, data_dir: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _ours(k)}
        env.update(
            HOST="127.0.0.1",
            PORT=str(port),
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            REDIS_PREFIX=self.redis_prefix,
            SUPABASE_JWT_SECRET=self.secret,
            OPENAI_API_KEY="bench-key",
            OPENAI_BASE_URL=upstream,
            DEFAULT_PROVIDER="openai",
            LOG_LEVEL="warning",
            WS_MAX_CONNECTIONS_PER_USER="100000",
            WS_MAX_CONNECTIONS="1000000",
            CHAT_DATA_DIR=data_dir,
            SHUTDOWN_GRACE="2",
            ENVIRONMENT="bench",
        )
        env.update(self.extra_env)  # run.py --product-env: a setting tried under the bench
        return env

    def admin_setup(self, base_url: str) -> str:
        """Create the game, its rulebook and the global ``chat`` flag; returns the game id."""
        from chat_server.auth import mint_token

        token = mint_token(secret=self.secret, user_id="bench-admin", role="admin", ttl=3600)
        headers = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            if self.game_id is None:
                game = http.post("/admin/games", json={"name": "Bench Game", "status": "active"})
                game.raise_for_status()
                self.game_id = str(game.json()["id"])
                doc = http.post(
                    f"/admin/games/{self.game_id}/documents",
                    json={"language": "en", "title": "Rulebook", "content": RULEBOOK},
                )
                doc.raise_for_status()
            flag = http.put(
                "/admin/flags",
                json={
                    "feature_key": "chat",
                    "scope_type": "global",
                    "enabled": True,
                    "metadata": {"daily_limit": 10_000_000},
                },
            )
            flag.raise_for_status()
        return self.game_id


def _ours(name: str) -> bool:
    """Variables the product reads, which the bench sets itself (never inherited)."""
    upper = name.upper()
    prefixes = ("DATABASE_", "REDIS_", "SUPABASE_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "WS_")
    return upper.startswith(prefixes) or upper in {
        "DEFAULT_PROVIDER",
        "PROVIDER_FALLBACK",
        "AUTO_MIGRATE",
        "SEED_DEMO",
        "ENVIRONMENT",
        "LOG_LEVEL",
        "HOST",
        "PORT",
    }


class RedisMonitor:
    """Counts the commands Redis runs on one db number while it is open (``MONITOR``)."""

    def __init__(self, host: str, port: int, db: int) -> None:
        self.host, self.port, self.db = host, port, db
        self.client: Counter[str] = Counter()  # sent by clients
        self.scripted: Counter[str] = Counter()  # run inside Lua scripts
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def none(cls) -> RedisMonitor:
        """A monitor that watches nothing (for the relays, which use no Redis)."""
        return cls("", 0, -1)

    def __enter__(self) -> RedisMonitor:
        if not self.host:
            return self
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(b"MONITOR\r\n")
        self._sock = sock
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(0.3)
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(0.5)
        pending = b""
        mark = f"[{self.db} ".encode()
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            lines = (pending + data).split(b"\r\n")
            pending = lines.pop()
            for line in lines:
                at = line.find(mark)
                if at < 0:
                    continue
                rest = line[at + len(mark) :]
                where, _, command = rest.partition(b"] ")
                name = command.split(b" ", 1)[0].strip(b'"').decode("latin-1").upper()
                (self.scripted if where == b"lua" else self.client)[name] += 1
