"""Re-encrypting every stored credential under the first key (`backsync secrets rotate`).

Key rotation: put the new key first everywhere (`BACKSYNC_SECRET_KEYS=new,old`), run
this, then drop the old key. It walks the `task` table by id in batches, one
transaction each, so it scales to any number of tasks, and it can be interrupted and
run again at any point: rows already under the first key are skipped.

It may run beside a live API. A credential changed by a client while its batch is being
rotated must keep the client's new value, so each row is swapped only if its ciphertext
is still the one that was read (compare-and-set); PostgreSQL also locks the batch's rows.
The SQL lives here rather than in the tasks repository because nothing else needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.crypto import SecretBox, SecretBoxError
from service.db import SessionMaker, transaction
from service.models import Task

_SHOWN_IDS = 5


class UnreadableCredentials(SecretBoxError):
    """Some ciphertexts decrypt with none of the configured keys (the rest were rotated)."""

    def __init__(self, task_ids: list[str], rotated: int):
        self.task_ids = task_ids
        self.rotated = rotated
        shown = ", ".join(task_ids[:_SHOWN_IDS])
        more = f" and {len(task_ids) - _SHOWN_IDS} more" if len(task_ids) > _SHOWN_IDS else ""
        super().__init__(
            f"the credentials of {len(task_ids)} task(s) ({shown}{more}) cannot be decrypted "
            "with any key in BACKSYNC_SECRET_KEYS; put the key they were encrypted with back "
            f"in the list, after the new one, and run again ({rotated} other(s) were rotated)"
        )


async def rotate_credentials(
    sessionmaker: SessionMaker, secrets: SecretBox, batch_size: int = 500
) -> int:
    """Re-encrypt every task's credentials under the first key; returns how many changed.

    Raises `UnreadableCredentials` at the end if some could not be decrypted; every
    other row has been rotated by then, so fixing the keys and re-running finishes it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    rotated, unreadable, after = 0, [], ""
    while True:
        async with transaction(sessionmaker) as session:
            rows = await _batch(session, after, batch_size)
            for task_id, ciphertext in rows:
                try:
                    rotated += await _rotate_row(session, secrets, task_id, ciphertext)
                except SecretBoxError:
                    unreadable.append(task_id)
        if len(rows) < batch_size:
            break
        after = rows[-1][0]
    if unreadable:
        raise UnreadableCredentials(unreadable, rotated)
    return rotated


async def _batch(session: AsyncSession, after: str, limit: int) -> Sequence[tuple[str, str]]:
    """The next `limit` stored credentials after task id `after` (keyset pagination:
    each batch costs the same however far the walk has gone)."""
    result = await session.execute(
        select(col(Task.id), col(Task.auth_ciphertext))
        .where(col(Task.id) > after, col(Task.auth_ciphertext).is_not(None))
        .order_by(col(Task.id))
        .limit(limit)
        .with_for_update()
    )
    return [(task_id, ciphertext) for task_id, ciphertext in result.all() if ciphertext is not None]


async def _rotate_row(
    session: AsyncSession, secrets: SecretBox, task_id: str, ciphertext: str
) -> int:
    """1 if the row was rewritten under the first key, 0 if it already was (or is gone).

    A lost compare-and-set means a client rewrote the credential since it was read; the
    new value is read again and rotated. The second read is stable: the failed UPDATE
    took SQLite's write lock, and PostgreSQL's rows are locked from the start.
    """
    for _ in range(2):
        if secrets.is_current(ciphertext):
            return 0
        if await _swap(session, task_id, ciphertext, secrets.rotate(ciphertext)):
            return 1
        current = await session.scalar(
            select(col(Task.auth_ciphertext)).where(col(Task.id) == task_id)
        )
        if current is None:
            return 0
        ciphertext = current
    raise RuntimeError(f"task {task_id} kept changing while its credentials were rotated")


async def _swap(session: AsyncSession, task_id: str, old: str, new: str) -> bool:
    result = await session.execute(
        update(Task)
        .where(col(Task.id) == task_id, col(Task.auth_ciphertext) == old)
        .values(auth_ciphertext=new)
        .returning(col(Task.id))
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none() is not None
