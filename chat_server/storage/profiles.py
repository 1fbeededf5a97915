"""The ``profiles`` table: the app role of a user when the token carries none."""

from __future__ import annotations

from sqlalchemy import select

from .engine import Database
from .ids import utcnow
from .schema import profiles
from .upsert import upsert

__all__ = ["get_role", "set_role"]


async def get_role(db: Database, user_id: str) -> str | None:
    async with db.read() as conn:
        return (
            await conn.execute(select(profiles.c.role).where(profiles.c.id == user_id))
        ).scalar_one_or_none()


async def set_role(db: Database, user_id: str, role: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            upsert(db.dialect, profiles, keys=("id",), update=("role",)),
            {"id": user_id, "role": role, "created_at": utcnow()},
        )
