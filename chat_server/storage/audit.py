"""``admin_audit``: who did what to whom, and why (e.g. an admin ending a session)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .engine import Database
from .ids import as_utc, new_id, utcnow
from .schema import admin_audit

__all__ = ["list_actions", "record_action"]


async def record_action(
    db: Database, *, actor_id: str, action: str, target: str, reason: str | None
) -> str:
    action_id = new_id()
    async with db.write() as conn:
        await conn.execute(
            admin_audit.insert().values(
                id=action_id,
                actor_id=actor_id,
                action=action,
                target=target,
                reason=reason,
                created_at=utcnow(),
            )
        )
    return action_id


async def list_actions(db: Database, *, target: str | None = None) -> list[dict[str, Any]]:
    query = select(admin_audit).order_by(admin_audit.c.id)
    if target is not None:
        query = query.where(admin_audit.c.target == target)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [{**dict(r._mapping), "created_at": as_utc(r.created_at)} for r in rows]
