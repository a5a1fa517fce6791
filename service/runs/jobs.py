"""The arq job for runs: a thin shell around `execute_run`."""

from __future__ import annotations

from typing import Any

from service.logs import bind_log_context
from service.runs.runner import RunnerDeps, execute_run


async def sync_run(ctx: dict[str, Any], run_id: str) -> None:
    deps: RunnerDeps = ctx["deps"]
    bind_log_context(run_id=run_id)  # each arq job runs in its own task: its own context
    await execute_run(deps, run_id)
