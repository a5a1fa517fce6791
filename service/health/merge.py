"""The de-duplication rule: what an incoming sample does to the stored one with its key.

Pure functions over the stored state, so the rule is tested without a database; the
worker applies them under the user's lock (`service.health.ingest`), where nothing else
can change that state in between.

The rule, per (tenant, user, source, id):
- nothing stored: the sample is inserted (a deletion is stored as a tombstone, so a
  stale copy arriving later loses to it);
- both carry `modified_at` and the incoming one is older: ignored;
- the same content as stored (its hash, `modified_at` included): unchanged;
- a deletion: the stored sample becomes a tombstone (already one: unchanged);
- otherwise: updated (a tombstone brought back counts as inserted).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from service.health.normalize import Normalized, moment

Key = tuple[str, str]
"""(source, id): a sample's identity within its user."""


class Verdict(StrEnum):
    INSERTED = "inserted"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"
    IGNORED = "ignored"


WRITES = frozenset({Verdict.INSERTED, Verdict.UPDATED, Verdict.DELETED})


@dataclass(slots=True)
class Stored:
    """What the rule needs to know of a stored sample (not frozen, for the cost of
    building one per sample: see `Normalized`)."""

    hash: str
    modified_at: datetime | None
    deleted: bool
    type: str | None
    start: datetime | None = None
    """The stored sample's times: the days its old version counted on (`rollup`)."""
    end: datetime | None = None


def verdict(incoming: Normalized, stored: Stored | None) -> Verdict:
    if stored is None:
        return Verdict.DELETED if incoming.deleted else Verdict.INSERTED
    modified = moment(incoming.modified_at)
    if modified is not None and stored.modified_at is not None and modified < stored.modified_at:
        return Verdict.IGNORED
    if incoming.hash == stored.hash or (incoming.deleted and stored.deleted):
        return Verdict.UNCHANGED
    if incoming.deleted:
        return Verdict.DELETED
    return Verdict.INSERTED if stored.deleted else Verdict.UPDATED


@dataclass(slots=True)
class Plan:
    """A chunk's writes (the last state of each key, in the order keys first changed)
    and how many samples had each verdict."""

    writes: dict[Key, Normalized] = field(default_factory=dict)
    counts: Counter[Verdict] = field(default_factory=Counter)


def plan(chunk: list[Normalized], stored: dict[Key, Stored]) -> Plan:
    """Apply the rule to each sample in order, each seeing the ones before it (a batch
    may carry a sample and, later, its deletion)."""
    result = Plan()
    writes, counts = result.writes, result.counts
    for sample in chunk:
        key = (sample.source, sample.id)
        written = writes.get(key)  # a key repeated in the chunk meets its last write
        before = stored.get(key) if written is None else _as_stored(written)
        outcome = verdict(sample, before)
        counts[outcome] += 1
        if outcome not in WRITES:
            continue
        if sample.deleted and sample.type is None and before is not None:
            sample = replace(sample, type=before.type)  # the tombstone keeps its type
        writes[key] = sample
    return result


def _as_stored(sample: Normalized) -> Stored:
    return Stored(sample.hash, moment(sample.modified_at), sample.deleted, sample.type)
