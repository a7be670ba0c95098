"""The exceptions the SDK raises.

Every exception derives from :class:`WemasyError`. An answer that is an error is an
:class:`APIResponseError`: one with an error status raises a subclass of :class:`APIStatusError` chosen
from one table (:data:`STATUS_ERRORS`), a success status whose body is not the documented JSON raises
:class:`InvalidResponseError`. A request that never got an answer raises :class:`APIConnectionError` (or
its subclass :class:`APITimeoutError`; :class:`DeadlineExceededError` when a call's deadline passed). None
of them ever holds the API token: they keep only the *response* headers, and the request's method and URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "STATUS_ERRORS",
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "DeadlineExceededError",
    "InvalidOrderIdError",
    "InvalidResponseError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RedirectError",
    "ServerError",
    "UsageError",
    "ValidationError",
    "WemasyError",
    "error_class_for_status",
]


def _frozen_headers(headers: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(headers or {}))


class WemasyError(Exception):
    """Base class of every exception raised by wemasy-async."""

    #: For an error that stopped a batch push (a 401 or 403 fails every request alike): the batch's
    #: :class:`PushResult` so far, with the ids never sent in ``not_sent``. None otherwise.
    result: Any = None


class UsageError(WemasyError, ValueError):
    """A call was given something unusable; raised before any request is sent."""


class ConfigurationError(UsageError):
    """The client was set up with something unusable: no token, a bad base URL, plain http."""


class InvalidOrderIdError(UsageError):
    """An order id is not a positive integer. ``order_id`` is the value, ``position`` its index in the input."""

    def __init__(self, message: str, *, order_id: object, position: int) -> None:
        super().__init__(message)
        self.order_id = order_id
        self.position = position


class APIConnectionError(WemasyError):
    """The request got no HTTP answer: the connection failed, was refused or dropped mid-response.

    The server may or may not have processed the request (``ambiguous``), which matters for pushes.
    """

    def __init__(self, message: str, *, method: str, url: str, ambiguous: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        #: True when the request may have reached the server before the failure.
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        return f"{self.message} ({self.method} {self.url})"


class ClientClosedError(WemasyError):
    """The client (or the session it was given) was closed before or while the call was made. A batch
    push stops at the first: every later request would fail alike."""


class APITimeoutError(APIConnectionError):
    """The request took longer than its timeout."""


class DeadlineExceededError(APITimeoutError):
    """The call's ``deadline`` passed (waiting for the rate-limit budget, between retries, or in flight).

    ``ambiguous`` is True when a request of the call may have reached the server.
    """


class APIResponseError(WemasyError):
    """An HTTP answer that is an error: an error status (:class:`APIStatusError`) or a success status whose
    body is not the documented JSON (:class:`InvalidResponseError`).

    Attributes:
        status_code: the HTTP status.
        message: what went wrong: for an error status the body's ``message`` (documented and stock Laravel
            shapes), else the reason phrase or the HTML page's title.
        body: the decoded JSON body, or ``None`` when the body was not JSON.
        raw_text: the body as received, so nothing is lost.
        headers: the response headers (case-insensitive, read-only).
        method, url: the request it answers.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        headers: Mapping[str, str] | None,
        raw_text: str,
        body: Any = None,
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.raw_text = raw_text
        self.headers = _frozen_headers(headers)
        self.method = method
        self.url = url

    def __str__(self) -> str:
        where = f" from {self.method} {self.url}" if self.method else ""
        return f"HTTP {self.status_code}{where}: {self.message}"


class InvalidResponseError(APIResponseError):
    """A success status whose body is not the documented JSON (an HTML page, truncated JSON, a wrong shape).

    ``raw_text`` keeps the body as received so nothing is lost.
    """


class APIStatusError(APIResponseError):
    """The server answered with an error status (see :class:`APIResponseError` for the attributes)."""


class RedirectError(APIStatusError):
    """A redirect the client will not follow: to another origin (it would carry the token) or too many."""

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


class BadRequestError(APIStatusError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, invalid or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the token is valid but may not use this resource."""


class NotFoundError(APIStatusError):
    """404: no such endpoint or resource."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is too large; send fewer order ids per request."""


class ValidationError(APIStatusError):
    """422: the server rejected fields of the request.

    ``errors`` maps each field (``order_ids``, or ``order_ids.5`` for the sixth id) to its messages.
    """

    def __init__(self, message: str, *, errors: Mapping[str, tuple[str, ...]], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors: Mapping[str, tuple[str, ...]] = dict(errors)

    def index_errors(self, field: str = "order_ids") -> dict[int, tuple[str, ...]]:
        """The errors of single array items of ``field``, keyed by their index in the request.

        >>> err.index_errors()  # for {"order_ids.5": ["The selected order_ids.5 is invalid."]}
        {5: ('The selected order_ids.5 is invalid.',)}
        """
        prefix = field + "."
        found: dict[int, tuple[str, ...]] = {}
        for key, messages in self.errors.items():
            index = key[len(prefix) :]
            # ASCII digits only, and not absurdly many: "²" is a digit to isdigit() but not to int().
            if key.startswith(prefix) and index.isascii() and index.isdigit() and len(index) <= 18:
                found[int(index)] = messages
        return found


class RateLimitError(APIStatusError):
    """429, or a wait for the rate limit longer than the caller allows.

    ``retry_after`` is the number of seconds to wait (from ``Retry-After`` as delay-seconds or an
    HTTP-date, else ``X-RateLimit-Reset``), or ``None`` when the server gave no hint.
    """

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server or a proxy in front of it failed. Safe to retry later."""


#: The one table from status to exception class; 5xx, 3xx and other statuses fall back by range.
STATUS_ERRORS: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
}


def error_class_for_status(status: int) -> type[APIStatusError]:
    """The exception class for an error status, from :data:`STATUS_ERRORS` or the status's range."""
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    if 500 <= status <= 599:
        return ServerError
    if 300 <= status <= 399:
        return RedirectError
    return APIStatusError
