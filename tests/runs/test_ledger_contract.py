"""The run ledger's contract, held by every ledger: the same tests against SQLite's and
PostgreSQL's.

Both run in every pass of the suite: SQLite on a file of its own, PostgreSQL on the
suite's database when it is PostgreSQL, else on a database of its own on the server
at `BACKSYNC_TEST_POSTGRES_URL` (default: the local one). Only when no PostgreSQL
server answers is the PostgreSQL half skipped, and the skip says so (`-ra`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlmodel import col

from service.config import Settings
from service.db import SessionMaker, create_engine, create_sessionmaker
from service.ids import new_id
from service.migrations import upgrade
from service.models import Record, Run, Task, Tenant
from service.models.types import utcnow
from service.runs.ledger import LeasedRun, Outcome, RunLedger, ledger_for
from service.runs.ledger.progress import QuietPages
from service.sync import Page, PageRequest, Validator
from service.sync.extract import extract
from service.sync.fetch import FetchedPage
from service.sync.inflight import BodyBudget
from tests.fixtures.services import CONFIGURED_DB, _create_pg_database, _drop_pg_database, wipe

POSTGRES_URL = os.environ.get(
    "BACKSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _reachable(url: str) -> bool:
    engine = create_engine(Settings(database_url=url).database_url)
    try:
        async with asyncio.timeout(3), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def ledger_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of the kind the test is parametrized with."""
    kind = request.param
    suite = Settings(database_url=CONFIGURED_DB).database_url if CONFIGURED_DB else ""
    if kind == "sqlite":
        path: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
        url = f"sqlite+aiosqlite:///{path}"
        asyncio.run(upgrade(url))
        yield url
        return
    if suite.startswith("postgresql"):  # CI's second pass: the suite's own server
        admin = suite
    elif asyncio.run(_reachable(POSTGRES_URL)):
        admin = Settings(database_url=POSTGRES_URL).database_url
    else:
        pytest.skip(
            f"PostgreSQL ledger contract NOT run: no PostgreSQL server at {POSTGRES_URL} "
            "(set BACKSYNC_TEST_POSTGRES_URL, or run the suite with BACKSYNC_DATABASE_URL)"
        )
    name = f"backsync_ledger_{os.getpid()}"
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_create_pg_database(admin, name))
    asyncio.run(upgrade(url))
    yield url
    asyncio.run(_drop_pg_database(admin, name))


pytestmark = pytest.mark.parametrize("ledger_database", ["sqlite", "postgresql"], indirect=True)


class Book:
    """A task with one run, a ledger on its database, and ways to look behind it."""

    def __init__(self, sessionmaker: SessionMaker, ledger: RunLedger) -> None:
        self.sessionmaker, self.ledger = sessionmaker, ledger
        self.task_id, self.run_id = new_id("tsk"), new_id("run")

    async def add_run(
        self, *, incremental: bool = False, detect_deletions: bool = False, **run: Any
    ) -> None:
        source: dict[str, Any] = {
            "url": "http://upstream.test/items",
            "primary_key": "id",
            "detect_deletions": detect_deletions,
        }
        if detect_deletions and "options" not in run:  # as a trigger decides (runs.service)
            run["options"] = {"sweep": True}
        if incremental:
            source["incremental"] = {"cursor_path": "at", "param": "since"}
        async with self.sessionmaker() as session:
            if await session.get(Tenant, "ten_1") is None:
                session.add(Tenant(id="ten_1", name="acme"))
                await session.flush()
            if await session.get(Task, self.task_id) is None:
                session.add(
                    Task(
                        id=self.task_id,
                        tenant_id="ten_1",
                        name=self.task_id,
                        source=source,
                        retry={},
                        limits={},
                    )
                )
                await session.flush()
            session.add(Run(id=self.run_id, task_id=self.task_id, tenant_id="ten_1", **run))
            await session.commit()

    async def claim(self) -> LeasedRun:
        run = await self.ledger.claim(self.run_id)
        assert run is not None
        return run

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.sessionmaker() as session:
            result = await session.execute(text(statement), params)
            rows = list(result.all()) if statement.startswith("SELECT") else []
            await session.commit()
            return rows

    async def records(self) -> dict[str, tuple[str, int]]:
        rows = await self.sql(
            "SELECT key, data, seq FROM record WHERE task_id = :t", t=self.task_id
        )
        return {key: (data, seq) for key, data, seq in rows}

    async def run_row(self) -> dict[str, Any]:
        rows = await self.sql(
            "SELECT status, pages, inserted, updated, unchanged, not_modified, checkpoint,"
            " lease_owner FROM run WHERE id = :r",
            r=self.run_id,
        )
        keys = ("status", "pages", "inserted", "updated", "unchanged", "not_modified")
        row = dict(zip((*keys, "checkpoint", "lease_owner"), rows[0], strict=True))
        if isinstance(row["checkpoint"], str):
            row["checkpoint"] = orjson.loads(row["checkpoint"])
        return row


@pytest.fixture
async def book(ledger_database: str) -> AsyncIterator[Book]:
    await wipe(ledger_database)
    engine = create_engine(ledger_database)
    sessionmaker = create_sessionmaker(engine)
    try:
        yield Book(sessionmaker, ledger_for(sessionmaker, "worker-1", 30))
    finally:
        await engine.dispose()


def page(
    records: list[dict[str, Any]],
    index: int,
    *,
    last: bool = False,
    not_modified: bool = False,
    watermark: Any = None,
    following_ready: bool = False,
) -> Page:
    """Page `index` of `http://upstream.test/items?page=`, holding `records`;
    `following_ready`: the next page was fetched already when this one was handed over."""
    request = PageRequest("http://upstream.test/items", {"page": index}, index)
    following = (
        None if last else PageRequest("http://upstream.test/items", {"page": index + 1}, index + 1)
    )
    if not_modified:
        known = Validator('"v1"', None, None if last else following.to_json())  # type: ignore[union-attr]
        fetched = FetchedPage(304, None, httpx.Headers(), request.url, 0)
        return Page(request, fetched, extract([], "id"), following, not_modified=True, known=known)
    fetched = FetchedPage(200, records, httpx.Headers(), request.url, 100)
    return Page(
        request,
        fetched,
        extract(records, "id"),
        following,
        watermark=watermark,
        following_ready=following_ready,
    )


def items(*pairs: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"id": key, "v": value} for key, value in pairs]


async def test_a_page_commits_its_records_and_the_run_progress_together(book: Book) -> None:
    await book.add_run()
    run = await book.claim()

    assert await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0)) is Outcome.CONTINUE

    stored = await book.records()
    assert sorted(stored) == ["1", "2"]
    row = await book.run_row()
    assert (row["status"], row["pages"], row["inserted"]) == ("running", 1, 2)
    assert row["checkpoint"]["params"] == {"page": 1}


async def test_a_commit_under_a_lost_lease_writes_nothing(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0))
    await book.sql("UPDATE run SET lease_owner = 'elsewhere' WHERE id = :r", r=book.run_id)

    outcome = await book.ledger.commit(run, page(items((2, "b"), (3, "c")), 1, last=True))

    assert outcome is Outcome.LEASE_LOST
    assert sorted(await book.records()) == ["1"]
    row = await book.run_row()
    assert (row["status"], row["pages"], row["lease_owner"]) == ("running", 1, "elsewhere")
    assert await book.ledger.renew(run) is False


async def test_a_cancel_during_a_page_keeps_the_page_and_ends_the_run(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.sql("UPDATE run SET cancel_requested = true WHERE id = :r", r=book.run_id)

    assert await book.ledger.commit(run, page(items((1, "a")), 0)) is Outcome.CANCELLED

    assert sorted(await book.records()) == ["1"]
    row = await book.run_row()
    assert (row["status"], row["pages"], row["lease_owner"]) == ("cancelled", 1, None)


async def test_a_cancel_during_the_last_page_wins_over_success(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.sql("UPDATE run SET cancel_requested = true WHERE id = :r", r=book.run_id)

    assert await book.ledger.commit(run, page(items((1, "a")), 0, last=True)) is Outcome.CANCELLED

    assert (await book.run_row())["status"] == "cancelled"
    task = await book.sql("SELECT last_success_at FROM task WHERE id = :t", t=book.task_id)
    assert task[0][0] is None


async def test_the_last_page_ends_the_run_and_moves_the_task_watermark(book: Book) -> None:
    await book.add_run(incremental=True)
    run = await book.claim()

    first = page(items((1, "a")), 0, watermark="2026-01-02T00:00:00Z")
    assert await book.ledger.commit(run, first) is Outcome.CONTINUE
    last = page(items((2, "b")), 1, last=True, watermark="2026-01-01T00:00:00Z")
    assert await book.ledger.commit(run, last) is Outcome.FINISHED

    row = await book.run_row()
    assert (row["status"], row["pages"], row["lease_owner"]) == ("succeeded", 2, None)
    assert row["checkpoint"]["done"] is True
    task = await book.sql(
        "SELECT watermark, consecutive_failures, last_success_at FROM task WHERE id = :t",
        t=book.task_id,
    )
    watermark, failures, last_success = task[0]
    assert watermark in ('"2026-01-02T00:00:00Z"', "2026-01-02T00:00:00Z")  # the larger one
    assert failures == 0 and last_success is not None
    attempts = await book.sql("SELECT attempts FROM run WHERE id = :r", r=book.run_id)
    assert "counted" in str(attempts[0][0])


async def test_seqs_increase_in_commit_order_and_only_changed_rows_take_new_ones(
    book: Book,
) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "b"), (3, "c")), 0))
    before = await book.records()
    assert [before[k][1] for k in ("1", "2", "3")] == sorted(before[k][1] for k in before)

    # Page 2 repeats 1 unchanged, changes 2 and adds 4; within a page the last copy wins.
    again = items((1, "a"), (2, "x"), (4, "d"), (2, "B"))
    assert await book.ledger.commit(run, page(again, 1, last=True)) is Outcome.FINISHED

    after = await book.records()
    assert after["1"] == before["1"] and after["3"] == before["3"]
    assert '"B"' in after["2"][0]
    highest_before = max(seq for _, seq in before.values())
    assert highest_before < after["2"][1] < after["4"][1]  # page order, after all earlier
    row = await book.run_row()
    # 3 inserted, then 1 inserted + 1 updated (+1 earlier copy superseded) + 1 unchanged.
    assert (row["inserted"], row["updated"], row["unchanged"]) == (4, 2, 1)


async def test_a_page_larger_than_one_upsert_statement_keeps_page_order(book: Book) -> None:
    # SQLite sends a page's rows 1,000 to a statement (`runs.ledger.sqlite._CHUNK`).
    await book.add_run()
    run = await book.claim()
    first = items(*((n, "a") for n in range(2500)))
    await book.ledger.commit(run, page(first, 0))
    # Again with every third row changed and 100 new ones, in another order.
    again = items(*((n, "b" if n % 3 == 0 else "a") for n in reversed(range(2600))))
    assert await book.ledger.commit(run, page(again, 1, last=True)) is Outcome.FINISHED

    stored = await book.records()
    assert len(stored) == 2600
    written = sorted(
        (seq, int(key)) for key, (data, seq) in stored.items() if '"b"' in data or int(key) >= 2500
    )
    # Written rows took the second page's seqs in its order (reversed keys), after the first's.
    assert [key for _, key in written] == sorted((key for _, key in written), reverse=True)
    kept = [seq for key, (data, seq) in stored.items() if '"a"' in data and int(key) < 2500]
    assert max(kept) < min(seq for seq, _ in written)
    assert len({seq for _, seq in stored.values()}) == 2600
    row = await book.run_row()
    changed = len(range(0, 2500, 3))
    assert (row["inserted"], row["updated"], row["unchanged"]) == (2600, changed, 2500 - changed)


async def test_a_record_keeps_its_creation_time_and_takes_the_time_of_each_change(
    book: Book,
) -> None:
    """The times the ledger writes read back through the models, and compare in SQL
    with times bound by SQLAlchemy (SQLite's ledger writes them as text of its own)."""
    await book.add_run()
    before = utcnow()
    first = await book.claim()
    await book.ledger.commit(first, page(items((1, "a"), (2, "b")), 0, last=True))
    between = utcnow()
    book.run_id = new_id("run")
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "B")), 0, last=True))
    after = utcnow()

    async with book.sessionmaker() as session:
        records = {r.key: r for r in (await session.execute(select(Record))).scalars()}
        since = select(Record).where(col(Record.updated_at) >= between)
        changed_since = {r.key for r in (await session.execute(since)).scalars()}
        leased = await session.get(Run, book.run_id)
    one, two = records["1"], records["2"]
    assert before <= one.created_at == one.updated_at <= between
    assert one.created_at == two.created_at  # one page, one time
    assert between <= two.updated_at <= after and two.created_at == one.created_at
    assert changed_since == {"2"}
    assert leased is not None and leased.status == "succeeded"
    assert leased.checkpoint == {"done": True, "watermark": None}


async def test_a_first_sync_whose_later_page_repeats_a_key_keeps_the_last_copy(
    book: Book,
) -> None:
    # A task with no records: PostgreSQL inserts its pages with no conflict clause, until
    # a key comes back (the statement fails whole and the page is upserted).
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0))
    await book.ledger.commit(run, page(items((3, "c"), (1, "A")), 1))  # 1 again, changed
    await book.ledger.commit(run, page(items((4, "d"), (2, "b")), 2))  # 2 again, the same
    assert await book.ledger.commit(run, page(items((5, "e")), 3, last=True)) is Outcome.FINISHED

    stored = await book.records()
    assert sorted(stored) == ["1", "2", "3", "4", "5"]
    assert '"A"' in stored["1"][0] and '"b"' in stored["2"][0]
    assert stored["2"][1] < stored["3"][1] < stored["1"][1] < stored["4"][1] < stored["5"][1]
    assert len({seq for _, seq in stored.values()}) == 5
    row = await book.run_row()
    assert (row["status"], row["pages"]) == ("succeeded", 4)
    assert (row["inserted"], row["updated"], row["unchanged"]) == (5, 1, 1)


@pytest.fixture
def pairs(book: Book, monkeypatch: pytest.MonkeyPatch) -> Book:
    """The book's ledger commits a first sync's pages in pairs (PostgreSQL's does; the
    flow is the base ledger's, so it holds on SQLite too)."""
    monkeypatch.setattr(book.ledger, "FRESH_PAGES_PER_STATEMENT", 2)
    return book


async def test_a_first_sync_page_whose_next_is_ready_is_written_with_it(pairs: Book) -> None:
    book = pairs
    await book.add_run()
    run = await book.claim()
    assert book.ledger.decoded_ahead(run) == 2

    held = page(items((1, "a"), (2, "b")), 0, following_ready=True)
    assert await book.ledger.commit(run, held) is Outcome.CONTINUE
    assert await book.records() == {}  # held, not written
    assert (await book.run_row())["pages"] == 0

    second = page(items((3, "c")), 1, following_ready=True)
    assert await book.ledger.commit(run, second) is Outcome.CONTINUE
    stored = await book.records()
    assert sorted(stored) == ["1", "2", "3"]
    assert stored["1"][1] < stored["2"][1] < stored["3"][1]  # page order
    row = await book.run_row()
    assert (row["pages"], row["inserted"]) == (2, 3)
    assert row["checkpoint"]["params"] == {"page": 2}
    assert run.committed_pages == 2

    # A page whose next one is not fetched yet (a slow upstream) is written at once.
    alone = page(items((4, "d")), 2, following_ready=False)
    assert await book.ledger.commit(run, alone) is Outcome.CONTINUE
    assert (await book.run_row())["pages"] == 3
    # The last page is never held.
    last = page(items((5, "e")), 3, last=True, following_ready=True)
    assert await book.ledger.commit(run, last) is Outcome.FINISHED
    row = await book.run_row()
    assert (row["status"], row["pages"], row["inserted"]) == ("succeeded", 4, 5)


async def test_a_key_on_both_pages_of_a_pair_is_written_once_as_its_later_copy(
    pairs: Book,
) -> None:
    book = pairs
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0, following_ready=True))
    await book.ledger.commit(run, page(items((1, "A"), (2, "b"), (3, "c")), 1))
    await book.ledger.commit(run, page(items((4, "d")), 2, last=True))

    stored = await book.records()
    assert sorted(stored) == ["1", "2", "3", "4"]
    assert '"A"' in stored["1"][0]
    row = await book.run_row()
    # As if each page were committed alone: 1 changed on page 1, 2 unchanged.
    assert (row["inserted"], row["updated"], row["unchanged"]) == (4, 1, 1)
    assert (row["status"], row["pages"]) == ("succeeded", 3)


async def test_a_ledger_may_hold_several_pages_for_one_statement(
    book: Book, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three held, written with the fourth; a key on three of them is written once, as
    its last copy, and counted as if each page were committed alone."""
    monkeypatch.setattr(book.ledger, "FRESH_PAGES_PER_STATEMENT", 4)
    await book.add_run()
    run = await book.claim()
    assert book.ledger.decoded_ahead(run) == 4
    pages = [
        page(items((1, "a"), (2, "b")), 0, following_ready=True),
        page(items((1, "A"), (3, "c")), 1, following_ready=True),
        page(items((1, "a"), (4, "d")), 2, following_ready=True),
        page(items((5, "e")), 3, following_ready=True),
        page(items((6, "f")), 4, last=True),
    ]
    for held in pages[:3]:
        assert await book.ledger.commit(run, held) is Outcome.CONTINUE
        assert await book.records() == {}
    assert run.quiet.held == 3

    assert await book.ledger.commit(run, pages[3]) is Outcome.CONTINUE

    assert run.quiet.held == 0
    stored = await book.records()
    assert sorted(stored) == ["1", "2", "3", "4", "5"]
    assert '"a"' in stored["1"][0]  # page 3's copy, the last
    assert stored["2"][1] < stored["3"][1] < stored["4"][1] < stored["5"][1]
    row = await book.run_row()
    # Alone: 1 inserted on page 1, updated on page 2 ("A"), updated again on page 3 ("a").
    assert (row["pages"], row["inserted"], row["updated"], row["unchanged"]) == (4, 5, 2, 0)
    assert await book.ledger.commit(run, pages[4]) is Outcome.FINISHED
    assert (await book.run_row())["inserted"] == 6


async def test_a_held_page_is_committed_before_a_failed_attempt_ends(pairs: Book) -> None:
    book = pairs
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0, following_ready=True))
    assert await book.records() == {}

    assert await book.ledger.settle(run, requests=2) is Outcome.CONTINUE  # page 1 failed

    assert sorted(await book.records()) == ["1"]
    row = await book.run_row()
    assert (row["pages"], row["inserted"]) == (1, 1)
    assert row["checkpoint"]["params"] == {"page": 1}  # the retry resumes after it
    assert run.committed_pages == 1


async def test_a_held_page_stays_in_the_body_budget_until_its_pair_is_written(
    pairs: Book,
) -> None:
    book = pairs
    await book.add_run()
    run = await book.claim()
    budget = BodyBudget(10 * 1024 * 1024)
    held = page(items((1, "a")), 0, following_ready=True)
    hold = budget.hold()
    hold.charge(5000)
    hold.settle()
    object.__setattr__(held, "fetched", replace(held.fetched, hold=hold))

    await book.ledger.commit(run, held)
    held.release()  # the engine's, once the next page is asked for
    assert budget.used == 5000  # still counted: its rows wait in the ledger

    await book.ledger.commit(run, page(items((2, "b")), 1))
    assert budget.used == 0
    assert sorted(await book.records()) == ["1", "2"]


async def test_a_held_page_under_a_lost_lease_is_not_written(pairs: Book) -> None:
    book = pairs
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0, following_ready=True))
    await book.sql("UPDATE run SET lease_owner = 'elsewhere' WHERE id = :r", r=book.run_id)

    assert await book.ledger.commit(run, page(items((2, "b")), 1)) is Outcome.LEASE_LOST

    assert await book.records() == {}


async def test_a_first_sync_stores_each_record_exactly_as_extracted(book: Book) -> None:
    # A first sync's pages take their own path on each database (plain inserts; until
    # session 11 PostgreSQL's was COPY text, where a backslash, a tab or a newline would
    # change what is stored if it were not escaped): every value must arrive as sent.
    awkward: list[dict[str, Any]] = [
        {"id": "a\\b", "v": 'quote " backslash \\ tab \t newline \n return \r'},
        {"id": "\\N", "v": "\\."},
        {"id": "é\t✓", "v": {"nested": ["\\\\", "\u0000", "𝄞"]}},
        {"id": 7, "v": None},
    ]
    await book.add_run()
    run = await book.claim()
    extracted = page(awkward, 0, last=True)
    assert await book.ledger.commit(run, extracted) is Outcome.FINISHED

    stored = await book.records()
    assert {key: data for key, (data, _) in stored.items()} == {
        row.key: row.data for row in extracted.records.rows
    }
    hashes = await book.sql("SELECT key, hash FROM record WHERE task_id = :t", t=book.task_id)
    assert dict(hashes) == {row.key: row.hash for row in extracted.records.rows}


async def test_a_first_sync_page_under_a_lost_lease_writes_nothing(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.sql("UPDATE run SET lease_owner = 'elsewhere' WHERE id = :r", r=book.run_id)

    assert await book.ledger.commit(run, page(items((1, "a")), 0)) is Outcome.LEASE_LOST

    assert await book.records() == {}
    assert (await book.sql("SELECT record_seq FROM task WHERE id = :t", t=book.task_id)) == [(0,)]


async def test_a_resync_compares_first_and_batches_unchanged_pages(book: Book) -> None:
    await book.add_run()
    first = await book.claim()
    await book.ledger.commit(first, page(items((1, "a"), (2, "b")), 0, last=True))
    seqs = await book.records()
    book.run_id = new_id("run")
    await book.add_run()
    run = await book.claim()
    assert run.compares_first  # the task has records: pages are compared first

    assert await book.ledger.commit(run, page(items((1, "a"), (2, "b")), 0)) is Outcome.CONTINUE
    row = await book.run_row()
    assert row["pages"] == 0  # batched, not committed yet
    assert await book.records() == seqs

    assert await book.ledger.commit(run, page(items((2, "c")), 1, last=True)) is Outcome.FINISHED
    row = await book.run_row()
    assert (row["pages"], row["updated"], row["unchanged"], row["status"]) == (
        2,
        1,
        2,
        "succeeded",
    )
    after = await book.records()
    assert after["1"] == seqs["1"] and after["2"][1] > seqs["2"][1]


async def test_quiet_pages_commit_in_batches_and_with_the_next_page_that_writes(
    book: Book, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(QuietPages, "MAX_PAGES", 3)
    monkeypatch.setattr(QuietPages, "MAX_SECONDS", 3600.0)
    await book.add_run()
    run = await book.claim()

    for index in range(2):
        assert await book.ledger.commit(run, page([], index, not_modified=True)) is Outcome.CONTINUE
    assert (await book.run_row())["pages"] == 0
    assert await book.ledger.commit(run, page([], 2, not_modified=True)) is Outcome.CONTINUE
    row = await book.run_row()
    assert (row["pages"], row["not_modified"]) == (3, 3)  # the batch was due
    assert row["checkpoint"]["params"] == {"page": 3}

    await book.ledger.commit(run, page([], 3, not_modified=True))
    assert await book.ledger.commit(run, page(items((1, "a")), 4)) is Outcome.CONTINUE
    row = await book.run_row()
    assert (row["pages"], row["not_modified"], row["inserted"]) == (5, 4, 1)

    await book.ledger.commit(run, page([], 5, not_modified=True))
    assert await book.ledger.settle(run) is Outcome.CONTINUE  # before a failure: keep it
    assert (await book.run_row())["pages"] == 6
    assert run.committed_pages == 6


async def test_a_resumed_run_whose_last_page_was_committed_only_ends(book: Book) -> None:
    await book.add_run(status="running", checkpoint={"done": True}, pages=3, inserted=5)
    await book.sql(
        "UPDATE run SET lease_expires_at = NULL, started_at = created_at WHERE id = :r",
        r=book.run_id,
    )
    run = await book.claim()  # the lease expired: another worker resumes it
    assert run.done

    assert await book.ledger.succeed(run) is Outcome.FINISHED

    row = await book.run_row()
    assert (row["status"], row["pages"], row["inserted"]) == ("succeeded", 3, 5)
    assert await book.records() == {}
    assert await book.ledger.claim(book.run_id) is None  # a job delivered again: nothing


async def test_a_failed_attempt_is_recorded_and_the_retry_resumes_from_the_checkpoint(
    book: Book,
) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0))
    error = {"code": "upstream_status", "message": "503", "http_status": 503, "retryable": True}
    entry = run.attempt_entry(error, counted=False)

    assert await book.ledger.retry_later(run, error, entry, utcnow()) == 2

    again = await book.claim()
    assert again.attempt == 2 and again.checkpoint["params"] == {"page": 1}
    assert again.attempts[0]["pages"] == 1 and again.attempts[0]["counted"] is False
    await book.ledger.fail(again, error, again.attempt_entry(error, counted=True))
    row = await book.run_row()
    assert row["status"] == "failed"
    failures = await book.sql("SELECT consecutive_failures FROM task WHERE id = :t", t=book.task_id)
    assert failures[0][0] == 1


async def test_a_run_that_detects_deletions_sweeps_what_it_did_not_see_with_its_end(
    book: Book,
) -> None:
    await book.add_run(detect_deletions=True)
    await book.ledger.commit(
        await book.claim(), page(items((1, "a"), (2, "b"), (3, "c")), 0, last=True)
    )
    before = await book.records()
    book.run_id = new_id("run")
    await book.add_run(detect_deletions=True)
    run = await book.claim()
    assert run.sweeps and run.rereads and not run.compares_first

    await book.ledger.commit(run, page(items((1, "a")), 0))
    assert await book.ledger.commit(run, page(items((3, "c")), 1, last=True)) is Outcome.FINISHED

    deleted = await book.sql(
        "SELECT key, seq FROM record WHERE task_id = :t AND deleted", t=book.task_id
    )
    assert [key for key, _ in deleted] == ["2"]
    assert deleted[0][1] > max(seq for _, seq in before.values())
    after = await book.records()
    assert after["1"] == before["1"] and after["3"] == before["3"]  # seen, unchanged: kept
    row = await book.sql("SELECT status, deleted, unchanged FROM run WHERE id = :r", r=book.run_id)
    assert tuple(row[0]) == ("succeeded", 1, 2)


async def test_a_sweeping_run_cancelled_at_its_last_page_deletes_nothing(book: Book) -> None:
    await book.add_run(detect_deletions=True)
    await book.ledger.commit(await book.claim(), page(items((1, "a"), (2, "b")), 0, last=True))
    book.run_id = new_id("run")
    await book.add_run(detect_deletions=True)
    run = await book.claim()
    await book.sql("UPDATE run SET cancel_requested = true WHERE id = :r", r=book.run_id)

    assert await book.ledger.commit(run, page(items((1, "a")), 0, last=True)) is Outcome.CANCELLED

    assert await book.sql("SELECT key FROM record WHERE deleted") == []
    assert (await book.run_row())["status"] == "cancelled"


async def test_a_deleted_record_seen_again_on_a_compared_page_is_inserted_again(
    book: Book,
) -> None:
    await book.add_run(incremental=True, detect_deletions=True)
    await book.ledger.commit(await book.claim(), page(items((1, "a"), (2, "b")), 0, last=True))
    book.run_id = new_id("run")
    await book.add_run(incremental=True, options={"full_refresh": True, "sweep": True})
    await book.ledger.commit(await book.claim(), page(items((1, "a")), 0, last=True))
    assert await book.sql("SELECT key FROM record WHERE deleted") == [("2",)]
    gone = (await book.records())["2"]

    book.run_id = new_id("run")
    await book.add_run(incremental=True)  # a plain incremental run: compares first
    run = await book.claim()
    assert run.compares_first and not run.sweeps
    assert await book.ledger.commit(run, page(items((2, "b")), 0, last=True)) is Outcome.FINISHED

    assert await book.sql("SELECT key FROM record WHERE deleted") == []
    back = (await book.records())["2"]
    assert back[0] == gone[0] and back[1] > gone[1]  # the same data, a later seq
    assert (await book.run_row())["inserted"] == 1  # inserted again, not "updated"


async def test_a_sweep_whose_last_page_is_unread_still_sweeps(book: Book) -> None:
    await book.add_run(detect_deletions=True)
    await book.ledger.commit(await book.claim(), page(items((1, "a"), (2, "b")), 0, last=True))
    book.run_id = new_id("run")
    await book.add_run(detect_deletions=True)
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0))

    last = page([], 1, last=True, not_modified=True)
    assert await book.ledger.commit(run, last) is Outcome.FINISHED

    assert await book.sql("SELECT key FROM record WHERE deleted") == [("2",)]


async def test_whether_a_run_sweeps_is_fixed_when_it_is_triggered(book: Book) -> None:
    await book.add_run()
    await book.ledger.commit(await book.claim(), page(items((1, "a"), (2, "b")), 0, last=True))
    book.run_id = new_id("run")
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0))
    error = {"code": "upstream_status", "message": "503", "http_status": 503, "retryable": True}
    await book.ledger.retry_later(run, error, run.attempt_entry(error, counted=False), utcnow())
    source = '{"url": "http://upstream.test/items", "primary_key": "id", "detect_deletions": true}'
    await book.sql("UPDATE task SET source = :s WHERE id = :t", s=source, t=book.task_id)

    again = await book.claim()  # the task detects deletions now; this run was not told to

    assert not again.sweeps
    assert await book.ledger.commit(again, page(items((2, "b")), 1, last=True)) is Outcome.FINISHED
    assert await book.sql("SELECT key FROM record WHERE deleted") == []


async def test_a_cancelled_run_records_its_last_attempt(book: Book) -> None:
    await book.add_run()
    run = await book.claim()
    await book.ledger.commit(run, page(items((1, "a")), 0))

    await book.ledger.cancel(run)

    rows = await book.sql("SELECT status, attempts FROM run WHERE id = :r", r=book.run_id)
    status, attempts = rows[0]
    if isinstance(attempts, str):
        attempts = orjson.loads(attempts)
    assert status == "cancelled"
    assert [(a["attempt"], a["pages"], a["counted"]) for a in attempts] == [(1, 1, False)]
