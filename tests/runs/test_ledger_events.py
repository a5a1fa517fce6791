"""The events a run's end writes, in the transaction that ends it, on both databases
(the ledger contract's fixtures: `tests/runs/test_ledger_contract.py`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.ids import new_id
from service.models.types import utcnow
from service.runs.ledger import LeasedRun, Outcome
from tests.runs.test_ledger_contract import Book, book, items, ledger_database, page

__all__ = ["book", "ledger_database"]  # fixtures, imported for this module's tests

pytestmark = pytest.mark.parametrize("ledger_database", ["sqlite", "postgresql"], indirect=True)

REFUSED = {"code": "upstream_status", "message": "401", "http_status": 401, "retryable": False}
GONE = {"code": "upstream_status", "message": "404", "http_status": 404, "retryable": False}


async def events(book: Book) -> list[tuple[int, str, dict[str, Any]]]:
    rows = await book.sql("SELECT seq, type, data FROM event ORDER BY seq")
    return [
        (seq, kind, orjson.loads(data) if isinstance(data, str) else data)
        for seq, kind, data in rows
    ]


async def task_row(book: Book) -> dict[str, Any]:
    rows = await book.sql(
        "SELECT consecutive_failures, paused, paused_reason, auth_failed_at, next_run_at"
        " FROM task WHERE id = :t",
        t=book.task_id,
    )
    keys = ("failures", "paused", "paused_reason", "auth_failed_at", "next_run_at")
    return dict(zip(keys, rows[0], strict=True))


async def next_run(book: Book, **run: Any) -> LeasedRun:
    book.run_id = new_id("run")
    await book.add_run(**run)
    return await book.claim()


async def fail(book: Book, error: dict[str, Any]) -> None:
    run = await next_run(book)
    await book.ledger.fail(run, error, run.attempt_entry(error, counted=True))


async def test_a_success_that_wrote_records_says_so_with_the_feed_position(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0))
    assert await events(book) == []  # nothing until the run ends
    assert await book.ledger.commit(run, page(items((3, "c")), 1, last=True)) is Outcome.FINISHED

    found = await events(book)
    assert [(seq, kind) for seq, kind, _ in found] == [(1, "run.succeeded"), (2, "records.changed")]
    succeeded, changed = found[0][2], found[1][2]
    assert succeeded["run_id"] == book.run_id and succeeded["task_id"] == book.task_id
    assert succeeded["stats"]["inserted"] == 3 and succeeded["stats"]["pages"] == 2
    highest = max(seq for _, seq in (await book.records()).values())
    assert changed == {
        "task_id": book.task_id,
        "user_id": None,
        "run_id": book.run_id,
        "inserted": 3,
        "updated": 0,
        "deleted": 0,
        "next_after": highest,
    }


async def test_a_success_that_changed_nothing_says_only_that_it_succeeded(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0, last=True))
    again = await next_run(book)
    assert await book.ledger.commit(again, page(items((1, "a")), 0, last=True)) is Outcome.FINISHED

    kinds = [kind for _, kind, _ in await events(book)]
    assert kinds == ["run.succeeded", "records.changed", "run.succeeded"]


async def test_a_sweep_reports_its_deletions(book: Book) -> None:
    await book.add_run(detect_deletions=True)
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0, last=True))
    again = await next_run(book, detect_deletions=True)
    assert await book.ledger.commit(again, page(items((1, "a")), 0, last=True)) is Outcome.FINISHED

    changed = [data for _, kind, data in await events(book) if kind == "records.changed"]
    assert [(c["inserted"], c["deleted"]) for c in changed] == [(2, 0), (0, 1)]


async def test_a_commit_under_a_lost_lease_or_a_cancel_writes_no_event(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.sql("UPDATE run SET lease_owner = 'elsewhere' WHERE id = :r", r=book.run_id)
    assert await book.ledger.commit(run, page(items((1, "a")), 0, last=True)) is Outcome.LEASE_LOST
    await book.ledger.fail(run, GONE, run.attempt_entry(GONE, counted=True))
    await book.sql("UPDATE run SET status = 'failed' WHERE id = :r", r=book.run_id)  # its taker's

    cancelled = await next_run(book)
    await book.sql("UPDATE run SET cancel_requested = true WHERE id = :r", r=book.run_id)
    last = page(items((1, "a")), 0, last=True)
    assert await book.ledger.commit(cancelled, last) is Outcome.CANCELLED

    assert await events(book) == []
    assert (await task_row(book))["failures"] == 0  # the lost run's failure was not counted


async def test_failures_in_a_row_pause_the_task_once_and_a_success_recovers_it(
    book: Book,
) -> None:
    book.ledger.auto_pause_after = 3
    await fail(book, GONE)
    await book.sql("UPDATE task SET next_run_at = :n WHERE id = :t", n=utcnow(), t=book.task_id)
    for _ in range(2):
        await fail(book, GONE)

    task = await task_row(book)
    assert (task["failures"], task["paused"], task["paused_reason"]) == (
        3,
        True,
        "consecutive_failures",
    )
    assert task["next_run_at"] is None  # the scheduler's query no longer finds it
    kinds = [kind for _, kind, _ in await events(book)]
    assert kinds == ["run.failed", "run.failed", "run.failed", "task.paused"]
    paused = (await events(book))[-1][2]
    assert (paused["consecutive_failures"], paused["error"]["http_status"]) == (3, 404)

    await fail(book, GONE)  # already paused: no second task.paused
    run = await next_run(book)
    assert await book.ledger.commit(run, page(items((1, "a")), 0, last=True)) is Outcome.FINISHED

    found = await events(book)
    assert [kind for _, kind, _ in found][4:] == [
        "run.failed",
        "run.succeeded",
        "records.changed",
        "task.recovered",
    ]
    assert found[-1][2]["failures"] == 4
    assert (await task_row(book))["failures"] == 0
    assert [seq for seq, _, _ in found] == list(range(1, len(found) + 1))  # dense, in order


async def test_refused_credentials_are_reported_once_per_failure_streak(book: Book) -> None:
    for _ in range(3):
        await fail(book, REFUSED)
    assert [kind for _, kind, _ in await events(book)].count("task.auth_failed") == 1
    assert (await task_row(book))["auth_failed_at"] is not None

    run = await next_run(book)
    await book.ledger.commit(run, page(items((1, "a")), 0, last=True))
    assert (await task_row(book))["auth_failed_at"] is None
    await fail(book, REFUSED)

    kinds = [kind for _, kind, _ in await events(book)]
    assert kinds.count("task.auth_failed") == 2
    auth = [data for _, kind, data in await events(book) if kind == "task.auth_failed"]
    assert auth[-1]["http_status"] == 401 and auth[-1]["run_id"] == book.run_id
