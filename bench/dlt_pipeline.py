"""dlt's `rest_api` source against the benchmark's upstream, into PostgreSQL.

Runs in its own venv (`bench/.work/venv-dlt`, from `bench/requirements-dlt.txt`), never
in Backsync's: `python -m bench.ingest --with-dlt` creates that venv and runs this
script as a subprocess, once for the first load and once more for an unchanged reload.

    bench/.work/venv-dlt/bin/python bench/dlt_pipeline.py --base-url http://127.0.0.1:PORT \\
        --credentials postgresql://postgres@127.0.0.1:5432/backsync_bench_dlt \\
        --pipelines-dir DIR

The resource mirrors the Backsync task: the same pages (cursor pagination, the cursor
in the body's `next_token`, sent back as `?next_token=`), records under `data`, primary
key `id` and write disposition `merge` (upsert by key). It prints one JSON object on
stdout: `total_seconds` (from the first line of this script, dlt's import included),
`run_seconds` (`pipeline.run()` alone), dlt's own step times, and the rows found in the
table afterwards.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote, urlsplit, urlunsplit  # noqa: E402

# This machine talks to nothing but itself: no anonymous usage telemetry (dlt's default
# sends some to its own endpoint after every step).
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

import dlt  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
from dlt.sources.rest_api import rest_api_source  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

IMPORTED = time.perf_counter()

PATH = "v2/daily_activity"  # bench.upstream.PATH, relative to the base URL
TABLE = "daily_activity"


def source(base_url: str) -> Any:
    return rest_api_source(
        {
            "client": {
                "base_url": base_url.rstrip("/") + "/",
                "paginator": {
                    "type": "cursor",
                    "cursor_path": "next_token",
                    "cursor_param": "next_token",
                },
            },
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
            "resources": [
                {"name": TABLE, "endpoint": {"path": PATH, "data_selector": "data"}},
            ],
        },
        name="bench_upstream",
    )


def with_password(credentials: str) -> str:
    """dlt insists on a password; a server that trusts local connections (as the bench's
    does) ignores whatever is sent, so a URL without one gets `$PGPASSWORD` or a dummy."""
    parts = urlsplit(credentials)
    if parts.password is not None or parts.username is None:
        return credentials
    password = quote(os.environ.get("PGPASSWORD", "unused"), safe="")
    netloc = f"{parts.username}:{password}@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


def step_seconds(pipeline: Any) -> dict[str, float]:
    """dlt's own trace: how long extract, normalize and load took."""
    steps: dict[str, float] = {}
    trace = pipeline.last_trace
    for step in getattr(trace, "steps", []) or []:
        if step.started_at is not None and step.finished_at is not None:
            seconds = (step.finished_at - step.started_at).total_seconds()
            steps[step.step] = round(steps.get(step.step, 0.0) + seconds, 4)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--credentials", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--pipelines-dir", required=True)
    parser.add_argument("--pipeline-name", default="backsync_bench_dlt")
    parser.add_argument("--dataset", default="bench")
    args = parser.parse_args(argv)

    pipeline = dlt.pipeline(
        pipeline_name=args.pipeline_name,
        pipelines_dir=args.pipelines_dir,
        destination=dlt.destinations.postgres(credentials=with_password(args.credentials)),
        dataset_name=args.dataset,
        progress=None,
    )
    start = time.perf_counter()
    info = pipeline.run(source(args.base_url))
    run_seconds = time.perf_counter() - start
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name(TABLE)
        rows, distinct = client.execute_sql(f"SELECT count(*), count(DISTINCT id) FROM {table}")[0]  # noqa: S608
    normalized = pipeline.last_trace.last_normalize_info
    row_counts = dict(getattr(normalized, "row_counts", {}) or {})
    print(
        json.dumps(
            {
                "dlt_version": dlt.__version__,
                "import_seconds": round(IMPORTED - STARTED, 4),
                "run_seconds": round(run_seconds, 4),
                "total_seconds": round(time.perf_counter() - STARTED, 4),
                "steps": step_seconds(pipeline),
                "rows_in_table": int(rows),
                "distinct_ids": int(distinct),
                "normalized_rows": row_counts,
                "has_failed_jobs": bool(info.has_failed_jobs),
                "loader_file_format": str(
                    getattr(pipeline.destination.capabilities(), "preferred_loader_file_format", "")
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
