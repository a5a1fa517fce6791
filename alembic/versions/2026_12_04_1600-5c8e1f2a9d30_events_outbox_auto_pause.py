"""events outbox (per-tenant seq), auto-pause: paused_reason, auth_failed_at

Revision ID: 5c8e1f2a9d30
Revises: 8d41c0e2a6b7
Create Date: 2026-12-04 15:59:16.740935
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import service.models.types
from alembic import op

revision: str = "5c8e1f2a9d30"
down_revision: str | None = "8d41c0e2a6b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event",
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("task_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_event_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name=op.f("pk_event")),
        sa.UniqueConstraint("id", name=op.f("uq_event_id")),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_created_at", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_event_tenant_id_task_id_seq", ["tenant_id", "task_id", "seq"], unique=False
        )

    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused_reason", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "auth_failed_at", service.models.types.UTCDateTime(timezone=True), nullable=True
            )
        )
    # Tasks paused before this revision were paused through the API.
    op.execute("UPDATE task SET paused_reason = 'client' WHERE paused")

    with op.batch_alter_table("tenant", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "event_seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                server_default="0",
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tenant", schema=None) as batch_op:
        batch_op.drop_column("event_seq")

    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_column("auth_failed_at")
        batch_op.drop_column("paused_reason")

    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_tenant_id_task_id_seq")
        batch_op.drop_index("ix_event_created_at")

    op.drop_table("event")
