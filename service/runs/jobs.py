"""The arq job for runs: a thin shell around `execute_run`."""

from __future__ import annotations

from typing import Any

from service.runs.runner import RunnerDeps, execute_run


async def sync_run(ctx: dict[str, Any], run_id: str) -> None:
    deps: RunnerDeps = ctx["deps"]
    await execute_run(deps, run_id)
