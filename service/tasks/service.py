"""Registering, changing and reading tasks; credentials are sealed on the way in.

The stored `source` carries masked secrets (what responses show); the real `auth`
object lives only in `auth_ciphertext`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.crypto import SecretBox, SecretBoxError, mask
from service.errors import Conflict, CredentialsUnreadable, FieldError, InvalidInput, NotFound
from service.health.mapping import problems
from service.http_client import target_policy
from service.ids import new_id
from service.models import Run, Task
from service.models.types import utcnow
from service.pagination import decode_cursor, page_cursor
from service.sync import SECRET_FIELDS, Source, TargetRefused, check_target
from service.tasks import repository
from service.tasks.schedule import next_run_at
from service.tasks.schemas import RunSummary, TaskIn, TaskOut, TaskPage, TaskPatch

OnConflict = Literal["fail", "keep", "replace", "update"]


def source_of(task: Task, secrets: SecretBox) -> Source:
    """The task's source with real credentials, for the engine."""
    return unsealed_source(task.source, task.auth_ciphertext, secrets)


def unsealed_source(
    source: dict[str, Any], auth_ciphertext: str | None, secrets: SecretBox
) -> Source:
    """A stored source (credentials masked) with its real credentials put back."""
    data = dict(source)
    if auth_ciphertext:
        data["auth"] = secrets.decrypt_json(auth_ciphertext)
    return Source.model_validate(data)


def _seal(source: Source, secrets: SecretBox) -> tuple[dict[str, Any], str | None]:
    data = source.model_dump(mode="json")
    auth = data["auth"]
    fields = SECRET_FIELDS[auth["type"]]
    if not fields:
        return data, None
    ciphertext = secrets.encrypt_json(auth)
    data["auth"] = {**auth, **{name: mask(auth[name]) for name in fields}}
    return data, ciphertext


def _document(task: Task, secrets: SecretBox | None) -> dict[str, Any]:
    """The task as a client would PUT it, credentials included (for merge patches);
    without `secrets`, masked as stored."""
    source = dict(task.source)
    if task.auth_ciphertext and secrets is not None:
        source["auth"] = secrets.decrypt_json(task.auth_ciphertext)
    return {
        "name": task.name,
        "user_id": task.user_id,
        "kind": task.kind,
        "source": source,
        "schedule": task.schedule,
        "retry": task.retry,
        "limits": task.limits,
        "health_mapping": task.health_mapping,
        "tags": task.tags,
        "paused": task.paused,
        "debounce_seconds": task.debounce_seconds,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def _keep_masked_secrets(current: dict[str, Any], patched: dict[str, Any]) -> None:
    """A client that echoes back `****abcd` means "keep the secret", not "set it to stars"."""
    old, new = current.get("source", {}).get("auth", {}), patched.get("source", {}).get("auth")
    if not isinstance(new, dict) or new.get("type") != old.get("type"):
        return
    for name in SECRET_FIELDS.get(str(old.get("type")), ()):
        if isinstance(new.get(name), str) and name in old and new[name] == mask(old[name]):
            new[name] = old[name]


def _merged(task: Task, secrets: SecretBox, changes: dict[str, Any]) -> TaskIn:
    """The task with `changes` merged in (RFC 7396), echoed masked secrets kept.

    When the stored credentials cannot be decrypted (the server's keys changed without
    them: see "Rotating the credential encryption key"), only changes that bring new
    ones, a whole `source.auth`, can be merged; anything else is a 409 saying so."""
    try:
        current = _document(task, secrets)
    except SecretBoxError as exc:
        new_auth = (changes.get("source") or {}).get("auth")
        if not _complete_auth(new_auth):
            raise CredentialsUnreadable(
                "the task's stored credentials cannot be decrypted with the server's keys"
                " (BACKSYNC_SECRET_KEYS); send new ones as a whole source.auth, or pause or"
                " delete the task"
            ) from exc
        current = {**_document(task, None), "source": {**task.source, "auth": {}}}
    patched = merge_patch(current, changes)
    _keep_masked_secrets(current, patched)
    return _validated(patched)


def _complete_auth(auth: Any) -> bool:
    """A `source.auth` with every secret field given in clear (none echoed masked)."""
    if not isinstance(auth, dict) or not isinstance(auth.get("type"), str):
        return False
    if auth["type"] not in SECRET_FIELDS:
        return False
    fields = SECRET_FIELDS[auth["type"]]
    return all(isinstance(auth.get(f), str) and not auth[f].startswith("****") for f in fields)


def _validated(document: dict[str, Any]) -> TaskIn:
    try:
        return TaskIn.model_validate(document)
    except ValidationError as exc:
        errors = [FieldError(loc=["body", *exc_loc(e["loc"])], msg=e["msg"]) for e in exc.errors()]
        raise InvalidInput("the changed task is not valid", errors=errors) from exc


def exc_loc(loc: Sequence[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


MAX_DEPTH = 32
_INT64 = range(-(2**63), 2**63)


def _unstorable(value: Any, loc: list[str | int]) -> tuple[list[str | int], str] | None:
    """The first value the JSON columns (orjson) or PostgreSQL text cannot hold faithfully.

    Lax validation lets such values through: `1e300` for an int field is a valid, huge
    int; `NaN` and lone surrogates arrive from Python's JSON parser.
    """
    if len(loc) > MAX_DEPTH + 1:
        return loc, f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value not in _INT64:
        return loc, "integer out of the 64-bit range"
    if isinstance(value, float) and not math.isfinite(value):
        return loc, "must be a finite number"
    if isinstance(value, str):
        if "\x00" in value:
            return loc, "must not contain NUL characters"
        try:
            value.encode()
        except UnicodeEncodeError:
            return loc, "must be valid Unicode (no lone surrogates)"
        return None
    if isinstance(value, BaseModel):
        value = {name: getattr(value, name) for name in type(value).model_fields}
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for name, item in items:
        found = _unstorable(name, loc) if isinstance(name, str) else None
        found = found or _unstorable(item, [*loc, name])
        if found:
            return found
    return None


def _check_storable(body: TaskIn | TaskPatch) -> None:
    found = _unstorable(body, ["body"])
    if found:
        raise InvalidInput.at(*found)


async def _check_target(body: TaskIn, settings: Settings) -> None:
    """Refuse at registration what the fetch-time SSRF guard would refuse anyway."""
    try:
        await check_target(str(body.source.url), target_policy(settings))
    except TargetRefused as exc:
        raise InvalidInput.at(["body", "source", "url"], exc.message) from exc


def check_limits(body: TaskIn, settings: Settings) -> None:
    """A task may not ask for larger responses than the server allows
    (`BACKSYNC_MAX_RESPONSE_BYTES`). Only a value the client gave is refused: the default
    is held to the cap when the task runs, as a task stored before the cap was lowered is."""
    cap = settings.max_response_bytes
    if (
        "max_response_bytes" in body.limits.model_fields_set
        and body.limits.max_response_bytes > cap
    ):
        raise InvalidInput.at(
            ["body", "limits", "max_response_bytes"],
            f"must be at most {cap} (this server's BACKSYNC_MAX_RESPONSE_BYTES)",
        )


def _check_policy(body: TaskIn, settings: Settings) -> None:
    """What the schema cannot say: storable values, the minimum interval and the
    server's cap on response sizes.

    Checked on every task about to be stored: a new one, a replacement, a merged update or
    a patched task.
    """
    _check_storable(body)
    _check_mapping(body)
    check_limits(body, settings)
    schedule = body.schedule
    if (
        schedule
        and schedule.every_seconds is not None
        and schedule.every_seconds < settings.min_interval_seconds
    ):
        raise InvalidInput.at(
            ["body", "schedule", "every_seconds"],
            f"must be at least {settings.min_interval_seconds} seconds",
        )


def _check_mapping(body: TaskIn) -> None:
    """What a mapping's schema cannot say (a type's units, required paths), at the field."""
    if body.health_mapping is None:
        return
    for where, message in problems(body.health_mapping):
        raise InvalidInput.at(["body", "health_mapping", *where], message)
    if body.user_id is None:
        raise InvalidInput.at(
            ["body", "user_id"], "a task with a health_mapping needs a user_id (the samples' user)"
        )


async def _apply(session: AsyncSession, task: Task, body: TaskIn, secrets: SecretBox) -> None:
    schedule_before, now = task.schedule, utcnow()
    if _credentials_changed(task, body, secrets):
        task.auth_failed_at = None  # new credentials: a refusal is news again
    task.source, task.auth_ciphertext = _seal(body.source, secrets)
    task.name = body.name
    task.user_id = body.user_id
    task.kind = body.kind
    task.schedule = (
        body.schedule.model_dump(mode="json", exclude_none=True) if body.schedule else None
    )
    task.retry = body.retry.model_dump(mode="json")
    task.limits = body.limits.model_dump(mode="json")
    task.health_mapping = (
        body.health_mapping.model_dump(mode="json", exclude_none=True)
        if body.health_mapping
        else None
    )
    task.tags = list(dict.fromkeys(body.tags))
    task.debounce_seconds = body.debounce_seconds
    _set_paused(task, body.paused, schedule_before, now)
    task.updated_at = now
    await repository.set_tags(session, task.id, task.tags)


def _set_paused(
    task: Task, paused: bool, schedule_before: dict[str, Any] | None, now: datetime
) -> None:
    """Pause or resume through the API (`paused_reason: client`), and the next slot."""
    paused_before = task.paused
    task.paused = paused
    if paused != paused_before:
        task.paused_reason = "client" if paused else None
    task.next_run_at = _next_slot(task, schedule_before, paused_before, now)
    task.updated_at = now


def _credentials_changed(task: Task, body: TaskIn, secrets: SecretBox) -> bool:
    new = body.source.auth.model_dump(mode="json")
    sealed = new if SECRET_FIELDS[new["type"]] else None  # what `_seal` keeps
    try:
        stored = secrets.decrypt_json(task.auth_ciphertext) if task.auth_ciphertext else None
    except SecretBoxError:
        return True  # unreadable ones are being replaced
    return bool(stored != sealed)


def _next_slot(
    task: Task, schedule_before: dict[str, Any] | None, paused_before: bool, now: datetime
) -> datetime | None:
    """The task's `next_run_at` after a change: none while paused or unscheduled; a new one
    when the schedule changed, the task was unpaused or it had none (stored before
    schedules were computed); otherwise the one it had.

    Keeping it matters: a slot that is due (or overdue, while the scheduler was down) is
    the scheduler's to fire, and recomputing from now on an unrelated change (tags, a
    parameter) would skip it.
    """
    if task.paused or task.schedule is None:
        return None
    if task.schedule != schedule_before or paused_before or task.next_run_at is None:
        return next_run_at(task.schedule, task.id, now)
    return task.next_run_at


async def create_task(
    session: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    tenant_id: str,
    body: TaskIn,
    on_conflict: OnConflict = "fail",
) -> tuple[Task, bool]:
    """Register a task; returns it and whether it was newly created."""
    _check_policy(body, settings)
    await _check_target(body, settings)
    existing = await repository.by_name(session, tenant_id, body.name)
    if existing is None:
        task = Task(
            id=new_id("tsk"), tenant_id=tenant_id, name=body.name, source={}, retry={}, limits={}
        )
        try:
            async with session.begin_nested():
                session.add(task)
                await _apply(session, task, body, secrets)
                await session.flush()
            return task, True
        except IntegrityError:
            existing = await repository.by_name(session, tenant_id, body.name)
            if existing is None:
                raise
    return await _resolve_conflict(session, secrets, settings, existing, body, on_conflict), False


async def _resolve_conflict(
    session: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    existing: Task,
    body: TaskIn,
    on_conflict: OnConflict,
) -> Task:
    if on_conflict == "fail":
        raise Conflict(
            f"a task named {body.name!r} exists ({existing.id}); "
            "use on_conflict=keep, replace or update"
        )
    if on_conflict == "replace":
        await _apply(session, existing, body, secrets)
    elif on_conflict == "update":
        merged = _merged(existing, secrets, body.model_dump(mode="json", exclude_unset=True))
        _check_policy(merged, settings)
        await _apply(session, existing, merged, secrets)
    await session.flush()
    return existing


async def get_task(session: AsyncSession, tenant_id: str, task_id: str) -> Task:
    task = await repository.get(session, tenant_id, task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


async def update_task(
    session: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    tenant_id: str,
    task_id: str,
    patch: TaskPatch,
) -> Task:
    _check_storable(patch)
    task = await get_task(session, tenant_id, task_id)
    if patch.model_fields_set == {"paused"} and patch.paused is not None:
        # needs no credentials: works even when they cannot be decrypted
        _set_paused(task, patch.paused, task.schedule, utcnow())
        await session.flush()
        return task
    body = _merged(task, secrets, patch.model_dump(mode="json", exclude_unset=True))
    _check_policy(body, settings)
    if body.source.url != task.source.get("url"):
        await _check_target(body, settings)
    if body.name != task.name and await repository.by_name(session, tenant_id, body.name):
        raise Conflict(f"a task named {body.name!r} exists")
    try:
        async with session.begin_nested():
            await _apply(session, task, body, secrets)
            await session.flush()
    except IntegrityError as exc:  # a concurrent rename took the name first
        raise Conflict(f"a task named {body.name!r} exists") from exc
    return task


async def delete_task(session: AsyncSession, tenant_id: str, task_id: str) -> None:
    task = await get_task(session, tenant_id, task_id)
    await session.delete(task)  # runs, tags and validators go by ON DELETE CASCADE
    await session.flush()
    await repository.delete_records(session, task.id)


def to_out(task: Task, last_run: Run | None) -> TaskOut:
    return TaskOut(
        id=task.id,
        name=task.name,
        user_id=task.user_id,
        kind=task.kind,
        source=task.source,
        schedule=task.schedule,
        retry=task.retry,
        limits=task.limits,
        health_mapping=task.health_mapping,
        tags=task.tags,
        state="paused" if task.paused else "active",
        paused=task.paused,
        paused_reason=task.paused_reason if task.paused else None,
        next_run_at=None if task.paused else task.next_run_at,
        skipped_runs=task.skipped_runs,
        debounce_seconds=task.debounce_seconds,
        last_run=RunSummary.model_validate(last_run, from_attributes=True) if last_run else None,
        last_success_at=task.last_success_at,
        consecutive_failures=task.consecutive_failures,
        auth_failed_at=task.auth_failed_at,
        watermark=task.watermark,
        created_at=task.created_at,
        updated_at=task.updated_at,
    )


async def describe(session: AsyncSession, task: Task) -> TaskOut:
    runs = await repository.latest_runs(session, [task.id])
    return to_out(task, runs.get(task.id))


async def list_tasks(
    session: AsyncSession,
    tenant_id: str,
    *,
    user_id: str | None,
    tag: str | None,
    state: Literal["active", "paused"] | None,
    limit: int,
    cursor: str | None,
) -> TaskPage:
    tasks = await repository.page(
        session,
        tenant_id,
        user_id=user_id,
        tag=tag,
        paused=None if state is None else state == "paused",
        before_id=decode_cursor(cursor),
        limit=limit,
    )
    shown = list(tasks[:limit])
    runs = await repository.latest_runs(session, [task.id for task in shown])
    return TaskPage(
        items=[to_out(task, runs.get(task.id)) for task in shown],
        next_cursor=page_cursor([task.id for task in tasks], limit),
    )
