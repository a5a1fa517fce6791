"""tenant running cap: a run's waiting_reason, and the tenant's run_claims counter

Revision ID: 4f6b1d2e8c70
Revises: 3b6f0d2c8a41
Create Date: 2026-12-04 19:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision: str = "4f6b1d2e8c70"
down_revision: str | None = "3b6f0d2c8a41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("waiting_reason", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True)
        )
    with op.batch_alter_table("tenant", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "run_claims",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                server_default="0",
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tenant", schema=None) as batch_op:
        batch_op.drop_column("run_claims")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("waiting_reason")
