"""Logs never show credentials (SPEC §2): the redacting filter, alone and in a real run."""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from starlette.responses import JSONResponse

from service.logs import (
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    install_redaction,
    redact,
)
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync

TOKEN = "tok-SECRET-bearer-9a8b"
BASIC = base64.b64encode(b"alice:pwd-SECRET-basic").decode()
API_KEY_PREFIX = "bks_ab12cd34ef_"
API_KEY = API_KEY_PREFIX + "S3cret-Part_of-the-KEY"
FERNET = Fernet(Fernet.generate_key()).encrypt(b'{"token": "x"}').decode()
QUERY = ("qry-SECRET-1", "qry-SECRET-2", "qry-SECRET-3", "qry-SECRET-4")
URL = (
    f"https://api.example.com/v1/data?page=2&api_key={QUERY[0]}"
    f"&Access_Token={QUERY[1]}&sig={QUERY[2]}&client_secret={QUERY[3]}#top"
)
DSN = "postgresql://backsync:db-SECRET-pw@db.internal:5432/backsync"
SECRETS = (TOKEN, BASIC, API_KEY, FERNET, *QUERY, "db-SECRET-pw", "S3cret-Part")

log = logging.getLogger("tests.redaction")


@pytest.fixture(params=["json", "console"])
def logged(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[io.StringIO]:
    """What `configure_logging` writes (to stderr, swapped for a buffer); the root
    logger is put back afterwards so no other test sees this configuration."""
    root = logging.getLogger()
    saved = (
        root.handlers[:],
        root.level,
        {name: logging.getLogger(name).level for name in ("httpx", "alembic")},
    )
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(request.param, "DEBUG")
    yield stream
    handlers, level, levels = saved
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def _emit_every_kind_of_secret() -> None:
    log.info("calling upstream with Authorization: Bearer %s", TOKEN)
    log.info("headers %s", {"Authorization": f"Basic {BASIC}", "Accept": "application/json"})
    log.warning("key %s was revoked", API_KEY)
    log.error("GET %s failed", URL)
    log.debug(f"stored ciphertext {FERNET} for the task")
    log.info("source %s", {"type": "bearer", "token": TOKEN})
    log.info("connected to %s", DSN)
    try:
        raise RuntimeError(f"upstream refused {URL} (Authorization: Bearer {TOKEN})")
    except RuntimeError:
        log.exception("run crashed while fetching")


def test_configured_logging_redacts_messages_args_and_exceptions(logged: io.StringIO) -> None:
    _emit_every_kind_of_secret()

    output = logged.getvalue()
    for secret in SECRETS:
        assert secret not in output
    for kept in (
        "calling upstream with Authorization: Bearer ****",
        "'Authorization': 'Basic ****', 'Accept': 'application/json'",
        f"key {API_KEY_PREFIX}**** was revoked",
        "?page=2&api_key=****&Access_Token=****&sig=****&client_secret=****#top",
        "stored ciphertext **** for the task",
        "'type': 'bearer', 'token': '****'",
        "postgresql://backsync:****@db.internal:5432/backsync",
        "run crashed while fetching",
        "RuntimeError: upstream refused https://api.example.com/v1/data?page=2&api_key=****",
        "Traceback (most recent call last)",
    ):
        assert kept in output.replace('\\"', '"')  # JSON lines escape quotes


def test_each_record_is_still_one_line_and_valid_json(logged: io.StringIO) -> None:
    log.info("token in %s", URL)
    line = logged.getvalue().strip().splitlines()[-1]
    message = json.loads(line)["message"] if line.startswith("{") else line
    assert message.endswith(
        "token in https://api.example.com/v1/data"
        "?page=2&api_key=****&Access_Token=****&sig=****&client_secret=****#top"
    )


def test_a_record_whose_args_clean_one_by_one_keeps_its_template() -> None:
    """Formatters that read `record.args` (uvicorn's access log) keep working."""
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, '%s "%s %s"', ("10.0.0.1", "GET", URL), None
    )
    RedactingFilter().filter(record)
    assert record.msg == '%s "%s %s"'
    assert isinstance(record.args, tuple)
    assert record.args[:2] == ("10.0.0.1", "GET")
    assert QUERY[0] not in record.getMessage()


def test_a_line_without_candidates_is_left_untouched() -> None:
    args = ("run_1", 3)
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "run %s attempt %d failed", args, None
    )
    RedactingFilter().filter(record)
    assert record.args is args
    assert record.getMessage() == "run run_1 attempt 3 failed"


def test_prose_and_ordinary_params_are_not_redacted() -> None:
    for text in (
        "basic auth needs a username",
        "https://h.example/p?next_token=20&primary_key=id&monkey=1",
        "max_jobs=50 key order",
    ):
        assert redact(text) == text


def test_install_redaction_is_idempotent() -> None:
    logger = logging.getLogger("tests.redaction.install")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        first, second = install_redaction(logger), install_redaction(logger)
        assert first is second
        assert [type(f) for f in handler.filters] == [RedactingFilter]
        assert [type(f) for f in logger.filters] == [RedactingFilter]
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(first)


@pytest.fixture
def redacted_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Everything logged at DEBUG, through the redacting filter (pytest's handlers are
    added after any `configure_logging`, so they get it from `install_redaction`)."""
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    redacting = install_redaction(root)
    yield caplog
    for filterer in (root, caplog.handler, *root.handlers):
        filterer.removeFilter(redacting)


async def test_a_failing_run_logs_no_credentials(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
    redacted_caplog: pytest.LogCaptureFixture,
) -> None:
    url = upstream.route("/down", lambda _r: JSONResponse({"error": "boom"}, status_code=500))
    retry = {"max_attempts": 2, "backoff": "linear", "initial_delay_seconds": 0.05}
    bearer = {"type": "bearer", "token": TOKEN}
    query = {"type": "query", "name": "api_key", "value": QUERY[0]}
    runs = [
        await sync(client, auth, (await create_task(client, auth, body))["id"])
        for body in (
            {**http_task(url, name="bearer", auth=bearer), "retry": retry},
            {**http_task(url, name="query", auth=query), "retry": retry},
        )
    ]

    assert [run["status"] for run in runs] == ["failed", "failed"]
    sent = upstream.hits("/down")
    assert any(seen.headers.get("authorization") == f"Bearer {TOKEN}" for seen in sent)
    assert any(seen.query.get("api_key") == QUERY[0] for seen in sent)
    records = redacted_caplog.records
    everything = "\n".join(
        [redacted_caplog.text, *(r.getMessage() + (r.exc_text or "") for r in records)]
    )
    assert TOKEN not in everything
    assert QUERY[0] not in everything
    assert "api_key=****" in everything  # the engine logged the request URL, redacted


async def test_json_lines_of_a_run_carry_its_run_task_and_tenant(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("service").addHandler(handler)
    logging.getLogger("service").setLevel(logging.INFO)
    try:
        url = upstream.route("/ctx", lambda _r: JSONResponse({}, status_code=404))
        task = await create_task(client, auth, http_task(url))
        run = await sync(client, auth, task["id"])
    finally:
        logging.getLogger("service").removeHandler(handler)
        logging.getLogger("service").setLevel(logging.NOTSET)  # as it was: later tests log DEBUG
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    about_run = [line for line in lines if line.get("run_id") == run["id"]]
    assert about_run, lines
    assert all(line["task_id"] == task["id"] for line in about_run)
    assert all(line["tenant"].startswith("ten_") for line in about_run)


async def test_a_run_masks_its_own_credentials_whatever_they_are_called(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
    redacted_caplog: pytest.LogCaptureFixture,
) -> None:
    """`apitok` is on no list of credential names: the value is masked because the run
    knows it is its task's credential. The dry run (in the API) does the same."""
    secret = "zq-not-a-pattern-4711"
    url = upstream.route("/odd", lambda _r: JSONResponse({"error": "boom"}, status_code=404))
    body = http_task(url, name="odd", auth={"type": "query", "name": "apitok", "value": secret})
    run = await sync(client, auth, (await create_task(client, auth, body))["id"])
    dry = await client.post("/v1/tasks:validate", json=body, headers=auth)

    assert run["status"] == "failed" and dry.status_code == 200
    assert all(seen.query.get("apitok") == secret for seen in upstream.hits("/odd"))
    records = redacted_caplog.records
    everything = "\n".join(
        [redacted_caplog.text, *(r.getMessage() + (r.exc_text or "") for r in records)]
    )
    assert "apitok=****" in everything  # the engine's DEBUG line, the value masked
    assert secret not in everything
