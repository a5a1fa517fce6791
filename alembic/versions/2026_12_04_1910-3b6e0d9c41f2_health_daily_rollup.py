"""health daily rollup: each user's computed days per type, invalidated by every
sample written and refilled by the daily summary

Revision ID: 3b6e0d9c41f2
Revises: 3f1c9a7d2e48
Create Date: 2026-12-04 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "3b6e0d9c41f2"
down_revision: str | None = "3f1c9a7d2e48"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "health_daily",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=60), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", "type", "day", name=op.f("pk_health_daily")),
    )


def downgrade() -> None:
    op.drop_table("health_daily")
