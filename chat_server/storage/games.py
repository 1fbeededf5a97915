"""Games: listing with visibility, lookup, create, update, refresh from BoardGameGeek."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, NotFound
from .engine import Database
from .ids import as_utc, new_id, utcnow
from .pages import decode_cursor, encode_cursor
from .schema import games

__all__ = [
    "GAME_FIELDS",
    "GAME_STATUSES",
    "create_game",
    "get_game",
    "get_game_by_bgg_id",
    "list_games",
    "update_game",
]

GAME_STATUSES = ("active", "beta", "hidden")
#: What a chat session needs of its game: who may see it, its name, its flag section.
GAME_FIELDS = ("id", "name", "status", "section")
PUBLIC_FIELDS = (
    "id",
    "bgg_id",
    "name",
    "status",
    "section",
    "min_players",
    "max_players",
    "playing_time",
    "rating",
    "thumbnail_url",
    "image_url",
    "last_synced_at",
)
EDITABLE = {
    "bgg_id",
    "name",
    "status",
    "section",
    "min_players",
    "max_players",
    "playing_time",
    "rating",
    "thumbnail_url",
    "image_url",
    "year_published",
    "description",
    "details",
    "last_synced_at",
}


def game_dict(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data["last_synced_at"] = as_utc(data.get("last_synced_at"))
    return {k: data.get(k) for k in PUBLIC_FIELDS}


async def list_games(
    db: Database,
    *,
    statuses: tuple[str, ...] | None,
    search: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of games ordered by name; ``statuses`` None means every status."""
    query = select(games)
    if statuses is not None:
        query = query.where(games.c.status.in_(statuses))
    if search:
        pattern = (
            "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        query = query.where(func.lower(games.c.name).like(pattern, escape="\\"))
    if cursor:
        name, gid = decode_cursor(cursor, 2)
        query = query.where(or_(games.c.name > name, and_(games.c.name == name, games.c.id > gid)))
    query = query.order_by(games.c.name, games.c.id).limit(limit + 1)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    page = [game_dict(r) for r in rows[:limit]]
    next_cursor = encode_cursor(page[-1]["name"], page[-1]["id"]) if len(rows) > limit else None
    return page, next_cursor


async def get_game(db: Database, game_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(select(games).where(games.c.id == game_id))).first()
    return game_dict(row) if row else None


async def game_details(db: Database, game_id: str) -> dict[str, Any] | None:
    """The game's ``details`` (staff's glossary among them; not part of the public game),
    or None when there is no such game."""
    async with db.read() as conn:
        row = (await conn.execute(select(games.c.details).where(games.c.id == game_id))).first()
    if row is None:
        return None
    return dict(row.details) if isinstance(row.details, dict) else {}


async def get_game_by_bgg_id(db: Database, bgg_id: int) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(select(games).where(games.c.bgg_id == bgg_id))).first()
    return game_dict(row) if row else None


async def create_game(db: Database, data: dict[str, Any]) -> dict[str, Any]:
    """Insert a game; a duplicate ``bgg_id`` is ``Conflict`` (409)."""
    now = utcnow()
    values = {k: v for k, v in data.items() if k in EDITABLE}
    values.setdefault("status", "active")
    values.setdefault("details", {})
    values.update(id=new_id(), created_at=now, updated_at=now)
    try:
        async with db.write() as conn:
            await conn.execute(games.insert().values(**values))
    except IntegrityError as exc:
        raise Conflict(
            f"a game with bgg_id {values.get('bgg_id')} exists already",
            error_code="GAME_EXISTS",
            context={"bgg_id": values.get("bgg_id")},
        ) from exc
    game = await get_game(db, values["id"])
    assert game is not None
    return game


async def update_game(db: Database, game_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in changes.items() if k in EDITABLE}
    if values:
        values["updated_at"] = utcnow()
        try:
            async with db.write() as conn:
                result = await conn.execute(
                    games.update().where(games.c.id == game_id).values(**values)
                )
        except IntegrityError as exc:
            raise Conflict(
                f"a game with bgg_id {values.get('bgg_id')} exists already",
                error_code="GAME_EXISTS",
                context={"bgg_id": values.get("bgg_id")},
            ) from exc
        if result.rowcount == 0:
            raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    game = await get_game(db, game_id)
    if game is None:
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    return game
