# mypy: disable-error-code="assignment, attr-defined"
"""The real worker with wall-clock timers around each stage of the sync path.

`python -m bench.ingest --profile` runs this instead of `python -m service worker`. It
wraps (never edits) the service's functions before the worker starts and, at the end of
each run, appends one JSON line to `$BENCH_PROFILE_OUT`:

    {"run_id": ..., "wall": seconds, "pages": n, "stages": {name: [seconds, calls]}}

Stages nest:

- the run loop: `wait for page` (what it waited for the page fetches under way to hand over the
  next page) + `commit_page` + a little bookkeeping;
- `commit_page` = `store_page` + `remember validator` (conditional tasks, 2xx pages) +
  `UPDATE run progress` (counters, checkpoint and lease, fenced) + `COMMIT`;
- `store_page` = either `write_page (one statement)` (PostgreSQL, while pages change:
  compare, reserve seqs, upsert and count in one statement) or `SELECT changed keys` +
  `UPDATE task seq` + `INSERT upsert` (while pages are unchanged, and on SQLite; an
  unchanged page stops after the SELECT), plus a little Python;
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


_scope: contextvars.ContextVar[str] = contextvars.ContextVar("bench_scope", default="")


def scoped(name: str, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`timed`, and the stages awaited inside it know they are (see `commit`)."""
    inner = timed(name, fn)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        token = _scope.set(name)
        try:
            return await inner(*args, **kwargs)
        finally:
            _scope.reset(token)

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
    from sqlalchemy.ext.asyncio import AsyncSession

    import service.records.repository as records_repo
    import service.runs.jobs as jobs
    import service.runs.page_statement as page_statement
    import service.runs.page_validators as page_validators
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

    runner.iter_pages = timed_handover("wait for page", runner.iter_pages)
    runner._commit_page = scoped("commit_page", runner._commit_page)
    runner.store_page = timed("store_page", runner.store_page)
    page_statement.write = timed("page statement", page_statement.write)
    runner._compare = timed("compare (read-only)", runner._compare)
    runner._flush = timed("flush quiet pages", runner._flush)
    page_validators.all_for_task = timed("validators (once per run)", page_validators.all_for_task)
    page_validators.remember = timed("remember validator", page_validators.remember)
    runs_repo.add_page_progress = timed("UPDATE run progress", runs_repo.add_page_progress)
    records_repo.write_page = timed("write_page (one statement)", records_repo.write_page)
    records_repo.changed_keys = timed("SELECT changed keys", records_repo.changed_keys)
    records_repo.allocate_seqs = timed("UPDATE task seq", records_repo.allocate_seqs)
    records_repo.upsert = timed("INSERT upsert", records_repo.upsert)
    commit = AsyncSession.commit
    page_commit = timed("COMMIT", commit)
    other_commit = timed("COMMIT (claim, finish)", commit)

    async def timed_commit(self: AsyncSession) -> None:
        await (page_commit if _scope.get() == "commit_page" else other_commit)(self)

    AsyncSession.commit = timed_commit

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

    Gone because the product does them now: BENCH_GC=freeze (the worker freezes its
    startup heap and raises the thresholds), BENCH_PRE_PING=0 (the worker's engine does
    not pre-ping), BENCH_PREFETCH (the runner reads one page ahead), and dropping
    `record`'s foreign key (a migration did).
    """
    import service.worker as worker

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
