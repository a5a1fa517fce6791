"""A slow fake upstream for the concurrency benchmark, run as its own process.

Every answer waits `--latency` seconds (an `asyncio.sleep`, so any number of requests
wait at once), then sends a page rendered once at startup. Each task has its own path,
so the upstream can tell a duplicate fetch from a new one.

    python -m bench.slow_upstream --pages 3 --page-size 100 --latency 0.2

prints `READY <port>` on stdout once it accepts connections. Routes:

- `GET /t/{task}/items[?next_token=T]`: cursor pagination, `{"data": [...], "next_token": T|null}`
  (the same pages for every task: records are stored per task);
- `GET /warmup`: one page of one record, at once (lets the benchmark check the worker is up);
- `GET /_stats`: what the task routes saw: requests, duplicates, peak requests in flight,
  and each request's `[arrival, departure]` (`time.time()`);
- `POST /_reset`: forget it all.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.upstream import WARMUP_PATH, make_record, render_pages, serve

TASK_PATH = "/t/{task}/items"
STATS_PATH = "/_stats"
RESET_PATH = "/_reset"


def task_path(task: int) -> str:
    return TASK_PATH.format(task=task)


@dataclass
class Seen:
    """What the task routes saw since the last reset."""

    fetches: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)

    def as_json(self) -> bytes:
        duplicates = {f"{task}@{token}": n for (task, token), n in self.fetches.items() if n > 1}
        return orjson.dumps(
            {
                "requests": sum(self.fetches.values()),
                "distinct": len(self.fetches),
                "duplicates": dict(list(duplicates.items())[:20]),
                "duplicate_count": sum(n - 1 for n in duplicates.values()),
                "tasks": len({task for task, _ in self.fetches}),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "spans": self.spans,
            }
        )


def build_app(
    pages: dict[str | None, bytes], latency: float, on_ready: Callable[[], None] | None = None
) -> Starlette:
    warmup = orjson.dumps({"data": [make_record(0, random.Random(0))], "next_token": None})
    seen = Seen()

    async def items(request: Request) -> Response:
        token = request.query_params.get("next_token")
        seen.fetches[(request.path_params["task"], token)] += 1
        arrival = time.time()
        seen.in_flight += 1
        seen.peak_in_flight = max(seen.peak_in_flight, seen.in_flight)
        try:
            await asyncio.sleep(latency)
        finally:
            seen.in_flight -= 1
            seen.spans.append((arrival, time.time()))
        body = pages.get(token)
        if body is None:
            return Response(b'{"error":"unknown token"}', 400, media_type="application/json")
        return Response(body, media_type="application/json")

    async def warm(_request: Request) -> Response:
        return Response(warmup, media_type="application/json")

    async def stats(_request: Request) -> Response:
        return Response(seen.as_json(), media_type="application/json")

    async def reset(_request: Request) -> Response:
        nonlocal seen
        seen = Seen()
        return Response(status_code=204)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    return Starlette(
        routes=[
            Route(TASK_PATH, items),
            Route(WARMUP_PATH, warm),
            Route(STATS_PATH, stats),
            Route(RESET_PATH, reset, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per page")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    pages = render_pages(args.pages * args.page_size, args.page_size)
    serve(
        lambda ready: build_app(pages, args.latency, ready),
        args.port,
        backlog=2048,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
