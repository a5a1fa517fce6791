"""From a decoded page to keyed, hashed, canonical rows.

A record's canonical form is its JSON with sorted keys and no whitespace: the hash is
taken over exactly the text that is stored, so "unchanged" means byte-identical data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.sync.errors import BadConfig
from service.sync.paths import MISSING, get_path

_KEY_TYPES = (str, int, float)


@dataclass(slots=True)
class Row:
    key: str
    data: str
    hash: str


@dataclass(slots=True)
class Rejection:
    index: int
    reason: str


@dataclass(slots=True)
class ExtractedPage:
    rows: list[Row] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.rows) + len(self.rejections)


def records_of(body: Any, records_path: str) -> list[Any]:
    records = get_path(body, records_path)
    if records is MISSING or records is None:
        if records_path and isinstance(body, dict):
            return []  # an absent list on the last page means "no records"
        raise BadConfig(f"records_path {records_path!r} not found in the response")
    if not isinstance(records, list):
        raise BadConfig(f"records_path {records_path!r} is a {type(records).__name__}, not a list")
    return records


def _key_part(record: Any, path: str) -> Any:
    value = get_path(record, path)
    if value is MISSING or value is None or value == "":
        raise LookupError(f"primary key {path!r} is missing")
    if isinstance(value, bool) or not isinstance(value, _KEY_TYPES):
        raise LookupError(f"primary key {path!r} is a {type(value).__name__}, not a scalar")
    return value


def key_of(record: Any, primary_key: str | list[str]) -> str:
    """Canonical JSON text of the record's key; raises LookupError when it has none."""
    if not isinstance(record, dict):
        raise LookupError(f"record is a {type(record).__name__}, not an object")
    if isinstance(primary_key, str):
        return orjson.dumps(_key_part(record, primary_key)).decode()
    return orjson.dumps([_key_part(record, path) for path in primary_key]).decode()


def extract(records: list[Any], primary_key: str | list[str]) -> ExtractedPage:
    page = ExtractedPage()
    for index, record in enumerate(records):
        try:
            key = key_of(record, primary_key)
        except LookupError as exc:
            page.rejections.append(Rejection(index, str(exc)))
            continue
        data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        page.rows.append(Row(key, data.decode(), digest))
    return page
