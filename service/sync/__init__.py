"""The sync engine: a library with no web framework and no database in it.

It knows how to page through an upstream API and turn pages into keyed, hashed rows;
storing them is the caller's business. This module is its surface: code outside
`service.sync` imports from here, never from its submodules
(`tests/sync/test_exported_members.py` holds both rules).
"""

from service.sync.backoff import next_delay
from service.sync.budget import DEFAULT_MAX_HOLD, Holds, HostBudget, held_back, over
from service.sync.client import UpstreamClient
from service.sync.conditional import Validator, page_key
from service.sync.errors import HostHeld, SyncError, TargetRefused
from service.sync.extract import Row, records_of
from service.sync.incremental import Watermark, later, start_params
from service.sync.inflight import BodyBudget
from service.sync.pages import Page, fetch_one, iter_pages
from service.sync.paginators import PageRequest, first_request
from service.sync.paths import MISSING, get_path
from service.sync.request_retry import REQUEST_RETRY, RequestRetry
from service.sync.spec import SECRET_FIELDS, Limits, Retry, Source, secret_values
from service.sync.ssrf import GuardedBackend, Resolver, TargetPolicy, check_target, system_resolver

__all__ = [
    "DEFAULT_MAX_HOLD",
    "MISSING",
    "REQUEST_RETRY",
    "SECRET_FIELDS",
    "BodyBudget",
    "GuardedBackend",
    "Holds",
    "HostBudget",
    "HostHeld",
    "Limits",
    "Page",
    "PageRequest",
    "RequestRetry",
    "Resolver",
    "Retry",
    "Row",
    "Source",
    "SyncError",
    "TargetPolicy",
    "TargetRefused",
    "UpstreamClient",
    "Validator",
    "Watermark",
    "check_target",
    "fetch_one",
    "first_request",
    "get_path",
    "held_back",
    "iter_pages",
    "later",
    "next_delay",
    "over",
    "page_key",
    "records_of",
    "secret_values",
    "start_params",
    "system_resolver",
]
