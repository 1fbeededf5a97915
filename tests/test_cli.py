"""``chat-server`` as a user runs it: serve, migrate, token, and the embedded default.

Every command runs in a subprocess (``python -m chat_server`` or the ``chat-server``
console script) with an environment built here, in a temporary working directory,
and every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

TIMEOUT = 60
START_TIMEOUT = 30
STOP_TIMEOUT = 10
CONSOLE_SCRIPT = Path(sys.executable).with_name("chat-server")


def clean_env(data_dir: Path, **values: str) -> dict[str, str]:
    """Just enough environment to run the CLI with its data under ``data_dir``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir.parent),
        "LANG": "C.UTF-8",
        "CHAT_DATA_DIR": str(data_dir),
    }
    env.update(values)
    return env


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m chat_server ARGS`` and its result, with a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "chat_server", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def mint(cwd: Path, env: dict[str, str], user: str, role: str, *extra: str) -> str:
    """A token from ``chat-server token``."""
    result = run_cli(cwd, env, "token", "--user", user, "--role", role, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def http(
    method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One JSON request with a timeout: (status, decoded body)."""
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


class Served:
    """A ``chat-server`` process: its URL, its stderr so far."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def serving(
    cwd: Path, env: dict[str, str], *args: str, port: int | None = None
) -> Iterator[Served]:
    """Run the console script until its banner shows, then SIGTERM it on the way out."""
    port = port or int(env["PORT"])
    log = cwd / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), *args], env=env, cwd=cwd, stdout=err, stderr=err
        )
    served = Served(proc, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "get a token" not in served.stderr():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{served.stderr()}")
            time.sleep(0.05)
        yield served
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=STOP_TIMEOUT)
        assert time.monotonic() - started < 5, "SIGTERM took too long"
        # uvicorn re-raises the signal after its graceful shutdown.
        assert code in (0, -signal.SIGTERM), served.stderr()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory (no `.env`) beside an empty data directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


# -- help -------------------------------------------------------------------------------


def test_help_lists_the_commands(workdir: Path, data_dir: Path) -> None:
    """`python -m chat_server --help` names serve, migrate, token and chat."""
    result = run_cli(workdir, clean_env(data_dir), "--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "token", "chat"):
        assert command in result.stdout
    assert "``" not in result.stdout  # plain words, no reST markup
    assert not any(data_dir.iterdir())


def test_unknown_command_is_a_usage_error(workdir: Path, data_dir: Path) -> None:
    """A mistyped command exits 2 with argparse's usage message."""
    result = run_cli(workdir, clean_env(data_dir), "srve")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# -- token ------------------------------------------------------------------------------


def test_token_verifies_with_the_local_secret(workdir: Path, data_dir: Path) -> None:
    """`token` signs with the secret it keeps (mode 0600) under CHAT_DATA_DIR."""
    token = mint(workdir, clean_env(data_dir), "u", "admin")
    secret_file = data_dir / "jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == "u"
    assert claims["user_role"] == "admin"
    assert claims["app_metadata"] == {"role": "admin"}
    assert "iss" not in claims
    assert claims["exp"] - claims["iat"] == 3600
    # The same secret is used the next time.
    again = mint(workdir, clean_env(data_dir), "v", "basic")
    assert jwt.decode(again, secret, algorithms=["HS256"], audience="authenticated")["sub"] == "v"


def test_token_ttl_is_honoured(workdir: Path, data_dir: Path) -> None:
    """`--ttl 120` makes a token that expires two minutes after it was issued."""
    before = int(time.time())
    token = mint(workdir, clean_env(data_dir), "u", "basic", "--ttl", "120")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert before <= claims["iat"] <= int(time.time())


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_token_refuses_a_bad_ttl(workdir: Path, data_dir: Path, ttl: str) -> None:
    """A zero, negative or non-numeric `--ttl` is a usage error, not an expired token."""
    result = run_cli(workdir, clean_env(data_dir), "token", "--user", "u", "--ttl", ttl)
    assert result.returncode == 2
    assert "--ttl" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("environment", ["prod", "PROD", "production"])
def test_token_refuses_in_prod(workdir: Path, data_dir: Path, environment: str) -> None:
    """With ENVIRONMENT=prod, `token` prints no token and says why."""
    env = clean_env(data_dir, ENVIRONMENT=environment, SUPABASE_JWT_SECRET="s" * 40)
    result = run_cli(workdir, env, "token", "--user", "u", "--role", "admin")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "prod" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (data_dir / "jwt-secret").exists()


@pytest.mark.parametrize("supabase_url", ["https://abc.supabase.co", "https://abc.supabase.co/"])
def test_token_carries_the_supabase_issuer(
    workdir: Path, data_dir: Path, supabase_url: str
) -> None:
    """With SUPABASE_URL set, the token's `iss` is SUPABASE_URL/auth/v1 and it uses the secret."""
    secret = "configured-secret-0123456789-0123456789"
    env = clean_env(data_dir, SUPABASE_URL=supabase_url, SUPABASE_JWT_SECRET=secret)
    token = mint(workdir, env, "u", "developer")
    claims = jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        audience="authenticated",
        issuer="https://abc.supabase.co/auth/v1",
    )
    assert claims["user_role"] == "developer"
    assert not (data_dir / "jwt-secret").exists()  # the configured secret, not a local one


def test_token_with_an_unknown_role_says_it_is_not_staff(workdir: Path, data_dir: Path) -> None:
    """`--role superuser` still mints a token, and says the role is custom, not staff."""
    result = run_cli(workdir, clean_env(data_dir), "token", "--user", "u", "--role", "superuser")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert claims["user_role"] == "superuser"
    assert "'superuser' is not one of admin, developer, basic" in result.stderr
    assert "/admin refuses it" in result.stderr


def test_token_with_a_known_role_is_quiet(workdir: Path, data_dir: Path) -> None:
    """A known role mints without a word on stderr, once the signing secret exists; the
    run that makes it says where, since only a server using that folder accepts it."""
    args = ("token", "--user", "u", "--role", "developer")
    first = run_cli(workdir, clean_env(data_dir), *args)
    assert first.returncode == 0
    assert f"made a new signing secret in {(data_dir / 'jwt-secret').resolve()}" in first.stderr
    result = run_cli(workdir, clean_env(data_dir), *args)
    assert result.returncode == 0
    assert result.stderr == ""


def test_a_dotenv_directory_is_reported(workdir: Path, data_dir: Path) -> None:
    """A `.env` that is a directory stops every command with one line, exit 2."""
    (workdir / ".env").mkdir()
    result = run_cli(workdir, clean_env(data_dir), "token", "--user", "u")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "chat-server: invalid configuration: .env cannot be read: it is a directory"
    ]


def test_token_without_a_secret_for_a_jwks_project(workdir: Path, data_dir: Path) -> None:
    """SUPABASE_URL without SUPABASE_JWT_SECRET: no local token, a message naming the secret."""
    env = clean_env(data_dir, SUPABASE_URL="https://abc.supabase.co")
    result = run_cli(workdir, env, "token", "--user", "u")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "SUPABASE_JWT_SECRET" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- migrate ----------------------------------------------------------------------------


def test_migrate_sqlite_twice(workdir: Path, data_dir: Path, tmp_path: Path) -> None:
    """`migrate` creates the schema in a SQLite file, and a second run is a no-op."""
    db = tmp_path / "x.db"
    env = clean_env(data_dir, DATABASE_URL=f"sqlite:///{db}")
    first, second = run_cli(workdir, env, "migrate"), run_cli(workdir, env, "migrate")
    assert first.returncode == 0, first.stderr
    # the app's 10 tables (not SQLite's full-text index tables): as on Postgres
    assert re.search(r"created the schema: 10 tables, \d+ migrations? \(revision", first.stderr)
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stderr and "nothing to do" in second.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"games", "alembic_version"} <= tables


def test_migrate_says_which_revisions_it_applied(
    workdir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A database at the first revision: `migrate` names the revisions it went through."""
    from alembic import command
    from sqlalchemy import create_engine

    from chat_server.storage.migrate import alembic_config

    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
    finally:
        engine.dispose()
    result = run_cli(workdir, clean_env(data_dir, DATABASE_URL=url), "migrate")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^chat-server: applied \d+ migrations? \(revision 0001 to \d{4}\); \d+ tables$",
        result.stderr.strip(),
    ), result.stderr


async def _pg_tables(url: str) -> set[str]:
    import asyncpg

    async with asyncio.timeout(10):
        conn = await asyncpg.connect(url, timeout=5)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
    return {row["tablename"] for row in rows}


@pytest.mark.postgres
def test_migrate_postgres_twice(workdir: Path, data_dir: Path, postgres_url: str) -> None:
    """`migrate` creates the schema in Postgres, and a second run is a no-op."""
    env = clean_env(data_dir, DATABASE_URL=postgres_url)
    first, second = run_cli(workdir, env, "migrate"), run_cli(workdir, env, "migrate")
    assert first.returncode == 0, first.stderr
    assert "created the schema: 10 tables" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stderr
    assert {"games", "alembic_version"} <= asyncio.run(_pg_tables(postgres_url))


def test_migrate_sql_prints_without_connecting(workdir: Path, data_dir: Path) -> None:
    """`migrate --sql` prints Postgres DDL even when the database cannot be reached."""
    with closed_port() as port:
        env = clean_env(data_dir, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/nowhere")
        result = run_cli(workdir, env, "migrate", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE games" in result.stdout
    assert "CREATE TABLE alembic_version" in result.stdout
    assert not (data_dir / "chat.db").exists()


def test_migrate_unreachable_database_is_one_line(workdir: Path, data_dir: Path) -> None:
    """`migrate` against a closed port fails with one line, no traceback, no password."""
    with closed_port() as port:
        url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/nowhere"
        result = run_cli(workdir, clean_env(data_dir, DATABASE_URL=url), "migrate")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database is unavailable" in lines[0]
    assert "hunter2" not in result.stderr


# -- serve: the embedded default ---------------------------------------------------------


def test_embedded_default_serves_and_keeps_data(workdir: Path, data_dir: Path) -> None:
    """Bare `chat-server` starts on SQLite, serves tokens it minted, and survives a restart."""
    env = clean_env(data_dir, PORT=str(free_port()))
    with serving(workdir, env) as server:
        banner = server.stderr()
        assert f"http://localhost:{server.port}" in banner
        assert "chat-server token --user me --role admin" in banner
        assert http("GET", server.url + "/healthz") == (200, {"status": "ok"})
        assert http("GET", server.url + "/games")[0] == 401

        user = mint(workdir, env, "cli-user", "basic")
        status, body = http("GET", server.url + "/games", user)
        assert status == 200, body
        assert len(body["games"]) >= 1  # the demo games

        admin = mint(workdir, env, "cli-admin", "admin")
        assert http("POST", server.url + "/admin/games", user, {"name": "Nope"})[0] == 403
        status, created = http(
            "POST", server.url + "/admin/games", admin, {"name": "Persisted Game", "bgg_id": 4242}
        )
        assert status == 201, created

    with serving(workdir, env) as server:
        status, game = http("GET", f"{server.url}/games/{created['id']}", user)
        assert status == 200, game
        assert game["name"] == "Persisted Game"
        names = [g["name"] for g in http("GET", server.url + "/games?limit=100", user)[1]["games"]]
        assert names.count("Persisted Game") == 1
        assert len(names) == len(body["games"]) + 1  # demo games were not seeded twice


@pytest.mark.postgres
def test_postgres_starts_empty_and_says_how_to_get_games(
    workdir: Path, data_dir: Path, postgres_url: str
) -> None:
    """On Postgres no demo is seeded unless asked: the start says so; SEED_DEMO=true seeds."""
    env = clean_env(data_dir, PORT=str(free_port()), DATABASE_URL=postgres_url)
    with serving(workdir, env) as server:
        deadline = time.monotonic() + 10
        while "no games yet" not in server.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "SEED_DEMO=true" in server.stderr()
        token = mint(workdir, env, "u", "basic")
        assert http("GET", server.url + "/games", token)[1]["games"] == []

    with serving(workdir, {**env, "SEED_DEMO": "true"}) as server:
        status, body = http("GET", server.url + "/games", token)
        assert status == 200, body
        assert {g["name"] for g in body["games"]} == {"Catan", "Tic-Tac-Toe"}
        time.sleep(0.5)  # the hint would come right after the banner
        assert "no games yet" not in server.stderr()


def test_server_refuses_a_foreign_token(workdir: Path, data_dir: Path) -> None:
    """A token signed with any other secret than the local one is refused with 401."""
    env = clean_env(data_dir, PORT=str(free_port()))
    forged = jwt.encode(
        {"sub": "u", "aud": "authenticated", "exp": int(time.time()) + 600},
        "not-the-local-secret-0123456789-0123456789",
        algorithm="HS256",
    )
    with serving(workdir, env) as server:
        status, body = http("GET", server.url + "/games", forged)
    assert status == 401
    assert body["error_code"] == "UNAUTHORIZED"


def test_serve_flags_override_the_environment(workdir: Path, data_dir: Path) -> None:
    """`serve --host H --port P` wins over HOST and PORT (both flags together)."""
    port = free_port()
    env = clean_env(data_dir, HOST="192.0.2.1", PORT="1")
    with serving(workdir, env, "serve", "--host", "127.0.0.1", "--port", str(port), port=port) as s:
        assert http("GET", s.url + "/healthz")[0] == 200
        assert f"http://localhost:{port}" in s.stderr()


def test_the_default_command_takes_serve_flags(workdir: Path, data_dir: Path) -> None:
    """`chat-server --port P` serves as `chat-server serve --port P` does."""
    port = free_port()
    env = clean_env(data_dir, PORT="1")
    with serving(workdir, env, "--port", str(port), port=port) as s:
        assert http("GET", s.url + "/healthz")[0] == 200


def test_port_in_use_fails_without_a_banner(workdir: Path, data_dir: Path) -> None:
    """A port already taken: one line naming it, exit 1, before any migration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(data_dir, PORT=str(port))
        result = subprocess.run(
            [str(CONSOLE_SCRIPT)],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"chat-server: cannot listen on 127.0.0.1 port {port}: address already in use "
        "(another server? set PORT or --port)"
    ]


def test_prod_without_any_token_key_stops_in_one_line(workdir: Path, data_dir: Path) -> None:
    """ENVIRONMENT=prod with no way to verify tokens: one line naming the variables, exit 2."""
    result = run_cli(workdir, clean_env(data_dir, ENVIRONMENT="prod", PORT="0"), "serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SUPABASE_JWT_SECRET" in lines[0]
