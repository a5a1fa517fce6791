"""API read-path benchmark: Backsync's `GET /v1/runs/{id}` and `POST /v1/tasks/{id}/runs`
against a bare FastAPI app answering the same JSON, side by side in one run (issue 11,
items 8 and 9), and the GET's latency while SSE streams are open.

    .venv/bin/python -m bench.api [--seconds 10] [--connections 50] [--rounds 3]
        [--streams 0,300,1000] [--keys 100]
        [--database-url postgresql://...|sqlite://] [--redis-url URL]

1. a fresh database (`backsync_bench_api` on the PostgreSQL server, or a temp SQLite
   file), migrated; one tenant with `--keys` API keys, made with the service's own
   `create_key`;
2. starts the real API (`python -m service api`: uvicorn, one process, as shipped,
   with the **default per-key rate limit on**, 50 requests/s per key in bursts of 200,
   counted in Redis) and a bare FastAPI app (`--serve-bare`: same uvicorn, one route
   per endpoint returning a fixed `RunOut`, the same JSON, no database, no Redis);
3. through the API: one task with a queued run (no worker runs, so it stays queued),
   and `--stream-tasks` more tasks with a queued run each, for the streams to follow;
4. **ratios**: `wrk` (1 thread, `--connections`, `--seconds`) loads the bare GET, the
   API's GET, the bare POST and the API's trigger (a task whose run is active answers
   200 with that run), in turn, `--rounds` times. The wrk script sends each request
   with the next of the keys, so the load is that of `--keys` clients each within its
   rate limit (one key alone would be answered 429 past 50/s; every non-2xx answer is
   counted and reported). Ratio = API rate / bare rate of the same round;
5. **streams**: for each count in `--streams`, a separate process (`--hold-streams`)
   opens that many `GET /v1/runs/{id}/events` streams, spread over the stream tasks'
   runs and over the keys (round robin), and keeps reading them; the API process's CPU
   use over 5 s with no request is noted (what the open streams cost by themselves),
   then the API's GET is loaded as in 4, and its p50/p99 printed (`--rounds 0`: this
   phase only). The streams are closed before the next
   count;
6. writes `bench/api-results.json`.

Needs `wrk` (Debian: `apt-get install wrk`). The load generator, the API, PostgreSQL
and Redis share this machine's cores: compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
from cryptography.fernet import Fernet

from bench.ingest import (
    BenchError,
    _admin,
    add_server_arguments,
    bench_database,
    code_version,
    machine,
    print_py_spy,
    server_version,
    start_py_spy,
    stop_process,
    stop_py_spy,
    worker_env,
)
from service.auth.service import create_key
from service.config import Settings
from service.db import create_engine, create_sessionmaker, transaction
from service.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "api-results.json"
BENCH_DB = "backsync_bench_api"
TENANT = "bench-api"
TARGETS = {"get_ratio": 0.40, "get_p99_ms": 50.0, "post_ratio": 0.20}

RUN_JSON: dict[str, Any] = {
    "id": "run_ag2m3kq7bbbbbbbbbbbbbbbbbb",
    "task_id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa",
    "status": "queued",
    "trigger": "manual",
    "attempt": 0,
    "created_at": "2026-11-22T10:00:00Z",
    "started_at": None,
    "finished_at": None,
    "next_attempt_at": None,
    "cancel_requested": False,
    "stats": {},
    "error": None,
    "attempts": [],
}


# ---- the bare app and the stream holder (their own processes) -------------------------


def serve_bare(port: int) -> None:
    """FastAPI, one route per measured endpoint, each answering the same `RunOut` a
    Backsync run is served as: what the framework and server cost with no work."""
    import uvicorn
    from fastapi import FastAPI, Response, status

    from service.runs.schemas import RunOut

    run = RunOut.model_validate(RUN_JSON)
    app = FastAPI()

    @app.get("/v1/runs/{run_id}", response_model=RunOut)
    async def get_run(run_id: str) -> RunOut:
        return run

    @app.post("/v1/tasks/{task_id}/runs", status_code=status.HTTP_200_OK)
    async def trigger(task_id: str) -> Response:
        return Response(run.model_dump_json(), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", server_header=False)


async def hold_streams(base: str, paths: list[str], keys: list[str]) -> None:
    """Open one stream per path (key i % len(keys)), say how many answered 200, then
    read them until terminated. Raw sockets: a thousand httpx streams would cost this
    process more CPU than the server it measures."""
    host, port = base.removeprefix("http://").split(":")
    # The writers are kept too: a StreamWriter that is garbage-collected closes its
    # connection, which ends the stream on the server.
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused: dict[str, int] = {}

    async def open_one(index: int, path: str) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {keys[index % len(keys)]}\r\n\r\n".encode()
        )
        status_line = (await reader.readline()).decode()
        code = status_line.split(" ")[1] if " " in status_line else "?"
        if code == "200":
            opened.append((reader, writer))
        else:
            refused[code] = refused.get(code, 0) + 1
            writer.close()

    gate = asyncio.Semaphore(50)

    async def gated(index: int, path: str) -> None:
        async with gate:
            await open_one(index, path)

    await asyncio.gather(*(gated(i, p) for i, p in enumerate(paths)))
    print(json.dumps({"open": len(opened), "refused": refused}), flush=True)

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    await asyncio.gather(*(drain(reader) for reader, _ in opened), return_exceptions=True)
    await asyncio.Event().wait()


# ---- wrk --------------------------------------------------------------------------------

WRK_SCRIPT = """
local keys = {%s}
local n = 0
request = function()
  n = n + 1
  local headers = {}
  headers["Authorization"] = "Bearer " .. keys[(n %% #keys) + 1]
  return wrk.format("%s", "%s", headers, nil)
end
"""


def wrk(
    url: str,
    path: str,
    method: str,
    keys: list[str],
    seconds: int,
    connections: int,
    server: psutil.Process | None = None,
) -> dict[str, Any]:
    """One wrk run; rate, p50/p99 in ms, the count of non-2xx answers and, given the
    `server` process, its CPU time per request: what other processes on a shared
    machine do not change as much as they change rates."""
    before = server.cpu_times() if server else None
    quoted = ", ".join(f'"{key}"' for key in keys)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (quoted, method, path))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency"]
    argv += ["-s", script.name]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    parsed = _parse_wrk(out)
    if server is not None and before is not None:
        after, count = server.cpu_times(), max(1, parsed["requests"])
        user, system = after.user - before.user, after.system - before.system
        parsed["cpu_us_per_request"] = round((user + system) * 1e6 / count)
        parsed["system_us_per_request"] = round(system * 1e6 / count)
    return parsed


def _parse_wrk(out: str) -> dict[str, Any]:
    def ms(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if found is None:
            raise BenchError(f"wrk printed no {label}% latency:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]
        return round(float(found[1]) * scale, 2)

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if rate is None:
        raise BenchError(f"wrk printed no rate:\n{out}")
    return {
        "rps": round(float(rate[1])),
        "requests": int(total[1]) if total else 0,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(bad[1]) if bad else 0,
        "socket_errors": errors[0] if errors else None,
    }


# ---- setup ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(base: str, process: subprocess.Popen[Any], path: str) -> None:
    for _ in range(400):
        if process.poll() is not None:
            raise BenchError(f"{base} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{base}{path}", timeout=1)
            return
        time.sleep(0.05)
    raise BenchError(f"{base} does not answer")


def start_api(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = worker_env(settings) | {
        "BACKSYNC_PORT": str(port),
        "BACKSYNC_HOST": "127.0.0.1",
        "BACKSYNC_API_RATE_PER_SECOND": str(settings.api_rate_per_second),
    }
    argv = [sys.executable, "-m", "service", "api"]
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_bare(port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.api", "--serve-bare", str(port)]
    return subprocess.Popen(argv, cwd=ROOT)


def start_streams(base: str, paths: list[str], keys: list[str]) -> subprocess.Popen[str]:
    spec = json.dumps({"base": base, "paths": paths, "keys": keys})
    argv = [sys.executable, "-m", "bench.api", "--hold-streams"]
    process = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(spec)
    process.stdin.close()
    return process


async def make_keys(settings: Settings, count: int) -> list[str]:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return [await create_key(session, TENANT) for _ in range(count)]
    finally:
        await engine.dispose()


def make_runs(base: str, key: str, count: int) -> list[tuple[str, str]]:
    """`count` tasks, each with a queued run: [(task id, run id)]."""
    made = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        for index in range(count):
            body = {
                "name": f"bench-{index}-{secrets.token_hex(3)}",
                "source": {"url": "http://127.0.0.1:9/none", "primary_key": "id"},
            }
            task = http.post("/v1/tasks", json=body)
            task.raise_for_status()
            run = http.post(f"/v1/tasks/{task.json()['id']}/runs")
            run.raise_for_status()
            made.append((task.json()["id"], run.json()["id"]))
    return made


# ---- the phases ------------------------------------------------------------------------


def ratios(
    args: argparse.Namespace,
    bases: dict[str, str],
    servers: dict[str, psutil.Process],
    keys: list[str],
    task_id: str,
    run_id: str,
) -> list[dict[str, Any]]:
    rounds = []
    for round_ in range(args.rounds):
        measured: dict[str, Any] = {}
        for name, method, path in (
            ("get", "GET", f"/v1/runs/{run_id}"),
            ("post", "POST", f"/v1/tasks/{task_id}/runs"),
        ):
            for side in ("bare", "api"):
                measured[f"{name}_{side}"] = wrk(
                    bases[side], path, method, keys, args.seconds, args.connections, servers[side]
                )
            api, bare = measured[f"{name}_api"], measured[f"{name}_bare"]
            measured[f"{name}_ratio"] = round(api["rps"] / bare["rps"], 3)
            measured[f"{name}_cpu_ratio"] = round(
                bare["cpu_us_per_request"] / max(1, api["cpu_us_per_request"]), 3
            )
        print(f"round {round_ + 1}: {_round_line(measured)}", flush=True)
        rounds.append(measured)
    return rounds


def _round_line(m: dict[str, Any]) -> str:
    def cell(r: dict[str, Any]) -> str:
        bad = f", {r['non_2xx']} non-2xx" if r["non_2xx"] else ""
        cpu = r["cpu_us_per_request"]
        return f"{r['rps']}/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms, {cpu} µs CPU/req{bad}"

    return (
        f"GET bare {cell(m['get_bare'])} | api {cell(m['get_api'])} | ratio {m['get_ratio']}"
        f" (CPU {m['get_cpu_ratio']})"
        f"\n         POST bare {cell(m['post_bare'])} | api {cell(m['post_api'])}"
        f" | ratio {m['post_ratio']} (CPU {m['post_cpu_ratio']})"
    )


def with_streams(
    args: argparse.Namespace,
    api: str,
    server: psutil.Process,
    keys: list[str],
    runs: list[str],
    get_run: str,
) -> list[dict[str, Any]]:
    results = []
    for count in args.streams:
        holder = None
        opened: dict[str, Any] = {"open": 0, "refused": {}}
        try:
            if count:
                paths = [f"/v1/runs/{runs[i % len(runs)]}/events" for i in range(count)]
                holder = start_streams(api, paths, keys)
                assert holder.stdout is not None
                opened = json.loads(holder.stdout.readline())
                time.sleep(2)  # past the first poll of every stream
            idle = idle_cpu(server, 5.0)
            path = f"/v1/runs/{get_run}"
            load = wrk(api, path, "GET", keys, args.seconds, args.connections, server)
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
        row = {"streams": count, **opened, "idle_cpu_percent": idle, **load}
        print(
            f"{count} streams ({opened['open']} open, refused {opened['refused']}; API CPU with"
            f" no requests {idle}%): "
            f"GET {load['rps']}/s p50 {load['p50_ms']} ms p99 {load['p99_ms']} ms"
            f"{', non-2xx ' + str(load['non_2xx']) if load['non_2xx'] else ''}",
            flush=True,
        )
        results.append(row)
        time.sleep(2)  # the API notices the closed streams
    return results


def profile(
    pid: int,
    tmpdir: Path,
    api: str,
    keys: list[str],
    task_id: str,
    run_id: str,
    args: argparse.Namespace,
) -> None:
    """py-spy on the API process while each endpoint is loaded (`pip install py-spy`)."""
    for name, method, path in (
        ("get", "GET", f"/v1/runs/{run_id}"),
        ("post", "POST", f"/v1/tasks/{task_id}/runs"),
    ):
        spy = start_py_spy(pid, tmpdir, f"api-{name}")
        wrk(api, path, method, keys, args.seconds, args.connections)
        stop_py_spy(spy)
        print_py_spy(tmpdir / f"api-{name}.txt", f"API under {method} {path}")


def idle_cpu(server: psutil.Process, seconds: float) -> float:
    """The server's CPU use (% of one core) over `seconds` with no request: what the
    open streams cost by themselves."""
    before = server.cpu_times()
    time.sleep(seconds)
    after = server.cpu_times()
    used: float = after.user - before.user + after.system - before.system
    return round(100 * used / seconds, 1)


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "get_ratio": spread([r["get_ratio"] for r in rounds]),
        "post_ratio": spread([r["post_ratio"] for r in rounds]),
        "get_cpu_ratio": spread([r["get_cpu_ratio"] for r in rounds]),
        "post_cpu_ratio": spread([r["post_cpu_ratio"] for r in rounds]),
        "get_api_p99_ms": spread([r["get_api"]["p99_ms"] for r in rounds]),
        "post_api_p99_ms": spread([r["post_api"]["p99_ms"] for r in rounds]),
        "get_api_rps": spread([r["get_api"]["rps"] for r in rounds]),
        "get_bare_rps": spread([r["get_bare"]["rps"] for r in rounds]),
        "post_api_rps": spread([r["post_api"]["rps"] for r in rounds]),
        "post_bare_rps": spread([r["post_bare"]["rps"] for r in rounds]),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-api-"))
    database_url, admin_url = bench_database(args.database_url, args.database_name, tmpdir)
    tag = secrets.token_hex(4)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=args.redis_url,
        secret_keys=[Fernet.generate_key().decode()],
        queue_name=f"backsync:bench-api:{tag}",
        redis_key_prefix=f"backsync-bench-api-{tag}",
        block_private_targets=False,
        log_level="WARNING",
    )
    if admin_url is not None:
        await _admin(
            admin_url,
            f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)',
            f'CREATE DATABASE "{args.database_name}"',
        )
    await upgrade(settings.database_url)
    keys = await make_keys(settings, args.keys)
    api_port, bare_port = free_port(), free_port()
    api_base, bare_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
    api = bare = None
    try:
        api = start_api(settings, api_port, tmpdir / "api.log")
        bare = start_bare(bare_port)
        wait_ready(api_base, api, "/healthz")
        wait_ready(bare_base, bare, "/docs")
        made = make_runs(api_base, keys[0], 1 + args.stream_tasks)
        (task_id, run_id), streamed = made[0], [run for _, run in made[1:]]
        for path, method in ((f"/v1/runs/{run_id}", "GET"), (f"/v1/tasks/{task_id}/runs", "POST")):
            wrk(api_base, path, method, keys, 2, args.connections)  # warm up
            wrk(bare_base, path, method, keys, 2, args.connections)
        if args.profile:
            profile(api.pid, tmpdir, api_base, keys, task_id, run_id, args)
        servers = {"api": psutil.Process(api.pid), "bare": psutil.Process(bare.pid)}
        bases = {"api": api_base, "bare": bare_base}
        rounds = ratios(args, bases, servers, keys, task_id, run_id)
        streams = with_streams(args, api_base, servers["api"], keys, streamed, run_id)
    finally:
        stop_process(api)
        stop_process(bare)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_version(),
        "machine": machine(),
        "database": await server_version(settings.database_url),
        "wrk": {"threads": 1, "connections": args.connections, "seconds": args.seconds},
        "keys": args.keys,
        "rate_limit": {
            "per_second": settings.api_rate_per_second,
            "burst": settings.api_rate_burst,
        },
        "rounds": rounds,
        "summary": summary(rounds) if rounds else None,
        "streams": streams,
        "targets": TARGETS,
    }
    if admin_url is not None:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)')
    return report


def print_summary(report: dict[str, Any]) -> None:
    s = report["summary"]

    def span(name: str) -> str:
        return f"{s[name]['median']} (min {s[name]['min']}, max {s[name]['max']})"

    print(
        f"\nGET  /v1/runs/{{id}}        ratio to bare: {span('get_ratio')}"
        f" (target >= {TARGETS['get_ratio']}); p99 ms: {span('get_api_p99_ms')}"
        f" (target < {TARGETS['get_p99_ms']})"
    )
    print(
        f"POST /v1/tasks/{{id}}/runs  ratio to bare: {span('post_ratio')}"
        f" (target >= {TARGETS['post_ratio']}); p99 ms: {span('post_api_p99_ms')}"
    )
    print(
        f"rates/s: GET api {span('get_api_rps')}, bare {span('get_bare_rps')};"
        f" POST api {span('post_api_rps')}, bare {span('post_bare_rps')}"
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]))
        return
    if sys.argv[1:] == ["--hold-streams"]:
        spec = json.loads(sys.stdin.read())
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(hold_streams(spec["base"], spec["paths"], spec["keys"]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser, BENCH_DB)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--profile", action="store_true", help="py-spy the API first")
    parser.add_argument("--stream-tasks", type=int, default=100)
    parser.add_argument(
        "--streams", type=lambda v: [int(x) for x in v.split(",")], default=[0, 300, 1000]
    )
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    if report["summary"]:
        print_summary(report)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
