"""What `backsync demo` does once the API is up: register, trigger, follow, summarise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from service.demo.upstream import TOKEN


def demo_task(url: str) -> dict[str, Any]:
    return {
        "name": "demo-daily-activity",
        "user_id": "demo-user",
        "source": {
            "url": url,
            "params": {"start_date": "2026-01-01"},
            "auth": {"type": "bearer", "token": TOKEN},
            "records_path": "data",
            "primary_key": "id",
            "pagination": {
                "type": "cursor",
                "cursor_path": "next_token",
                "cursor_param": "next_token",
            },
            "conditional": True,
        },
        "retry": {"max_attempts": 3, "backoff": "linear", "initial_delay_seconds": 1},
        "tags": ["demo", "wearable"],
    }


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready")


def follow_run(client: httpx.Client, run_id: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Print each Server-Sent Event of the run; returns the final run."""
    final: dict[str, Any] = {}
    with client.stream("GET", f"/v1/runs/{run_id}/events", timeout=None) as events:
        name = ""
        for line in events.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                run = orjson.loads(line.removeprefix("data: "))
                stats = run["stats"]
                say(
                    f"  {name:<8} {run['status']:<9} attempt {run['attempt']}  "
                    f"pages {stats['pages']:>2}  inserted {stats['inserted']:>3}  "
                    f"unchanged {stats['unchanged']:>3}  not_modified {stats['not_modified']}"
                )
                final = run
    return final


def run_demo(base: str, api_key: str, upstream_url: str, say: Callable[[str], None]) -> None:
    wait_ready(base)
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        created = client.post("/v1/tasks?on_conflict=replace", json=demo_task(upstream_url))
        created.raise_for_status()
        task = created.json()
        say(
            f"\nregistered task {task['id']} ({task['name']}), token shown as "
            f"{task['source']['auth']['token']}"
        )
        for label in ("first sync", "resync (conditional: 304s)"):
            run = client.post(f"/v1/tasks/{task['id']}/runs").json()
            say(f"\n{label}: run {run['id']}")
            final = follow_run(client, run["id"], say)
            say(f"  -> {final.get('status')}  {final.get('error') or ''}")
        feed = client.get(f"/v1/tasks/{task['id']}/records", params={"limit": 3}).json()
        say(f"\nchange feed: GET {base}/v1/tasks/{task['id']}/records?after=0")
        for item in feed["items"]:
            say(f"  seq {item['seq']:>3}  {item['key']}  steps {item['data']['steps']}")
        say(f"\nexplore: {base}/docs  (API key: {api_key})")
