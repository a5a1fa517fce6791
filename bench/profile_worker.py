# mypy: disable-error-code="assignment, attr-defined"
"""The real worker with wall-clock timers around each stage of the sync path.

`python -m bench.ingest --profile` runs this instead of `python -m service worker`. It
wraps (never edits) the service's functions before the worker starts and, at the end of
each run, appends one JSON line to `$BENCH_PROFILE_OUT`:

    {"run_id": ..., "wall": seconds, "pages": n, "stages": {name: [seconds, calls]}}

Stages nest:

- the run loop: `wait for page` (what it waited for the page fetches under way to hand over the
  next page) + `commit` (the ledger's `commit`) + a little bookkeeping;
- `commit` = `compare (read-only)` (resync pages: which rows changed; an unchanged page
  stops there and is batched) + `write` (the ledger's one commit: PostgreSQL's one
  statement, or SQLite's transaction) + a little Python (dedupe, counts);
- in the fetch tasks, overlapping the above: `validator lookup` (conditional tasks)
  and `fetch` = send + headers + `fetch: body read` + `fetch: json decode`, then
  `records_of` and `extract + hash`.

The DB stages are the await of one statement: driver encoding, round trip and server time
(the session's first statement also pays the pool checkout and BEGIN).
`gc genN` is the cyclic garbage collector, which runs inside whichever stage allocated.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_stages: contextvars.ContextVar[dict[str, list[float]] | None] = contextvars.ContextVar(
    "bench_stages", default=None
)


def _add(name: str, seconds: float) -> None:
    stages = _stages.get()
    if stages is not None:
        entry = stages[name]
        entry[0] += seconds
        entry[1] += 1


def timed(name: str, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - start)

    return wrapper


def timed_sync(name: str, fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - start)

    return wrapper


def timed_handover(
    name: str, fn: Callable[P, AsyncGenerator[T, None]]
) -> Callable[P, AsyncGenerator[T, None]]:
    """An async generator whose consumer's wait for each item is timed."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
        inner = fn(*args, **kwargs)
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = await anext(inner)
                except StopAsyncIteration:
                    return
                finally:
                    _add(name, time.perf_counter() - start)
                yield item
        finally:
            await inner.aclose()

    return wrapper


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")


def install(out_path: str) -> None:
    import orjson

    import service.runs.jobs as jobs
    import service.runs.ledger.base as ledger
    import service.runs.runner as runner
    import service.sync.extract as extraction
    import service.sync.fetch as fetch
    import service.sync.pages as engine
    from service.runs.ledger.postgres import PostgresLedger
    from service.runs.ledger.sqlite import SqliteLedger

    fetch.orjson = SimpleNamespace(
        loads=timed_sync("fetch: json decode", orjson.loads),
        dumps=orjson.dumps,
        JSONDecodeError=orjson.JSONDecodeError,
    )
    fetch.read_body = timed("fetch: body read", fetch.read_body)
    engine.fetch_page = timed("fetch", engine.fetch_page)
    engine.records_of = timed_sync("records_of", engine.records_of)
    # In pieces, between turns of the event loop (`extract_yielding`): each piece timed.
    extraction._extend = timed_sync("extract + hash", extraction._extend)

    runner.iter_pages = timed_handover("wait for page", runner.iter_pages)
    ledger.RunLedger.commit = timed("commit", ledger.RunLedger.commit)
    ledger.RunLedger.validators = timed("validators (once per run)", ledger.RunLedger.validators)
    for cls in (PostgresLedger, SqliteLedger):
        cls._write = timed("write", cls._write)
        cls._changed = timed("compare (read-only)", cls._changed)

    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            _add(f"gc gen{info['generation']}", time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)

    original = jobs.execute_run

    cprofile_dir = os.environ.get("BENCH_CPROFILE")

    async def execute_run(deps: Any, run_id: str) -> None:
        stages: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        token = _stages.set(stages)
        profiler = None
        if cprofile_dir:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        try:
            await original(deps, run_id)
        finally:
            wall = time.perf_counter() - start
            if profiler is not None and cprofile_dir:
                profiler.disable()
                profiler.dump_stats(os.path.join(cprofile_dir, f"{run_id}.pstats"))
            _stages.reset(token)
            line = {
                "run_id": run_id,
                "wall": wall,
                "pages": int(stages.get("wait for page", [0.0, 0])[1]),
                "stages": {name: [round(v[0], 6), int(v[1])] for name, v in stages.items()},
            }
            _append(out_path, json.dumps(line))

    jobs.execute_run = execute_run


def experiments() -> None:
    """What-ifs, switched on by environment variables (for measuring, not for production):

    BENCH_GC=a,b,c           gc.set_threshold(a, b, c) after the worker's own GC setup
    BENCH_GC=off             gc.disable() after it
    BENCH_GC=default         skip the worker's GC setup (CPython's thresholds, no freeze)
    BENCH_CPROFILE=DIR       each run's `execute_run` under cProfile, written to
                             DIR/<run id>.pstats (read with `python -m pstats`)
    BENCH_FREE_EXTRACT=1     a body decoded before is not decoded again, nor a decoded
                             list of records extracted again (cached in memory): what a
                             run would take if its extraction cost nothing

    Gone because the product does them now: BENCH_GC=freeze (the worker freezes its
    startup heap and raises the thresholds), BENCH_PRE_PING=0 (the worker's engine does
    not pre-ping), BENCH_PREFETCH (the runner reads one page ahead), and dropping
    `record`'s foreign key (a migration did).
    """
    import service.worker as worker

    if os.environ.get("BENCH_FREE_EXTRACT"):
        import orjson
        import xxhash

        import service.sync.fetch as fetch
        import service.sync.pages as engine

        decoded: dict[str, Any] = {}
        extracted: dict[Any, Any] = {}
        loads = orjson.loads

        def cached_loads(raw: Any) -> Any:
            key = xxhash.xxh3_128_hexdigest(raw)
            if key not in decoded:
                decoded[key] = loads(raw)
            return decoded[key]

        original_extract = engine.extract_yielding

        async def cached_extract(records: Any, primary_key: Any) -> Any:
            key = (id(records), len(records))
            if key not in extracted:
                extracted[key] = await original_extract(records, primary_key)
            return extracted[key]

        fetch.orjson = SimpleNamespace(
            loads=cached_loads, dumps=orjson.dumps, JSONDecodeError=orjson.JSONDecodeError
        )
        engine.extract_yielding = cached_extract

    mode = os.environ.get("BENCH_GC", "")
    if mode:
        calm = worker._calm_the_garbage_collector

        def garbage_collector() -> None:
            if mode == "default":
                return
            calm()
            if mode == "off":
                gc.disable()
            else:
                gc.set_threshold(*(int(part) for part in mode.split(",")))

        worker._calm_the_garbage_collector = garbage_collector


def main() -> None:
    install(os.environ["BENCH_PROFILE_OUT"])
    experiments()
    from service.cli import app

    app(["worker"])


if __name__ == "__main__":
    main()
