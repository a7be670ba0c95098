"""wemasy-async: an asyncio SDK for the Wemasy e-commerce API (SendCloud status and shipment pushes).

>>> from wemasy_async import WemasyClient
>>> async with WemasyClient() as client:  # token from WEMASY_API_TOKEN
...     result = await client.sendcloud.push_shipments([1001, 1002])
"""

from __future__ import annotations

from ._batching import DEFAULT_CHUNK_SIZE, PushStream, partial_result
from ._client import WemasyClient
from ._errors import (
    STATUS_ERRORS,
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidOrderIdError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    ServerError,
    UsageError,
    ValidationError,
    WemasyError,
)
from ._journal import JournalError, JournalSummary, read_journal
from ._models import (
    ChunkFailure,
    OrderRejection,
    PushDetails,
    PushFailedError,
    PushResult,
    PushSummary,
    SendcloudIntegration,
)
from ._protocol import RateLimitHeaders
from ._retry import NO_RETRIES, RetryPolicy
from ._types import NOT_GIVEN
from ._version import __version__
from .budgets import Budget, BudgetEvent, RateLimitBudget, RateLimitView, RetryEvent, WaitEvent

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "NOT_GIVEN",
    "NO_RETRIES",
    "STATUS_ERRORS",
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Budget",
    "BudgetEvent",
    "ChunkFailure",
    "ClientClosedError",
    "ConfigurationError",
    "DeadlineExceededError",
    "InvalidOrderIdError",
    "InvalidResponseError",
    "JournalError",
    "JournalSummary",
    "NotFoundError",
    "OrderRejection",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PushDetails",
    "PushFailedError",
    "PushResult",
    "PushStream",
    "PushSummary",
    "RateLimitBudget",
    "RateLimitError",
    "RateLimitHeaders",
    "RateLimitView",
    "RedirectError",
    "RetryEvent",
    "RetryPolicy",
    "SendcloudIntegration",
    "ServerError",
    "UsageError",
    "ValidationError",
    "WaitEvent",
    "WemasyClient",
    "WemasyError",
    "__version__",
    "partial_result",
    "read_journal",
]

# The errors are raised to users' code: a traceback names them where users import them from
# (``wemasy_async.ConfigurationError``), not by the private module that defines them.
for _name in __all__:
    _error = globals()[_name]
    if isinstance(_error, type) and issubclass(_error, Exception):
        _error.__module__ = __name__
del _name, _error
