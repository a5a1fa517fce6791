"""Memory under a hostile upstream: the peak RSS of a real worker and a real API process.

    .venv/bin/python -m bench.memory [--runs 50] [--dry-runs 50] [--bomb-mib 200]
        [--large-mib 12] [--scenarios bomb,large,dry-run] [--kill-above-mib 4096]
        [--database-url postgresql://...] [--redis-url ...]

Issue 11, item 1: one task whose upstream sends a ~200 KB gzip body that inflates to
200 MB of JSON, its `limits.max_response_bytes` raised to 512 MiB, cost the worker about
1.1 GiB. Scenarios (each with a fresh process, so each peak is its own):

- `bomb`: `--runs` tasks, each answered one such gzip body (`--bomb-mib` MiB of records
  `{"id": 1, "pad": 1 KB}`), each asking for 512 MiB responses (a server that refuses that
  with 422 gets its cap instead: reported), `max_attempts` 1, all triggered at once on one
  worker with `worker_max_jobs` = `--runs`: the worker's peak RSS;
- `large`: `--runs` tasks, each answered one honest page of `--large-mib` MiB of
  wearable-style records (no compression, within the cap): what the worker's in-flight
  body budget is for;
- `dry-run`: `--dry-runs` concurrent `POST /v1/tasks:validate` of the bomb task on a real
  `backsync api` process: its peak RSS.

Peaks are the kernel's high-water mark (`VmHWM` in /proc/<pid>/status), read before the
process is stopped. A process whose RSS passes `--kill-above-mib` is killed (reported:
"killed at"), so that a run against an unbounded build cannot take the machine down;
runs not final after `--timeout` seconds are reported as "not final", with the peak
until then.
Uses an embedded Valkey (unless `--redis-url`) and a fresh PostgreSQL database
`backsync_bench_mem` (any `sqlite://` URL: a temp file). Writes `bench/memory-results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]
import uvicorn
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.ingest import _admin, bench_database, code_version, stop_process, worker_env
from bench.upstream import make_record
from service.app import create_app
from service.broker.embedded import embedded_redis
from service.cli import _create_key
from service.config import Settings
from service.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "memory-results.json"
BENCH_DB = "backsync_bench_mem"
FINAL = {"succeeded", "failed", "cancelled"}
MiB = 1024 * 1024
ASKED = 512 * MiB
"""What the hostile tenant asks for (`limits.max_response_bytes`)."""


class BenchError(Exception):
    pass


# ---- the hostile upstream -------------------------------------------------------------


def gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of JSON records (`{"id": 1, "pad": "x" * 1000}`, the same one over and
    over: a thousandfold in gzip, as the issue's 198 KB for 200 MB), gzip level 9, built
    piece by piece (the bench never holds the inflated body)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    record = orjson.dumps({"id": 1, "pad": "x" * 1000})
    chunk = b",".join([record] * 1000)
    parts, size = [packer.compress(b'{"data": [' + chunk)], len(chunk)
    while size < mib * MiB:
        parts.append(packer.compress(b"," + chunk))
        size += len(chunk) + 1
    parts.append(packer.compress(b"]}"))
    parts.append(packer.flush())
    return b"".join(parts)


def large_page(mib: int) -> bytes:
    """An honest page of about `mib` MiB of wearable-style records (`bench.upstream`)."""
    import random

    rng = random.Random(7)
    records: list[bytes] = []
    size = 0
    while size < mib * MiB:
        record = orjson.dumps(make_record(len(records), rng))
        records.append(record)
        size += len(record) + 1
    return b'{"data": [' + b",".join(records) + b"]}"


class Upstream:
    """`/bomb` and `/large` on loopback, in a thread of this process."""

    def __init__(self, bomb: bytes, large: bytes) -> None:
        self.bomb, self.large = bomb, large
        self.requests = 0
        app = Starlette(routes=[Route("/{name}", self._serve)])
        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _serve(self, request: Request) -> Response:
        self.requests += 1
        if request.path_params["name"] == "bomb":
            return Response(
                self.bomb, media_type="application/json", headers={"Content-Encoding": "gzip"}
            )
        return Response(self.large, media_type="application/json")

    def __enter__(self) -> str:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- watching a process ---------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    """`VmHWM` (peak RSS) or `VmRSS` of `pid`, in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for {pid}")


class Watch(threading.Thread):
    """Samples a process's RSS every 20 ms; kills it past `kill_above` bytes."""

    def __init__(self, pid: int, kill_above: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.kill_above = kill_above
        self.killed_at: int | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            if rss > self.kill_above:
                self.killed_at = rss
                self.process.kill()
                return
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)


def peak_of(process: subprocess.Popen[bytes], watch: Watch) -> dict[str, Any]:
    watch.stop()
    if watch.killed_at is not None:
        return {"peak_mib": None, "killed_at_mib": round(watch.killed_at / MiB)}
    return {"peak_mib": round(status_kib(process.pid, "VmHWM") / 1024), "killed_at_mib": None}


# ---- scenarios --------------------------------------------------------------------------


async def register(
    client: httpx.AsyncClient, auth: dict[str, str], name: str, url: str, cap: int | None
) -> tuple[str, int]:
    """A task asking for `ASKED`-byte responses, or, where that is refused, the cap."""
    asked = cap or ASKED
    body = {
        "name": name,
        "source": {"url": url, "records_path": "data", "primary_key": "id"},
        "limits": {"max_response_bytes": asked, "timeout_seconds": 300},
        "retry": {"max_attempts": 1},
    }
    response = await client.post("/v1/tasks", json=body, headers=auth)
    if response.status_code == 422 and cap is None:
        return await register(client, auth, name, url, cap_in(response))
    if response.status_code != 201:
        raise BenchError(f"could not register {name}: {response.status_code} {response.text}")
    return response.json()["id"], asked


EXTRA_ENV: dict[str, str] = {}
"""`--env NAME=VALUE`: settings for the started processes (a what-if without a change)."""


def cap_in(refusal: httpx.Response) -> int:
    """The server's cap, from its 422 ("must be at most N ...")."""
    found = re.search(r"at most (\d+)", refusal.text)
    if found is None:
        raise BenchError(f"refused: {refusal.status_code} {refusal.text}")
    return int(found.group(1))


def start(settings: Settings, command: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", command],
            cwd=ROOT,
            env=worker_env(settings) | env | EXTRA_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def worker_scenario(
    name: str, path: str, args: argparse.Namespace, settings: Settings, base: str, log: Path
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {await _create_key(settings, name, None)}"}
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://b"
        ) as api,
    ):
        registered = [
            await register(api, auth, f"{name}-{i}", f"{base}/{path}", None)
            for i in range(args.runs)
        ]
        worker = start(settings, "worker", log, BACKSYNC_WORKER_MAX_JOBS=str(args.runs))
        watch = Watch(worker.pid, args.kill_above_mib * MiB)
        try:
            await asyncio.sleep(8)  # started: imports, pools
            idle = round(status_kib(worker.pid, "VmRSS") / 1024)
            watch.start()
            began = time.perf_counter()
            runs = [
                (await api.post(f"/v1/tasks/{task_id}/runs", headers=auth)).json()["id"]
                for task_id, _asked in registered
            ]
            ended = await wait_all(api, auth, runs, worker, args.timeout)
            wall = time.perf_counter() - began
            peak = peak_of(worker, watch)
        finally:
            watch.stop()
            stop_process(worker)
    codes: dict[str, int] = {}
    for run in ended:
        key = run["error"]["code"] if run["status"] == "failed" else run["status"]
        codes[key] = codes.get(key, 0) + 1
    return {
        "scenario": name,
        "runs": args.runs,
        "asked_max_response_bytes": registered[0][1],
        "idle_mib": idle,
        **peak,
        "wall_seconds": round(wall, 2),
        "outcomes": codes,
        "error": next((run["error"]["message"] for run in ended if run.get("error")), None),
    }


async def wait_all(
    api: httpx.AsyncClient,
    auth: dict[str, str],
    run_ids: list[str],
    process: subprocess.Popen[bytes],
    limit_seconds: float,
) -> list[dict[str, Any]]:
    deadline = time.perf_counter() + limit_seconds
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(run_ids):
        if process.poll() is not None:
            return [
                {"status": "failed", "error": {"code": "worker died", "message": "killed"}}
            ] * len(run_ids)
        if time.perf_counter() > deadline:  # reported as such, with the peak so far
            late = {"status": "not final", "error": None}
            return [done.get(run_id, late) for run_id in run_ids]
        for run_id in run_ids:
            if run_id not in done:
                run = (await api.get(f"/v1/runs/{run_id}", headers=auth)).json()
                if run["status"] in FINAL:
                    done[run_id] = run
        await asyncio.sleep(0.2)
    return [done[run_id] for run_id in run_ids]


async def dry_run_scenario(
    args: argparse.Namespace, settings: Settings, base: str, log: Path
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {await _create_key(settings, 'dry', None)}"}
    port = _free_port()
    api = start(settings, "api", log, BACKSYNC_PORT=str(port), BACKSYNC_API_RATE_PER_SECOND="0")
    watch = Watch(api.pid, args.kill_above_mib * MiB)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            await wait_listening(client, api)
            idle = round(status_kib(api.pid, "VmRSS") / 1024)
            body: dict[str, Any] = {
                "name": "dry",
                "source": {"url": f"{base}/bomb", "records_path": "data", "primary_key": "id"},
                "limits": {"max_response_bytes": ASKED, "timeout_seconds": 300},
            }
            probe = await client.post("/v1/tasks:validate", json=body, headers=auth)
            asked = ASKED
            if probe.status_code == 422:  # the server caps it: ask for the cap
                asked = cap_in(probe)
                body["limits"]["max_response_bytes"] = asked
            watch.start()
            began = time.perf_counter()
            answers = await asyncio.gather(
                *(
                    client.post("/v1/tasks:validate", json=body, headers=auth)
                    for _ in range(args.dry_runs)
                ),
                return_exceptions=True,
            )
            wall = time.perf_counter() - began
            peak = peak_of(api, watch)
    finally:
        watch.stop()
        stop_process(api)
    outcomes: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, BaseException):
            key = type(answer).__name__
        elif answer.status_code != 200:
            key = str(answer.status_code)
        else:
            key = answer.json()["error"]["code"] if answer.json()["error"] else "ok"
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "scenario": "dry-run",
        "runs": args.dry_runs,
        "asked_max_response_bytes": asked,
        "idle_mib": idle,
        **peak,
        "wall_seconds": round(wall, 2),
        "outcomes": outcomes,
    }


async def wait_listening(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise BenchError("the API process exited at startup")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz")).status_code < 500:
                return
        await asyncio.sleep(0.1)
    raise BenchError("the API did not answer within 30 s")


# ---- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_url(requested: str | None) -> Iterator[str]:
    if requested:
        yield requested
    else:
        with embedded_redis() as url:
            yield url


async def bench(args: argparse.Namespace, redis: str) -> dict[str, Any]:
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-mem-"))
    database_url, admin_url = bench_database(args.database_url, BENCH_DB, tmpdir)
    if admin_url is not None:
        await _admin(
            admin_url,
            f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)',
            f'CREATE DATABASE "{BENCH_DB}"',
        )
    await upgrade(database_url)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis,
        secret_keys=[Fernet.generate_key().decode()],
        queue_name=f"backsync:bench-mem:{secrets.token_hex(4)}",
        redis_key_prefix=f"backsync:bench-mem:{secrets.token_hex(4)}",
        block_private_targets=False,
        log_level="WARNING",
        api_rate_per_second=0,
    )
    bomb = gzip_bomb(args.bomb_mib)
    large = large_page(args.large_mib)
    print(
        f"bomb: {len(bomb):,} bytes of gzip -> {args.bomb_mib} MiB of JSON; "
        f"large page: {len(large) / MiB:.1f} MiB",
        flush=True,
    )
    log = tmpdir / "processes.log"
    results: list[dict[str, Any]] = []
    try:
        with Upstream(bomb, large) as base:
            for scenario in args.scenarios.split(","):
                print(f"-- {scenario} ...", flush=True)
                if scenario == "dry-run":
                    result = await dry_run_scenario(args, settings, base, log)
                else:
                    path = "bomb" if scenario == "bomb" else "large"
                    result = await worker_scenario(scenario, path, args, settings, base, log)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        if admin_url is not None:
            await _admin(admin_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    return {
        "code": code_version(),
        "bomb_gzip_bytes": len(bomb),
        "bomb_mib": args.bomb_mib,
        "large_mib": round(len(large) / MiB, 1),
        "results": results,
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dry-runs", type=int, default=50)
    parser.add_argument("--bomb-mib", type=int, default=200)
    parser.add_argument("--large-mib", type=int, default=9)
    parser.add_argument("--scenarios", default="bomb,large,dry-run")
    parser.add_argument("--kill-above-mib", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BACKSYNC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey")
    parser.add_argument("--env", action="append", default=[], help="BACKSYNC_NAME=VALUE")
    args = parser.parse_args()
    EXTRA_ENV.update(item.split("=", 1) for item in args.env)
    with redis_url(args.redis_url) as redis:
        report = asyncio.run(bench(args, redis))
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'scenario':10} {'runs':>5} {'asked MiB':>9} {'idle MiB':>8} {'peak MiB':>9}  outcomes"
    )
    for r in report["results"]:
        peak = r["peak_mib"] if r["peak_mib"] is not None else f">{r['killed_at_mib']} killed"
        print(
            f"{r['scenario']:10} {r['runs']:>5} {r['asked_max_response_bytes'] // MiB:>9}"
            f" {r['idle_mib']:>8} {peak!s:>9}  {r['outcomes']}"
        )


if __name__ == "__main__":
    main()
