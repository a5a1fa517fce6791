# mypy: disable-error-code="assignment, attr-defined"
"""The real worker, with counters and what-ifs for the concurrency benchmark.

`python -m bench.concurrency --what-if NAME` runs this instead of `python -m service
worker`. It wraps (never edits) the service before the worker starts:

- always: counts what the worker's engine does (connections opened, pool checkouts and
  the most checked out at once, statements by kind, commits), measures its event
  loop's lag (how late a 10 ms sleep wakes up, and when), and writes both as JSON to
  `$BENCH_COUNTS_OUT` on exit;
- `BENCH_PRE_PING=0`: the worker's engine without `pool_pre_ping` (each checkout costs a
  BEGIN / `;` / ROLLBACK round trip set on asyncpg);
- `BENCH_POOL=N`: the worker's engine with `pool_size=N` (overflow as the service sets it);
- `BENCH_UVLOOP=1`: the worker's event loop is uvloop;
- `BENCH_NO_BUDGET=1`: no shared upstream budget (one Redis script call per request);
- `BENCH_GC=freeze`: `gc.freeze()` once everything is imported.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import time
from collections import Counter
from typing import Any


def _kind(statement: str) -> str:
    words = statement.split()
    head = " ".join(words[:1]).upper()
    if head in ("UPDATE", "DELETE") and len(words) > 1:
        return f"{head} {words[1]}"
    if head == "INSERT" and len(words) > 2:
        return f"INSERT {words[2]}"
    if head == "SELECT" and "FROM" in words:
        return f"SELECT {words[words.index('FROM') + 1]}"
    return head


def install_counters(out_path: str) -> None:
    from sqlalchemy import event

    import service.worker as worker

    counts: Counter[str] = Counter()
    lags: list[tuple[float, float]] = []
    probes: list[asyncio.Task[None]] = []
    original = worker.create_engine

    def create_engine(database_url: str, **options: Any) -> Any:
        # called in the worker's startup, on its loop: start the lag probe there too
        probes.append(asyncio.get_running_loop().create_task(_lag_probe(lags)))
        pool_size = os.environ.get("BENCH_POOL")
        if pool_size:
            options["pool_size"] = int(pool_size)
        engine = original(database_url, **options)
        if os.environ.get("BENCH_PRE_PING") == "0":
            engine.pool._pre_ping = False
        sync = engine.sync_engine
        counts["pool_size"] = options.get("pool_size", 0)

        @event.listens_for(sync, "connect")
        def _connect(*_args: Any) -> None:
            counts["connections opened"] += 1

        @event.listens_for(sync, "checkout")
        def _checkout(*_args: Any) -> None:
            counts["pool checkouts"] += 1
            counts["checked out now"] += 1
            counts["peak checked out"] = max(counts["peak checked out"], counts["checked out now"])

        @event.listens_for(sync, "checkin")
        def _checkin(*_args: Any) -> None:
            counts["checked out now"] -= 1

        @event.listens_for(sync, "before_cursor_execute")
        def _statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            counts["statements"] += 1
            counts[f"statement: {_kind(statement)}"] += 1

        @event.listens_for(sync, "commit")
        def _commit(*_args: Any) -> None:
            counts["commits"] += 1

        return engine

    worker.create_engine = create_engine

    def write() -> None:
        with open(out_path, "w") as out:
            json.dump({"counts": dict(counts), "loop_lag": lags}, out)

    atexit.register(write)


async def _lag_probe(lags: list[tuple[float, float]], interval: float = 0.01) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(interval)
        lags.append((time.time(), time.perf_counter() - start - interval))


def experiments() -> None:
    import service.worker as worker

    if os.environ.get("BENCH_NO_BUDGET") == "1":
        worker.RedisBudget = lambda *_args, **_kwargs: None
    if os.environ.get("BENCH_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    if os.environ.get("BENCH_GC") == "freeze":
        gc.collect()
        gc.freeze()


def main() -> None:
    install_counters(os.environ["BENCH_COUNTS_OUT"])
    experiments()
    from service.cli import app

    app(["worker"])


if __name__ == "__main__":
    main()
