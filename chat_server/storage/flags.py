"""The ``feature_flags`` table. Scope id and role are stored as '' for "none"/"every
role" (so the unique key works on both databases) and handed out as ``None``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from ..flags import Flag
from .engine import Database
from .ids import new_id, utcnow
from .schema import feature_flags
from .upsert import upsert

__all__ = ["delete_flag", "list_flags", "upsert_flag"]


def _flag(row: Any) -> Flag:
    m = row._mapping
    return Flag(
        id=m["id"],
        feature_key=m["feature_key"],
        scope_type=m["scope_type"],
        scope_id=m["scope_id"] or None,
        role=m["role"] or None,
        environment=m["environment"],
        enabled=bool(m["enabled"]),
        metadata=dict(m["metadata"] or {}),
    )


async def list_flags(db: Database, environment: str | None = None) -> list[Flag]:
    query = select(feature_flags).order_by(feature_flags.c.feature_key, feature_flags.c.id)
    if environment is not None:
        query = query.where(feature_flags.c.environment == environment)
    async with db.read() as conn:
        return [_flag(r) for r in (await conn.execute(query)).all()]


async def upsert_flag(
    db: Database,
    *,
    feature_key: str,
    scope_type: str,
    scope_id: str | None,
    role: str | None,
    environment: str,
    enabled: bool,
    metadata: dict[str, Any],
) -> Flag:
    """Create or replace the flag with this feature, scope, role and environment."""
    values = {
        "id": new_id(),
        "feature_key": feature_key,
        "scope_type": scope_type,
        "scope_id": scope_id or "",
        "role": role or "",
        "environment": environment,
        "enabled": enabled,
        "metadata": metadata,
        "updated_at": utcnow(),
    }
    keys = ("feature_key", "scope_type", "scope_id", "role", "environment")
    async with db.write() as conn:
        await conn.execute(
            upsert(
                db.dialect, feature_flags, keys=keys, update=("enabled", "metadata", "updated_at")
            ),
            values,
        )
        row = (
            await conn.execute(
                select(feature_flags).where(*(feature_flags.c[k] == values[k] for k in keys))
            )
        ).one()
    return _flag(row)


async def delete_flag(db: Database, flag_id: str) -> bool:
    async with db.write() as conn:
        result = await conn.execute(delete(feature_flags).where(feature_flags.c.id == flag_id))
    return bool(result.rowcount)
