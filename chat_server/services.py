"""Everything the app shares, made in the lifespan and closed at shutdown.

``build_services`` is the one place that creates clients (database engine, Redis,
provider SDKs, the JWKS and BoardGameGeek HTTP clients); nothing is created at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .auth import TokenVerifier
from .backplane import Backplane, MemoryBackplane, RedisBackplane
from .bgg import BggClient
from .config import Settings
from .connections import Connections
from .demo import seed_demo_games
from .denials import DenialLog
from .document_files import DOCUMENTS_CHANNEL, FileStore, build_file_store
from .errors import Unavailable
from .flag_cache import FlagCache
from .providers import Provider, build_providers
from .quotas import MemoryQuotaCounter, QuotaCounter, RedisQuotaCounter
from .redis_client import RedisClient, connect_redis, discover_cluster, release_idle
from .retrieval.embedder import warm_up
from .retrieval.index import Indexes
from .sessions.chat import GAMES_CHANNEL, ChatService
from .sessions.events import EventFeed, MemoryEvents, RedisEvents
from .sessions.hub import SessionHub
from .sessions.limits import UserRates
from .sessions.manager import TurnManager
from .sessions.monitor import Monitor
from .sessions.registry import MemoryRegistry, RedisRegistry, Registry
from .sessions.relay import TurnRelay
from .storage import Database
from .storage.chat import fail_stale_turns
from .storage.engine import default_sqlite_url
from .storage.ids import new_id, utcnow
from .storage.migrate import upgrade
from .storage.profiles import RoleReader
from .user_slots import MemorySlots, RedisSlots, UserSlots

__all__ = ["Services", "build_services", "close_services", "database_url", "local_secret"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services:
    settings: Settings
    db: Database
    redis: RedisClient | None
    backplane: Backplane
    verifier: TokenVerifier
    quotas: QuotaCounter
    flags: FlagCache
    providers: dict[str, Provider]
    bgg: BggClient
    manager: TurnManager
    chat: ChatService
    hub: SessionHub
    connections: Connections
    slots: UserSlots
    request_rates: UserRates  # per user, for the HTTP chat routes (sockets count frames)
    registry: Registry
    monitor: Monitor
    relay: TurnRelay
    files: FileStore
    instance_id: str
    started_at: float = field(default_factory=time.time)

    async def drain(self, grace: float) -> None:
        """SIGTERM: refuse new turns, let running ones finish for ``grace`` seconds (then
        cancel them), and close every connection with 1012."""
        self.chat.draining = True
        await self.manager.shutdown(grace)
        for connection in self.connections.all():
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.connections.empty.wait()


def database_url(settings: Settings) -> str:
    return settings.database_url or default_sqlite_url(settings.chat_data_dir)


def local_secret_path(settings: Settings) -> Path:
    """Where the local signing secret is kept (under CHAT_DATA_DIR)."""
    return Path(settings.chat_data_dir) / "jwt-secret"


def local_secret(settings: Settings) -> str:
    """The signing secret kept under CHAT_DATA_DIR, made on first use (mode 0600)."""
    path = local_secret_path(settings)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def with_local_secret(settings: Settings) -> Settings:
    """Settings with a signing secret: the configured one, or the local one (not in prod)."""
    if settings.supabase_jwt_secret or settings.jwks_url or settings.is_prod:
        return settings
    return settings.model_copy(update={"supabase_jwt_secret": local_secret(settings)})


async def build_services(settings: Settings) -> Services:
    """Connect, migrate (if asked), seed (if asked) and wire everything together."""
    db = Database(
        database_url(settings),
        prepared_statement_cache=settings.database_prepared_statement_cache,
        pool_size=settings.database_pool_size,
        timeout=settings.database_timeout,
    )
    stack = contextlib.AsyncExitStack()
    stack.push_async_callback(db.dispose)
    try:
        warm_up()  # the retrieval model, in a thread (chat_server/retrieval)
        if settings.auto_migrate:
            await upgrade(db)
        seed = settings.seed_demo if settings.seed_demo is not None else not settings.database_url
        if seed:
            added = await seed_demo_games(db, settings.environment)
            if added:
                log.info("seeded %d demo games", added)
        redis: RedisClient | None = None
        backplane: Backplane
        quotas: QuotaCounter
        if settings.redis_url:
            redis = connect_redis(settings)
            stack.push_async_callback(redis.aclose)
            idle = asyncio.create_task(release_idle(redis, settings.redis_idle_timeout))
            stack.push_async_callback(_stop, idle)
            await discover_cluster(redis, settings.redis_timeout * 3)
            backplane = RedisBackplane(
                redis, prefix=settings.redis_prefix, timeout=settings.redis_timeout
            )
            quotas = RedisQuotaCounter(
                redis,
                prefix=settings.redis_prefix,
                timeout=settings.redis_timeout,
                # Half the pool: a burst of turns leaves room for everything else.
                max_in_flight=max(1, settings.redis_max_connections // 2),
            )
        else:
            backplane = MemoryBackplane()
            quotas = MemoryQuotaCounter(prefix=settings.redis_prefix)
        stack.push_async_callback(backplane.aclose)
        await quotas.start()
        stack.push_async_callback(quotas.aclose)

        roles = RoleReader(db)  # a crowd's lookups share queries
        stack.push_async_callback(roles.aclose)
        verifier = TokenVerifier.from_settings(settings, role_lookup=roles.get)
        stack.push_async_callback(verifier.aclose)
        flags = FlagCache(
            db,
            environment=settings.environment,
            backplane=backplane,
            redis=redis,
            prefix=settings.redis_prefix,
        )
        await flags.start()
        stack.push_async_callback(flags.aclose)
        providers = build_providers(settings)
        for provider in providers.values():
            stack.push_async_callback(provider.aclose)
        bgg = BggClient(
            base_url=settings.bgg_base_url,
            token=settings.bgg_api_token,
            timeout=settings.bgg_timeout,
            max_wait=settings.bgg_max_wait,
        )
        stack.push_async_callback(bgg.aclose)
        instance_id = f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:]}"
        if redis is None:
            # One instance: any answer still streaming is from this process's past life.
            # (Several instances: the monitor's orphan sweep handles dead instances.)
            with contextlib.suppress(Unavailable):
                stale = await fail_stale_turns(db, older_than=utcnow())
                if stale:
                    log.warning("marked %d interrupted answers as error", len(stale))
        chat: ChatService
        manager = TurnManager(
            persist=lambda turn: chat.persist(turn),
            refund=lambda turn: chat.refund(turn),
            first_token_timeout=settings.provider_first_token_timeout,
            idle_timeout=settings.provider_idle_timeout,
            resume_grace=settings.ws_resume_grace,
            prices=settings.prices,
        )
        denials = DenialLog(db)
        await denials.start()
        stack.push_async_callback(denials.aclose)
        chat = ChatService(
            settings=settings,
            db=db,
            denials=denials,
            flags=flags,
            quotas=quotas,
            providers=providers,
            manager=manager,
            instance_id=instance_id,
            indexes=Indexes(),  # this app's indexes of its games' passages
        )
        connections = Connections(settings.ws_max_connections)
        slots: UserSlots
        if redis is not None:
            slots = RedisSlots(
                redis,
                settings.ws_max_connections_per_user,
                prefix=settings.redis_prefix,
                timeout=settings.redis_timeout,
            )
        else:
            slots = MemorySlots(settings.ws_max_connections_per_user)
        await slots.start()
        stack.push_async_callback(slots.aclose)
        registry: Registry
        events: EventFeed
        if redis is not None:
            registry = RedisRegistry(
                redis,
                instance_id,
                prefix=settings.redis_prefix,
                timeout=settings.redis_timeout,
                ttl=settings.registry_ttl,
                heartbeat_interval=settings.registry_heartbeat,
            )
            events = RedisEvents(
                redis, prefix=settings.redis_prefix, timeout=settings.redis_timeout
            )
        else:
            registry = MemoryRegistry(instance_id)
            events = MemoryEvents()
        relay = TurnRelay(
            redis=redis,
            backplane=backplane,
            manager=manager,
            instance_id=instance_id,
            prefix=settings.redis_prefix,
            # the longest an owner's turn may stay silent: waiting for the provider, then
            # storing the answer before its turn.completed
            silence=max(settings.provider_first_token_timeout, settings.provider_idle_timeout)
            + settings.database_timeout
            + 5.0,
        )
        manager.listeners.append(relay.announce)
        stack.push_async_callback(relay.aclose)
        hub = SessionHub(
            chat=chat,
            manager=manager,
            relay=relay,
            registry=registry,
            feed=events,
            instance_id=instance_id,
        )
        monitor = Monitor(
            db=db,
            registry=registry,
            events=events,
            backplane=backplane,
            hub=hub,
            quotas=quotas,
            sweep_interval=settings.orphan_sweep_interval,
            orphan_age=settings.registry_ttl + 5,
        )
        manager.listeners.append(monitor.on_turn)
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        files = build_file_store(
            settings.supabase_url, settings.supabase_service_key, settings.documents_bucket
        )
        stack.push_async_callback(files.aclose)

        async def documents_changed(_channel: str, game_id: str) -> None:
            chat.rulebook_added(game_id)  # its languages and its passages' index: read again

        async def game_changed(_channel: str, game_id: str) -> None:
            chat.game_changed(game_id)  # read again before its next turn (hidden: not_found)

        backplane.subscribe(DOCUMENTS_CHANNEL, documents_changed)
        backplane.subscribe(GAMES_CHANNEL, game_changed)
        if isinstance(backplane, RedisBackplane):
            backplane.on_resubscribed.append(chat.rulebooks_unknown)
            backplane.on_resubscribed.append(chat.games_unknown)
        await backplane.start()  # after every subscriber registered
    except BaseException:
        await stack.aclose()
        raise
    services = Services(
        settings=settings,
        db=db,
        redis=redis,
        backplane=backplane,
        verifier=verifier,
        quotas=quotas,
        flags=flags,
        providers=providers,
        bgg=bgg,
        manager=manager,
        chat=chat,
        hub=hub,
        connections=connections,
        slots=slots,
        request_rates=UserRates(settings.ws_max_frames_per_second, settings.ws_frame_burst),
        registry=registry,
        monitor=monitor,
        relay=relay,
        files=files,
        instance_id=instance_id,
    )
    services._stack = stack  # type: ignore[attr-defined]
    return services


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def close_services(services: Services) -> None:
    """Finish running turns (up to the shutdown grace), then close every client."""
    await services.drain(services.settings.shutdown_grace)
    stack: contextlib.AsyncExitStack = services._stack  # type: ignore[attr-defined]
    await stack.aclose()
