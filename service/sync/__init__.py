"""The sync engine: a library with no web framework in it.

It knows how to page through an upstream API and turn pages into keyed, hashed rows;
storing them is the caller's business.
"""

from service.sync.budget import HostBudget, MemoryBudget
from service.sync.engine import Page, fetch_one, iter_pages
from service.sync.errors import BadConfig, HostHeld, SyncError, TargetRefused
from service.sync.paginators import PageRequest, first_request
from service.sync.records import ExtractedPage, Row
from service.sync.request_retry import REQUEST_RETRY, RequestRetry
from service.sync.spec import SECRET_FIELDS, Auth, Limits, Pagination, Retry, Source
from service.sync.ssrf import GuardedBackend, TargetPolicy, check_target

__all__ = [
    "REQUEST_RETRY",
    "SECRET_FIELDS",
    "Auth",
    "BadConfig",
    "ExtractedPage",
    "GuardedBackend",
    "HostBudget",
    "HostHeld",
    "Limits",
    "MemoryBudget",
    "Page",
    "PageRequest",
    "Pagination",
    "RequestRetry",
    "Retry",
    "Row",
    "Source",
    "SyncError",
    "TargetPolicy",
    "TargetRefused",
    "check_target",
    "fetch_one",
    "first_request",
    "iter_pages",
]
