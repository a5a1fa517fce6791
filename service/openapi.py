"""The OpenAPI document as a client generator needs it, finished in one place.

FastAPI documents an error's schema under the route's `application/json`, and every
route with parameters gets its own 422 (`HTTPValidationError`) — neither is what the
server sends. `finish` rewrites every 4xx/5xx response that carries a problem to
`application/problem+json` with the `Problem` schema (RFC 9457: what `service.errors`
renders), drops the unused validation schemas, documents the answers middleware gives on
every route (429 for a keyed call, 400 for a NUL in the URL), and the response headers the
middleware and routes add (`X-Request-ID` everywhere, `Location`, `Idempotent-Replayed`,
`Retry-After`).
"""

from __future__ import annotations

from typing import Any

from service.errors import PROBLEM_JSON, BadRequest, InvalidInput, RateLimited

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_REPLACED = ("#/components/schemas/Problem", "#/components/schemas/HTTPValidationError")
_UNUSED = ("HTTPValidationError", "ValidationError")
_STRING = {"type": "string"}
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "This request's id (yours, if you sent one); logs carry it.",
        "schema": _STRING,
    },
    "Location": {"description": "Where the created resource lives.", "schema": _STRING},
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with"
        " the same `Idempotency-Key`.",
        "schema": _STRING,
    },
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": _STRING},
    "RateLimit-Policy": {
        "description": 'The key\'s limit (IETF draft): `"api";q=<burst>;w=<seconds>`.',
        "schema": _STRING,
    },
    "RateLimit": {
        "description": 'What is left of it: `"api";r=<remaining>;t=<seconds to full>`.',
        "schema": _STRING,
    },
}


_INVALID = {
    "type": f"urn:backsync:problem:{InvalidInput.slug}",
    "title": InvalidInput.title,
    "status": InvalidInput.status,
    "detail": "the request is not valid; see `errors`",
    "errors": [{"loc": ["path", "run_id"], "msg": "String should have at most 40 characters"}],
}
"""FastAPI's own 422 (a malformed parameter), as the server renders it."""

LOCATED = frozenset({"create_task", "trigger_run", "create_push_url"})
"""Operations whose 201/202 says where the new resource lives."""


def finish(document: dict[str, Any]) -> dict[str, Any]:
    for item in document.get("paths", {}).values():
        for operation in item.values():
            parameters = operation.get("parameters", [])
            idempotent = any(p.get("name") == "Idempotency-Key" for p in parameters)
            located = operation.get("operationId") in LOCATED
            if operation.get("security"):  # every call with an API key is rate-limited
                operation["responses"].setdefault("429", _rate_limited())
            # `service.middleware.NulFreeUrl` answers any route whose URL holds a NUL.
            operation["responses"].setdefault("400", _bad_request())
            keyed = bool(operation.get("security"))
            for code, response in operation.get("responses", {}).items():
                _problem_json(code, response)
                headers = _headers(code, idempotent=idempotent, located=located, keyed=keyed)
                response["headers"] = {**response.get("headers", {}), **headers}
    schemas = document.get("components", {}).get("schemas", {})
    for name in _UNUSED:
        schemas.pop(name, None)
    return document


def _rate_limited() -> dict[str, Any]:
    example = {
        "type": f"urn:backsync:problem:{RateLimited.slug}",
        "title": RateLimited.title,
        "status": RateLimited.status,
        "detail": "this API key made more than 200 requests at once or 50 per second; retry in 1 s",
    }
    return {
        "description": RateLimited.title,
        "content": {PROBLEM_JSON: {"schema": _PROBLEM, "example": example}},
    }


def _bad_request() -> dict[str, Any]:
    example = {
        "type": f"urn:backsync:problem:{BadRequest.slug}",
        "title": BadRequest.title,
        "status": BadRequest.status,
        "detail": "NUL characters are not allowed in the URL",
    }
    return {
        "description": "A NUL character in the path or query",
        "content": {PROBLEM_JSON: {"schema": _PROBLEM, "example": example}},
    }


def _problem_json(code: str, response: dict[str, Any]) -> None:
    if code[0] not in "45":
        return
    content = response.get("content", {})
    plain = content.get("application/json", {}).get("schema", {})
    if plain.get("$ref") not in _REPLACED and PROBLEM_JSON not in content:
        return  # a body of its own (readiness), not a problem
    example = content.get(PROBLEM_JSON, {}).get("example") or _INVALID
    response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM, "example": example}}


def _headers(
    code: str, *, idempotent: bool, located: bool, keyed: bool
) -> dict[str, dict[str, Any]]:
    names = ["X-Request-ID"]
    if located and code in ("201", "202"):
        names.append("Location")
    if idempotent and code[0] == "2":
        names.append("Idempotent-Replayed")
    if code in ("409", "429"):  # 409: only while the same Idempotency-Key is in flight
        names.append("Retry-After")
    if code == "429" and keyed:  # the per-key limit's; a push URL's 429 has Retry-After only
        names += ["RateLimit-Policy", "RateLimit"]
    return {name: _HEADERS[name] for name in names}
