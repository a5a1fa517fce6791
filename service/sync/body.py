"""A response body read within bounds: its decoded size, how far it inflates, and the
process's in-flight bytes (`service.sync.inflight`).

The body is decoded here, not by httpx: httpx inflates each network read (up to 64 KiB)
whole, and 64 KiB of gzip can inflate to 64 MiB in one piece before anyone can count
it. Here no piece is larger than `PIECE`, so the decoded size is checked against
`limits.max_response_bytes` and against `max_ratio` times the compressed bytes read so
far as the body arrives, and a decompression bomb is refused after about `RATIO_FLOOR`
bytes instead of after it filled memory.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator

import httpx

from service.sync.errors import CompressionBomb, InvalidBody, ResponseTooLarge
from service.sync.inflight import DEFAULT_MAX_RATIO, BodyBudget, BodyHold

PIECE = 256 * 1024
"""Most bytes decoded at once, and the step in which a body's hold grows."""
RATIO_FLOOR = 1024 * 1024
"""A body that decodes to less than this is never refused for its ratio: small JSON can
compress a thousandfold (a page of nulls) and costs nothing."""
FIRST_BYTES = 64 * 1024
"""What a body holds before its request is sent: when the process is out of room, a
fetch waits before asking, not with the upstream's answer half read."""

BYTE_COST = 2
VALUE_COST = 96
RECORD_COST = 400
"""What a decoded body costs in memory, estimated before it is parsed (`decoded_cost`)
and once its records are known: twice its bytes (the body and the strings parsed from
it), 96 bytes per JSON value (a Python object and its slot; a value per comma, counted
in C) and 400 per record (its row: key, canonical text, hash). Measured on orjson and
`extract`: wearable-style records of ~250 bytes cost 7.3x their JSON (estimated 10x);
pages of empty objects or of tiny records cost 30-90x (estimated above each)."""


def decoded_cost(raw: bytes | bytearray) -> int:
    """Memory the body will take once parsed, before its records are counted."""
    return BYTE_COST * len(raw) + VALUE_COST * raw.count(b",")


class _Inflater:
    """One zlib stream (`gzip` or `deflate`), inflated `PIECE` bytes at a time."""

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        self._first = self._deflate
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | (0 if self._deflate else 16))

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from self._pieces(data)
        except zlib.error as exc:
            raise InvalidBody("upstream body does not match its Content-Encoding") from exc

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        if self._first and data:
            self._first = False
            if not _zlib_header(data):  # `deflate` is meant zlib-wrapped, is often raw
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        while True:
            piece = self._inflate.decompress(data, PIECE)
            if piece:
                yield piece
            data = self._inflate.unconsumed_tail
            if not data and len(piece) < PIECE:
                return

    def end(self) -> Iterator[bytes]:
        try:
            rest = self._inflate.flush()
        except zlib.error as exc:  # pragma: no cover (flush after decompress rarely fails)
            raise InvalidBody("upstream body does not match its Content-Encoding") from exc
        if rest:
            yield rest


def _zlib_header(data: bytes) -> bool:
    """RFC 1950: deflate method, and the first two bytes a multiple of 31."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


class _Decoder:
    """The body's `Content-Encoding`s undone, last applied first. Codings other than gzip
    and deflate are left as they are (as httpx does): the JSON parse then says so."""

    def __init__(self, headers: httpx.Headers) -> None:
        codings = [c.strip().lower() for c in headers.get_list("content-encoding", True)]
        self._stages = [_Inflater(c) for c in reversed(codings) if c in ("gzip", "deflate")]

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def end(self) -> Iterator[bytes]:
        return self._ended(0)

    def _through(self, stage: int, data: bytes) -> Iterator[bytes]:
        if stage == len(self._stages):
            yield data
            return
        for piece in self._stages[stage].feed(data):
            yield from self._through(stage + 1, piece)

    def _ended(self, stage: int) -> Iterator[bytes]:
        if stage == len(self._stages):
            return
        for piece in self._stages[stage].end():
            yield from self._through(stage + 1, piece)
        yield from self._ended(stage + 1)


async def read_body(
    response: httpx.Response,
    limit: int,
    bodies: BodyBudget | None,
    hold: BodyHold | None,
    deadline: asyncio.Timeout | None,
) -> bytearray:
    """The decoded body, refused (`ResponseTooLarge`, `CompressionBomb`) as soon as it is
    over `limit` or inflates past the ratio. `hold` grows as it arrives; a wait for room
    does not count against `deadline` (it is ours, not the upstream's slowness)."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"response of {declared} bytes exceeds max_response_bytes={limit}")
    max_ratio = bodies.max_ratio if bodies is not None else DEFAULT_MAX_RATIO
    decoder = _Decoder(response.headers)
    body = bytearray()
    compressed = 0
    try:
        async for data in response.aiter_raw():
            compressed += len(data)
            for piece in decoder.feed(data):
                body += piece
                _check(len(body), compressed, limit, max_ratio)
                if hold is not None and len(body) > hold.held:
                    _within_budget(len(body), bodies)
                    await _grow(hold, len(body) - hold.held, deadline)
        for piece in decoder.end():
            body += piece
            _check(len(body), compressed, limit, max_ratio)
    except BaseException:
        # Freed now, not when the traceback's frames are: a run's error can live on in a
        # reference cycle until the worker's (rare: `worker.py`) full collection, and 50
        # refused bombs kept 6 MiB each that way (bench/memory.py).
        body.clear()
        raise
    return body


def _check(decoded: int, compressed: int, limit: int, max_ratio: float) -> None:
    if decoded > limit:
        raise ResponseTooLarge(f"response exceeds max_response_bytes={limit} once decoded")
    if decoded > RATIO_FLOOR and decoded > max_ratio * compressed:
        raise CompressionBomb(
            f"response inflates more than {max_ratio:g} times: {compressed} compressed bytes"
            f" had already become {decoded} (a decompression bomb?); refused"
        )


def _within_budget(decoded: int, bodies: BodyBudget | None) -> None:
    """A body that alone would cost more than the whole budget once parsed is refused as
    soon as that is certain, rather than waiting for room that never comes."""
    largest = bodies.max_bytes if bodies is not None else None
    if largest is not None and BYTE_COST * decoded > largest:
        raise too_costly(BYTE_COST * decoded, largest)


async def _grow(hold: BodyHold, short: int, deadline: asyncio.Timeout | None) -> None:
    """At least `short` more bytes for `hold`, in `PIECE` steps."""
    step = max(short, PIECE)
    if hold.try_grow(step):
        return
    when = deadline.when() if deadline is not None else None
    loop = asyncio.get_running_loop()
    started = loop.time()
    if deadline is not None:
        deadline.reschedule(None)
    await hold.grow(step)
    if deadline is not None and when is not None:
        deadline.reschedule(when + loop.time() - started)


def too_costly(cost: int, max_bytes: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"response would take about {cost / 2**20:.0f} MiB of memory once decoded, more than"
        f" the {max_bytes / 2**20:.0f} MiB this server lets response bodies use at once"
    )


async def reserve_decoding(raw: bytearray, bodies: BodyBudget | None, hold: BodyHold) -> None:
    """Grow `hold` to what parsing `raw` will cost (waiting for room), before it is parsed."""
    cost = decoded_cost(raw)
    if bodies is not None and bodies.max_bytes is not None and cost > bodies.max_bytes:
        raise too_costly(cost, bodies.max_bytes)
    if cost > hold.held:
        await hold.grow(cost - hold.held)
