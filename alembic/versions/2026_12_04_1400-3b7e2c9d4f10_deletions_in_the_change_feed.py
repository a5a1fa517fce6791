"""deletions in the change feed: records marked deleted, the run that last saw each

Revision ID: 3b7e2c9d4f10
Revises: 9c3e1d7a5b20
Create Date: 2026-12-04 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision: str = "3b7e2c9d4f10"
down_revision: str | None = "9c3e1d7a5b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("record", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("seen_run", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True)
        )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "deleted",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                server_default="0",
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("deleted")
    with op.batch_alter_table("record", schema=None) as batch_op:
        batch_op.drop_column("seen_run")
        batch_op.drop_column("deleted")
