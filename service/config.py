"""The one settings object.

Every knob is read here, from `BACKSYNC_*` environment variables or `.env`; the rest of
the code receives a `Settings` instance and never reads the environment itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BACKSYNC_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite+aiosqlite:///./backsync.db"
    redis_url: str | None = None
    """Unset means: `dev` starts an embedded Valkey; `api`/`worker` refuse to start."""

    secret_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_private_targets: bool = True
    allowed_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dev_api_key: str | None = None
    min_interval_seconds: int = 60
    log_format: Literal["json", "console"] = "console"
    log_level: str = "INFO"

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = 1
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies whose X-Forwarded-* headers are trusted (comma-separated IPs, or `*`)."""
    state_dir: Path = Path(".backsync")
    """Where `dev` keeps its generated Fernet key and API key."""

    metrics_enabled: bool = True
    """`GET /metrics` (Prometheus text, no API key) on the API; false answers it 404."""
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port a worker serves its own `/metrics` on, at BACKSYNC_HOST (0: none). Each worker
    process on a machine needs its own. `backsync dev` picks one and prints it."""

    queue_name: str = "backsync:queue"
    worker_max_jobs: int = 50
    tenant_max_running: int | None = Field(default=None, ge=0)
    """Runs one tenant may have running at once, across every worker (0: no cap; unset:
    half of `worker_max_jobs`, so one tenant's backlog leaves a worker half its slots
    for the others). A run past the cap stays queued with `waiting_reason`
    `tenant_concurrency_limit`, holds no job slot, spends no attempt, and starts when
    one of its tenant's runs ends (`service.runs.runner`)."""
    worker_poll_delay: float = 0.1
    """Seconds between queue polls when no enqueue rang the workers' doorbell."""
    job_timeout_seconds: int = 3600
    lease_seconds: float = 30.0
    """A running run's lease; renewed every third of it. A killed worker's run is taken
    over once its lease expires (plus at most one reconcile interval)."""
    reconcile_interval_seconds: float = 5.0
    queued_grace_seconds: float = 10.0
    """A run queued longer than this is re-sent to Redis (it may have lost the job)."""
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_connect_timeout: float = 10.0
    upstream_max_connections: int = 100
    redis_key_prefix: str = "backsync"
    """Prefix of Backsync's own Redis keys (shared upstream budgets, the API and push
    rate limits, API key revocation markers); arq's are separate."""
    upstream_budget_max_wait_seconds: float = 60.0
    """Longest a run sleeps for its upstream host's budget (a hold, a queue of requests);
    beyond it the attempt ends as retryable `upstream_held` and frees the worker."""
    upstream_max_hold_seconds: float = 3600.0
    """Cap on how long one `Retry-After` holds back every task on a host."""
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """Longest one call to Redis may take before Redis counts as away
    (`service.broker.outage`)."""
    redis_probe_seconds: float = Field(default=1.0, gt=0, le=60)
    """While Redis is away, how often a process tries it again; meanwhile what can do
    without it (the API's rate limits, an enqueue the reconciler redoes) skips it at once."""
    redis_outage_max_wait_seconds: float = Field(default=300.0, ge=0)
    """Longest a run whose task has `limits.requests_per_second` pauses for Redis (the
    shared budget lives there); then its attempt ends as `broker_unavailable`, retried and
    not counted. Runs without a rate limit keep going through an outage."""
    api_rate_per_second: float = Field(default=50, ge=0)
    """Requests one API key may make per second, on average (0: no limit); past it a
    request is answered 429 with `Retry-After` and `RateLimit` headers. Counted in
    Redis: every API process shares one budget per key (`service.broker.rate_limit`)."""
    api_rate_burst: int = Field(default=200, ge=1)
    """Requests one API key may make at once before `api_rate_per_second` paces it."""
    api_database_connections: int = Field(default=20, ge=1, le=500)
    """Database connections one API process keeps (PostgreSQL). A fixed pool: under
    more concurrent requests than this, a request waits for a connection rather than
    opening and closing one of its own (which cost more than the reads it served,
    bench/api.py)."""
    events_max_streams_per_key: int = Field(default=100, ge=1)
    """Event streams (`GET /v1/runs/{id}/events`) one API key may hold open on one API
    process; past it, 429."""
    events_max_wait_seconds: float = Field(default=600, gt=0)
    """An event stream whose run waits (queued or retrying, nothing changing) this long
    ends with a `timeout` event: an idle stream does not hold the server forever."""
    events_poll_seconds: float = Field(default=0.25, gt=0, le=10)
    """How often an API process reads the runs its event streams follow (one statement
    for all of them)."""
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long an API process trusts a key it verified against the database (0: never;
    `service.auth.cache`). `backsync keys revoke` takes effect at once through Redis;
    only while Redis is unreachable may a revoked key still work, for at most this long."""
    push_rate_per_minute: int = Field(default=60, ge=1)
    """Calls one push URL (`/v1/push/{token}`) may make per minute, in bursts of as many;
    past it a call is answered 429 with `Retry-After`. Counted in Redis, so every API
    process shares the one budget (`service.broker.rate_limit`)."""
    push_max_body_bytes: int = Field(default=64 * 1024, ge=0)
    """Largest body a push may carry (413 past it); the body is read and ignored."""
    max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """The most a task's `limits.max_response_bytes` may be: a task that asks for more is
    refused (422) at registration, and a task stored before is held to it when it runs.
    Counted once decoded."""
    max_compression_ratio: float = Field(default=100, ge=1)
    """A compressed body that decodes to more than this many times the bytes it came as
    (past its first MiB) is refused: `compression_ratio_exceeded`, a decompression bomb."""
    worker_max_inflight_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    """Memory one worker lets response bodies take at once, across all its runs: bodies
    with what their JSON becomes once parsed (about 10 times the JSON, estimated per page).
    A run that finds no room waits for it; a body that alone would need more is refused
    (`response_too_large`). The worker's bodies stay within this plus one body."""
    api_max_inflight_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    """The same for each API process, whose dry runs (`POST /v1/tasks:validate`) fetch
    a page each."""
    upstream_retry_delay_seconds: float = Field(default=0.5, gt=0, le=60)
    """The first in-place retry of a failed request waits up to this long, the next ones
    twice as long each (full jitter; `service.sync.request_retry`)."""

    health_ingest_chunk: int = Field(default=10_000, ge=1, le=10_000)
    """Health samples the worker stores per transaction: a killed worker's batch resumes
    after its last committed chunk, and one user's lock is held one chunk at a time.
    10,000: a whole batch in one transaction (each chunk costs eight round trips
    whatever its size, and a second chunk cost 40 ms of a batch's 250; bench/health.py)."""

    auto_pause_after_failures: int = Field(default=10, ge=0)
    """Failed runs in a row after which a task pauses itself and emits `task.paused`
    (0: never)."""
    event_retention_days: float = Field(default=30, gt=0)
    """Events older than this are pruned from the feed (`GET /v1/events`)."""

    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """A webhook delivery attempt that has not answered by then is a failure (and retried)."""
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    """Seconds before each retry of a failed delivery (Standard Webhooks' schedule: then
    5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; about 27 hours in all). After the last the
    delivery is `failed`."""
    webhook_disable_after_days: float = Field(default=5, gt=0)
    """An endpoint whose deliveries have failed this long with no success is disabled,
    with a `webhook.disabled` event."""
    webhook_max_in_flight: int = Field(default=50, ge=1)
    """Deliveries one worker sends at once."""
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often a worker looks for events and due retries without a doorbell ring: the
    most a lost ring (or a retry falling due) waits."""

    @field_validator("secret_keys", "allowed_targets", "webhook_retry_delays", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the URLs people paste (`postgresql://`, `sqlite:///`); pick the async driver."""
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        return value

    @property
    def tenant_running_cap(self) -> int:
        """`tenant_max_running`, its default filled in (0: no cap)."""
        if self.tenant_max_running is not None:
            return self.tenant_max_running
        return max(1, self.worker_max_jobs // 2)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
