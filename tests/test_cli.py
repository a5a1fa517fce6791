"""The CLI as a user runs it: real subprocesses."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from service.config import Settings
from tests.fixtures.app import cli_env, run_cli
from tests.fixtures.upstream import Upstream, free_port


async def test_keys_create_then_revoke(settings: Settings, client: httpx.AsyncClient) -> None:
    created = run_cli("keys", "create", "--tenant", "cli-tenant", env=cli_env(settings))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bks_")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/tasks", headers=headers)).status_code == 200

    # In a thread: the API (this event loop) keeps running meanwhile, as it does beside
    # any `keys revoke`, and confirms the revocation before the command returns.
    revoked = await asyncio.to_thread(
        run_cli, "keys", "revoke", key.split("_")[1], env=cli_env(settings)
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "did not confirm" not in revoked.stderr
    assert (await client.get("/v1/tasks", headers=headers)).status_code == 401
    missing = run_cli("keys", "revoke", "nosuchprefix", env=cli_env(settings))
    assert missing.returncode == 2
    assert "no key" in missing.stderr


async def test_keys_revoke_takes_the_whole_key_and_never_prints_it(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    key = run_cli("keys", "create", "--tenant", "cli-tenant", env=cli_env(settings)).stdout.strip()
    prefix = key.split("_")[1]

    revoked = run_cli("keys", "revoke", key, env=cli_env(settings))

    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked bks_{prefix}_…"
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/tasks", headers=headers)).status_code == 401


def test_version_is_the_installed_distributions() -> None:
    result = run_cli("--version", env=dict(os.environ))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"backsync {importlib.metadata.version('backsync')}\n"


def _dev_env(tmp_path: Path) -> dict[str, str]:
    """`dev`/`demo` as a user starts them: no BACKSYNC_ settings, state under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    return env | {"BACKSYNC_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.parametrize("command", ["dev", "demo", "api"])
def test_a_busy_port_is_one_line_naming_the_flag(
    command: str, settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(settings) if command == "api" else _dev_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli(command, "--port", str(port), env=env)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"port {port} on 127.0.0.1 is in use: pick another with --port (or BACKSYNC_PORT)"
    ]
    assert not (tmp_path / "state").exists()  # nothing was started or written first


def test_an_address_that_is_not_this_machines_names_the_host_flag(tmp_path: Path) -> None:
    result = run_cli(
        "dev", "--host", "192.0.2.1", "--port", str(free_port()), env=_dev_env(tmp_path)
    )

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("cannot listen on 192.0.2.1:")
    assert line.endswith("check --host (or BACKSYNC_HOST)")


async def test_demo_refuses_to_drive_another_backsync_on_its_port(
    served: str, tmp_path: Path
) -> None:
    """Before, the demo's own API failed to bind while the demo registered its task on
    whatever Backsync answered there. (In a thread: `served` answers on this loop.)"""
    port = int(served.rsplit(":", 1)[1])

    result = await asyncio.to_thread(run_cli, "demo", "--port", str(port), env=_dev_env(tmp_path))

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"another Backsync is already serving on 127.0.0.1:{port}: stop it, or pick another"
        " port with --port (or BACKSYNC_PORT)"
    ]
    assert not (tmp_path / "state").exists()


def test_a_worker_metrics_port_in_use_is_one_line_naming_the_setting(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("worker", env=cli_env(settings, worker_metrics_port=port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cannot serve the worker's metrics on 127.0.0.1:{port} (in use or not allowed):"
        " pick another BACKSYNC_WORKER_METRICS_PORT, or 0 for none"
    ]


def test_api_and_worker_refuse_to_start_without_redis_or_secret_keys(settings: Settings) -> None:
    no_secret = run_cli("api", env=cli_env(settings, secret_keys=""))
    assert no_secret.returncode == 2
    assert "BACKSYNC_SECRET_KEYS" in no_secret.stderr
    no_redis = run_cli("worker", env=cli_env(settings, redis_url=""))
    assert no_redis.returncode == 2
    assert "BACKSYNC_REDIS_URL" in no_redis.stderr


def test_python_dash_m_service_is_the_same_cli(tmp_path: Path) -> None:
    result = run_cli("openapi", "--output", str(tmp_path / "o.json"), env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.json").read_text().startswith('{\n  "openapi"')


def _wait_ready(base: str, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "backsync dev exited early"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("backsync dev did not become ready")


@pytest.mark.timeout(120)
def test_dev_runs_everything_with_embedded_defaults_and_stops_cleanly(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The README's run command: SQLite + embedded Valkey + API + worker, one process group."""
    url = upstream.route("/wearable", lambda _r: JSONResponse({"data": [{"id": 1}, {"id": 2}]}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    env |= {"BACKSYNC_STATE_DIR": str(tmp_path / "state")}  # the port comes from --port
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    banner: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the banner says where the worker's metrics are
            banner.append(line)
            if line.strip().startswith("metrics"):
                break
        worker_metrics = banner[-1].split("worker")[1].strip()
        _wait_ready(base, process)
        key = (tmp_path / "state" / "dev_api_key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        body = {"name": "dev", "source": {"url": url, "records_path": "data", "primary_key": "id"}}
        task = httpx.post(f"{base}/v1/tasks", json=body, headers=headers).json()
        run = httpx.post(f"{base}/v1/tasks/{task['id']}/runs", headers=headers).json()
        deadline = time.monotonic() + 30
        while run["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            run = httpx.get(f"{base}/v1/runs/{run['id']}", headers=headers).json()
        assert run["status"] == "succeeded", run
        assert run["stats"]["inserted"] == 2
        assert (tmp_path / "backsync.db").exists()
        assert httpx.get(f"{base}/docs").status_code == 200
        assert "backsync_queue_depth 0.0" in httpx.get(f"{base}/metrics").text
        succeeded = 'backsync_runs_finished_total{error_code="",status="succeeded"} 1.0'
        for _ in range(50):  # counted right after the commit the API has already seen
            if succeeded in httpx.get(worker_metrics).text:
                break
            time.sleep(0.1)
        assert succeeded in httpx.get(worker_metrics).text
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        output = "".join(banner) + rest
    assert process.returncode == 0, output
    assert key in output  # the banner prints a ready key
    assert "embedded Valkey" in output
    socket = (
        next(line for line in output.splitlines() if "unix://" in line)
        .split("unix://")[1]
        .split()[0]
    )
    assert not Path(socket).parent.exists()  # the embedded server was torn down


@pytest.mark.timeout(120)
def test_demo_syncs_the_builtin_wearable_api_and_shows_it_live(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    env |= {"BACKSYNC_PORT": str(free_port()), "BACKSYNC_STATE_DIR": str(tmp_path / "state")}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("explore:"):
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    output = "\n".join(lines)
    assert output.count("-> succeeded") == 2, output
    assert "retrying" in output  # the demo upstream's one 503 was retried
    assert "inserted 120" in output
    assert "not_modified 5" in output  # the resync was all 304s
    assert "seq   1  da_2026-01-01" in output
    assert "****4242" in output and "demo-wearable-token-4242" not in output
