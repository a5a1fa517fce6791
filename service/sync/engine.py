"""The page loop: fetch, extract, decide the next page; the caller stores each page.

`iter_pages` yields one page at a time and only fetches the next when asked, so the
caller commits a page (records + checkpoint) before anything else happens; nothing
proportional to the whole sync is held in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from service.sync.budget import HostBudget
from service.sync.conditional import (
    Validator,
    ValidatorLookup,
    conditional_headers,
    digest_seed,
    page_key,
    resumed,
    validator_from,
)
from service.sync.errors import InvalidBody, PageLimitReached, PaginationLoop
from service.sync.fetch import FetchedPage, fetch_page, strip_query_auth
from service.sync.paginators import PageRequest, PageResponse, first_request, next_request
from service.sync.records import ExtractedPage, extract, records_of
from service.sync.spec import Limits, Source


@dataclass(frozen=True, slots=True)
class Page:
    request: PageRequest
    fetched: FetchedPage
    records: ExtractedPage
    next: PageRequest | None
    not_modified: bool = False
    """A 304: nothing changed on this page since the validator was stored."""
    validator: Validator | None = None
    """What to remember for this page URL (a 2xx answer that differs from `known`)."""
    known: Validator | None = None
    """What was remembered for this page URL before."""

    @property
    def same_as_before(self) -> bool:
        """A 2xx whose bytes are the ones its stored records came from: not decoded."""
        return self.fetched.body is None and not self.not_modified


async def iter_pages(
    client: httpx.AsyncClient,
    source: Source,
    limits: Limits,
    start: PageRequest | None = None,
    *,
    budget: HostBudget | None = None,
    validators: ValidatorLookup | None = None,
) -> AsyncGenerator[Page, None]:
    """Pages from `start` (or the first) to the last; `budget` shares each upstream host's
    politeness with every other task (see `service.sync.budget`); `validators` finds
    what each page said last time (`service.sync.conditional`)."""
    request: PageRequest | None = start or first_request(source)
    seed = digest_seed(source)
    while request is not None:
        if request.index >= limits.max_pages:
            raise PageLimitReached(f"stopped after max_pages={limits.max_pages} pages")
        known = await validators(page_key(request)) if validators is not None else None
        page = await fetch_one(
            client, source, limits, request, budget=budget, validator=known, seed=seed
        )
        yield page
        request = page.next


async def fetch_one(
    client: httpx.AsyncClient,
    source: Source,
    limits: Limits,
    request: PageRequest,
    *,
    budget: HostBudget | None = None,
    validator: Validator | None = None,
    seed: bytes | None = None,
) -> Page:
    """Fetch and interpret one page; also the dry run's whole job. With `seed`
    (`digest_seed`), a page whose bytes match `validator`'s digest is not decoded."""
    conditional = source.conditional and validator is not None
    fetched = await fetch_page(
        client,
        source,
        request,
        limits,
        budget=budget,
        extra_headers=conditional_headers(validator) if validator and conditional else None,
        digest_seed=seed,
        undecoded_if=validator.digest if validator else None,
    )
    if fetched.status == 304 or fetched.body is None:
        if validator is None or (fetched.status == 304 and not conditional):
            raise InvalidBody("upstream answered 304 to an unconditional request", http_status=304)
        return Page(
            request,
            fetched,
            ExtractedPage(),
            resumed(validator, request),
            not_modified=fetched.status == 304,
            known=validator,
        )
    records = records_of(fetched.body, source.records_path)
    extracted = extract(records, source.primary_key)
    view = PageResponse(fetched.body, fetched.headers, fetched.url, len(records))
    following = strip_query_auth(source, next_request(source.pagination, request, view))
    if following is not None and (following.url, following.params) == (request.url, request.params):
        raise PaginationLoop("the upstream pointed to the same page again")
    remembered = validator_from(
        fetched.headers,
        following,
        conditional=source.conditional,
        digest=fetched.digest,
        records=extracted,
    )
    if remembered == validator:
        remembered = None  # nothing new to store
    return Page(request, fetched, extracted, following, validator=remembered, known=validator)
