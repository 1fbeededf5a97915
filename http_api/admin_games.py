"""Staff: create, edit and import games (their documents: ``documents.py``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response

from chat_server.bgg import BggGame
from chat_server.errors import Conflict, NotFound, Unavailable
from chat_server.services import Services
from chat_server.sessions.chat import GAMES_CHANNEL
from chat_server.storage import Database
from chat_server.storage import games as store
from chat_server.storage.ids import utcnow

from .deps import ServicesDep, Staff
from .errors import ERROR_RESPONSES
from .models import ErrorBody, GameCreate, GameOut, GamePatch, GlossaryOut, ImportIn

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/admin/games",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorBody, "description": "Not staff"}},
)


@router.post(
    "",
    status_code=201,
    response_model=GameOut,
    summary="Create a game",
    responses={409: {"model": ErrorBody, "description": "Duplicate bgg_id"}},
)
async def create_game(body: GameCreate, _staff: Staff, services: ServicesDep) -> GameOut:
    game = await store.create_game(services.db, body.model_dump(exclude_none=True))
    return GameOut(**game)


@router.patch(
    "/{game_id}",
    response_model=GameOut,
    summary="Change a game",
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def patch_game(
    game_id: str, body: GamePatch, _staff: Staff, services: ServicesDep
) -> GameOut:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name") is None:
        changes.pop("name", None)
    if changes.get("status") is None:
        changes.pop("status", None)
    if "details" in changes:
        changes["details"] = await _merged_details(services.db, game_id, changes["details"])
    game = await store.update_game(services.db, game_id, changes)
    await _announce(services, game_id)
    return GameOut(**game)


async def _announce(services: Services, game_id: str) -> None:
    """Every instance (this one at once) reads the game again before its next turn: a
    game hidden meanwhile is then not_found to the connections attached to it."""
    services.chat.game_changed(game_id)
    try:
        await services.backplane.publish(GAMES_CHANNEL, game_id)
    except Unavailable:
        # Redis is down: the others' subscriptions are broken too, and each reads every
        # game again when its subscription is back (``ChatService.games_unknown``).
        log.warning("game %s changed; other instances read it again on reconnecting", game_id)


async def _merged_details(db: Database, game_id: str, patch: dict[str, Any] | None) -> Any:
    """The game's details with the patched keys set (a null value removes its key); the
    rest (BoardGameGeek's data) is kept."""
    details = await store.game_details(db, game_id)
    if details is None:
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    for key, value in (patch or {}).items():
        if value is None:
            details.pop(key, None)
        else:
            details[key] = value
    return details


@router.get(
    "/{game_id}/glossary",
    response_model=GlossaryOut,
    summary="A game's glossary",
    responses={404: {"model": ErrorBody}},
)
async def get_glossary(game_id: str, _staff: Staff, services: ServicesDep) -> GlossaryOut:
    """What staff edit with ``PATCH /admin/games/{id}`` (``details.glossary``): read back
    as stored, ``{}`` when the game has none."""
    details = await store.game_details(services.db, game_id)
    if details is None:
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    stored = details.get("glossary")
    return GlossaryOut(
        glossary={
            term: [w for w in words if isinstance(w, str)]
            for term, words in (stored.items() if isinstance(stored, dict) else ())
            if isinstance(term, str) and isinstance(words, list)
        }
    )


def _from_bgg(game: BggGame) -> dict[str, Any]:
    return {
        "bgg_id": game.bgg_id,
        "name": game.name,
        "min_players": game.min_players,
        "max_players": game.max_players,
        "playing_time": game.playing_time,
        "rating": game.rating,
        "thumbnail_url": game.thumbnail_url,
        "image_url": game.image_url,
        "year_published": game.year_published,
        "description": game.description,
        "last_synced_at": utcnow(),
    }


@router.post(
    "/import",
    response_model=GameOut,
    status_code=201,
    summary="Create (201) or refresh (200) a game from BoardGameGeek",
    responses={
        200: {"model": GameOut, "description": "Refreshed"},
        404: {"model": ErrorBody},
        502: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
async def import_game(
    body: ImportIn, _staff: Staff, services: ServicesDep, response: Response
) -> GameOut:
    found = await services.bgg.fetch_one(body.bgg_id)
    data = _from_bgg(found)
    if body.status is not None:
        data["status"] = body.status
    if body.section is not None:
        data["section"] = body.section
    existing = await store.get_game_by_bgg_id(services.db, body.bgg_id)
    if existing is None:
        try:
            return GameOut(**await store.create_game(services.db, data))
        except Conflict:
            # Another import of the same game won the race: refresh what it made.
            existing = await store.get_game_by_bgg_id(services.db, body.bgg_id)
            if existing is None:
                raise
    response.status_code = 200
    game = await store.update_game(services.db, existing["id"], data)
    await _announce(services, game["id"])
    return GameOut(**game)
