"""``usage_events``: refusals written in batches, and the aggregates of ``GET /admin/usage``.

Each started turn has one row (``finish_reason`` stop, length, cancelled or error,
written by ``chat.finish_turn``); each refused one (flag or quota) has one too, with
``finish_reason`` ``denied`` and the refusal's code in ``error_code``.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Result, Row, select

from ..prices import total_input
from .engine import Database
from .ids import as_utc
from .schema import usage_events

__all__ = ["GROUPS", "aggregate_usage", "insert_denials", "percentile"]

GroupBy = Literal["game", "user", "provider", "model", "day"]
GROUPS: tuple[str, ...] = ("game", "user", "provider", "model", "day")
_COLUMNS = {
    "game": usage_events.c.game_id,
    "user": usage_events.c.user_id,
    "provider": usage_events.c.provider,
    "model": usage_events.c.model,
    "day": usage_events.c.created_at,
}


async def insert_denials(db: Database, rows: Sequence[dict[str, Any]]) -> None:
    """Store a batch of refusal rows (``chat_server.denials``) in one statement."""
    if rows:
        async with db.write() as conn:
            await conn.execute(usage_events.insert(), list(rows))


def percentile(values: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    if q == 0.5:
        return float(statistics.median(values))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(cuts[round(q * 100) - 1])


def _new_row(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "turns": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": None,
        "unpriced": 0,
        "estimated": 0,
        "errors": 0,
        "cancelled": 0,
        "denied": 0,
    }


SLICE = 2000  # rows summed between two turns of the event loop


async def _sliced(result: Result[Any]) -> AsyncIterator[Row[Any]]:
    """The rows of ``result``, a slice at a time, giving the loop a turn after each (the
    rows are read whole, as ``read()`` runs outside a transaction: Postgres makes no
    cursor there; the per-row work is what is sliced)."""
    for rows in result.partitions(SLICE):
        for row in rows:
            yield row
        await asyncio.sleep(0)


async def aggregate_usage(
    db: Database,
    *,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    provider: str | None = None,
) -> list[dict[str, Any]]:
    """One row per key: turns (every started turn), tokens, cost, errors, cancels,
    refusals, and the first token's p50 and p95 in milliseconds.

    The period is ``start <= created_at < end``, aware datetimes in any offset (naive ones
    are taken as UTC); ``day`` keys are UTC dates (``2026-12-06``). ``cost_usd`` sums the
    priced turns and is None when no turn of the row has a price; ``unpriced`` counts
    the started turns whose model has none, ``estimated`` those with estimated tokens.
    ``provider``: only that provider's rows (the admin page's per-provider series).
    Percentiles are computed here rather than in SQL so that both databases give the
    same figure (SQLite has no percentile function). Rows: most turns first.

    The rows are read in slices of ``SLICE`` and the loop runs other work between two
    (a year of turns must not stall the instance's streams while it is summed).
    """
    key_col = _COLUMNS[group_by]
    # SQLite stores datetimes as UTC text and ignores an offset in a bound value.
    start, end = as_utc(start), as_utc(end)
    query = select(
        key_col.label("key"),
        usage_events.c.provider,
        usage_events.c.input_tokens,
        usage_events.c.output_tokens,
        usage_events.c.cache_read_tokens,
        usage_events.c.cache_creation_tokens,
        usage_events.c.estimated,
        usage_events.c.cost_usd,
        usage_events.c.finish_reason,
        usage_events.c.first_token_ms,
    ).where(usage_events.c.created_at >= start, usage_events.c.created_at < end)
    if provider is not None:
        query = query.where(usage_events.c.provider == provider)
    rows: dict[str, dict[str, Any]] = {}
    firsts: dict[str, list[int]] = {}
    async with db.read(timeout=60.0) as conn:  # a report, not the chat path
        result = await conn.execute(query)
        async for r in _sliced(result):
            key = as_utc(r.key).date().isoformat() if group_by == "day" else r.key
            row = rows.get(key)
            if row is None:
                row = rows[key] = _new_row(key)
            if r.finish_reason == "denied":
                row["denied"] += 1
                continue
            row["turns"] += 1
            row["input_tokens"] += total_input(
                r.provider, r.input_tokens, r.cache_read_tokens, r.cache_creation_tokens
            )
            row["output_tokens"] += r.output_tokens
            row["estimated"] += bool(r.estimated)
            if r.cost_usd is None:
                row["unpriced"] += 1
            else:
                row["cost_usd"] = (row["cost_usd"] or 0.0) + r.cost_usd
            row["errors"] += r.finish_reason == "error"
            row["cancelled"] += r.finish_reason == "cancelled"
            if r.first_token_ms is not None:
                firsts.setdefault(key, []).append(r.first_token_ms)
    for key, row in rows.items():
        values = firsts.get(key, [])
        row["first_token_ms_p50"] = percentile(values, 0.5)
        row["first_token_ms_p95"] = percentile(values, 0.95)
        if row["cost_usd"] is not None:
            row["cost_usd"] = round(row["cost_usd"], 6)
    order = (lambda r: r["key"]) if group_by == "day" else (lambda r: (-r["turns"], r["key"]))
    return sorted(rows.values(), key=order)
