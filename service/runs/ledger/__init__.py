"""The run ledger: the worker's one interface to the database about a run.

`ledger_for` picks the ledger of the database the worker talks to, once, at startup;
it is the only place that asks which database that is. See `base` for the rules every
ledger keeps, and `postgres` / `sqlite` for what committing a page means on each.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import SessionMaker
from service.runs.ledger.base import RunLedger
from service.runs.ledger.postgres import PostgresLedger
from service.runs.ledger.run import LeasedRun, Outcome, Waiting
from service.runs.ledger.sqlite import SqliteLedger

__all__ = ["LeasedRun", "Outcome", "RunLedger", "Waiting", "ledger_for"]


def ledger_for(
    sessionmaker: SessionMaker,
    owner: str,
    lease_seconds: float,
    auto_pause_after: int = 10,
    tenant_cap: int = 0,
) -> RunLedger:
    bind = sessionmaker.kw["bind"]
    assert isinstance(bind, AsyncEngine)
    ledger = PostgresLedger if bind.dialect.name == "postgresql" else SqliteLedger
    return ledger(sessionmaker, owner, lease_seconds, auto_pause_after, tenant_cap)
