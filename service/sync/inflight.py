"""How many bytes response bodies may hold at once in one process, across all its fetches.

One worker runs many runs at once, and a page costs memory from its first byte read
until its caller has stored it: the body, then the Python objects its JSON becomes and
the rows taken from them (several times the body: `service.sync.body.decoded_cost`). A
per-task cap alone lets fifty runs each hold a page at that cap. `BodyBudget` is the
process's total: each body holds a `BodyHold` that grows as the body is read and is
released when its page is done with; a body that finds no room waits for it (before its
request is sent, or between chunks) instead of the process growing.

Waiting while holding part of a body could deadlock: two half-read bodies, each waiting
for the other's bytes. So when no byte held belongs to a page already in its caller's
hands (`BodyHold.settle`: only those come back without any fetch making progress), the
body that started first is let past the budget: bytes in flight stay within `max_bytes`
plus one body, and a body that alone would cost more than `max_bytes` is refused
(`service.sync.body`). A page fetched ahead and done, but not yet handed over, still
counts as being read: its caller takes it only after the pages before it, which may be
the ones waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque

DEFAULT_MAX_RATIO = 100.0
"""A body may decode to at most this many times the bytes it came as (see `body.py`)."""


class BodyBudget:
    """The process's in-flight body bytes (`max_bytes`; None: counted, never waited on)
    and how far a compressed body may inflate (`max_ratio`). One per process, shared by
    every fetch in it; not thread-safe (one event loop)."""

    def __init__(self, max_bytes: int | None, *, max_ratio: float = DEFAULT_MAX_RATIO) -> None:
        self.max_bytes = max_bytes
        self.max_ratio = max_ratio
        self.used = 0
        """Bytes held now, by every hold."""
        self.peak = 0
        """The most `used` has been (what a benchmark or a test reads)."""
        self._settled = 0
        """Bytes held by pages in their callers' hands: they come back without help."""
        self._reading: dict[BodyHold, None] = {}
        """Holds of bodies not yet handed over, oldest first (a dict keeps insertion order)."""
        self._waiting: deque[BodyHold] = deque()

    def hold(self) -> BodyHold:
        """A new, empty hold for one body (registered as being read)."""
        hold = BodyHold(self)
        self._reading[hold] = None
        return hold

    def _fits(self, hold: BodyHold, n: int) -> bool:
        if self.max_bytes is None:
            return True
        if self._waiting and self._waiting[0] is not hold:
            return self._unblocks(hold)  # first come, first served
        return self.used + n <= self.max_bytes or self._unblocks(hold)

    def _unblocks(self, hold: BodyHold) -> bool:
        """Whether `hold` is let past the budget: it is the oldest body being read, and
        no byte held is in a caller's hands (so nothing else would free room)."""
        return self._settled == 0 and next(iter(self._reading), None) is hold

    def _grant(self, hold: BodyHold, n: int) -> None:
        hold.held += n
        self.used += n
        if hold.settled:
            self._settled += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        """Grant waiting holds, in order, while they fit; then the one that unblocks."""
        while self._waiting:
            hold = self._waiting[0]
            if not self._fits(hold, hold.wanted):
                break
            self._waiting.popleft()
            self._grant_waiter(hold)
        oldest = next(iter(self._reading), None)
        if oldest is not None and oldest.future is not None and self._unblocks(oldest):
            self._waiting.remove(oldest)
            self._grant_waiter(oldest)

    def _grant_waiter(self, hold: BodyHold) -> None:
        future, hold.future = hold.future, None
        assert future is not None
        if not future.done():
            self._grant(hold, hold.wanted)
            future.set_result(None)


class BodyHold:
    """What one body holds of its process's `BodyBudget`."""

    __slots__ = ("_budget", "future", "held", "kept", "settled", "wanted")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0
        self.settled = False
        """Its page is in its caller's hands: released when the caller is done with it."""
        self.kept = False
        """Its caller keeps the page past its turn (`keep`): `release` waits for `let_go`."""
        self.wanted = 0
        self.future: asyncio.Future[None] | None = None

    def try_grow(self, n: int) -> bool:
        """Take `n` more bytes if there is room now (the common case: no waiting)."""
        if self._budget._fits(self, n):
            self._budget._grant(self, n)
            return True
        return False

    async def grow(self, n: int) -> None:
        """Take `n` more bytes, waiting for room (in turn with other waiting bodies)."""
        if self.try_grow(n):
            return
        budget = self._budget
        self.wanted, self.future = n, asyncio.get_running_loop().create_future()
        budget._waiting.append(self)
        try:
            await self.future
        except BaseException:
            if self.future is not None:  # not granted: leave the line
                self.future = None
                budget._waiting.remove(self)
                budget._wake()  # those behind may fit now
            raise

    def charge(self, n: int) -> None:
        """Count `n` more bytes that are already in memory (no waiting: too late)."""
        self._budget._grant(self, n)

    def settle(self) -> None:
        """The page is handed to its caller: it no longer grows, and will be released."""
        budget = self._budget
        if not self.settled:
            self.settled = True
            budget._reading.pop(self, None)
            budget._settled += self.held
            budget._wake()  # the oldest body being read may be another now

    def keep(self) -> None:
        """The caller keeps the page after asking for the next one (a ledger holding a
        first sync's page to write it with the next): its bytes stay counted until
        `let_go`, whatever releases it meanwhile."""
        self.kept = True

    def let_go(self) -> None:
        """The kept page is done with: give everything back."""
        self.kept = False
        self.release()

    def release(self) -> None:
        """Give everything back (the page is stored, dropped or failed), unless the
        caller keeps it (`keep`). Idempotent."""
        if self.kept:
            return
        budget = self._budget
        budget._reading.pop(self, None)
        if self.settled:
            budget._settled -= self.held
        self.settled = True
        budget.used -= self.held
        self.held = 0
        budget._wake()
