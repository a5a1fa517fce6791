"""The FastAPI side of `Idempotency-Key`: a dependency for the handlers that create.

A handler takes `Idempotent`, returns `replay` when there is one, and otherwise answers
through `respond`; the dependency claims the key before the handler runs and records the
outcome once the request's transaction has committed or rolled back (`UnitOfWork`
hooks). A replay runs no handler code, so it queues nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.db import SessionMaker
from service.dependencies import Caller, Work, state_of
from service.errors import PROBLEM_JSON, ServiceError
from service.idempotency import service
from service.idempotency.service import HEADER, Claim, StoredResponse

REPLAYED = "Idempotent-Replayed"

KEY_DESCRIPTION = f"""\
Makes a retry safe (IETF draft "The Idempotency-Key HTTP Header Field"): a unique value
per operation, e.g. a UUID. Repeating the same request with the same key within 24 hours
replays the first response (with `{REPLAYED}: true`) instead of doing the work again.
Keys are scoped to your tenant and to this method and path. The same key with a
different body gives 422; while its first request is still running, 409 with
`Retry-After`. Successes and final 4xx answers are replayed; 409, 429 and 5xx are not,
so a retry runs again. 1 to 255 printable ASCII characters; the draft's quoted form
(`"…"`) is accepted too.
"""

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=KEY_DESCRIPTION,
        openapi_examples={"uuid": {"value": "8e03978e-40d5-43e8-bc93-6894a57f9324"}},
    ),
]


class Idempotency:
    """A handler's view of its request's key; without the header both paths are plain."""

    def __init__(self, replay: Response | None = None):
        self.replay = replay
        self.response: Response | None = None

    def respond(self, content: BaseModel, status_code: int, *, location: str) -> Response:
        """The JSON response FastAPI would have made of `content`, noted for replays."""
        response = Response(
            content.model_dump_json(by_alias=True),
            status_code=status_code,
            headers={"Location": location},
            media_type="application/json",
        )
        self.response = response  # stored (`_snapshot`) only for a keyed request
        return response


async def idempotency(
    request: Request,
    work: Work,
    caller: Caller,
    idempotency_key: KeyHeader = None,
) -> Idempotency:
    """Claim the request's key (or find its replay) before the handler runs. Not a
    dependency with `yield`: FastAPI enters an exit stack and a cancel scope for each of
    those on every request, key or not (bench/api.py); what the handler raised reaches
    the outcome through the unit of work (`UnitOfWork.failure`)."""
    del idempotency_key  # declared for the OpenAPI document; read with repeats below
    key = service.parse_key(request.headers.getlist(HEADER))
    if key is None:
        return Idempotency()
    keyed = service.KeyedRequest.of(
        caller.tenant_id,
        key,
        request.method,
        request.url.path,
        request.url.query,
        await request.body(),
    )
    sessionmaker = state_of(request)["sessionmaker"]
    outcome = await service.claim(sessionmaker, keyed)
    if isinstance(outcome, StoredResponse):
        return Idempotency(replay=_replay(outcome))
    keyed_call = Idempotency()
    _finish_with_the_transaction(sessionmaker, work, outcome, keyed_call)
    return keyed_call


Idempotent = Annotated[Idempotency, Depends(idempotency)]


def _finish_with_the_transaction(
    sessionmaker: SessionMaker, work: Work, claim: Claim, keyed_call: Idempotency
) -> None:
    """Store what was answered once it is durable; on rollback, the error (if final:
    a problem the handler raised)."""

    def answered() -> StoredResponse | None:
        return None if keyed_call.response is None else _snapshot(keyed_call.response)

    work.after_commit(lambda: service.finish(sessionmaker, claim, answered()))
    work.after_rollback(lambda: service.finish(sessionmaker, claim, _error(work.failure)))


def _error(failure: BaseException | None) -> StoredResponse | None:
    return _snapshot(_problem(failure)) if isinstance(failure, ServiceError) else None


def _snapshot(response: Response) -> StoredResponse:
    return StoredResponse.of(response.status_code, bytes(response.body), response.headers)


def _problem(error: ServiceError) -> JSONResponse:
    """The same rendering as the app's ServiceError handler."""
    return JSONResponse(
        error.problem().model_dump(exclude_none=True),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers(),
    )


def _replay(stored: StoredResponse) -> Response:
    return Response(
        stored.body, status_code=stored.status_code, headers={**stored.headers, REPLAYED: "true"}
    )
