"""Logging: one line per event, JSON in production, with request/tenant/run context.

Logs never show credentials (SPEC §2): every handler `configure_logging` installs carries
a `RedactingFilter`, which masks, in the message, its arguments and exception text,
whatever looks like a secret — `Authorization` values, Bearer/Basic credentials, API keys
(`bks_<prefix>_****`, the prefix stays so a key can still be told apart), Fernet tokens,
the password in `scheme://user:password@host`, and credential query parameters
(`?api_key=****`) or JSON/dict entries (`"token": "****"`). It works on patterns, so it
also catches a secret that reached a log line by a path nobody foresaw (an exception
message, a URL logged by httpx). And work that holds a task's credentials (a run, a dry
run) names them (`bind_secrets`): their values are masked wherever they appear, whatever
a parameter or header carrying them is called (`?apitok=…` matches no pattern).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
log_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "log_context", default=None
)
"""`tenant`, `task_id`, `run_id` of the work in hand: set once (per request, per run),
carried by every line logged while it lasts."""
_CONTEXT_FIELDS = ("request_id", "tenant", "task_id", "run_id")


def bind_log_context(**fields: str) -> None:
    log_context.set({**(log_context.get() or {}), **fields})


_known_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "known_secrets", default=()
)
MIN_KNOWN_SECRET = 4
"""Shorter values are not masked by value: they would mask ordinary words and numbers."""


def bind_secrets(values: Iterable[str]) -> None:
    """Mask these values (and their URL-encoded forms) in every line logged by the work
    in hand: the credentials of the task a run or dry run is sending."""
    forms = {
        form
        for value in values
        if len(value) >= MIN_KNOWN_SECRET
        for form in (value, quote(value, safe=""), quote_plus(value))
    }
    _known_secrets.set(tuple(sorted(forms, key=len, reverse=True)))


MASK = "****"
CREDENTIAL_PARAMS = (
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "client_secret",
    "signature",
    "sig",
    "auth",
)
"""Query parameters (and JSON/dict keys) whose values are masked, case-insensitively."""

_NAMES = "|".join(sorted(CREDENTIAL_PARAMS, key=len, reverse=True))
_SECRETS = re.compile(
    # `Authorization: <scheme> <credentials>`, any scheme, as a header line or dict entry.
    r"(?P<authz>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:[a-z][\w-]*\s+)?)"
    r"(?P<authz_value>[^\s\"',;}]+)"
    # A bare `Bearer …` / `Basic …` (e.g. inside a repr). A Basic credential is base64 and
    # not a lowercase word, so prose such as "basic auth failed" is left alone.
    r"|(?P<scheme>\bbearer\s+)(?P<scheme_value>[\w\-.~+/]+=*)"
    r"|(?P<basic>\bbasic\s+)(?P<basic_value>(?-i:(?![a-z]+\b)[A-Za-z0-9+/]{4,}={0,2}))"
    r"|(?P<api_key>\bbks_[a-z0-9]+_)[\w-]+"
    r"|\bgAAAAA[\w-]{20,}=*"
    r"|(?P<userinfo>\b[a-z][a-z0-9+.-]*://[^\s:/@\"']*:)[^\s@/\"']+(?=@)"
    rf"|(?P<param>[?&;](?:{_NAMES})=)[^&#\s\"'<>]*"
    rf"|(?P<entry>[\"'](?:{_NAMES})[\"']:\s*[\"'])[^\"']*",
    re.IGNORECASE,
)
_MARKERS = ("bearer", "basic", "authoriz", "bks_", "gaaaaa", "://", "=", '":', "':")
"""A much cheaper first look (lowercased): most log lines contain none of these."""
_API_KEY = re.compile(r"(bks_[a-z0-9]+_)[\w-]+", re.IGNORECASE)


def _mask_match(match: re.Match[str]) -> str:
    for prefix, value in (
        ("authz", "authz_value"),
        ("scheme", "scheme_value"),
        ("basic", "basic_value"),
    ):
        if match[prefix] is not None:
            # An API key as a Bearer credential keeps its prefix, like everywhere else.
            api_key = _API_KEY.fullmatch(match[value])
            return match[prefix] + (api_key[1] + MASK if api_key else MASK)
    for prefix in ("api_key", "userinfo", "param", "entry"):
        if match[prefix] is not None:
            return match[prefix] + MASK
    return MASK


def redact(text: str) -> str:
    """`text` with every bound secret (`bind_secrets`) and everything that looks like a
    credential replaced by `****`."""
    for value in _known_secrets.get():
        if value in text:
            text = text.replace(value, MASK)
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return text
    return _SECRETS.sub(_mask_match, text)


class RedactingFilter(logging.Filter):
    """Masks credentials in a record before any handler formats it.

    The record is changed in place, once (it is shared by every handler). A message whose
    arguments can be cleaned one by one keeps its template and arguments, so formatters
    that read `record.args` (uvicorn's access log) still work; otherwise the record is
    flattened to the cleaned text. Exception text is formatted here and cleaned; when it
    held a secret, `exc_info` is dropped so no formatter can render the raw exception again.
    """

    _exception_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        record.__dict__["_redacted"] = True
        _redact_message(record)
        _redact_exception(record, self._exception_formatter)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact_message(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: let the handler report it, but clean
        record.msg, record.args = redact(str(record.msg)), _redact_args(record.args)
        return
    clean = redact(message)
    if clean == message:
        return
    template, args = redact(str(record.msg)), _redact_args(record.args)
    try:
        kept = (template % args) == clean if args else template == clean
    except Exception:
        kept = False
    record.msg, record.args = (template, args) if kept else (clean, None)


def _redact_args(args: Any) -> Any:
    if isinstance(args, Mapping):
        return {name: _redact_arg(value) for name, value in args.items()}
    if isinstance(args, tuple):
        return tuple(_redact_arg(value) for value in args)
    return args


def _redact_arg(value: Any) -> Any:
    """The argument itself when it shows no secret (numbers keep `%d` working)."""
    if isinstance(value, int | float):
        return value
    text = str(value)
    clean = redact(text)
    return value if clean == text else clean


def _redact_exception(record: logging.LogRecord, formatter: logging.Formatter) -> None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        clean = redact(record.exc_text)
        if clean != record.exc_text:
            record.exc_text, record.exc_info = clean, None


def install_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach the redacting filter to `logger` (default: root) and each of its handlers.

    Handlers need it: a logger's own filters do not see records propagated from child
    loggers. Use it for handlers added after `configure_logging` (pytest's `caplog`, a
    Sentry or file handler). Idempotent.
    """
    target = logger or logging.getLogger()
    found = [f for f in target.filters if isinstance(f, RedactingFilter)]
    redacting = found[0] if found else RedactingFilter()
    for filterer in (target, *target.handlers):
        if not any(isinstance(f, RedactingFilter) for f in filterer.filters):
            filterer.addFilter(redacting)
    return redacting


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        entry.update(log_context.get() or {})
        for name in _CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # a structured line: `log.info(..., extra={"fields": {}})`
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # cached, so it is the text the redacting filter cleaned
            entry["exception"] = record.exc_text
        return orjson.dumps(entry).decode()


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
