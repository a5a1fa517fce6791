"""The de-duplication rule, on its own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.health.merge import Stored, Verdict, plan, verdict
from service.health.normalize import Normalized, normalize

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def make(value: float = 10, modified: str | None = None, deleted: bool = False) -> Normalized:
    raw: dict[str, Any] = {"id": "s1", "source": "watch", "deleted": deleted}
    if not deleted:
        raw |= {"type": "steps", "value": value, "unit": "count", "start": "2026-12-04T08:00:00Z"}
    if modified:
        raw["modified_at"] = modified
    return normalize(raw, "u_42", NOW)


def stored(sample: Normalized) -> Stored:
    modified = datetime.fromisoformat(sample.modified_at) if sample.modified_at else None
    return Stored(sample.hash, modified, sample.deleted, sample.type)


def test_new_samples_are_inserted_and_new_deletions_kept_as_tombstones() -> None:
    assert verdict(make(), None) is Verdict.INSERTED
    assert verdict(make(deleted=True), None) is Verdict.DELETED


def test_the_same_sample_again_is_unchanged_and_a_changed_one_updated() -> None:
    assert verdict(make(10), stored(make(10))) is Verdict.UNCHANGED
    assert verdict(make(11), stored(make(10))) is Verdict.UPDATED


def test_an_update_older_than_the_stored_one_is_ignored() -> None:
    newer = stored(make(12, "2026-12-04T10:00:00Z"))
    assert verdict(make(11, "2026-12-04T09:00:00Z"), newer) is Verdict.IGNORED
    assert verdict(make(13, "2026-12-04T11:00:00Z"), newer) is Verdict.UPDATED
    assert verdict(make(13), newer) is Verdict.UPDATED  # without modified_at: last wins


def test_a_deletion_is_idempotent_and_a_stale_copy_loses_to_it() -> None:
    tombstone = stored(make(deleted=True, modified="2026-12-04T10:00:00Z"))
    assert (
        verdict(make(deleted=True, modified="2026-12-04T10:00:00Z"), tombstone) is Verdict.UNCHANGED
    )
    assert verdict(make(deleted=True), tombstone) is Verdict.UNCHANGED
    assert verdict(make(10, "2026-12-04T09:00:00Z"), tombstone) is Verdict.IGNORED
    assert verdict(make(10, "2026-12-04T11:00:00Z"), tombstone) is Verdict.INSERTED
    assert verdict(make(deleted=True), stored(make(10))) is Verdict.DELETED


def test_a_chunk_sees_its_own_earlier_samples_and_writes_each_key_once() -> None:
    result = plan([make(10), make(10), make(11), make(deleted=True)], {})
    assert dict(result.counts) == {
        Verdict.INSERTED: 1,
        Verdict.UNCHANGED: 1,
        Verdict.UPDATED: 1,
        Verdict.DELETED: 1,
    }
    [(key, last)] = result.writes.items()
    assert key == ("watch", "s1") and last.deleted
    assert last.type == "steps"  # the tombstone keeps the type it deleted
