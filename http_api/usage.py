"""Usage: a user's own quotas, and staff aggregates of every turn."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from chat_server.access import can_see_game
from chat_server.errors import InvalidInput, NotFound
from chat_server.quotas import next_midnight
from chat_server.sessions.chat import Who
from chat_server.storage.games import get_game
from chat_server.storage.ids import as_utc, utcnow
from chat_server.storage.usage import aggregate_usage

from .deps import Caller, ServicesDep, Staff
from .errors import ERROR_RESPONSES
from .models import ErrorBody, QuotaOut

router = APIRouter(tags=["usage"], responses=ERROR_RESPONSES)


class MyUsage(BaseModel):
    game_id: str
    quotas: list[QuotaOut]


class UsageRow(BaseModel):
    """One key's figures; ``turns`` counts started turns, ``denied`` refused ones."""

    key: str
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(description="USD of the priced turns; null: none priced")
    errors: int
    cancelled: int
    denied: int
    first_token_ms_p50: float | None
    first_token_ms_p95: float | None
    unpriced: int = Field(description="started turns whose model has no price")
    estimated: int = Field(description="started turns with estimated token counts")


class UsageOut(BaseModel):
    rows: list[UsageRow]
    # The period actually used, so a default range is visible to the caller.
    start: datetime
    end: datetime


@router.get(
    "/me/usage",
    response_model=MyUsage,
    summary="My quotas for a game",
    responses={404: {"model": ErrorBody}},
)
async def my_usage(
    game_id: Annotated[str, Query(min_length=1, max_length=64)],
    principal: Caller,
    services: ServicesDep,
) -> MyUsage:
    game = await get_game(services.db, game_id)
    if not can_see_game(principal.role, game):
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    assert game is not None
    quota = await services.chat.quota(Who(principal.user_id, principal.role), game)
    return MyUsage(game_id=game_id, quotas=[QuotaOut(**quota.to_dict())])


CSV_COLUMNS = list(UsageRow.model_fields)


def _csv(rows: list[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = row.model_dump()
        writer.writerow(["" if values[c] is None else _cell(values[c]) for c in CSV_COLUMNS])
    return out.getvalue()


def _cell(value: object) -> object:
    # A key is a stored id or name: never let a spreadsheet read it as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _wants_csv(accept: str | None) -> bool:
    return bool(accept) and "text/csv" in (accept or "").lower()


@router.get(
    "/admin/usage",
    response_model=UsageOut,
    summary="Turns, tokens, cost, refusals and first-token time by key",
    description="`Accept: text/csv` answers the same rows as CSV (a header line first).",
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        403: {"model": ErrorBody},
    },
)
async def admin_usage(
    _staff: Staff,
    services: ServicesDep,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    group_by: Literal["game", "user", "provider", "model", "day"] = "game",
    provider: Annotated[
        str | None, Query(min_length=1, max_length=32, description="only this provider")
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> UsageOut | Response:
    now = utcnow()
    try:
        end = as_utc(to) or next_midnight(now)
        start = as_utc(from_) or end - timedelta(days=1)  # the day before 'to', by default
    except OverflowError as exc:  # an offset that takes the date past year 1 or 9999
        raise InvalidInput(
            "'from' and 'to' must be dates in UTC's range", error_code="INVALID_RANGE"
        ) from exc
    if start >= end:
        raise InvalidInput("'from' must be before 'to'", error_code="INVALID_RANGE")
    found: list[dict[str, Any]] = await aggregate_usage(
        services.db, start=start, end=end, group_by=group_by, provider=provider
    )
    rows = [UsageRow(**r) for r in found]
    if _wants_csv(accept):
        name = f"usage-{group_by}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
        return Response(
            _csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return UsageOut(rows=rows, start=start, end=end)
