"""From a decoded page to keyed, hashed, canonical rows.

A record's canonical form is its JSON with sorted keys and no whitespace: the hash is
taken over exactly the text that is stored, so "unchanged" means byte-identical data.

The hash (`record_hash`) is XXH3-128, not a cryptographic hash. It only ever tells a
record's new text from the text stored under the same key of the same task, and the
only party able to forge a match is the upstream that sends both texts, which could as
well send the old one. BLAKE2b took 0.49 ms of a 1,000-record page's 1.65 ms of
extraction, XXH3 takes 0.06 (bench/RESULTS.md, session 13): extraction is a first
sync's largest share of the worker's CPU, and that CPU is on the first sync's critical
path. The revision that switched (`alembic/versions/…_record_hash_xxh3.py`) recomputes
every stored hash, so no record reads as changed because of it, as long as no worker of
an older version writes records after it (README "Upgrading": stop the workers first).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from service.sync.errors import BadConfig
from service.sync.paths import MISSING, get_path

_KEY_TYPES = (str, int, float)

record_hash = xxhash.xxh3_128_hexdigest
"""The stored hash of a record's canonical text (bytes): 32 hex digits (module doc)."""


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


def records_of(body: Any, records_path: str, *, first_page: bool = True) -> list[Any]:
    """The list of records at `records_path`, or `BadConfig` saying what the body holds.

    A missing path is a typo until proven otherwise: on the first page (where every run
    starts) it fails the run naming the keys that are there, instead of succeeding with
    0 records. On a later page the first one already proved the path, and some upstreams
    drop the list from the page past the end, so there it is an empty page. A present
    `null` is an empty page anywhere: a typo cannot produce it, and serialisers (Go's
    nil slices) write an empty list that way.
    """
    records = get_path(body, records_path)
    if records is None and records_path:
        return []
    if records is MISSING:
        if not first_page and isinstance(body, dict):
            return []
        raise BadConfig(_missing(body, records_path))
    if not isinstance(records, list):
        where = f"records_path {records_path!r}" if records_path else "the response"
        hint = "" if records_path else ": set records_path to the key that holds the records"
        raise BadConfig(f"{where} is {_described(records)}, not a list{hint}")
    return records


_JSON_TYPES = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
_SHOWN_KEYS = 20


def _keys(value: dict[Any, Any]) -> str:
    keys = [str(key) for key in value]
    more = ", …" if len(keys) > _SHOWN_KEYS else ""
    return (", ".join(keys[:_SHOWN_KEYS]) or "none") + more


def _described(value: Any) -> str:
    """A JSON value's type as the task's author knows it; an object's keys too."""
    if isinstance(value, dict):
        return f"an object (keys: {_keys(value)})"
    return _JSON_TYPES.get(type(value), "a number")


def _missing(body: Any, records_path: str) -> str:
    """Where `records_path` stops leading anywhere in `body`, and what is there instead."""
    lead = f"records_path {records_path!r} is not in the response"
    current, walked = body, list[str]()
    for part in records_path.split("."):
        following = get_path(current, part)
        if following is MISSING:
            where = f"{'.'.join(walked)!r}" if walked else "the response"
            if not isinstance(current, dict):
                return f"{lead}: {where} is {_described(current)}"
            if not walked:
                return f"{lead} (its top-level keys: {_keys(current)})"
            return f"{lead}: {where} has no {part!r} (its keys: {_keys(current)})"
        current = following
        walked.append(part)
    raise AssertionError("a path found whole is not missing")  # pragma: no cover


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
    """Every record's key, canonical text and hash; records without a usable key are
    rejections (their index and why)."""
    page = ExtractedPage()
    _extend(page, records, primary_key, 0, len(records))
    return page


EXTRACT_CHUNK = 200
"""Records extracted between two turns of the event loop (`extract_yielding`)."""


async def extract_yielding(records: list[Any], primary_key: str | list[str]) -> ExtractedPage:
    """`extract`, giving the event loop a turn every `EXTRACT_CHUNK` records.

    A page of 1,000 records takes the worker 3-5 ms to extract, and the engine extracts
    the next page while the ledger's statement for this one is at the database. In one
    piece, the statement's answer waited for the whole extraction before the run could
    send the next one, and the database idled meanwhile: about a page's extraction per
    page on a first sync. In pieces, the answer is taken within one piece (~1 ms)."""
    page = ExtractedPage()
    for start in range(0, len(records), EXTRACT_CHUNK):
        if start:
            await asyncio.sleep(0)
        _extend(page, records, primary_key, start, min(start + EXTRACT_CHUNK, len(records)))
    return page


def _extend(
    page: ExtractedPage, records: list[Any], primary_key: str | list[str], start: int, stop: int
) -> None:
    """Extract `records[start:stop]` into `page`."""
    # A key that is one top-level field holding a non-empty string (most APIs' ids) is
    # read without walking a path: `key_of` gives the same text at twice the cost,
    # about 3% of a first sync's worker CPU (bench/RESULTS.md). Anything else takes it.
    field = primary_key if isinstance(primary_key, str) and "." not in primary_key else None
    # Names bound once: this loop runs for every record of every page (a first sync's
    # largest share of the worker's CPU after decoding).
    dumps, sort_keys, hashed = orjson.dumps, orjson.OPT_SORT_KEYS, record_hash
    append = page.rows.append
    for index in range(start, stop):
        record = records[index]
        value = record.get(field) if field and type(record) is dict else None
        try:
            if type(value) is str and value:
                key = dumps(value).decode()
            else:
                key = key_of(record, primary_key)
        except LookupError as exc:
            page.rejections.append(Rejection(index, str(exc)))
            continue
        data = dumps(record, option=sort_keys)
        append(Row(key, data.decode(), hashed(data)))
