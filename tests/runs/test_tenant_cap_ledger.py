"""The tenant's cap on running runs, in the ledger: claims of one tenant racing from
several workers at once start exactly as many runs as the cap leaves room for, on
SQLite and on PostgreSQL (where a claim's count can miss a claim committed meanwhile;
`runs.ledger.postgres._capped_claim_statement`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from service.db import SessionMaker, create_engine, create_sessionmaker
from service.ids import new_id
from service.models import Run, Task, Tenant
from service.models.types import utcnow
from service.runs.ledger import LeasedRun, RunLedger, ledger_for
from tests.fixtures.services import wipe
from tests.runs.test_ledger_contract import ledger_database

__all__ = ["ledger_database"]  # the fixture, parametrized below

pytestmark = pytest.mark.parametrize("ledger_database", ["sqlite", "postgresql"], indirect=True)

CAP = 3
WORKERS = 4
RUNS = 12


class Workers:
    """`WORKERS` ledgers, each on an engine of its own (as separate worker processes
    are), over one tenant's `RUNS` queued runs."""

    def __init__(self, sessionmakers: list[SessionMaker]) -> None:
        self.sessionmaker = sessionmakers[0]
        self.ledgers: list[RunLedger] = [
            ledger_for(sessionmaker, f"worker-{index}", 30, tenant_cap=CAP)
            for index, sessionmaker in enumerate(sessionmakers)
        ]
        self.run_ids = [new_id("run") for _ in range(RUNS)]

    async def add_runs(self) -> None:
        async with self.sessionmaker() as session:
            session.add(Tenant(id="ten_1", name="acme"))
            await session.flush()
            for run_id in self.run_ids:
                task_id = new_id("tsk")
                session.add(
                    Task(
                        id=task_id,
                        tenant_id="ten_1",
                        name=task_id,
                        source={"url": "http://upstream.test/items", "primary_key": "id"},
                        retry={},
                        limits={},
                    )
                )
                await session.flush()
                session.add(Run(id=run_id, task_id=task_id, tenant_id="ten_1"))
            await session.commit()

    async def claim_all(self, run_ids: list[str]) -> list[LeasedRun]:
        """Every run claimed at once, spread over the workers."""
        claims = [
            self.ledgers[index % WORKERS].claim(run_id) for index, run_id in enumerate(run_ids)
        ]
        return [run for run in await asyncio.gather(*claims) if run is not None]

    async def ledger_of(self, run: LeasedRun) -> RunLedger:
        """The ledger holding `run`'s lease: which worker won a racing claim varies."""
        async with self.sessionmaker() as session:
            owner = await session.scalar(
                text("SELECT lease_owner FROM run WHERE id = :r"), {"r": run.run_id}
            )
        return next(ledger for ledger in self.ledgers if ledger.owner == owner)

    async def statuses(self) -> dict[str, tuple[str, str | None, int]]:
        async with self.sessionmaker() as session:
            rows = await session.execute(
                text("SELECT id, status, waiting_reason, attempt FROM run")
            )
            return {run_id: (status, reason, attempt) for run_id, status, reason, attempt in rows}


@pytest.fixture
async def workers(ledger_database: str) -> AsyncIterator[Workers]:
    await wipe(ledger_database)
    engines = [create_engine(ledger_database) for _ in range(WORKERS)]
    try:
        yield Workers([create_sessionmaker(engine) for engine in engines])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_racing_claims_of_one_tenant_start_only_as_many_runs_as_its_cap(
    workers: Workers,
) -> None:
    await workers.add_runs()

    for round_ in range(3):  # each round: every run not running yet tries at once
        started = await workers.claim_all(workers.run_ids)
        statuses = await workers.statuses()
        running = [run_id for run_id, (status, _, _) in statuses.items() if status == "running"]
        assert len(running) == CAP, statuses
        assert len(started) == (CAP if round_ == 0 else 1)
        # one run ends: exactly one more may start
        async with workers.sessionmaker() as session:
            await session.execute(
                text("UPDATE run SET status = 'succeeded', lease_owner = NULL WHERE id = :r"),
                {"r": running[0]},
            )
            await session.commit()
        workers.run_ids.remove(running[0])


async def test_a_run_over_the_cap_stays_queued_says_why_and_keeps_its_attempts(
    workers: Workers,
) -> None:
    await workers.add_runs()
    started = await workers.claim_all(workers.run_ids)
    assert len(started) == CAP
    left = [run_id for run_id in workers.run_ids if run_id not in {r.run_id for r in started}]
    at = utcnow() + timedelta(seconds=10)

    waiting = [await workers.ledgers[1].wait_for_slot(run_id, at) for run_id in left]

    assert all(w is not None and w.tenant_id == "ten_1" for w in waiting)
    statuses = await workers.statuses()
    assert {statuses[run_id] for run_id in left} == {("queued", "tenant_concurrency_limit", 1)}
    # a running or finished run is not waiting: nothing is marked
    assert await workers.ledgers[1].wait_for_slot(started[0].run_id, at) is None
    # waiting is not a not-before time: it starts as soon as a slot frees, saying nothing
    await (await workers.ledger_of(started[0])).cancel(started[0])
    again = await workers.claim_all(left)
    assert len(again) == 1
    assert (await workers.statuses())[again[0].run_id] == ("running", None, 1)
