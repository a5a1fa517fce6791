"""run health sample counts: samples a wearable task's records wrote or could not make

Revision ID: 3b6f0d2c8a41
Revises: 3b6e0d9c41f2
Create Date: 2026-12-04 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "3b6f0d2c8a41"
down_revision: str | None = "3b6e0d9c41f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        for name in ("samples_written", "samples_rejected"):
            batch.add_column(
                sa.Column(
                    name,
                    sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                    server_default="0",
                    nullable=False,
                )
            )


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("samples_rejected")
        batch.drop_column("samples_written")
