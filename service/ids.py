"""Public ids: a type prefix plus a time-ordered, URL-safe body.

Time order makes "newest first" listings a plain `ORDER BY id DESC` and lets an id
serve as its own pagination cursor.
"""

from __future__ import annotations

import base64
import os
import time


def new_id(prefix: str) -> str:
    raw = int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32encode(raw).decode().rstrip('=').lower()}"
