"""A run's requests reuse one kept-alive connection, 304s included."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import Limits, first_request, iter_pages
from service.sync.client import UpstreamClient
from service.sync.conditional import Validator, page_key
from tests.fixtures.upstream import Upstream
from tests.sync.helpers import source

CURSOR = {"type": "cursor", "cursor_path": "next", "cursor_param": "page"}


async def test_pages_and_304s_travel_over_one_connection(
    upstream: Upstream, http: UpstreamClient
) -> None:
    ports: list[int] = []

    def handler(request: Request) -> Response:
        assert request.client is not None
        ports.append(request.client.port)
        page = int(request.query_params.get("page", 0))
        if request.headers.get("if-none-match") == f'"v{page}"':
            return Response(status_code=304, headers={"ETag": f'"v{page}"'})
        body = {"data": [{"id": page}], "next": str(page + 1) if page < 4 else None}
        return JSONResponse(body, headers={"ETag": f'"v{page}"'})

    url = upstream.route("/kept", handler)
    conditional = source(url, records_path="data", pagination=CURSOR, conditional=True)
    known: dict[str, Validator] = {}

    async def validators(url_key: str) -> Validator | None:
        return known.get(url_key)

    async for page in iter_pages(http, conditional, Limits()):
        assert page.validator is not None
        known[page_key(page.request)] = page.validator
    pages = [
        page
        async for page in iter_pages(
            http, conditional, Limits(), first_request(conditional), validators=validators
        )
    ]

    assert [page.not_modified for page in pages] == [True] * 5
    assert len(ports) == 10 and len(set(ports)) == 1, ports  # one connection for all ten
