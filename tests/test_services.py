"""Where the tests look for Postgres and Redis: never the server's own variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_servers_own_database_and_redis_urls_are_never_used() -> None:
    """A shell with DATABASE_URL and REDIS_URL exported for a production project: the
    tests still create, drop and empty only what TEST_POSTGRES_URL and TEST_REDIS_URL
    (or the loopback defaults) name."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TEST_POSTGRES") and k != "TEST_REDIS_URL"
    }
    env["DATABASE_URL"] = "postgresql://postgres:secret@db.prod.example:5432/postgres"
    env["REDIS_URL"] = "rediss://default:secret@cache.prod.example:6379"
    code = "import json, tests.services as s; print(json.dumps([s.POSTGRES_URL, s.REDIS_URL]))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [
        "postgresql://postgres@127.0.0.1:5432/test",
        "redis://127.0.0.1:6379/0",
    ]
