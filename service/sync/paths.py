"""Dotted paths into decoded JSON (`data.items`, `meta.0.id`)."""

from __future__ import annotations

import re
from typing import Any

MISSING: Any = object()

_INDEX = re.compile(r"-?[0-9]+")
"""A list index: ASCII digits with an optional minus. `str.isdigit` would let through
`²` or `--1`, which `int()` then refuses with a ValueError instead of a MISSING."""


def get_path(document: Any, path: str) -> Any:
    """The value at `path`, or `MISSING`; `""` is the document itself. Digits index lists."""
    if path == "":
        return document
    current = document
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and _INDEX.fullmatch(part):
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else MISSING
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current
