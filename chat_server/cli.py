"""``chat-server``: serve (the default), migrate, token, chat.

A bad configuration value prints one line naming the variable and exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .auth import DEFAULT_ROLE, STAFF_ROLES
from .config import ConfigError, Settings, load_settings
from .errors import ChatServerError
from .logs import configure_logging

if TYPE_CHECKING:
    from .storage.engine import Database

__all__ = ["main"]

EXIT_CONFIG = 2
KNOWN_ROLES = (*sorted(STAFF_ROLES), DEFAULT_ROLE)
DESCRIPTION = (
    "A streaming chat server: serve (the default), migrate, token, chat. "
    "Settings come from the environment or a .env file (docs/configuration.md)."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-server", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser(
        "serve", help="run the server (default)", description="Run the server until SIGTERM."
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    migrate = sub.add_parser(
        "migrate",
        help="bring the database schema to the latest version",
        description="Bring DATABASE_URL's schema to the latest version and say what was done.",
    )
    migrate.add_argument(
        "--sql", action="store_true", help="print the migrations as SQL instead of running them"
    )
    token = sub.add_parser(
        "token",
        help="mint a token with the configured secret (not in prod)",
        description="Print a token signed with SUPABASE_JWT_SECRET (or the local secret).",
    )
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument(
        "--role",
        default=DEFAULT_ROLE,
        help="admin or developer (staff: may open /admin), basic (a player; the default), "
        "or a custom role that flags can target",
    )
    token.add_argument(
        "--ttl", type=_positive_int, default=3600, help="lifetime in seconds (default 3600)"
    )
    chat = sub.add_parser(
        "chat",
        help="a terminal client that streams answers",
        description="Chat about one game from the terminal; answers stream as they arrive.",
    )
    chat.add_argument("--game", required=True, help="game id (see GET /games)")
    chat.add_argument("--url", default=None, help="server base URL (default: HOST and PORT)")
    chat.add_argument(
        "--token",
        default=None,
        help="a token (default: $TOKEN when set, else a dev token minted here)",
    )
    chat.add_argument("--session", default=None, help="resume this session")
    chat.add_argument("--user", default="cli-user", help="the dev token's user id")
    chat.add_argument("--provider", default=None, help="openai, anthropic, gemini or local")
    chat.add_argument("--language", default="en", help="the session's language (default en)")
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0].startswith("-") and words[0] not in ("-h", "--help"):
        words.insert(0, "serve")  # the default command takes its options too: --port 8765
    args = parser.parse_args(words)

    overrides: dict[str, object] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    command = args.command or "serve"
    if (
        command == "serve"
        and settings.is_prod
        and not (settings.supabase_jwt_secret or settings.jwks_url)
    ):
        print(
            "chat-server: invalid configuration: SUPABASE_URL, SUPABASE_JWKS_URL or "
            "SUPABASE_JWT_SECRET is required when ENVIRONMENT is prod",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if command == "migrate":
        return _migrate(settings, sql=args.sql)
    if command == "token":
        return _token(settings, args.user, args.role, args.ttl)
    if command == "chat":
        from .terminal import run_chat

        return run_chat(settings, args)
    return _serve(settings)


def _migrate(settings: Settings, *, sql: bool) -> int:
    from .services import database_url
    from .storage.engine import Database
    from .storage.migrate import offline_sql, upgrade

    url = database_url(settings)
    if sql:
        sys.stdout.write(offline_sql(url))
        return 0

    async def run() -> tuple[_Schema, _Schema]:
        db = Database(url, prepared_statement_cache=settings.database_prepared_statement_cache)
        try:
            old = await upgrade(db)  # read under the migration lock
            return (old, 0), await _schema(db)
        finally:
            await db.dispose()

    try:
        before, after = asyncio.run(run())
    except (ChatServerError, OSError) as exc:
        print(f"chat-server: migrate failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"chat-server: {_migrated(url, before, after)}", file=sys.stderr)
    return 0


_Schema = tuple[str | None, int]  # (alembic revision, number of tables)


async def _schema(db: Database) -> _Schema:
    """The schema's revision and how many of the app's tables the database holds (not
    SQLite's full-text index tables nor Alembic's own: the same count on either
    database)."""
    from sqlalchemy import Connection, inspect, text

    from .storage.schema import metadata

    def read(conn: Connection) -> _Schema:
        names = inspect(conn).get_table_names()
        revision = None
        if "alembic_version" in names:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            revision = row[0] if row else None
        return revision, len(set(names) & metadata.tables.keys())

    async with db.read(timeout=60) as conn:
        return await conn.run_sync(read)


def _migrated(url: str, before: _Schema, after: _Schema) -> str:
    """What ``migrate`` did, in words."""
    from alembic.script import ScriptDirectory

    from .storage.migrate import alembic_config

    (old, _), (new, tables) = before, after
    if old == new:
        return f"the database schema was already up to date (revision {new}); nothing to do"
    script = ScriptDirectory.from_config(alembic_config(url))
    applied = len(list(script.iterate_revisions(new, old))) if new else 0
    if old is None:
        return (
            f"created the schema: {tables} tables, {_count(applied, 'migration')} (revision {new})"
        )
    return f"applied {_count(applied, 'migration')} (revision {old} to {new}); {tables} tables"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _one_line(exc: BaseException) -> str:
    """The error and its immediate cause on one line (causes never carry the URL)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause):
        text += f" ({type(cause).__name__}: {str(cause).splitlines()[0]})"
    return text


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return number


def _token(settings: Settings, user: str, role: str, ttl: int) -> int:
    from .auth import mint_token
    from .services import local_secret_path, with_local_secret

    if settings.is_prod:
        print("chat-server: `token` refuses to run when ENVIRONMENT is prod", file=sys.stderr)
        return 1
    kept = local_secret_path(settings)
    made_here = not (settings.supabase_jwt_secret or settings.jwks_url or kept.exists())
    secret = with_local_secret(settings).supabase_jwt_secret
    if made_here and secret:
        print(
            f"chat-server: note: made a new signing secret in {kept.resolve()}; only a server "
            "with this CHAT_DATA_DIR (the default: .chat-data in the folder it starts from) "
            "accepts the token",
            file=sys.stderr,
        )
    if not secret:
        print(
            "chat-server: tokens are verified with the JWKS of SUPABASE_URL/SUPABASE_JWKS_URL; "
            "set SUPABASE_JWT_SECRET to mint one locally",
            file=sys.stderr,
        )
        return 1
    if role not in KNOWN_ROLES:
        print(
            f"chat-server: note: {role!r} is not one of {', '.join(KNOWN_ROLES)}; the token "
            "carries it as a custom role (flags may target it), which is not staff: "
            "/admin refuses it",
            file=sys.stderr,
        )
    print(mint_token(secret=secret, user_id=user, role=role, ttl=ttl, issuer=settings.jwt_issuer))
    return 0


def _serve(settings: Settings) -> int:
    from .app import create_app
    from .serving import ChatServer, listening_sockets, uvicorn_config

    try:
        # Bound before the app starts: a port in use is one line, before any migration.
        sockets = listening_sockets(settings.host, settings.port)
    except OSError as exc:
        print(
            f"chat-server: cannot listen on {settings.host} port {settings.port}: "
            f"{(exc.strerror or str(exc)).lower()} (another server? set PORT or --port)",
            file=sys.stderr,
        )
        return 1
    problem = asyncio.run(_database_problem(settings))
    if problem:
        for sock in sockets:
            sock.close()
        print(f"chat-server: {problem}", file=sys.stderr)
        return 1

    app = create_app(settings)

    class Server(ChatServer):
        """Says where it listens and how to get a token once the port is really bound."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                # Everything made so far (modules, services, pools, caches) lives as long
                # as the process: collect once, then freeze it out of the collector, so
                # that a full collection under load walks only what turns allocate (95-190
                # ms pauses, stalling every stream, fell to 8-18 ms; docs/performance.md).
                # Here, not in ChatServer: the tests run many servers inside one process.
                gc.collect()
                gc.freeze()
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else 0
                _banner(settings.host, port or settings.port)
                services = getattr(app.state, "services", None)
                if services is not None and not await _any_game(services.db):
                    print(
                        "no games yet: add them with POST /admin/games (or "
                        "/admin/games/import), or restart with SEED_DEMO=true for the demo",
                        file=sys.stderr,
                        flush=True,
                    )

    Server(uvicorn_config(app, settings)).run(sockets=sockets)
    return 0


async def _any_game(db: Database) -> bool:
    """Whether the database holds a game (a fresh Postgres one holds none)."""
    from sqlalchemy import select

    from .errors import Unavailable
    from .storage.schema import games

    try:
        async with db.read() as conn:
            return (await conn.execute(select(games.c.id).limit(1))).first() is not None
    except Unavailable:
        return True  # say nothing rather than something wrong


async def _database_problem(settings: Settings) -> str | None:
    """One line saying why the database cannot be reached, or None."""
    from .errors import Unavailable
    from .services import database_url
    from .storage.engine import Database

    db = Database(
        database_url(settings), prepared_statement_cache=settings.database_prepared_statement_cache
    )
    try:
        await db.ping(timeout=10.0)
    except Unavailable as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "timeout"
        return f"the database is unavailable ({cause}); check DATABASE_URL"
    finally:
        await db.dispose()
    return None


def _banner(host: str, port: int) -> None:
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    print(
        f"chat-server listening on http://{shown}:{port} "
        f"(API docs: /docs, admin page: /admin, WebSocket: ws://{shown}:{port}/ws/chat)\n"
        f"get a token with: {command_name()} token --user me --role admin "
        "(admin opens /admin; --role basic is a player)",
        file=sys.stderr,
        flush=True,
    )


def command_name() -> str:
    """How to call ``chat-server`` from here: its name when it is on PATH, else a path."""
    script = Path(sys.executable).with_name("chat-server")
    if not script.exists():
        return f"{sys.executable} -m chat_server"
    on_path = shutil.which("chat-server")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "chat-server"
    relative = os.path.relpath(script)
    return str(script) if relative.startswith("..") else relative


if __name__ == "__main__":
    raise SystemExit(main())
