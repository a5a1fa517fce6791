# mypy: disable-error-code="assignment, attr-defined"
"""The real worker with wall-clock timers around each stage of the sync path.

`python -m bench.ingest --profile` runs this instead of `python -m service worker`. It
wraps (never edits) the service's functions before the worker starts and, at the end of
each run, appends one JSON line to `$BENCH_PROFILE_OUT`:

    {"run_id": ..., "wall": seconds, "pages": n, "stages": {name: [seconds, calls]}}

Stages nest: `fetch` = `http` (send + headers) + `body read` + `json decode`;
`commit_page` = `UPDATE run progress` + `store_page` + `UPDATE run counts` + `COMMIT`;
`store_page` = `SELECT hashes` + `diff (python)` + `UPDATE task seq` + `INSERT upsert`.
The DB stages are the await of one statement: driver encoding, round trip and server time.
`gc genN` is the cyclic garbage collector, which runs inside whichever stage allocated.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
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


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")


def install(out_path: str) -> None:
    import orjson
    from sqlalchemy.ext.asyncio import AsyncSession

    import service.records.repository as records_repo
    import service.runs.jobs as jobs
    import service.runs.repository as runs_repo
    import service.runs.runner as runner
    import service.sync.engine as engine
    import service.sync.fetch as fetch

    fetch.orjson = SimpleNamespace(
        loads=timed_sync("fetch: json decode", orjson.loads),
        JSONDecodeError=orjson.JSONDecodeError,
    )
    fetch._read_capped = timed("fetch: body read", fetch._read_capped)
    engine.fetch_page = timed("fetch", engine.fetch_page)
    engine.records_of = timed_sync("records_of", engine.records_of)
    engine.extract = timed_sync("extract + hash", engine.extract)

    runner._commit_page = timed("commit_page", runner._commit_page)
    runner.store_page = timed("store_page", runner.store_page)
    runs_repo.add_page_progress = timed("UPDATE run progress", runs_repo.add_page_progress)
    records_repo.changed_keys = timed("SELECT changed keys", records_repo.changed_keys)
    records_repo.allocate_seqs = timed("UPDATE task seq", records_repo.allocate_seqs)
    records_repo.upsert = timed("INSERT upsert", records_repo.upsert)
    AsyncSession.commit = timed("COMMIT", AsyncSession.commit)

    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            _add(f"gc gen{info['generation']}", time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)

    original = jobs.execute_run

    async def execute_run(deps: Any, run_id: str) -> None:
        stages: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        token = _stages.set(stages)
        start = time.perf_counter()
        try:
            await original(deps, run_id)
        finally:
            wall = time.perf_counter() - start
            _stages.reset(token)
            line = {
                "run_id": run_id,
                "wall": wall,
                "pages": int(stages["commit_page"][1]),
                "stages": {name: [round(v[0], 6), int(v[1])] for name, v in stages.items()},
            }
            _append(out_path, json.dumps(line))

    jobs.execute_run = execute_run


def experiments() -> None:
    """What-ifs, switched on by environment variables (for measuring, not for production):

    BENCH_GC=freeze          gc.freeze() once the worker has imported everything
    BENCH_GC=off             gc.disable()
    BENCH_GC=a,b,c           gc.set_threshold(a, b, c)
    BENCH_PRE_PING=0         the worker's engine without pool_pre_ping
    BENCH_PREFETCH=1         fetch + decode + extract page n+1 while page n commits
    """
    import service.db as db
    import service.worker as worker

    mode = os.environ.get("BENCH_GC", "")
    if mode == "off":
        gc.disable()
    elif mode == "freeze":
        gc.collect()
        gc.freeze()
    elif mode:
        gc.set_threshold(*(int(part) for part in mode.split(",")))
    if os.environ.get("BENCH_PRE_PING") == "0":
        original = db.create_engine

        def create_engine(database_url: str, **options: Any) -> Any:
            engine = original(database_url, **options)
            engine.pool._pre_ping = False
            return engine

        worker.create_engine = create_engine
    if os.environ.get("BENCH_PREFETCH") == "1":
        import service.runs.runner as runner

        runner.iter_pages = prefetching(runner.iter_pages)


def prefetching(iter_pages: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The engine's own page iterator, run one page ahead in a task: page n+1 is fetched,
    decoded and extracted while the caller commits page n (commits stay in page order,
    and an error on page n+1 surfaces only after page n was committed)."""

    async def prefetching_iter_pages(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        pages = iter_pages(*args, **kwargs)

        async def step() -> Any:
            return await anext(pages)

        pending = asyncio.ensure_future(step())
        try:
            while True:
                try:
                    page = await pending
                except StopAsyncIteration:
                    return
                pending = asyncio.ensure_future(step())
                yield page
        finally:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    return prefetching_iter_pages


def main() -> None:
    install(os.environ["BENCH_PROFILE_OUT"])
    experiments()
    from service.cli import app

    app(["worker"])


if __name__ == "__main__":
    main()
