"""Opaque list cursors. Ids are time-ordered, so a cursor is the last id seen, wrapped."""

from __future__ import annotations

import base64
import binascii

from service.errors import InvalidInput


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput.at(["query", "cursor"], "invalid cursor") from exc
    if not (value.isascii() and value.isprintable()) or "_" not in value or len(value) > 40:
        raise InvalidInput.at(["query", "cursor"], "invalid cursor")
    return value


def page_cursor(ids: list[str], limit: int) -> str | None:
    """The cursor for the next page, when this one was full (one extra row was fetched)."""
    return encode_cursor(ids[limit - 1]) if len(ids) > limit else None
