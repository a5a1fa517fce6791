"""A ledger's write path alone, against the database's own rate for the same rows.

    .venv/bin/python -m bench.ledger_write [--records 100000] [--page-size 1000] [--repeats 5]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]

Without `--database-url`, SQLite (a file in a temp directory); with a PostgreSQL URL, a
fresh database `backsync_bench_ledger` on that server, dropped at the end.

The first sync of `bench/ingest.py` with everything but the ledger taken away: no
upstream, no HTTP, no decode, no worker process. The benchmark's pages are decoded and
extracted once, before any clock starts; then, in one process, a fresh task's run
commits them page by page through `SqliteLedger.commit` (a new task each repeat, into
one migrated database file), and `bench/ceilings.py` writes the same rows with the raw
driver. Printed per repeat: wall seconds, the process's CPU seconds (the event loop's
thread and aiosqlite's) and the event loop thread's own, which is what the rest of a
sync (fetch, decode, extract) competes with. Session 10 (issue 13, item 4) used it to
tell the ledger's cost from the engine's (`bench/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.ceilings import database_ceilings, prepared_pages
from bench.ingest import _admin, bench_database
from bench.upstream import render_pages
from service.db import create_engine, create_sessionmaker
from service.ids import new_id
from service.migrations import upgrade
from service.models import Run, Task, Tenant
from service.runs.ledger import ledger_for
from service.sync import Page, PageRequest
from service.sync.extract import extract, records_of
from service.sync.fetch import FetchedPage

URL = "http://upstream.bench/items"
DATABASE = "backsync_bench_ledger"


def decoded_pages(records: int, page_size: int) -> list[Page]:
    """The benchmark's pages as the engine hands them to the ledger on a first sync."""
    raws = list(render_pages(records, page_size).values())
    pages = []
    for index, raw in enumerate(raws):
        body = records_of(orjson.loads(raw), "data")
        request = PageRequest(URL, {"page": index}, index)
        following = (
            PageRequest(URL, {"page": index + 1}, index + 1) if index + 1 < len(raws) else None
        )
        fetched = FetchedPage(200, body, httpx.Headers(), request.url, len(raw))
        # As the engine hands them over when the upstream keeps up: the next page is
        # fetched already (a ledger that pairs a first sync's pages holds this one).
        pages.append(Page(request, fetched, extract(body, "id"), following, following_ready=True))
    return pages


async def measure(records: int, page_size: int, repeats: int, database_url: str | None) -> None:
    directory = Path(tempfile.mkdtemp(prefix="backsync-ledger-"))
    url, admin = bench_database(database_url or "sqlite://", DATABASE, directory)
    if admin is not None:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await _admin(admin, f'CREATE DATABASE "{DATABASE}"')
    await upgrade(url)
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    ledger = ledger_for(sessionmaker, "bench-worker", 60)
    pages = decoded_pages(records, page_size)
    async with sessionmaker() as session:
        session.add(Tenant(id="ten_bench", name="bench"))
        await session.commit()
    rows = prepared_pages(records, page_size)
    try:
        for repeat in range(repeats):
            task_id, run_id = new_id("tsk"), new_id("run")
            async with sessionmaker() as session:
                source = {"url": URL, "primary_key": "id"}
                session.add(
                    Task(
                        id=task_id,
                        tenant_id="ten_bench",
                        name=task_id,
                        source=source,
                        retry={},
                        limits={},
                    )
                )
                await session.flush()
                session.add(Run(id=run_id, task_id=task_id, tenant_id="ten_bench"))
                await session.commit()
            run = await ledger.claim(run_id)
            assert run is not None
            wall, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
            for page in pages:
                await ledger.commit(run, page)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            loop = time.thread_time() - loop
            # The ceilings right after each repeat: the machine's pace drifts.
            ceilings = await database_ceilings(url, rows)
            shares = ", ".join(
                f"{100 * seconds / wall:.0f}% of {name.removesuffix('_seconds')} ({seconds:.3f} s)"
                for name, seconds in ceilings.items()
            )
            print(
                f"ledger, repeat {repeat + 1}: {wall:.3f} s ({records / wall:,.0f} records/s),"
                f" CPU {cpu:.3f} s, of it the event loop's thread {loop:.3f} s; {shares}"
            )
    finally:
        await engine.dispose()
        if admin is not None:
            await _admin(admin, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: SQLite)")
    args = parser.parse_args()
    asyncio.run(measure(args.records, args.page_size, args.repeats, args.database_url))


if __name__ == "__main__":
    main()
