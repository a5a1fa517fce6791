"""The sync engine alone: the benchmark's pages walked through `iter_pages`, in this
process, with no worker, ledger or database, and the CPU it took.

    .venv/bin/python -m bench.engine [--walk 304|stamped|first] [--records 100000]
        [--page-size 1000] [--repeats 8] [--ahead 6] [--profile]

It starts `bench.upstream`, walks every page once to learn what a run would have
stored (each page's validator), then walks them `--repeats` more times as a run would:

- `304`: a conditional task's resync, every page answering 304;
- `stamped`: the upstream stamps every response's envelope, so only the records'
  bytes show they are the stored ones (`service.sync.envelope`);
- `first`: no validator at all, every page decoded and extracted, two decoded pages
  ahead (a first sync on PostgreSQL).

Each walk prints its wall and CPU milliseconds; on two cores a walk is CPU-bound, so
the CPU is the figure to compare (the worker's GC setup is applied first, as in the
worker). `--profile` prints cProfile's top functions over five more walks instead.
`bench/ingest.py` measures the same paths end to end; this isolates the engine's
share, which the end-to-end noise of a shared machine hides (session 13 used it for the
URL cache and for `PAGES_AHEAD`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from typing import Any

import httpx

import service.worker
from bench.ingest import start_upstream
from bench.upstream import PATH, STAMP_PATH
from service.config import Settings
from service.http_client import create_upstream_client
from service.runs.runner import PAGES_AHEAD
from service.sync import Limits, Source, Validator, iter_pages, page_key


async def measure(args: argparse.Namespace) -> None:
    upstream, base = start_upstream(args.records, args.page_size)
    try:
        client = create_upstream_client(Settings(block_private_targets=False), counted=False)
        source = Source.model_validate(
            {
                "url": f"{base}{PATH}",
                "records_path": "data",
                "primary_key": "id",
                "conditional": args.walk == "304",
                "pagination": {
                    "type": "cursor",
                    "cursor_path": "next_token",
                    "cursor_param": "next_token",
                },
            }
        )
        known: dict[str, Validator] = {}
        async for page in iter_pages(client, source, Limits(), ahead=args.ahead):
            if page.validator is not None:
                known[page_key(page.request)] = page.validator
        if args.walk == "stamped":
            async with httpx.AsyncClient() as plain:
                await plain.put(f"{base}{STAMP_PATH}")

        async def lookup(key: str) -> Validator | None:
            return None if args.walk == "first" else known.get(key)

        async def walk() -> int:
            pages = iter_pages(
                client,
                source,
                Limits(),
                validators=lookup,
                ahead=args.ahead,
                decoded_ahead=2 if args.walk == "first" else 1,
            )
            return sum([1 async for _page in pages])

        for _ in range(2):
            await walk()
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(5):
                await walk()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return
        cpus = []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            count = await walk()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            cpus.append(cpu)
            print(f"{args.walk} walk of {count} pages: wall {wall * 1000:.1f} ms,", end=" ")
            print(f"CPU {cpu * 1000:.1f} ms")
        print(
            f"CPU per walk: min {min(cpus) * 1000:.1f} ms, median"
            f" {statistics.median(cpus) * 1000:.1f} ms (ahead {args.ahead})"
        )
        await client.aclose()
    finally:
        upstream.terminate()
        upstream.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walk", choices=("304", "stamped", "first"), default="304")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--ahead", type=int, default=PAGES_AHEAD, help="default: the runner's PAGES_AHEAD"
    )
    parser.add_argument("--profile", action="store_true")
    args: Any = parser.parse_args(argv)
    service.worker._calm_the_garbage_collector()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
