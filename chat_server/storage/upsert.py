"""INSERT … ON CONFLICT DO UPDATE: the same idea, a different import per database."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert

__all__ = ["upsert"]


@cache
def upsert(dialect: str, table: Table, *, keys: tuple[str, ...], update: tuple[str, ...]) -> Insert:
    """An insert that updates ``update`` columns when a row with the same ``keys`` exists.

    Execute it with the row's values as parameters. One statement object per use, made
    once: building it costs more than running it (SQLAlchemy compiles it once too).
    """
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={col: stmt.excluded[col] for col in update},
    )
