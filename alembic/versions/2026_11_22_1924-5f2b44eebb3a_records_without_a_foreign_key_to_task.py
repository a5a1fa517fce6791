"""records without a foreign key to task

Revision ID: 5f2b44eebb3a
Revises: 76066061aaf2
Create Date: 2026-11-22 19:24:06.023316
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5f2b44eebb3a"
down_revision: str | None = "76066061aaf2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # PostgreSQL checked this key row by row on every bulk insert of records; deleting a
    # task now deletes its records explicitly (service.records.repository).
    with op.batch_alter_table("record", schema=None) as batch_op:
        batch_op.drop_constraint("fk_record_task_id_task", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("record", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_record_task_id_task", "task", ["task_id"], ["id"], ondelete="CASCADE"
        )
