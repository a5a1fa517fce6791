"""Opaque cursors, all base64url without padding.

A list cursor is the last id seen, wrapped: ids are time-ordered. A feed cursor is a
vector of positions, `{task_id: last_seq}` as compact JSON: one per task, because seqs
are allocated (and commit in order) per task.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import orjson

from service.errors import InvalidInput

MAX_SEQ = 2**63 - 1
"""Seqs are BIGINT."""


def _wrap(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unwrap(cursor: str, loc: list[str | int]) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput.at(loc, "invalid cursor") from exc


def _is_id(value: object) -> bool:
    """Looks like one of our ids (`prefix_body`, at most 40 printable ASCII characters)."""
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isprintable()
        and "_" in value
        and len(value) <= 40
    )


def encode_cursor(last_id: str) -> str:
    return _wrap(last_id.encode())


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    loc: list[str | int] = ["query", "cursor"]
    try:
        value = _unwrap(cursor, loc).decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput.at(loc, "invalid cursor") from exc
    if not _is_id(value):
        raise InvalidInput.at(loc, "invalid cursor")
    return value


def page_cursor(ids: list[str], limit: int) -> str | None:
    """The cursor for the next page, when this one was full (one extra row was fetched)."""
    return encode_cursor(ids[limit - 1]) if len(ids) > limit else None


def encode_positions(positions: Mapping[str, int]) -> str:
    """A feed cursor: task id -> last seq seen. Zeros are left out (absent means 0) and
    keys sorted, so equal vectors make equal cursors."""
    kept = {task_id: seq for task_id, seq in sorted(positions.items()) if seq}
    return _wrap(orjson.dumps(kept))


def decode_positions(cursor: str | None, loc: list[str | int]) -> dict[str, int]:
    """The positions in a feed cursor; empty (from the start) when there is none."""
    if not cursor:
        return {}
    try:
        positions = orjson.loads(_unwrap(cursor, loc))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput.at(loc, "invalid cursor") from exc
    if not isinstance(positions, dict) or not all(
        _is_id(task_id) and type(seq) is int and 0 <= seq <= MAX_SEQ
        for task_id, seq in positions.items()
    ):
        raise InvalidInput.at(loc, "invalid cursor")
    return positions
