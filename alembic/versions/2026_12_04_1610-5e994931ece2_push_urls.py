"""push urls: secret trigger URLs per task, and a task's debounce_seconds

Revision ID: 5e994931ece2
Revises: 5c8e1f2a9d30
Create Date: 2026-12-04 16:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

import service.models.types
from alembic import op

revision: str = "5e994931ece2"
down_revision: str | None = "5c8e1f2a9d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "push_url",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("verification_hash", sa.String(length=64), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("created_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_called_at", service.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("call_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_push_url_task_id_task"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_url")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_push_url_token_hash")),
    )
    with op.batch_alter_table("push_url", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_push_url_task_id"), ["task_id"], unique=False)
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("debounce_seconds", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_column("debounce_seconds")
    with op.batch_alter_table("push_url", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_url_task_id"))
    op.drop_table("push_url")
