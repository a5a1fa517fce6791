"""Verified API keys, remembered for a few seconds per API process.

Why: looking the key up was one database round trip of every request (plus the
transaction around it), the largest share of a `GET /v1/runs/{id}` (bench/api.py,
issue 11 item 9). A key verified against the database is trusted again, for
`BACKSYNC_API_KEY_CACHE_SECONDS`, when the same whole key is presented (its SHA-256
must match the stored one: a wrong secret under a known prefix is never accepted).

Revocation: `backsync keys revoke` also tells every API process through Redis
(`service.broker.revocations`): each process hears it on a channel and forgets the key
at once; while it is not listening, every request with a remembered key reads the
revocation marker in the same round trip as its rate limit, and a marked key is
forgotten and looked up again. Only while Redis cannot be reached does a revoked key
stay usable, and then for at most the cache's seconds (documented in the README).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from service.auth.service import Principal, parse_key


@dataclass(frozen=True, slots=True)
class _Entry:
    key_hash: str
    principal: Principal
    expires_at: float


class KeyCache:
    """`ttl_seconds` 0 remembers nothing; at most `max_entries` keys (the oldest go)."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}

    def get(self, raw_key: str) -> Principal | None:
        """The principal of a remembered, unexpired key presented whole and right."""
        parsed = parse_key(raw_key)
        if parsed is None:
            return None
        entry = self._entries.get(parsed.prefix)
        if entry is None or entry.key_hash != parsed.key_hash:
            return None
        if entry.expires_at < time.monotonic():
            del self._entries[parsed.prefix]
            return None
        return entry.principal

    def remember(self, raw_key: str, principal: Principal) -> None:
        parsed = parse_key(raw_key)
        if not self.ttl_seconds or parsed is None:
            return
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        # Up to a fifth sooner, at random: keys verified together (a process's first
        # requests) do not all fall due together again, every `ttl_seconds`.
        ttl = self.ttl_seconds * (1 - random.random() / 5)
        self._entries[parsed.prefix] = _Entry(parsed.key_hash, principal, time.monotonic() + ttl)

    def forget(self, key_prefix: str) -> None:
        self._entries.pop(key_prefix, None)

    def clear(self) -> None:
        self._entries.clear()
