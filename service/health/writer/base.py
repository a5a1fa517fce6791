"""What a sample writer does (`service.health.writer`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from service.health.merge import Key, Stored
from service.health.normalize import Normalized


@dataclass(frozen=True, slots=True)
class Write:
    """A sample the rule decided to write, with the user's seq it takes."""

    sample: Normalized
    seq: int


class SampleWriter(Protocol):
    async def stored(
        self, session: AsyncSession, tenant_id: str, user_id: str, keys: Sequence[Key]
    ) -> dict[Key, Stored]:
        """The stored state of those of `keys` that exist (tombstones included)."""
        ...

    async def upsert(
        self,
        session: AsyncSession,
        tenant_id: str,
        user_id: str,
        writes: Sequence[Write],
        now: datetime,
    ) -> None:
        """Write whole rows: the caller has decided under the user's lock what changes,
        so every write is applied (a new row, or the stored one replaced)."""
        ...
