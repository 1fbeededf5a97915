"""INSERT … ON CONFLICT DO UPDATE: the same idea, a different import per database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert

__all__ = ["upsert"]


def upsert(
    dialect: str,
    table: Table,
    values: dict[str, Any],
    *,
    keys: Sequence[str],
    update: Sequence[str],
) -> Insert:
    """An insert that updates ``update`` columns when a row with the same ``keys`` exists."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(**values)
    return stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={col: stmt.excluded[col] for col in update},
    )
