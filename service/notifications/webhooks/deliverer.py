"""The worker's webhook loop: fan new events out into deliveries, and send due ones.

One runs in every worker process; the database decides which of them fans out each
endpoint and sends each delivery (`fanout`, `sender`). It sleeps until a doorbell rings
— in-process when this worker's runs wrote events (`wake`), over Redis pub/sub when an
API process did (`Queue.webhooks_due`) — or `webhook_poll_seconds` at most, which is
also how a retry that falls due or a ring lost while Redis was away is noticed.

Three coroutines share it: the fan-out, which on a ring makes the deliveries (and
hands them to the sender in-process); the sender, which keeps up to
`webhook_max_in_flight` attempts going at once; and the recorder, which writes the
attempts that ended, in batches, on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from service.broker.channel import Subscription
from service.broker.queue import webhooks_channel
from service.config import Settings
from service.crypto import SecretBox
from service.db import SessionMaker
from service.http_client import create_upstream_client
from service.notifications.webhooks.fanout import fan_out
from service.notifications.webhooks.sender import Attempt, Claimed, Sender

log = logging.getLogger(__name__)

RECORD_BATCH = 200
"""Attempts written per transaction at most."""


COALESCE_SECONDS = 0.03
"""How long a fan-out waits after a ring for others to arrive, so that a burst of run
ends costs one pass (one query), at 30 ms of delivery latency (target: p50 < 200 ms)."""


def build(sessionmaker: SessionMaker, secrets: SecretBox, settings: Settings) -> Deliverer:
    """A deliverer with its own guarded HTTP client (the SSRF guard of upstream
    requests), apart from the runs': a slow endpoint never takes their connections."""
    sender = Sender(
        sessionmaker, secrets, create_upstream_client(settings, counted=False), settings
    )
    return Deliverer(
        sessionmaker,
        sender,
        max_in_flight=settings.webhook_max_in_flight,
        poll=settings.webhook_poll_seconds,
    )


class Deliverer:
    def __init__(
        self, sessionmaker: SessionMaker, sender: Sender, *, max_in_flight: int, poll: float
    ) -> None:
        self._sessionmaker, self._sender = sessionmaker, sender
        self._max_in_flight, self._poll = max_in_flight, poll
        self._events = asyncio.Event()
        self._due = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[tuple[Claimed, Attempt]] = asyncio.Queue()
        self._busy = 0
        """Deliveries claimed and not yet recorded: at most `max_in_flight`."""
        self._backlog = False
        """The last claim took all it could: more may be due as soon as a slot frees."""

    def wake(self, _message: bytes = b"") -> None:
        """Events were written or deliveries made (an API process's ring): look now, not
        at the next poll."""
        self._events.set()
        self._due.set()

    def events_written(self) -> None:
        """A run of this worker ended (and wrote events): fan out soon. Only the fan-out
        is woken; it wakes the sender when it made deliveries. A run's end is the
        worker's most frequent ring (bench/concurrency.py: 500 runs in seconds), and
        each sender pass is a query, so this ring costs no sender pass of its own."""
        self._events.set()

    async def run_forever(self, subscription: Subscription | None = None) -> None:
        if subscription is not None:
            subscription.start()
        try:
            await asyncio.gather(
                self._fan_out_forever(), self._send_forever(), self._record_forever()
            )
        finally:
            for task in list(self._sending):  # their claims lapse; another sender retries
                task.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)
            await self._record_what_ended()
            if subscription is not None:
                await subscription.close()
            await self._sender.close()

    async def _fan_out_forever(self) -> None:
        while True:
            await asyncio.sleep(COALESCE_SECONDS)  # the rings of a burst: one pass
            self._events.clear()  # a ring during the pass runs another one
            try:
                if await self.fan_out():
                    self._due.set()
            except Exception:
                log.warning("webhook fan-out failed; trying again", exc_info=True)
            await _wait(self._events, self._poll)

    async def fan_out(self) -> int:
        """Fan out every new event; returns the deliveries made."""
        made = 0
        while True:
            done = await fan_out(self._sessionmaker)
            made += done.deliveries
            if not done.more:
                return made

    async def _send_forever(self) -> None:
        while True:
            self._due.clear()
            free = self._max_in_flight - self._busy
            if free > 0:
                try:
                    claimed = await self._sender.claim(free)
                except Exception:
                    log.warning("claiming webhook deliveries failed; trying again", exc_info=True)
                    claimed = []
                self._backlog = len(claimed) == free
                self._busy += len(claimed)
                for delivery in claimed:
                    task = asyncio.create_task(self._send(delivery))
                    self._sending.add(task)
                    task.add_done_callback(self._sending.discard)
            await _wait(self._due, self._poll)

    async def _send(self, delivery: Claimed) -> None:
        await self._results.put((delivery, await self._sender.attempt(delivery)))

    async def _record_forever(self) -> None:
        """Write attempts as they end, all that have ended at once in one transaction:
        one connection for any number in flight, and a commit shared under load."""
        while True:
            batch = [await self._results.get()]
            while not self._results.empty() and len(batch) < RECORD_BATCH:
                batch.append(self._results.get_nowait())
            try:
                if await self._sender.record(batch):
                    self._events.set()  # `webhook.disabled` was written: fan it out
            except Exception:  # the claims lapse and the deliveries are tried again
                log.warning("recording %d webhook attempt(s) failed", len(batch), exc_info=True)
            self._busy -= len(batch)
            if self._backlog:
                self._due.set()

    async def _record_what_ended(self) -> None:
        """On shutdown: record the attempts that ended but were not written yet, so a
        deploy does not send them again (best effort; if it fails, they are resent)."""
        ended = [self._results.get_nowait() for _ in range(self._results.qsize())]
        if ended:
            with contextlib.suppress(Exception):
                await self._sender.record(ended)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def subscription(queue_name: str, redis: Redis, deliverer: Deliverer) -> Subscription:
    """Wakes `deliverer` whenever an API process publishes new webhook work."""
    return Subscription(
        redis, webhooks_channel(queue_name), deliverer.wake, purpose="webhook deliveries"
    )
