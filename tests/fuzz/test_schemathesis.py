"""Schemathesis fuzzes the API from the committed `openapi/openapi.json` (SPEC: every
error is problem+json 4xx, never a 500): generated and mutated requests, with a valid API
key, against the app served on loopback; any 5xx, or any answer that breaks the schema
the document gives for it, fails the suite.

The run is deterministic (`--generation-deterministic`: no randomness, no example
database), so CI repeats the same requests and a failure reproduces; its budget
(`MAX_EXAMPLES` per operation) keeps it within tens of seconds. URLs in bodies are
pointed at the loopback upstream (`tests/fuzz/hooks.py`), so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.fixtures.upstream import Upstream
from tests.fuzz.hooks import UPSTREAM_ENV

ROOT = Path(__file__).parents[2]
DOCUMENT = ROOT / "openapi" / "openapi.json"
MAX_EXAMPLES = 10
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
)


def _page(_request: Request) -> JSONResponse:
    return JSONResponse({"data": [{"id": "a1", "steps": 1}]})


@pytest.mark.timeout(600)  # about a minute alone; CI shares two cores with the suite
async def test_no_request_gets_a_5xx_or_an_answer_outside_the_schema(
    served: str, auth: dict[str, str], upstream: Upstream, tmp_path: Path
) -> None:
    target = upstream.route("/fuzz", _page)
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        str(DOCUMENT),
        "--url",
        served,
        "--header",
        f"Authorization: {auth['Authorization']}",
        "--checks",
        ",".join(CHECKS),
        # A run's event stream stays open until the run ends, and no worker runs here;
        # tests/runs/test_events.py holds its events to the documented schema instead.
        "--exclude-operation-id",
        "run_events_stream",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    # Run from a scratch directory: st and hypothesis keep caches in the working directory.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
        UPSTREAM_ENV: target,
    }
    fuzz = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await fuzz.communicate()
    report = output.decode()
    assert fuzz.returncode == 0, report
    assert " passed" in report, report
    # Dry runs reached the loopback upstream the hook put in their bodies: URLs were
    # rewritten, not dropped.
    assert upstream.hits("/fuzz"), report
