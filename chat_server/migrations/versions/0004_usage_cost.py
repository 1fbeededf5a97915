"""Usage events: ``estimated`` (some tokens are an estimate) and ``cost_usd``; refusals
are rows too (``finish_reason`` ``denied``), so reports group by day and provider.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 04:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("estimated", sa.Boolean(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_column("cost_usd")
        batch_op.drop_column("estimated")
