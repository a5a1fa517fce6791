"""A fast fake upstream for the ingest benchmark, run as its own process.

Every page's JSON is rendered once at startup and served as pre-built bytes, so the
upstream costs next to nothing per request and never becomes what is measured.

    python -m bench.upstream --records 100000 --page-size 1000

prints `READY <port>` on stdout once it accepts connections. Routes:

- `GET /v2/daily_activity[?next_token=T]`: cursor pagination,
  `{"data": [...], "next_token": T|null}`; every page carries a strong `ETag` (a hash of
  its bytes) and a request whose `If-None-Match` matches it gets `304` with no body
- `GET /warmup`: one page of one record (lets the benchmark check the worker is up)
- `GET /v2/warmup_activity[?next_token=T]`: `--warmup-records` other records in pages of
  the same size and shape (a first sync the benchmark runs before it measures anything)
- `PUT /stamp` / `DELETE /stamp`: from now on, every page's envelope carries the time
  and a request number (`{"generated_at": …, "request": N, "data": …}`) and no `ETag`,
  like upstreams that stamp each response: the bytes differ on every fetch, the records
  do not; `DELETE` turns it off again
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PATH = "/v2/daily_activity"
WARMUP_PATH = "/warmup"
WARMUP_PAGES_PATH = "/v2/warmup_activity"
STAMP_PATH = "/stamp"
_DEVICES = ("ring-gen3", "ring-gen4", "watch-s9", "band-7")
_ACTIVITIES = ("walking", "running", "cycling", "rest", "swimming")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def make_record(index: int, rng: random.Random) -> dict[str, Any]:
    """A wearable-style record of roughly 250 bytes."""
    moment = _EPOCH + timedelta(seconds=index * 60)
    return {
        "id": f"act_{index:09d}",
        "user_id": f"u_{index % 5000:05d}",
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "activity": _ACTIVITIES[index % len(_ACTIVITIES)],
        "steps": rng.randint(0, 2500),
        "calories": round(rng.uniform(0, 400), 2),
        "distance_m": round(rng.uniform(0, 2000), 1),
        "heart_rate": {
            "avg": rng.randint(55, 150),
            "min": rng.randint(40, 60),
            "max": rng.randint(120, 190),
        },
        "device": {"model": _DEVICES[index % len(_DEVICES)], "firmware": "2.9.1"},
        "score": rng.randint(0, 100),
    }


def token_of(page: int) -> str:
    return f"tok_{page:07d}"


def render_pages(records: int, page_size: int, seed: int = 42) -> dict[str | None, bytes]:
    """Page bodies keyed by the `next_token` that asks for them (None = first page)."""
    rng = random.Random(seed)
    pages: dict[str | None, bytes] = {}
    count = max(1, -(-records // page_size))
    for page in range(count):
        start = page * page_size
        data = [make_record(i, rng) for i in range(start, min(start + page_size, records))]
        following = token_of(page + 1) if page + 1 < count else None
        pages[None if page == 0 else token_of(page)] = orjson.dumps(
            {"data": data, "next_token": following}
        )
    return pages


def etag_of(body: bytes) -> str:
    """A strong entity tag: the same bytes, the same tag."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: `*` or any listed tag, compared weakly (`W/` ignored)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(
        candidate.strip().removeprefix("W/") == etag for candidate in if_none_match.split(",")
    )


def build_app(
    pages: dict[str | None, bytes],
    on_ready: Callable[[], None] | None = None,
    warm_pages: dict[str | None, bytes] | None = None,
) -> Starlette:
    warmup = orjson.dumps({"data": [make_record(0, random.Random(0))], "next_token": None})
    etags = {token: etag_of(body) for token, body in pages.items()}
    stamps = itertools.count(1)
    stamping = False

    async def activity(request: Request) -> Response:
        token = request.query_params.get("next_token")
        body = pages.get(token)
        if body is None:
            return Response(b'{"error":"unknown token"}', 400, media_type="application/json")
        if stamping:  # a new envelope around the same records (bytes spliced, not re-rendered)
            stamp = orjson.dumps(
                {"generated_at": datetime.now(UTC).isoformat(), "request": next(stamps)}
            )
            return Response(stamp[:-1] + b"," + body[1:], media_type="application/json")
        etag = etags[token]
        if matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})

    async def warm(_request: Request) -> Response:
        return Response(warmup, media_type="application/json")

    async def warm_activity(request: Request) -> Response:
        body = (warm_pages or {}).get(request.query_params.get("next_token"))
        if body is None:
            return Response(b'{"error":"unknown token"}', 400, media_type="application/json")
        return Response(body, media_type="application/json")

    async def stamp(request: Request) -> Response:
        nonlocal stamping
        stamping = request.method == "PUT"
        return Response(status_code=204)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    routes = [
        Route(PATH, activity),
        Route(WARMUP_PATH, warm),
        Route(WARMUP_PAGES_PATH, warm_activity),
        Route(STAMP_PATH, stamp, methods=["PUT", "DELETE"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--warmup-records", type=int, default=0)
    args = parser.parse_args(argv)

    pages = render_pages(args.records, args.page_size)
    warm = render_pages(args.warmup_records, args.page_size, seed=7) if args.warmup_records else {}
    serve(lambda ready: build_app(pages, ready, warm), args.port, backlog=128)


def serve(build: Callable[[Callable[[], None]], Any], port: int, **options: Any) -> None:
    """Run the app `build(ready)` makes on 127.0.0.1:`port` (0 = any); `ready()` prints
    `READY <port>` for the parent process once the app is up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(options.get("backlog", 128))
    bound = sock.getsockname()[1]

    def ready() -> None:
        sys.stdout.write(f"READY {bound}\n")
        sys.stdout.flush()

    config = uvicorn.Config(
        build(ready),
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        server_header=False,
        date_header=False,
        **options,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
