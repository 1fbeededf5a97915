"""Usage: a user's own quotas, and staff aggregates of every turn."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

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
    key: str
    turns: int
    input_tokens: int
    output_tokens: int
    errors: int
    cancelled: int
    first_token_ms_p50: float | None


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


@router.get(
    "/admin/usage",
    response_model=UsageOut,
    summary="Turns and tokens by key",
    responses={403: {"model": ErrorBody}},
)
async def admin_usage(
    _staff: Staff,
    services: ServicesDep,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    group_by: Literal["game", "user", "provider"] = "game",
) -> UsageOut:
    now = utcnow()
    end = as_utc(to) or next_midnight(now)
    start = as_utc(from_) or (next_midnight(now) - timedelta(days=1))
    if start >= end:
        raise InvalidInput("'from' must be before 'to'", error_code="INVALID_RANGE")
    rows: list[dict[str, Any]] = await aggregate_usage(
        services.db, start=start, end=end, group_by=group_by
    )
    return UsageOut(rows=[UsageRow(**r) for r in rows], start=start, end=end)
