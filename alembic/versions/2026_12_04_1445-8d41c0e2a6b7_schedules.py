"""schedules: an index on task.next_run_at, slots skipped per task

Revision ID: 8d41c0e2a6b7
Revises: 3b7e2c9d4f10
Create Date: 2026-12-04 14:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "8d41c0e2a6b7"
down_revision: str | None = "3b7e2c9d4f10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("skipped_runs", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index(batch_op.f("ix_task_next_run_at"), ["next_run_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_next_run_at"))
        batch_op.drop_column("skipped_runs")
