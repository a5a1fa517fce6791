"""`backsync` (also `python -m service`): run, migrate, document and administer Backsync."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer

from service import __version__
from service.config import Settings, get_settings

app = typer.Typer(
    help="Backsync: server-side background sync for mobile apps.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
secrets_app = typer.Typer(
    help="Manage the Fernet keys that encrypt upstream credentials.", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"backsync {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Backsync: server-side background sync for mobile apps."""


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _require_production_settings(settings: Settings) -> None:
    if not settings.redis_url:
        raise _fail(
            "BACKSYNC_REDIS_URL is not set (the embedded Redis runs only with `backsync dev`)."
        )
    if not settings.secret_keys:
        raise _fail("BACKSYNC_SECRET_KEYS is not set. Make one with: backsync secrets generate")


Host = Annotated[str | None, typer.Option("--host", help="Bind address (BACKSYNC_HOST)")]
Port = Annotated[int | None, typer.Option("--port", help="API port (BACKSYNC_PORT)")]


def _bind(host: str | None, port: int | None) -> Settings:
    """`--host`/`--port` win over the environment, for this process and its children."""
    if host is not None:
        os.environ["BACKSYNC_HOST"] = host
    if port is not None:
        os.environ["BACKSYNC_PORT"] = str(port)
    get_settings.cache_clear()
    return get_settings()


def _check_free(settings: Settings) -> None:
    """Refuse, in one line naming the flag, an address the API could not listen on.

    Without it, `api` ends in uvicorn's bind error, and `dev`/`demo` start migrations,
    Valkey and a worker before their API child dies; worse, `demo` would find the
    Backsync already on that port ready and register its task there. A bind with
    SO_REUSEADDR as uvicorn's own: only a listener makes it fail, not TIME_WAIT.
    """
    host, port = settings.host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise _fail(_bind_failure(host, port, exc)) from None


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        if _is_backsync(host, port):
            return (
                f"another Backsync is already serving on {host}:{port}: stop it, or pick"
                " another port with --port (or BACKSYNC_PORT)"
            )
        return f"port {port} on {host} is in use: pick another with --port (or BACKSYNC_PORT)"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port}: pick another with --port (or BACKSYNC_PORT)"
    reason = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port} ({reason}): check --host (or BACKSYNC_HOST)"


def _is_backsync(host: str, port: int) -> bool:
    """Whether what holds the port answers `/readyz` as Backsync does (its fields)."""
    import httpx

    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    shown = f"[{target}]" if ":" in target else target
    try:
        body = httpx.get(f"http://{shown}:{port}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and {"database", "redis", "migrations"} <= body.keys()


@app.command()
def api(host: Host = None, port: Port = None) -> None:
    """Serve the HTTP API (uvicorn; BACKSYNC_API_WORKERS processes)."""
    import uvicorn

    from service.logs import configure_logging

    settings = _bind(host, port)
    _require_production_settings(settings)
    _check_free(settings)
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.api_workers,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )


@app.command()
def worker() -> None:
    """Run the arq worker that executes sync runs."""
    from service.logs import configure_logging
    from service.worker import run_worker

    settings = get_settings()
    _require_production_settings(settings)
    if settings.metrics_enabled and settings.worker_metrics_port:
        _check_metrics_port(settings.host, settings.worker_metrics_port)
    configure_logging(settings.log_format, settings.log_level)
    run_worker(settings)


def _check_metrics_port(host: str, port: int) -> None:
    """Refuse, in one line naming the setting, a metrics port the worker cannot listen on
    (rather than a traceback from its startup)."""
    if not _can_listen(host, port):
        raise _fail(
            f"cannot serve the worker's metrics on {host}:{port} (in use or not allowed):"
            " pick another BACKSYNC_WORKER_METRICS_PORT, or 0 for none"
        )


def _can_listen(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError:
        return False
    return True


def _dev_metrics(settings: Settings) -> Settings:
    """`dev`/`demo`: the worker serves its metrics on the API's port + 1 (or, if that is
    taken, any free port), unless BACKSYNC_WORKER_METRICS_PORT says otherwise; the banner
    prints where. Set in the environment, for the worker child."""
    if settings.worker_metrics_port or not settings.metrics_enabled:  # set (env or .env)
        return settings
    port = settings.port + 1
    if port > 65535 or not _can_listen(settings.host, port):
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
            probe.bind((settings.host, 0))
            port = probe.getsockname()[1]
    os.environ["BACKSYNC_WORKER_METRICS_PORT"] = str(port)
    get_settings.cache_clear()
    return get_settings()


@app.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from service.migrations import upgrade

    settings = get_settings()
    asyncio.run(upgrade(settings.database_url))
    typer.echo(f"database at head: {_redacted(settings.database_url)}")


@app.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write the document")] = Path(
        "openapi/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document generated from the app."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_openapi())
    typer.echo(f"wrote {output}")


def render_openapi() -> str:
    from service.app import create_app

    document = create_app(Settings(secret_keys=["unused-for-openapi"])).openapi()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant name; created if new")]) -> None:
    """Make an API key for a tenant and print it (shown once)."""
    typer.echo(asyncio.run(_create_key(get_settings(), tenant, None)))


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The whole key, or its prefix: bks_<prefix>_…")],
) -> None:
    """Revoke an API key, given whole or by its prefix."""
    from service.auth.service import key_prefix

    prefix = key_prefix(key)  # never echo a whole key back: it may be in a terminal's log
    if not asyncio.run(_revoke_key(get_settings(), key)):
        raise _fail(f"no key matches bks_{prefix}_…")
    typer.echo(f"revoked bks_{prefix}_…")


async def _create_key(settings: Settings, tenant: str, raw_key: str | None) -> str:
    from service.auth.service import create_key
    from service.db import create_engine, create_sessionmaker, transaction

    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await create_key(session, tenant, raw_key=raw_key)
    finally:
        await engine.dispose()


async def _revoke_key(settings: Settings, key_or_prefix: str) -> bool:
    """Revoke in the database, then tell the API processes (their key caches) through
    Redis; without Redis they notice within BACKSYNC_API_KEY_CACHE_SECONDS."""
    from service.auth.service import key_prefix, revoke_key
    from service.broker.revocations import announce_revoked
    from service.db import create_engine, create_sessionmaker, transaction

    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            revoked = await revoke_key(session, key_or_prefix)
    finally:
        await engine.dispose()
    if revoked and settings.redis_url:
        prefix = key_prefix(key_or_prefix)
        await announce_revoked(settings.redis_url, settings.redis_key_prefix, prefix)
    return revoked


@secrets_app.command("generate")
def secrets_generate() -> None:
    """Print a new Fernet key (put it first in BACKSYNC_SECRET_KEYS to start using it)."""
    from service.crypto import generate_key

    typer.echo(generate_key())


@secrets_app.command("rotate")
def secrets_rotate(
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction")] = 500,
) -> None:
    """Re-encrypt every stored credential under the first key of BACKSYNC_SECRET_KEYS."""
    from service.crypto import SecretBoxError

    try:
        rotated = asyncio.run(_rotate_secrets(get_settings(), batch_size))
    except SecretBoxError as exc:
        raise _fail(f"secrets rotate: {exc}") from None
    typer.echo(f"rotated {rotated} credential(s) to the first key of BACKSYNC_SECRET_KEYS")


async def _rotate_secrets(settings: Settings, batch_size: int) -> int:
    from service.crypto import SecretBox
    from service.db import create_engine, create_sessionmaker
    from service.tasks.credential_rotation import rotate_credentials

    secrets_box = SecretBox(settings.secret_keys)
    engine = create_engine(settings.database_url)
    try:
        return await rotate_credentials(create_sessionmaker(engine), secrets_box, batch_size)
    finally:
        await engine.dispose()


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _state_value(path: Path, make: str) -> str:
    """A value `dev` generates once and keeps (owner-only file) across restarts."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make


@app.command()
def dev(host: Host = None, port: Port = None) -> None:
    """Everything on one machine: migrations, embedded Redis, API on :8000 and a worker."""
    settings = _bind(host, port)
    _check_free(settings)
    settings = _dev_metrics(settings)
    with _dev_processes(settings) as (children, api_key, redis_url):
        _banner(settings, api_key, redis_url)
        _wait(children)


@app.command()
def demo(host: Host = None, port: Port = None) -> None:
    """`dev` plus a built-in wearable-like upstream, a demo task, and its runs live."""
    from service.demo.upstream import DemoUpstream
    from service.demo.walkthrough import run_demo

    settings = _bind(host, port)
    _check_free(settings)
    settings = _dev_metrics(settings)
    upstream = DemoUpstream()
    upstream_url = upstream.start()
    try:
        with _dev_processes(settings) as (children, api_key, redis_url):
            _banner(settings, api_key, redis_url)
            typer.echo(f"  demo upstream  {upstream_url}")
            run_demo(f"http://{settings.host}:{settings.port}", api_key, upstream_url, typer.echo)
            _wait(children)
    finally:
        upstream.stop()


@contextmanager
def _dev_processes(settings: Settings) -> Iterator[tuple[list[subprocess.Popen[bytes]], str, str]]:
    """Migrations, embedded Valkey (unless BACKSYNC_REDIS_URL), dev key, API and worker
    processes; all stopped when the block exits."""
    from service.broker.embedded import embedded_redis
    from service.crypto import generate_key
    from service.migrations import upgrade

    state = settings.state_dir
    secret_keys = ",".join(settings.secret_keys) or _state_value(
        state / "secret.key", generate_key()
    )
    api_key = settings.dev_api_key or _state_value(
        state / "dev_api_key", f"bks_dev{secrets.token_hex(3)}_{secrets.token_urlsafe(32)}"
    )
    with ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(embedded_redis())
        asyncio.run(upgrade(settings.database_url))
        asyncio.run(_create_key(settings, "dev", api_key))
        env = {
            **os.environ,
            "BACKSYNC_REDIS_URL": redis_url,
            "BACKSYNC_SECRET_KEYS": secret_keys,
            "BACKSYNC_BLOCK_PRIVATE_TARGETS": os.environ.get(
                "BACKSYNC_BLOCK_PRIVATE_TARGETS", "false"
            ),
        }
        children = [
            subprocess.Popen([sys.executable, "-m", "service", role], env=env)  # noqa: S603
            for role in ("api", "worker")
        ]
        stack.callback(_stop_children, children)
        yield children, api_key, redis_url


def _banner(settings: Settings, api_key: str, redis_url: str) -> None:
    base = f"http://{settings.host}:{settings.port}"
    typer.secho("\nBacksync is starting (Ctrl-C stops everything)", bold=True)
    typer.echo(f"  API       {base}   docs: {base}/docs")
    typer.echo(f"  database  {_redacted(settings.database_url)}")
    typer.echo(f"  redis     {redis_url}{'' if settings.redis_url else '  (embedded Valkey)'}")
    typer.echo(f"  API key   {api_key}")
    if settings.metrics_enabled:
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        worker = settings.worker_metrics_port
        where = f"http://{shown}:{worker}/metrics" if worker else "off"
        typer.echo(f"  metrics   API {base}/metrics   worker {where}")
    typer.echo(f'\n  curl -H "Authorization: Bearer {api_key}" {base}/v1/tasks\n')


def _wait(children: list[subprocess.Popen[bytes]]) -> None:
    stop = False

    def _on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop:
        if any(child.poll() is not None for child in children):
            typer.secho("a Backsync process exited; stopping", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1)
        time.sleep(0.2)


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
