"""record.hash: XXH3-128 of the record's canonical text, instead of BLAKE2b-128

Both are 32 hex digits, so the column is unchanged; every stored hash is recomputed
from the stored text (`data`, exactly the bytes that were hashed), so a resync after
the upgrade finds every unchanged record unchanged. Why XXH3: `service.sync.extract`.

Rows are read and rewritten in batches in primary-key order (a keyset walk: each
batch starts after the last key of the one before, through the primary key's index),
so the upgrade holds a batch in memory whatever the table's size. It runs in the
migration's one transaction, as every revision does: on PostgreSQL the table's rows
get a new version each (the table grows by its size until vacuumed), and writes to
records wait until it commits. Workers are stopped while it runs (README "Upgrading"):
one of the old version would hash with BLAKE2b, and each record it wrote would read as
changed once. The downgrade recomputes the BLAKE2b hashes the same way.

The functions are written out here, not imported: a revision keeps doing what it did
when the service's own hash changes again.

Revision ID: 5c2e7a9b1d34
Revises: 4f6b1d2e8c70
Create Date: 2026-12-05 06:00:00.000000
"""

import hashlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa
import xxhash

from alembic import op

revision: str = "5c2e7a9b1d34"
down_revision: str | None = "4f6b1d2e8c70"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000

_FIRST = sa.text("SELECT task_id, key, data FROM record ORDER BY task_id, key LIMIT :n")
_AFTER = sa.text(
    "SELECT task_id, key, data FROM record WHERE (task_id, key) > (:task_id, :key)"
    " ORDER BY task_id, key LIMIT :n"
)
_SET_ONE = sa.text("UPDATE record SET hash = :hash WHERE task_id = :task_id AND key = :key")
_SET_MANY = sa.text(
    "UPDATE record SET hash = v.hash FROM unnest(CAST(:task_ids AS text[]),"
    " CAST(:keys AS text[]), CAST(:hashes AS text[])) AS v(task_id, key, hash)"
    " WHERE record.task_id = v.task_id AND record.key = v.key"
)


def _xxh3(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _blake2b(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _rehash(digest: Callable[[bytes], str]) -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    rows = bind.execute(_FIRST, {"n": BATCH}).all()
    while rows:
        hashes = [digest(data.encode()) for _task_id, _key, data in rows]
        if postgres:  # one statement per batch: arrays through unnest
            bind.execute(
                _SET_MANY,
                {
                    "task_ids": [row[0] for row in rows],
                    "keys": [row[1] for row in rows],
                    "hashes": hashes,
                },
            )
        else:
            bind.execute(
                _SET_ONE,
                [
                    {"task_id": task_id, "key": key, "hash": hashed}
                    for (task_id, key, _data), hashed in zip(rows, hashes, strict=True)
                ],
            )
        task_id, key, _data = rows[-1]
        rows = bind.execute(_AFTER, {"task_id": task_id, "key": key, "n": BATCH}).all()


def upgrade() -> None:
    _rehash(_xxh3)


def downgrade() -> None:
    _rehash(_blake2b)
