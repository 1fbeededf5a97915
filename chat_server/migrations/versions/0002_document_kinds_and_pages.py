"""Documents: kind (rulebook, faq, errata, expansion), media type, pages, size, update
time; passages: their document's kind and their PDF page.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 04:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("game_documents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="rulebook", nullable=False)
        )
        batch_op.add_column(sa.Column("media_type", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("pages", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bytes", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("document_passages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="rulebook", nullable=False)
        )
        batch_op.add_column(sa.Column("page", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("document_passages", schema=None) as batch_op:
        batch_op.drop_column("page")
        batch_op.drop_column("kind")
    with op.batch_alter_table("game_documents", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("bytes")
        batch_op.drop_column("pages")
        batch_op.drop_column("media_type")
        batch_op.drop_column("kind")
