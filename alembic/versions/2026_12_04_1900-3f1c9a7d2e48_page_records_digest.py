"""page_validator.records_digest: a digest of a page's records as decoded

A page whose bytes differ on every fetch (an envelope stamped per response) but whose
records are the stored ones is then counted as stored after one decode, without
comparing its records one by one (`service.sync.conditional`).

Revision ID: 3f1c9a7d2e48
Revises: 7a8707b5e1e5
Create Date: 2026-12-04 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "3f1c9a7d2e48"
down_revision: str | None = "7a8707b5e1e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("page_validator", schema=None) as batch_op:
        batch_op.add_column(sa.Column("records_digest", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("page_validator", schema=None) as batch_op:
        batch_op.drop_column("records_digest")
