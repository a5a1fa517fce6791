"""The page loop: fetch, extract, decide the next page; the caller stores each page.

`iter_pages` yields one page at a time, in order, so the caller commits a page
(records + checkpoint) before it sees the next; pages it fetched ahead are at most a
few, so nothing proportional to the whole sync is held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from service.sync.body import RECORD_COST
from service.sync.budget import HostBudget
from service.sync.client import UpstreamClient
from service.sync.conditional import (
    Validator,
    ValidatorLookup,
    conditional_headers,
    digest_seed,
    page_key,
    resumed,
    validator_from,
    validator_moved,
)
from service.sync.errors import InvalidBody, PageLimitReached, PaginationLoop, SyncError
from service.sync.extract import ExtractedPage, extract_yielding, records_of
from service.sync.fetch import FetchedPage, fetch_page, strip_query_auth
from service.sync.incremental import Watermark, page_watermark
from service.sync.inflight import BodyBudget
from service.sync.paginators import PageRequest, PageResponse, first_request, next_request
from service.sync.request_retry import REQUEST_RETRY, RequestRetry, RetryCount
from service.sync.spec import Limits, Source
from service.sync.ssrf import parse_url


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
    discarded: int = 0
    """Requests made for predicted pages that this page proved wrong (`_Flight`), their
    retries included."""
    watermark: Watermark | None = None
    """The largest incremental cursor among this page's records (incremental sources;
    None for a page that was not decoded: its records are the stored ones)."""
    following_ready: bool = False
    """The next page's fetch was done when this one was handed over: a caller that
    stores several pages at a time may hold this one without waiting for the upstream
    (`RunLedger.FRESH_PAGES_PER_STATEMENT`)."""

    @property
    def retries(self) -> int:
        """Requests for this page before the one that answered (`FetchedPage.retries`)."""
        return self.fetched.retries

    @property
    def requests(self) -> int:
        """Every request this page cost: its own, its retries, the predictions it dropped."""
        return 1 + self.retries + self.discarded

    @property
    def same_as_before(self) -> bool:
        """A 2xx whose bytes are the ones its stored records came from: not decoded."""
        return self.fetched.body is None and not self.not_modified

    @property
    def unread(self) -> bool:
        """No body was decoded (a 304, or the stored bytes): its records are as stored."""
        return self.fetched.body is None

    def handed_over(self) -> None:
        """In its caller's hands: its bytes come back when the caller is done with it,
        whatever other fetches wait for (see `service.sync.inflight`)."""
        if self.fetched.hold is not None:
            self.fetched.hold.settle()

    def release(self) -> None:
        """Done with: what its body held of the process's `BodyBudget` is free again
        (unless its caller keeps it)."""
        if self.fetched.hold is not None:
            self.fetched.hold.release()

    def keep(self) -> None:
        """Kept by the caller past its turn: its share of the budget stays counted
        until `let_go` (`BodyHold.keep`)."""
        if self.fetched.hold is not None:
            self.fetched.hold.keep()

    def let_go(self) -> None:
        if self.fetched.hold is not None:
            self.fetched.hold.let_go()


async def iter_pages(
    client: UpstreamClient,
    source: Source,
    limits: Limits,
    start: PageRequest | None = None,
    *,
    budget: HostBudget | None = None,
    bodies: BodyBudget | None = None,
    validators: ValidatorLookup | None = None,
    ahead: int = 0,
    decoded_ahead: int = 1,
    retry: RequestRetry = REQUEST_RETRY,
) -> AsyncGenerator[Page, None]:
    """Pages from `start` (or the first) to the last, in order; `budget` shares each
    upstream host's politeness with every other task (see `service.sync.budget`);
    `validators` finds what each page said last time (`service.sync.conditional`);
    `retry` says how a transient failure of a page's request is tried again in place
    (`service.sync.request_retry`) before it ends the loop. `bodies` bounds the bytes the
    process's bodies hold at once (`service.sync.inflight`): a page holds its share until
    the caller asks for the next one.

    With `ahead`, up to that many fetches are under way while the caller stores a page
    (see `_Flight`); with 0, a page is only fetched when asked for. After a page that had
    to be decoded, at most `decoded_ahead` (and `ahead`) are.
    """
    flight = _Flight(
        client,
        source,
        limits,
        budget,
        bodies,
        validators,
        digest_seed(source),
        (ahead, decoded_ahead),
        retry,
    )
    request: PageRequest | None = start or first_request(source)
    address = _address(request) if request is not None else None
    requested = flight.requested
    page: Page | None = None
    try:
        while request is not None:
            if request.index >= limits.max_pages:
                raise PageLimitReached(f"stopped after max_pages={limits.max_pages} pages")
            if address is not None:
                requested.add(address)
            page = await flight.take(request)
            # Each URL is parsed once: the next page's address, checked here before
            # `follow` would fetch it again, is the one the next turn records.
            address = _address(page.next) if page.next is not None else None
            _check_no_cycle(page, address, requested)
            if ahead:
                page = await flight.follow(page)
                if flight.ready():
                    page = replace(page, following_ready=True)
            page.handed_over()
            yield page
            page.release()  # the caller is done with it: it asks for the next
            request = page.next
    finally:
        if page is not None:
            page.release()
        await flight.drop()


_Address = tuple[str, tuple[tuple[str, str], ...]]


def _address(request: PageRequest) -> _Address | None:
    """Where a request goes, however it is spelled: `?p=2` in the URL (a next_url) and
    `params={"p": 2}` are one address, in any order of parameters. None for a URL that
    cannot be parsed: its fetch refuses it (`target_refused`), not this check.

    The URL is parsed once, and the query merged as parameters: each `httpx.URL` copy
    parses its URL again (copy_merge_params, copy_with), and three parses a page were a
    sixth of a 304 resync's CPU in the engine (cProfile, session 11)."""
    try:
        url = parse_url(request.url)
        params = url.params.merge(request.params) if request.params else url.params
    except httpx.InvalidURL:
        return None
    path = url.raw_path.split(b"?", 1)[0].decode("ascii")
    return f"{url.scheme}://{url.netloc.decode('ascii')}{path}", tuple(sorted(params.multi_items()))


def _check_no_cycle(page: Page, following: _Address | None, requested: set[_Address]) -> None:
    """A page whose next page (at `following`) was already requested in this attempt
    closes a cycle (a -> b -> a): following it would fetch the same pages until
    `max_pages`. The page is not stored (as a page that names itself is not: `_interpret`)."""
    if following is not None and following in requested:
        raise PaginationLoop(
            f"the upstream pointed back to a page already fetched in this run (page"
            f" {page.request.index + 1} leads to an earlier one): a pagination cycle"
        )


@dataclass(slots=True)
class _Fetch:
    request: PageRequest
    known: Validator | None
    task: asyncio.Task[Page]
    retries: RetryCount


class _Flight:
    """The fetches under way, in page order.

    Where the next page is known only from the page before it (a first sync), one page
    is fetched while the caller stores the previous one. Where stored validators say
    where each page led last time (a resync), the pages they predict are fetched several
    at a time: a run of 304s or byte-identical pages then costs about one round trip per
    `ahead` pages instead of one each. A page is only handed over in order, after the
    one before it; if a page turns out to lead elsewhere than predicted, the fetches
    after it are cancelled, counted (`Page.discarded`) and dropped unseen, so a wrong
    prediction costs requests, never records. Each fetch waits on the host's budget as
    any request does.

    Predictions run deep only while pages come back unread (304, or the stored bytes):
    after a page that had to be decoded, `decoded_ahead` pages are fetched ahead at most
    (one, unless the caller stores decoded pages several at a time: a first sync on
    PostgreSQL, `RunLedger.decoded_ahead`), so changed pages, which are the large ones
    in memory, are held only as many at a time as the caller needs. Where the next page
    is known only from the page before it, a fetch that finds room starts the page after
    its own as soon as its body is decoded (`_chain`), not when the caller takes it.
    """

    def __init__(
        self,
        client: UpstreamClient,
        source: Source,
        limits: Limits,
        budget: HostBudget | None,
        bodies: BodyBudget | None,
        validators: ValidatorLookup | None,
        seed: bytes,
        ahead: tuple[int, int],
        retry: RequestRetry,
    ) -> None:
        self._client, self._source, self._limits = client, source, limits
        self._budget, self._validators, self._seed = budget, validators, seed
        self._bodies = bodies
        self._retry = retry
        self._queue: deque[_Fetch] = deque()
        self._ahead, self._decoded_ahead = ahead[0], min(ahead)
        self._depth = self._ahead
        """How many fetches may be under way now: `ahead`, or `decoded_ahead` after a
        decoded page."""
        self._newest: PageRequest | None = None
        """The last request launched: only its fetch may chain the next (`_chain`)."""
        self.requested: set[_Address] = set()
        """Where the pages taken so far went (`iter_pages`): a chained fetch does not
        go back to one of them (that is a cycle, which fails the run unfetched)."""

    async def take(self, request: PageRequest) -> Page:
        """The page for `request`: its fetch is the oldest under way, or starts now."""
        if not self._queue:
            await self._launch(request)
        assert self._queue[0].request == request, "pages are taken in order"
        await self._predict()
        return await self._queue.popleft().task

    async def follow(self, page: Page) -> Page:
        """Start on the page after `page` unless it is under way, and on the pages
        predicted after it; predictions `page` proved wrong are dropped and counted on
        the page returned (which the caller stores next)."""
        if self._queue and self._queue[0].request != page.next:
            page = replace(page, discarded=page.discarded + await self.drop())
        following = page.next
        if following is not None and not self._queue and following.index < self._limits.max_pages:
            await self._launch(following)
        unread = page.unread
        self._depth = self._ahead if unread else self._decoded_ahead
        await self._predict()
        return page

    def ready(self) -> bool:
        """Is the next page's fetch done (the caller would not wait for it)?"""
        return bool(self._queue) and self._queue[0].task.done()

    async def _predict(self) -> None:
        """Start the pages the stored validators predict, up to `_depth` under way."""
        while self._queue and len(self._queue) < self._depth:
            last = self._queue[-1]
            following = resumed(last.known, last.request) if last.known is not None else None
            if following is None or following.index >= self._limits.max_pages:
                return
            await self._launch(following)

    async def _chain(self, request: PageRequest, fetch: Awaitable[Page]) -> Page:
        """`fetch`, then, if it is still the newest and there is room, the page after it
        (known from its body): the next fetch starts while the caller is busy storing
        earlier pages, where `follow` would only start it when the caller takes this one."""
        page = await fetch
        following = page.next
        try:
            if (
                self._newest is request
                and following is not None
                and len(self._queue) < self._depth
                and following.index < self._limits.max_pages
                and _address(following) not in self.requested
            ):
                await self._launch(following)
        except BaseException:
            page.release()  # never handed over: its share of the budget goes back
            raise
        return page

    async def _launch(self, request: PageRequest) -> None:
        known = await self._validators(page_key(request)) if self._validators else None
        retries = RetryCount()
        fetch = fetch_one(
            self._client,
            self._source,
            self._limits,
            request,
            budget=self._budget,
            bodies=self._bodies,
            validator=known,
            seed=self._seed,
            retry=self._retry,
            retries=retries,
            keep_body=False,
        )
        self._newest = request
        chained = self._chain(request, fetch) if self._decoded_ahead > 1 else fetch
        self._queue.append(_Fetch(request, known, asyncio.ensure_future(chained), retries))

    async def drop(self) -> int:
        """Cancel every fetch under way; returns how many requests they made (one each,
        and the retries each had begun)."""
        dropped = list(self._queue)
        self._queue.clear()
        for fetch in dropped:
            fetch.task.cancel()
        for fetch in dropped:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                (await fetch.task).release()  # one that was done holds its body
        return sum(1 + fetch.retries.value for fetch in dropped)


async def fetch_one(
    client: UpstreamClient,
    source: Source,
    limits: Limits,
    request: PageRequest,
    *,
    budget: HostBudget | None = None,
    bodies: BodyBudget | None = None,
    validator: Validator | None = None,
    seed: bytes | None = None,
    retry: RequestRetry = REQUEST_RETRY,
    retries: RetryCount | None = None,
    keep_body: bool = True,
) -> Page:
    """Fetch and interpret one page; also the dry run's whole job. With `seed`
    (`digest_seed`), a page whose bytes match `validator`'s digest is not decoded.

    A transient failure of the request is tried again in place as `retry` allows
    (`Page.retries` counts them; `retries`, if given, as they go: see `fetch_page`).
    With `bodies`, the page holds its body's share of it until `Page.release`.

    Without `keep_body` (`iter_pages`: a run needs the page's rows, not its decoded
    body), the decoded body is dropped here, once its rows are extracted
    (`BODY_DROPPED`). Freeing a page of 1,000 decoded records takes the worker about
    0.4 ms; here that happens while the fetch runs ahead of the database, where the
    run's caller would free it between one statement's answer and the next statement,
    with the database idle (bench/RESULTS.md, session 13)."""
    conditional = source.conditional and validator is not None
    fetched = await fetch_page(
        client,
        source,
        request,
        limits,
        budget=budget,
        bodies=bodies,
        extra_headers=conditional_headers(validator) if validator and conditional else None,
        digest_seed=seed,
        undecoded_if=validator.digest if validator else None,
        records_known=validator.records_digest if validator else None,
        retry=retry,
        retries=retries,
    )
    try:
        page = await _interpret(source, request, fetched, validator, conditional=conditional)
    except BaseException as exc:
        if fetched.hold is not None:
            fetched.hold.release()
        if isinstance(exc, SyncError):
            exc.requests = 1 + fetched.retries  # the page was fetched; its run counts them
        raise
    if fetched.hold is not None and page.unread:
        fetched.hold.release()  # its records are the stored ones: nothing decoded is kept
    elif fetched.hold is not None:
        fetched.hold.charge(RECORD_COST * page.records.seen)  # its rows, now in memory
    if not keep_body and not page.unread:
        page = replace(page, fetched=replace(page.fetched, body=BODY_DROPPED))
    return page


BODY_DROPPED: Any = object()
"""`FetchedPage.body` of a decoded page whose body a run no longer needs (`fetch_one`'s
`keep_body`): not None, so the page still counts as decoded (`Page.unread`)."""


async def _interpret(
    source: Source,
    request: PageRequest,
    fetched: FetchedPage,
    validator: Validator | None,
    *,
    conditional: bool,
) -> Page:
    """A fetched page's records, its next page and what to remember of it. A page whose
    records are the stored ones (their bytes' `records_digest`; only its envelope was
    decoded where that is enough to find the next page: `FetchedPage.records_unread`) is
    handed on as if its bytes had matched: not extracted, its records counted as stored."""
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
    same_records = (
        validator is not None
        and fetched.records_digest is not None
        and validator.records_digest == fetched.records_digest
    )
    if fetched.records_unread:  # only the envelope was decoded: they are the stored ones
        assert validator is not None
        assert same_records
        records: list[Any] = []
        count = validator.records_seen
    else:
        records = records_of(fetched.body, source.records_path, first_page=request.index == 0)
        count = len(records)
    view = PageResponse(fetched.body, fetched.headers, fetched.url, count)
    following = strip_query_auth(source, next_request(source.pagination, request, view))
    if following is not None and (following.url, following.params) == (request.url, request.params):
        raise PaginationLoop("the upstream pointed to the same page again")
    if same_records:
        assert validator is not None
        unread = replace(fetched, body=None)  # counted as stored (`Page.same_as_before`)
        return Page(
            request,
            unread,
            ExtractedPage(),
            following,
            validator=validator_moved(
                validator, fetched.headers, following, conditional=source.conditional
            ),
            known=validator,
        )
    extracted = await extract_yielding(records, source.primary_key)
    remembered = validator_from(
        fetched.headers,
        following,
        conditional=source.conditional,
        digest=fetched.digest,
        records=extracted,
        digest_of_records=fetched.records_digest,
    )
    if remembered == validator:
        remembered = None  # nothing new to store
    watermark = (
        page_watermark(records, source.incremental.cursor_path) if source.incremental else None
    )
    return Page(
        request,
        fetched,
        extracted,
        following,
        validator=remembered,
        known=validator,
        watermark=watermark,
    )
