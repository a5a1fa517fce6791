"""health samples: samples per (tenant, user, source, id) with a per-user change seq,
batches the worker ingests, and each user's seq counter and source priority

Revision ID: 7a8707b5e1e5
Revises: 7a4d2b9e6c13
Create Date: 2026-12-04 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

import service.models.types
from alembic import op

revision: str = "7a8707b5e1e5"
down_revision: str | None = "7a4d2b9e6c13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "health_batch",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("rejections", sa.JSON(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("ingested", sa.Integer(), nullable=False),
        sa.Column("inserted", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("ignored", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("sent_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", service.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_batch")),
    )
    with op.batch_alter_table("health_batch", schema=None) as batch_op:
        batch_op.create_index("ix_health_batch_status_sent_at", ["status", "sent_at"], unique=False)
        batch_op.create_index("ix_health_batch_tenant_id_id", ["tenant_id", "id"], unique=False)

    op.create_table(
        "health_sample",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=60), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=20), nullable=True),
        sa.Column("start_at", service.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_at", service.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("tz_offset_minutes", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=200), nullable=True),
        sa.Column("recording_method", sa.String(length=20), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("stage", sa.String(length=20), nullable=True),
        sa.Column("modified_at", service.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("hash", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "user_id", "source", "id", name=op.f("pk_health_sample")
        ),
    )
    with op.batch_alter_table("health_sample", schema=None) as batch_op:
        batch_op.create_index(
            "ix_health_sample_tenant_id_user_id_type_start_at",
            ["tenant_id", "user_id", "type", "start_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_health_sample_tenant_id_user_id_seq", ["tenant_id", "user_id", "seq"], unique=True
        )

    op.create_table(
        "health_user",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column(
            "sample_seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_health_user_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name=op.f("pk_health_user")),
    )


def downgrade() -> None:
    op.drop_table("health_user")
    with op.batch_alter_table("health_sample", schema=None) as batch_op:
        batch_op.drop_index("uq_health_sample_tenant_id_user_id_seq")
        batch_op.drop_index("ix_health_sample_tenant_id_user_id_type_start_at")

    op.drop_table("health_sample")
    with op.batch_alter_table("health_batch", schema=None) as batch_op:
        batch_op.drop_index("ix_health_batch_tenant_id_id")
        batch_op.drop_index("ix_health_batch_status_sent_at")

    op.drop_table("health_batch")
