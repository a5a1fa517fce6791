"""A Redis pub/sub channel listened to for as long as a process runs, through reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

log = logging.getLogger(__name__)

RESUBSCRIBE_SECONDS = 1.0


class Subscription:
    """Calls `on_message(data)` for each message on `channel`.

    `listening` is true while subscribed, once `on_subscribed` (if any) has run: a
    caller that reads state first and then relies on messages sets that up there, after
    the subscription, so nothing published in between is missed. Losing Redis logs a
    warning (once per outage, not once per try) and subscribes again a second later;
    meanwhile `listening` is false and the caller falls back to asking Redis.
    """

    def __init__(
        self,
        redis: Redis,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
        purpose: str = "messages",
    ) -> None:
        self._redis, self._channel = redis, channel
        self._on_message, self._on_subscribed = on_message, on_subscribed
        self._purpose = purpose
        self.listening = False
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if self._on_subscribed is not None:
                        await self._on_subscribed()
                    self.listening = True
                    if self._failing:
                        log.info("listening for %s on Redis again", self._purpose)
                        self._failing = False
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:
                    log.warning("not listening for %s on Redis: %r", self._purpose, exc)
                self._failing = True
            finally:
                self.listening = False
            await asyncio.sleep(RESUBSCRIBE_SECONDS)
