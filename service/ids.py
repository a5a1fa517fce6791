"""Public ids: a type prefix plus a time-ordered, URL-safe body (ULID-like).

base32hex keeps byte order in string order.

Time order makes "newest first" listings a plain `ORDER BY id DESC` and lets an id
serve as its own pagination cursor. Within a process ids are strictly increasing, even
within one millisecond (the random tail is incremented, as monotonic ULIDs do).
"""

from __future__ import annotations

import base64
import os
import threading
import time

_lock = threading.Lock()
_last = (0, 0)


def _next_pair() -> tuple[int, int]:
    global _last
    with _lock:
        millis = int(time.time() * 1000)
        last_millis, last_random = _last
        if millis <= last_millis:
            millis, random = last_millis, last_random + 1
        else:
            random = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        _last = (millis, random)
        return millis, random


def new_id(prefix: str) -> str:
    millis, random = _next_pair()
    raw = millis.to_bytes(6, "big") + random.to_bytes(10, "big")
    return f"{prefix}_{base64.b32hexencode(raw).decode().rstrip('=').lower()}"
