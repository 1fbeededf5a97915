"""``chat-server``: serve (the default), migrate, token, chat.

A bad configuration value prints one line naming the variable and exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
from collections.abc import Sequence

from .config import ConfigError, Settings, load_settings
from .errors import ChatServerError
from .logs import configure_logging

__all__ = ["main"]

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    migrate = sub.add_parser("migrate", help="bring the database schema to the latest version")
    migrate.add_argument(
        "--sql", action="store_true", help="print the migrations as SQL instead of running them"
    )
    token = sub.add_parser("token", help="mint a token with the configured secret (not in prod)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", default="basic")
    token.add_argument(
        "--ttl", type=_positive_int, default=3600, help="lifetime in seconds (default 3600)"
    )
    chat = sub.add_parser("chat", help="a terminal client that streams answers")
    chat.add_argument("--game", required=True, help="game id (see GET /games)")
    chat.add_argument("--url", default=None, help="server base URL (default: HOST and PORT)")
    chat.add_argument("--token", default=None, help="a token (default: a dev token)")
    chat.add_argument("--session", default=None, help="resume this session")
    chat.add_argument("--user", default="cli-user")
    chat.add_argument("--provider", default=None)
    chat.add_argument("--language", default="en")
    args = parser.parse_args(argv)

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

    async def run() -> None:
        db = Database(url, prepared_statement_cache=settings.database_prepared_statement_cache)
        try:
            await upgrade(db)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except (ChatServerError, OSError) as exc:
        print(f"chat-server: migrate failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print("database schema is up to date", file=sys.stderr)
    return 0


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
    from .services import with_local_secret

    if settings.is_prod:
        print("chat-server: `token` refuses to run when ENVIRONMENT is prod", file=sys.stderr)
        return 1
    secret = with_local_secret(settings).supabase_jwt_secret
    if not secret:
        print(
            "chat-server: tokens are verified with the JWKS of SUPABASE_URL/SUPABASE_JWKS_URL; "
            "set SUPABASE_JWT_SECRET to mint one locally",
            file=sys.stderr,
        )
        return 1
    print(mint_token(secret=secret, user_id=user, role=role, ttl=ttl, issuer=settings.jwt_issuer))
    return 0


def _serve(settings: Settings) -> int:
    from .app import create_app
    from .serving import ChatServer, uvicorn_config

    problem = asyncio.run(_database_problem(settings))
    if problem:
        print(f"chat-server: {problem}", file=sys.stderr)
        return 1

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

    config = uvicorn_config(create_app(settings), settings)
    Server(config).run()
    return 0


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
        f"(docs: /docs, WebSocket: ws://{shown}:{port}/ws/chat)\n"
        f"get a token with: chat-server token --user me --role basic",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
