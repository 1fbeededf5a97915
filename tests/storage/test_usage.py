"""Usage aggregates for staff: turns, tokens, cost, errors, cancels, refusals and first
token p50/p95, by game, user, provider, model or day, over a period; refusals recorded
in batches."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from prometheus_client import REGISTRY

from chat_server.denials import Denial, DenialLog
from chat_server.storage import Database
from chat_server.storage.chat import begin_turn, create_session, fail_stale_turns
from chat_server.storage.ids import new_id
from chat_server.storage.schema import usage_events
from chat_server.storage.usage import aggregate_usage

from .conftest import WAIT

DAY = datetime(2026, 3, 14, tzinfo=UTC)
_turns = itertools.count()


def event(
    *,
    game: str = "catan",
    user: str = "ann",
    provider: str = "openai",
    at: datetime = DAY + timedelta(hours=12),
    finish: str = "stop",
    first_ms: int | None = 100,
    tokens: tuple[int, int] = (10, 5),
    model: str = "m",
    cost: float | None = None,
    estimated: bool = False,
    cache: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    return {
        "turn_id": f"turn-{next(_turns)}",
        "session_id": "s",
        "user_id": user,
        "game_id": game,
        "provider": provider,
        "model": model,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cache_read_tokens": cache[0],
        "cache_creation_tokens": cache[1],
        "estimated": estimated,
        "cost_usd": cost,
        "first_token_ms": first_ms,
        "total_ms": 500,
        "finish_reason": finish,
        "error_code": "provider_error" if finish == "error" else None,
        "created_at": at,
    }


async def store(db: Database, events: list[dict[str, Any]]) -> None:
    async with db.write() as conn:
        await conn.execute(usage_events.insert(), events)


async def day_rows(db: Database, group_by: Any) -> dict[str, dict[str, Any]]:
    rows = await aggregate_usage(db, start=DAY, end=DAY + timedelta(days=1), group_by=group_by)
    return {r["key"]: r for r in rows}


async def test_rows_by_game_user_and_provider(db: Database) -> None:
    """Each grouping sums turns and tokens per key and counts errors and cancels."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [
                event(game="catan", user="ann", provider="openai", tokens=(10, 5)),
                event(game="catan", user="bob", provider="anthropic", tokens=(20, 7)),
                event(game="catan", user="ann", provider="openai", finish="error", tokens=(3, 0)),
                event(game="azul", user="ann", provider="openai", finish="cancelled"),
                event(game="azul", user="bob", provider="local", finish="length"),
            ],
        )
        by_game = await day_rows(db, "game")
        by_user = await day_rows(db, "user")
        by_provider = await day_rows(db, "provider")
    assert set(by_game) == {"catan", "azul"}
    catan = by_game["catan"]
    assert (catan["turns"], catan["input_tokens"], catan["output_tokens"]) == (3, 33, 12)
    assert (catan["errors"], catan["cancelled"]) == (1, 0)
    azul = by_game["azul"]
    assert (azul["turns"], azul["errors"], azul["cancelled"]) == (2, 0, 1)
    assert {k: r["turns"] for k, r in by_user.items()} == {"ann": 3, "bob": 2}
    assert (by_user["ann"]["errors"], by_user["ann"]["cancelled"]) == (1, 1)
    assert {k: r["turns"] for k, r in by_provider.items()} == {
        "openai": 3,
        "anthropic": 1,
        "local": 1,
    }
    assert set(catan) == {
        "key",
        "turns",
        "input_tokens",
        "output_tokens",
        "errors",
        "cancelled",
        "first_token_ms_p50",
        "first_token_ms_p95",
        "cost_usd",
        "unpriced",
        "estimated",
        "denied",
    }


async def test_rows_are_busiest_first(db: Database) -> None:
    """Rows come busiest first, ties by key."""
    async with asyncio.timeout(WAIT):
        await store(db, [event(game=g) for g in ["b", "a", "c", "c", "a", "c"]])
        rows = await aggregate_usage(db, start=DAY, end=DAY + timedelta(days=1), group_by="game")
    assert [(r["key"], r["turns"]) for r in rows] == [("c", 3), ("a", 2), ("b", 1)]


async def test_median_first_token(db: Database) -> None:
    """The p50 of first-token times is the median of the turns that had a first token."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [event(game="odd", first_ms=ms) for ms in (300, 100, 200)]
            + [event(game="even", first_ms=ms) for ms in (10, 40, 20, 30)]
            + [event(game="even", first_ms=None, finish="error")]
            + [event(game="none", first_ms=None, finish="error")],
        )
        rows = await day_rows(db, "game")
    assert rows["odd"]["first_token_ms_p50"] == 200
    assert rows["even"]["first_token_ms_p50"] == 25
    assert rows["even"]["turns"] == 5
    assert rows["none"]["first_token_ms_p50"] is None


async def test_only_the_period_counts(db: Database) -> None:
    """The period includes its start and excludes its end, in whatever offset it is given."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [
                event(at=DAY - timedelta(microseconds=1), tokens=(1, 0)),
                event(at=DAY, tokens=(2, 0)),
                event(at=DAY + timedelta(hours=23, minutes=59), tokens=(4, 0)),
                event(at=DAY + timedelta(days=1), tokens=(8, 0)),
            ],
        )
        (utc_row,) = await aggregate_usage(
            db, start=DAY, end=DAY + timedelta(days=1), group_by="game"
        )
        paris = timezone(timedelta(hours=1))
        (offset_row,) = await aggregate_usage(
            db,
            start=DAY.astimezone(paris),
            end=(DAY + timedelta(days=1)).astimezone(paris),
            group_by="game",
        )
        (naive_row,) = await aggregate_usage(
            db,
            start=DAY.replace(tzinfo=None),
            end=(DAY + timedelta(days=1)).replace(tzinfo=None),
            group_by="game",
        )
        late = await aggregate_usage(
            db, start=DAY + timedelta(hours=12), end=DAY + timedelta(days=2), group_by="game"
        )
    assert (utc_row["turns"], utc_row["input_tokens"]) == (2, 6)
    assert offset_row == utc_row
    assert naive_row == utc_row  # naive means UTC
    assert [(r["turns"], r["input_tokens"]) for r in late] == [(2, 12)]


async def test_every_started_turn_counts(db: Database, game: dict[str, Any]) -> None:
    """A turn whose instance died before it finished still counts, as an error."""
    async with asyncio.timeout(WAIT):
        session = await create_session(
            db, user_id="ann", game_id=game["id"], language="en", provider="gemini", model="g"
        )
        await begin_turn(
            db, session_id=session["id"], turn_id=new_id(), text="?", instance_id="dead"
        )
        now = datetime.now(UTC)
        period = {"start": now - timedelta(hours=1), "end": now + timedelta(hours=1)}
        before = await aggregate_usage(db, group_by="provider", **period)
        assert len(await fail_stale_turns(db, instance_id="dead")) == 1
        (after,) = await aggregate_usage(db, group_by="provider", **period)
    assert before == []
    assert (after["key"], after["turns"], after["errors"]) == ("gemini", 1, 1)
    assert after["first_token_ms_p50"] is None


async def test_cost_sums_priced_turns_and_says_which_are_not(db: Database) -> None:
    """cost_usd sums the priced turns; a row with no priced turn has null, never 0."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [
                event(model="gpt-4o-mini", cost=0.25),
                event(model="gpt-4o-mini", cost=0.5, estimated=True, finish="cancelled"),
                event(model="mystery", cost=None),
                event(model="mystery", cost=None),
            ],
        )
        rows = await day_rows(db, "model")
    assert rows["gpt-4o-mini"]["cost_usd"] == 0.75
    assert (rows["gpt-4o-mini"]["unpriced"], rows["gpt-4o-mini"]["estimated"]) == (0, 1)
    assert rows["mystery"]["cost_usd"] is None
    assert rows["mystery"]["unpriced"] == 2


async def test_anthropic_cache_tokens_count_as_input(db: Database) -> None:
    """Anthropic's cache reads and writes (reported apart) are input tokens in the report;
    OpenAI's cached tokens are already inside its input count."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [
                event(provider="anthropic", tokens=(10, 1), cache=(100, 20)),
                event(provider="openai", tokens=(50, 1), cache=(40, 0)),
            ],
        )
        rows = await day_rows(db, "provider")
    assert rows["anthropic"]["input_tokens"] == 130
    assert rows["openai"]["input_tokens"] == 50


async def test_rows_by_day_are_utc_dates_in_order(db: Database) -> None:
    """group_by=day keys rows by UTC date, oldest first."""
    async with asyncio.timeout(WAIT):
        await store(
            db,
            [
                event(at=DAY + timedelta(days=1, hours=1)),
                event(at=DAY + timedelta(hours=23, minutes=59)),
                event(at=DAY + timedelta(hours=1)),
            ],
        )
        rows = await aggregate_usage(db, start=DAY, end=DAY + timedelta(days=2), group_by="day")
    assert [(r["key"], r["turns"]) for r in rows] == [("2026-03-14", 2), ("2026-03-15", 1)]


async def test_p95_first_token(db: Database) -> None:
    """p95 of first-token times interpolates between the closest ranks."""
    async with asyncio.timeout(WAIT):
        await store(db, [event(first_ms=ms) for ms in range(100, 2100, 100)])  # 20 turns
        (row,) = await aggregate_usage(db, start=DAY, end=DAY + timedelta(days=1), group_by="game")
    assert row["first_token_ms_p50"] == 1050
    assert row["first_token_ms_p95"] == 1905  # 100 + 0.95 * 19 * 100


async def test_denials_are_counted_apart_from_turns(db: Database) -> None:
    """Refusals written by the denial log count as denied, not as turns or errors."""
    log = DenialLog(db, interval=3600)
    for code in ("quota_exceeded", "quota_exceeded", "feature_disabled"):
        log.record(
            Denial(
                session_id="s",
                user_id="ann",
                game_id="catan",
                provider="openai",
                model="gpt-4o-mini",
                code=code,
                at=DAY + timedelta(hours=2),
            )
        )
    async with asyncio.timeout(WAIT):
        await store(db, [event(game="catan")])
        assert len(log) == 3
        assert await log.flush() == 3
        assert len(log) == 0
        rows = await day_rows(db, "game")
    catan = rows["catan"]
    assert (catan["turns"], catan["denied"], catan["errors"]) == (1, 3, 0)
    assert catan["input_tokens"] == 10


async def test_denials_wait_for_the_database_and_are_written_at_close(db: Database) -> None:
    """A failed flush keeps the refusals; close writes what is left."""
    gone = Database("postgresql://nobody@127.0.0.1:1/nowhere", pool_size=1)  # nothing listens
    stuck = DenialLog(gone, interval=3600)
    log = DenialLog(db, interval=3600)
    denial = Denial("s", "ann", "azul", "local", "rulebook-lookup", "quota_exceeded", DAY)
    stuck.record(denial)
    log.record(denial)
    async with asyncio.timeout(WAIT):
        assert await stuck.flush() == 0
        assert len(stuck) == 1
        await gone.dispose()
        await log.start()
        await log.aclose()
        rows = await day_rows(db, "game")
    assert rows["azul"]["denied"] == 1


async def test_a_full_denial_buffer_keeps_the_newest(db: Database) -> None:
    """Past max_pending the oldest refusals are dropped and counted; the newest are written."""
    dropped = REGISTRY.get_sample_value("chat_denials_dropped_total") or 0.0
    log = DenialLog(db, interval=3600, max_pending=3)
    for i in range(5):
        log.record(Denial("s", f"user-{i}", "full", "local", "m", "quota_exceeded", DAY))
    assert len(log) == 3
    assert REGISTRY.get_sample_value("chat_denials_dropped_total") == dropped + 2
    async with asyncio.timeout(WAIT):
        assert await log.flush() == 3
        rows = await day_rows(db, "user")
    assert sorted(rows) == ["user-2", "user-3", "user-4"]
