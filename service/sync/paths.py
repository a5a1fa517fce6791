"""Dotted paths into decoded JSON (`data.items`, `meta.0.id`)."""

from __future__ import annotations

from typing import Any

MISSING: Any = object()


def get_path(document: Any, path: str) -> Any:
    """The value at `path`, or `MISSING`; `""` is the document itself. Digits index lists."""
    if path == "":
        return document
    current = document
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else MISSING
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current
