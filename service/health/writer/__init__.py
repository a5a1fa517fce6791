"""Where a chunk's samples meet the database: the stored state the de-duplication rule
reads, and the upsert of what it decided to write.

PostgreSQL and SQLite spell the fast form of both differently, so each has its own
module behind one small interface (`SampleWriter`); `writer_for` is the only place that
asks which database a session talks to (STYLE 13, 15).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.health.writer.base import Chunk, SampleWriter, Write
from service.health.writer.postgres import PostgresWriter
from service.health.writer.sqlite import SqliteWriter

__all__ = ["Chunk", "SampleWriter", "Write", "writer_for"]

_WRITERS: dict[str, SampleWriter] = {"postgresql": PostgresWriter(), "sqlite": SqliteWriter()}


def writer_for(session: AsyncSession) -> SampleWriter:
    """The writer of the session's database (one instance each: they hold no state)."""
    return _WRITERS[session.get_bind().dialect.name]
