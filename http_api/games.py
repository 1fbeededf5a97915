"""Games as users see them: non-staff see active games only, whatever they ask."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from chat_server.access import can_see_game, visible_statuses
from chat_server.errors import NotFound
from chat_server.storage import games as store

from .deps import Caller, ServicesDep
from .errors import ERROR_RESPONSES
from .models import ErrorBody, GameOut, GamesPage

router = APIRouter(tags=["games"], responses=ERROR_RESPONSES)


@router.get("/games", response_model=GamesPage, summary="List games")
async def list_games(
    principal: Caller,
    services: ServicesDep,
    status: Literal["active", "beta", "hidden"] | None = None,
    search: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> GamesPage:
    allowed = visible_statuses(principal.role)
    if status is not None:
        statuses: tuple[str, ...] | None = (status,) if allowed is None or status in allowed else ()
    else:
        statuses = allowed
    if statuses == ():
        return GamesPage(games=[], next_cursor=None)
    page, next_cursor = await store.list_games(
        services.db, statuses=statuses, search=search, limit=limit, cursor=cursor
    )
    return GamesPage(games=[GameOut(**g) for g in page], next_cursor=next_cursor)


@router.get(
    "/games/{game_id}",
    response_model=GameOut,
    summary="One game",
    responses={404: {"model": ErrorBody}},
)
async def get_game(game_id: str, principal: Caller, services: ServicesDep) -> GameOut:
    game = await store.get_game(services.db, game_id)
    if not can_see_game(principal.role, game):
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    return GameOut(**game)  # type: ignore[arg-type]
