"""Live progress as Server-Sent Events: one `progress` event per committed page and a
final `status` event, then the stream ends. A run that waits (queued or retrying, with
nothing changing) longer than `BACKSYNC_EVENTS_MAX_WAIT_SECONDS` ends its stream with a
`timeout` event instead; the client follows it again later, or polls.

Progress is read from the run rows (the truth, written by whichever worker holds the
run), so it works across any number of API and worker processes with no pub/sub. One
`ProgressHub` per API process reads every followed run in one statement per interval:
before it each stream polled the database four times a second on its own, and 1,000
open streams took everyone's `GET /v1/runs/{id}` p50 from 7 ms to 419 ms (issue 11
item 8; `bench/api.py` measures it). Open streams are capped per key and process
(`BACKSYNC_EVENTS_MAX_STREAMS_PER_KEY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import RateLimited
from service.models import FINAL_STATUSES
from service.runs import repository
from service.runs.schemas import RunOut
from service.runs.service import out_of_row

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
READ_CHUNK = 500
"""Runs read per statement: the IN list of one poll stays bounded."""
WAITING_STATUSES = frozenset({"queued", "retrying"})


class TooManyStreams(RateLimited):
    slug = "too-many-streams"
    title = "Too Many Streams"


@dataclass(eq=False)
class _Followed:
    """One run's latest row, shared by every stream following it."""

    followers: int = 0
    latest: RunOut | None = None
    gone: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, run: RunOut | None) -> None:
        """Wake the streams, if anything changed."""
        if run == self.latest and (run is not None or self.gone):
            return
        self.latest, self.gone = run, run is None
        self.changed.set()
        self.changed = asyncio.Event()


class ProgressHub:
    """Every stream of this process, served from one poll of the database."""

    def __init__(self, reads: AsyncEngine, *, poll_seconds: float, max_streams_per_key: int):
        self._reads = reads
        self.poll_seconds = poll_seconds
        self._max_per_key = max_streams_per_key
        self._runs: dict[str, _Followed] = {}
        self._per_key: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None

    def open_slot(self, key_prefix: str) -> StreamSlot:
        """A stream for this key, or 429 when it already has its cap open here."""
        if self._per_key.get(key_prefix, 0) >= self._max_per_key:
            raise TooManyStreams(
                f"this API key already has {self._max_per_key} event streams open; close"
                " one, or poll GET /v1/runs/{id}",
                retry_after=5,
            )
        self._per_key[key_prefix] = self._per_key.get(key_prefix, 0) + 1
        return StreamSlot(self, key_prefix)

    def _release(self, key_prefix: str) -> None:
        left = self._per_key.get(key_prefix, 0) - 1
        if left > 0:
            self._per_key[key_prefix] = left
        else:
            self._per_key.pop(key_prefix, None)

    def open_streams(self, key_prefix: str) -> int:
        return self._per_key.get(key_prefix, 0)

    @contextlib.asynccontextmanager
    async def follow(self, first: RunOut) -> AsyncIterator[_Followed]:
        """The run's shared feed, starting from `first` (as the caller just read it)."""
        run_id = first.id
        followed = self._runs.setdefault(run_id, _Followed())
        if followed.latest is None and not followed.gone:
            followed.latest = first
        followed.followers += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_forever())
        try:
            yield followed
        finally:
            followed.followers -= 1
            if not followed.followers:
                self._runs.pop(run_id, None)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll_forever(self) -> None:
        """Until no run is followed; a failed read is logged and tried again."""
        while self._runs:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self._poll_once(list(self._runs))
            except Exception:
                log.warning("reading the followed runs failed; trying again", exc_info=True)

    async def _poll_once(self, run_ids: list[str]) -> None:
        found: dict[str, RunOut] = {}
        async with self._reads.connect() as connection:
            for chunk in _chunks(run_ids, READ_CHUNK):
                for row in await repository.read_many(connection, chunk):
                    found[row["id"]] = out_of_row(row)
        for run_id in run_ids:
            followed = self._runs.get(run_id)
            if followed is not None:
                followed.publish(found.get(run_id))


class StreamSlot:
    """One open stream counted against its key; released when the stream ends, or when
    its body is dropped without ever being read (a client that left at once)."""

    def __init__(self, hub: ProgressHub, key_prefix: str) -> None:
        self._hub, self._key_prefix = hub, key_prefix
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._hub._release(self._key_prefix)

    def bind(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        weakref.finalize(stream, self.release)
        return stream


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _event(name: str, run: RunOut) -> str:
    return f"event: {name}\nid: {run.stats.pages}\ndata: {run.model_dump_json()}\n\n"


async def run_events(
    hub: ProgressHub, slot: StreamSlot, first: RunOut, *, max_wait_seconds: float
) -> AsyncGenerator[str, None]:
    try:
        async with hub.follow(first) as followed:
            async for chunk in _stream(followed, max_wait_seconds):
                yield chunk
    finally:
        slot.release()


async def _stream(followed: _Followed, max_wait_seconds: float) -> AsyncIterator[str]:
    last: tuple[object, ...] | None = None
    quiet_since = changed_at = time.monotonic()
    while True:
        run = followed.latest
        if followed.gone or run is None:  # the task (and its runs) was deleted meanwhile
            return
        if run.status in FINAL_STATUSES:
            yield _event("status", run)
            return
        state = (run.status, run.attempt, run.stats.pages, run.cancel_requested)
        now = time.monotonic()
        if state != last:
            yield _event("progress", run)
            last, quiet_since, changed_at = state, now, now
        elif run.status in WAITING_STATUSES and now - changed_at > max_wait_seconds:
            yield _event("timeout", run)
            return
        elif now - quiet_since > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = now
        wake = quiet_since + KEEPALIVE_SECONDS
        if run.status in WAITING_STATUSES:
            wake = min(wake, changed_at + max_wait_seconds)
        changed = followed.changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=max(0.01, wake - time.monotonic()))
