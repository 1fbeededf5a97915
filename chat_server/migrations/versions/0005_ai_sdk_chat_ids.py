"""Session ids up to 64 characters: an AI SDK chat's id is the session's id.

``useChat`` makes its own chat ids (any 1-64 characters of ``A-Za-z0-9_-``), and a
chat's first request creates the session under that id (CONTRACT §8). SQLite does
not enforce a VARCHAR's length, so only Postgres changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (("chat_sessions", "id"), ("chat_messages", "session_id"), ("usage_events", "session_id"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(
            table, column, type_=sa.String(length=64), existing_type=sa.String(length=36)
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(
            table, column, type_=sa.String(length=36), existing_type=sa.String(length=64)
        )
