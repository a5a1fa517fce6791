"""A page's body decoded around its records: the envelope as Python values, the records
as the bytes the upstream sent.

Many upstreams stamp every response (a request id, a server time in the envelope), so a
page's bytes differ on every fetch even when its records do not. Its records then show
they are the stored ones by their own bytes (`conditional.records_digest`,
`fetch.fetch_page`), and only the envelope, which says where the next page is, needs
decoding: a few small values instead of a thousand records. Decoding a 250 KB page of
1,000 records took 0.85-1.3 ms with orjson; finding its records' bytes takes 0.17 ms,
and the digest of them 5 µs (bench/RESULTS.md, session 13).

msgspec is the one JSON library here that can skip a value and hand back its bytes
(`msgspec.Raw`) in C; it is used for that only. Everything that is decoded, here and
elsewhere, is decoded by orjson, so what a body means never depends on which library
read it: a body msgspec cannot split is decoded whole, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from service.sync.spec import Source

_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
"""An object's fields, each left as its bytes (not decoded)."""


class _RecordsLeftOut:
    """Where the records were in an envelope: not a dict or a list, so no path leads
    through it (`paths.get_path` finds nothing there)."""

    def __repr__(self) -> str:
        return "<records left out>"


RECORDS_LEFT_OUT: Any = _RecordsLeftOut()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A body's objects along `records_path`, their fields left as bytes."""

    path: list[str]
    levels: list[dict[str, msgspec.Raw]]
    """The fields of the body, then of each object on the way to the records."""

    @property
    def records(self) -> msgspec.Raw:
        """The records' value as the upstream sent it (a JSON list, or `null`), a buffer."""
        return self.levels[-1][self.path[-1]]

    def body(self) -> Any:
        """The body decoded, with `RECORDS_LEFT_OUT` in place of the records, in the
        upstream's order; None when a field does not decode (orjson refuses what msgspec
        only skipped: then the body is decoded whole, and fails as it always did)."""
        body: dict[str, Any] = {}
        node = body
        for depth, (part, fields) in enumerate(zip(self.path, self.levels, strict=True), 1):
            inner: dict[str, Any] = {}
            for name, value in fields.items():
                if name == part:
                    node[name] = RECORDS_LEFT_OUT if depth == len(self.path) else inner
                    continue
                try:
                    node[name] = orjson.loads(memoryview(value))
                except orjson.JSONDecodeError:
                    return None
            node = inner
        return body


def paginates_without_records(source: Source) -> bool:
    """Can the page after this source's page be found without its records? Only when
    the records sit in an object (not the whole body) and no pagination path reads
    inside them (a cursor taken from the last record's id needs the records decoded)."""
    path = source.records_path
    if not path:
        return False
    paths = [
        value
        for name, value in source.pagination.model_dump().items()
        if name.endswith("_path") and isinstance(value, str)
    ]
    return not any(p == path or p.startswith(path + ".") for p in paths)


def split_records(raw: bytes | bytearray, records_path: str) -> Envelope | None:
    """The body's objects along `records_path`, nothing decoded yet; None when there is
    no envelope (an empty `records_path`: the body is the records) or the body is not an
    object along `records_path` (a list index, a missing key, invalid JSON, nesting too
    deep): then it is decoded whole, and whatever is wrong with it is reported as it
    always was."""
    if not records_path:
        return None
    path = records_path.split(".")
    levels: list[dict[str, msgspec.Raw]] = []
    fields = _fields(raw)
    for depth, part in enumerate(path, 1):
        if fields is None or part not in fields:
            return None
        levels.append(fields)
        if depth < len(path):
            fields = _fields(fields[part])
    return Envelope(path, levels)


def _fields(raw: Any) -> dict[str, msgspec.Raw] | None:
    try:
        return _FIELDS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
