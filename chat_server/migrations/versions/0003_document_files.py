"""Documents' original files: bytes in the database, or a Supabase Storage key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_files",
        sa.Column("document_id", sa.String(length=36), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("storage_key", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["game_documents.id"],
            name=op.f("fk_document_files_document_id_game_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", name=op.f("pk_document_files")),
    )


def downgrade() -> None:
    op.drop_table("document_files")
