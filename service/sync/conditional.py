"""Conditional requests: ask "has this page changed?" and let a 304 answer "no".

A validator is what the upstream said about one page URL last time (`ETag`,
`Last-Modified`) plus where that page pointed next: a 304 has no body, so the walk
continues from the remembered next page.

It also keeps a digest of the page's bytes (and of the task settings that read them),
for every source, conditional or not: a page that comes back byte for byte as it was
stored last time holds the same records, so it is neither decoded nor compared, and
counts as `unchanged` — what a strong `ETag` does for upstreams that send none.

Many upstreams stamp every response (a request id, a server time in the envelope), so
their bytes never come back the same. For those a second digest, of the bytes of the
page's records alone (`records_digest`), says the same thing after decoding only the
envelope around them (`service.sync.envelope`): the records are the stored ones, and the
page counts as if its bytes had matched, without decoding them, a key, a canonical text
and a hash per record or a comparison with the database (bench/ingest.py: the stamped
resync).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson
import xxhash

from service.sync.extract import ExtractedPage
from service.sync.paginators import PageRequest
from service.sync.spec import Source


@dataclass(frozen=True, slots=True)
class Validator:
    etag: str | None
    last_modified: str | None
    next_page: dict[str, Any] | None
    digest: str | None = None
    """`page_digest` of the body these records were stored from."""
    records_seen: int = 0
    rejected: int = 0
    records_digest: str | None = None
    """`records_digest` of the records stored from this page."""


def digest_seed(source: Source) -> bytes:
    """What besides the bytes decides a page's records and its next page: a digest
    stored under other settings never matches."""
    settings = [source.records_path, source.primary_key, source.pagination.model_dump()]
    return hashlib.blake2b(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).digest()


def page_digest(seed: bytes, raw: bytes | bytearray) -> str:
    """A digest of a page's bytes under `seed` (`digest_seed`).

    XXH3-128, not a cryptographic hash: it only tells this upstream's page from the one
    it sent before (a match skips the page's decoding), and an upstream able to forge a
    match could as well send the old page. A 250 KB page takes 4 µs where BLAKE2b took
    280; every page of every run is digested once, and its records once more
    (`records_digest`), so BLAKE2b was about 8% of a first sync's worker CPU
    (bench/RESULTS.md). A digest stored by the BLAKE2b versions never matches one of
    these: the first resync after the change compares its records (writing nothing for
    unchanged ones) and stores the new digests."""
    digest = xxhash.xxh3_128(seed)
    digest.update(raw)
    return digest.hexdigest()


def records_digest(seed: bytes, records: bytes | memoryview) -> str:
    """A digest of a page's records as the upstream sent them: the bytes of their value
    in the body (`envelope.split_records`), found without decoding them. An upstream
    that stamps its envelope sends the same records' bytes every time; one that
    re-serialises them differently (reordered keys, other spacing) only misses the
    shortcut, and its records are compared. XXH3-128, as `page_digest`. A digest stored
    by versions before session 13 (of the decoded records, re-serialised) never matches
    one of these: the first resync after the change compares its records (writing
    nothing for unchanged ones) and stores the new digests."""
    digest = xxhash.xxh3_128(seed)
    digest.update(records)
    return digest.hexdigest()


ValidatorLookup = Callable[[str], Awaitable[Validator | None]]


def page_key(request: PageRequest) -> str:
    """Identity of a page URL: the URL and its parameters, in a stable order."""
    canonical = orjson.dumps([request.url, request.params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def conditional_headers(validator: Validator) -> dict[str, str]:
    headers: dict[str, str] = {}
    if validator.etag:
        headers["If-None-Match"] = validator.etag
    if validator.last_modified:
        headers["If-Modified-Since"] = validator.last_modified
    return headers


def validator_from(
    headers: httpx.Headers,
    following: PageRequest | None,
    *,
    conditional: bool,
    digest: str | None,
    records: ExtractedPage,
    digest_of_records: str | None = None,
) -> Validator | None:
    """What to remember of a page: its HTTP validators (conditional sources), and its
    digests unless the page repeats a key (then its counts would not be all `unchanged`
    next time)."""
    etag, last_modified = _http_validators(headers, conditional=conditional)
    if len({row.key for row in records.rows}) < len(records.rows):
        digest = digest_of_records = None
    if not etag and not last_modified and digest is None and digest_of_records is None:
        return None
    return Validator(
        etag,
        last_modified,
        following.to_json() if following else None,
        digest,
        records.seen,
        len(records.rejections),
        digest_of_records,
    )


def validator_moved(
    known: Validator, headers: httpx.Headers, following: PageRequest | None, *, conditional: bool
) -> Validator | None:
    """What to remember of a page whose records are the stored ones: nothing new, unless
    it now leads elsewhere or its HTTP validators changed. Its records are what `known`
    counted, byte for byte, so its counts and digests stay (a stamped page's own digest
    would never match again: storing it would write a row per page per run for nothing)."""
    etag, last_modified = _http_validators(headers, conditional=conditional)
    moved = replace(
        known,
        etag=etag,
        last_modified=last_modified,
        next_page=following.to_json() if following else None,
    )
    return None if moved == known else moved


def _http_validators(headers: httpx.Headers, *, conditional: bool) -> tuple[str | None, str | None]:
    """`ETag` and `Last-Modified`, kept for conditional sources only."""
    if not conditional:
        return None, None
    return headers.get("etag"), headers.get("last-modified")


def resumed(validator: Validator, request: PageRequest) -> PageRequest | None:
    """The page after a 304, from what the page said last time."""
    if validator.next_page is None:
        return None
    return PageRequest.from_json({**validator.next_page, "index": request.index + 1})
