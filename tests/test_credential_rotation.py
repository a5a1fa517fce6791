"""`backsync secrets rotate` / `generate`: credentials move to the first key (SPEC §2)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from starlette.responses import JSONResponse

from service.config import Settings
from service.crypto import SecretBox, SecretBoxError, generate_key
from service.db import create_engine, create_sessionmaker
from service.tasks.credential_rotation import UnreadableCredentials, rotate_credentials
from tests.fixtures.app import api_client, cli_env, run_cli, running_worker
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync

AUTHS: list[dict[str, Any]] = [
    {"type": "bearer", "token": "tok-SECRET-bearer-9a8b"},
    {"type": "header", "name": "X-Api-Key", "value": "hdr-SECRET-value-1c2d"},
    {"type": "query", "name": "api_key", "value": "qry-SECRET-value-3e4f"},
    {"type": "basic", "username": "alice", "password": "pwd-SECRET-basic-5g6h"},
    {"type": "bearer", "token": "tok-SECRET-second-7i8j"},
]


async def _ciphertexts(settings: Settings) -> dict[str, str | None]:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, auth_ciphertext FROM task"))
            return {task_id: ciphertext for task_id, ciphertext in rows.all()}
    finally:
        await engine.dispose()


async def _rotate(settings: Settings, keys: list[str], batch_size: int = 500) -> int:
    engine = create_engine(settings.database_url)
    try:
        return await rotate_credentials(create_sessionmaker(engine), SecretBox(keys), batch_size)
    finally:
        await engine.dispose()


async def test_rotate_moves_every_credential_to_the_first_key_and_the_service_runs_on_it(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    old_key, new_key = settings.secret_keys[0], generate_key()
    url = upstream.route("/rotated", lambda _r: JSONResponse({"data": [{"id": 1}]}))
    tasks = [
        await create_task(client, auth, http_task(url, name=f"t{i}", records_path="data", auth=a))
        for i, a in enumerate(AUTHS)
    ]
    await create_task(client, auth, http_task(url, name="no-auth", records_path="data"))
    before = await _ciphertexts(settings)

    # Batches of 2 over 5 credentials: three transactions, the last one short.
    assert await _rotate(settings, [new_key, old_key], batch_size=2) == len(AUTHS)

    after = await _ciphertexts(settings)
    only_new, only_old = SecretBox([new_key]), SecretBox([old_key])
    for task, auth_config in zip(tasks, AUTHS, strict=True):
        ciphertext = after[task["id"]]
        assert ciphertext is not None
        assert ciphertext != before[task["id"]]
        assert only_new.decrypt_json(ciphertext) == auth_config
        with pytest.raises(SecretBoxError):
            only_old.decrypt_json(ciphertext)
    assert sum(ciphertext is None for ciphertext in after.values()) == 1
    # A re-run has nothing left to do and rewrites nothing.
    assert await _rotate(settings, [new_key, old_key], batch_size=2) == 0
    assert await _ciphertexts(settings) == after

    new_only = settings.model_copy(update={"secret_keys": [new_key]})
    async with api_client(new_only) as api, running_worker(new_only):
        for task in tasks:
            shown = (await api.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
            assert shown["source"]["auth"] == task["source"]["auth"]  # masked, unchanged
        run = await sync(api, auth, tasks[0]["id"])
    assert run["status"] == "succeeded", run
    assert upstream.hits("/rotated")[-1].headers["authorization"] == f"Bearer {AUTHS[0]['token']}"


async def test_rotate_reports_credentials_no_key_can_read_and_rotates_the_rest(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    old_key, new_key = settings.secret_keys[0], generate_key()
    readable = await create_task(client, auth, http_task("https://a.example", auth=AUTHS[0]))
    stray = SecretBox([generate_key()]).encrypt_json(AUTHS[1])
    unreadable = await create_task(client, auth, http_task("https://b.example", name="t2"))
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE task SET auth_ciphertext = :c WHERE id = :id"),
                {"c": stray, "id": unreadable["id"]},
            )
    finally:
        await engine.dispose()

    with pytest.raises(UnreadableCredentials) as raised:
        await _rotate(settings, [new_key, old_key])

    assert raised.value.task_ids == [unreadable["id"]]
    assert raised.value.rotated == 1
    stored = await _ciphertexts(settings)
    assert stored[unreadable["id"]] == stray  # left as it was
    assert SecretBox([new_key]).decrypt_json(stored[readable["id"]] or "") == AUTHS[0]


class _RacingBox(SecretBox):
    """Rewrites the row (as a client's PATCH would) right after rotation read it."""

    def __init__(self, keys: list[str], write: threading.Thread, join: bool):
        super().__init__(keys)
        self._write, self._join, self._raced = write, join, False

    def rotate(self, token: str) -> str:
        if not self._raced:
            self._raced = True
            self._write.start()
            if self._join:  # SQLite: nothing is locked yet, the write lands first
                self._write.join(timeout=30)
        return super().rotate(token)


async def test_a_credential_changed_during_rotation_keeps_its_new_value(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    old_key, new_key = settings.secret_keys[0], generate_key()
    task = await create_task(client, auth, http_task("https://a.example", auth=AUTHS[0]))
    changed = SecretBox([old_key]).encrypt_json(AUTHS[4])  # an API still on the old key

    async def write() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE task SET auth_ciphertext = :c WHERE id = :id"),
                    {"c": changed, "id": task["id"]},
                )
        finally:
            await engine.dispose()

    writer = threading.Thread(target=lambda: asyncio.run(write()))
    box = _RacingBox([new_key, old_key], writer, join=settings.is_sqlite)
    engine = create_engine(settings.database_url)
    try:
        await rotate_credentials(create_sessionmaker(engine), box)
    finally:
        await engine.dispose()
    await asyncio.to_thread(writer.join, 30)

    # PostgreSQL locked the row, so the write waited and landed after the rotation;
    # SQLite's landed first and the swap noticed. Either way the new value survives...
    stored = (await _ciphertexts(settings))[task["id"]] or ""
    assert SecretBox([new_key, old_key]).decrypt_json(stored) == AUTHS[4]
    # ...and a re-run leaves it under the new key.
    await _rotate(settings, [new_key, old_key])
    stored = (await _ciphertexts(settings))[task["id"]] or ""
    assert SecretBox([new_key]).decrypt_json(stored) == AUTHS[4]


async def test_cli_rotate_then_the_old_key_can_go(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    old_key, new_key = settings.secret_keys[0], generate_key()
    task = await create_task(client, auth, http_task("https://a.example", auth=AUTHS[0]))

    result = run_cli("secrets", "rotate", env=cli_env(settings, secret_keys=f"{new_key},{old_key}"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rotated 1 credential(s)")
    stored = (await _ciphertexts(settings))[task["id"]] or ""
    assert SecretBox([new_key]).decrypt_json(stored) == AUTHS[0]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (None, "the credentials of 1 task(s) ({task}) cannot be decrypted with any key"),
        ("", "no BACKSYNC_SECRET_KEYS configured"),
        ("not-a-fernet-key", "BACKSYNC_SECRET_KEYS must be Fernet keys"),
    ],
    ids=["wrong-key", "no-keys", "malformed-key"],
)
async def test_cli_rotate_fails_clearly_with_keys_that_cannot_read(
    settings: Settings,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    keys: str | None,
    expected: str,
) -> None:
    task = await create_task(client, auth, http_task("https://a.example", auth=AUTHS[0]))
    before = await _ciphertexts(settings)
    keys = generate_key() if keys is None else keys  # None: a valid key, but not the one

    result = run_cli("secrets", "rotate", env=cli_env(settings, secret_keys=keys))

    assert result.returncode == 2, result.stdout + result.stderr
    assert expected.format(task=task["id"]) in result.stderr
    assert "Traceback" not in result.stderr
    assert await _ciphertexts(settings) == before


def test_cli_generate_prints_a_fresh_fernet_key() -> None:
    first, second = (run_cli("secrets", "generate", env=dict(os.environ)) for _ in range(2))
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    assert key != second.stdout.strip()
