"""page digests: a page's bytes and counts, remembered for every task

Revision ID: 9c3e1d7a5b20
Revises: 5f2b44eebb3a
Create Date: 2026-11-22 21:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision: str = "9c3e1d7a5b20"
down_revision: str | None = "5f2b44eebb3a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("page_validator", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch_op.add_column(
            sa.Column("records_seen", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("rejected", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("page_validator", schema=None) as batch_op:
        batch_op.drop_column("rejected")
        batch_op.drop_column("records_seen")
        batch_op.drop_column("digest")
