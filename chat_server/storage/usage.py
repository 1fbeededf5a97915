"""Aggregates of ``usage_events`` for ``GET /admin/usage``."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select

from .engine import Database
from .ids import as_utc
from .schema import usage_events

__all__ = ["aggregate_usage"]

GroupBy = Literal["game", "user", "provider"]
_COLUMNS = {
    "game": usage_events.c.game_id,
    "user": usage_events.c.user_id,
    "provider": usage_events.c.provider,
}


async def aggregate_usage(
    db: Database, *, start: datetime, end: datetime, group_by: GroupBy
) -> list[dict[str, Any]]:
    """One row per key: turns (every started turn), tokens, errors, cancels, p50 first token.

    The period is ``start <= created_at < end``, aware datetimes in any offset (naive ones
    are taken as UTC). The median is computed here rather than in SQL so that both
    databases give the same figure (SQLite has no percentile function).
    """
    key_col = _COLUMNS[group_by]
    # SQLite stores datetimes as UTC text and ignores an offset in a bound value.
    start, end = as_utc(start), as_utc(end)
    query = select(
        key_col.label("key"),
        usage_events.c.input_tokens,
        usage_events.c.output_tokens,
        usage_events.c.finish_reason,
        usage_events.c.first_token_ms,
    ).where(usage_events.c.created_at >= start, usage_events.c.created_at < end)
    rows: dict[str, dict[str, Any]] = {}
    firsts: dict[str, list[int]] = {}
    async with db.read(timeout=60.0) as conn:  # a report, not the chat path
        result = await conn.execute(query)
        for r in result:
            row = rows.setdefault(
                r.key,
                {
                    "key": r.key,
                    "turns": 0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "errors": 0,
                    "cancelled": 0,
                },
            )
            row["turns"] += 1
            row["input_tokens"] += r.input_tokens
            row["output_tokens"] += r.output_tokens
            row["errors"] += r.finish_reason == "error"
            row["cancelled"] += r.finish_reason == "cancelled"
            if r.first_token_ms is not None:
                firsts.setdefault(r.key, []).append(r.first_token_ms)
    for key, row in rows.items():
        values = firsts.get(key)
        row["first_token_ms_p50"] = statistics.median(values) if values else None
    return sorted(rows.values(), key=lambda r: (-r["turns"], r["key"]))
