"""ASGI middleware: request ids, the request body size limit, NUL-free URLs."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_JSON, BadRequest, PayloadTooLarge, ServiceError
from service.logs import log_context, request_id


class RequestId:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 128 and given.isprintable() else secrets.token_hex(8)
        token = request_id.set(rid)
        context_token = log_context.set(None)  # keep-alive: nothing from the last request

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            log_context.reset(context_token)


class BodyLimit:
    """413 for bodies over `max_bytes`: at once from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        bodyless = declared in (None, b"0") and b"transfer-encoding" not in headers
        if bodyless and scope.get("http_version") in ("1.0", "1.1"):
            # No body (HTTP/1.x: neither header, none follows): nothing to count, and no
            # wrapper around every message of the response (bench/api.py, the GETs).
            await self.app(scope, receive, send)
            return
        seen = 0
        exceeded = started = replaced = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            # Frameworks may wrap the error raised from `receive` (FastAPI answers 400
            # "error parsing the body"): once the limit was hit, the answer is a 413.
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                if exceeded:
                    replaced = True
                    await self._reject(send)
                    return
            elif replaced:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except PayloadTooLarge:
            if started:
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await send_problem(send, PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes"))


class NulFreeUrl:
    """400 for a NUL in the path or query: no id or filter contains one, and PostgreSQL
    refuses it in text (it would surface as a 500 from the first query)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"]
            or b"%00" in scope["query_string"]
            or b"\x00" in scope["query_string"]
        ):
            await send_problem(send, BadRequest("NUL characters are not allowed in the URL"))
            return
        await self.app(scope, receive, send)


async def send_problem(send: Send, error: ServiceError) -> None:
    body = error.problem().model_dump_json(exclude_none=True).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
