"""The Wemasy HTTP protocol as pure functions: build a request, turn an answer into data or an error.

Nothing here does I/O or imports aiohttp, so it is tested synchronously. The transport sends a
:class:`PreparedRequest` and hands back a :class:`RawResponse`; everything between is decided here.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from ._errors import (
    APIStatusError,
    ConfigurationError,
    InvalidResponseError,
    RateLimitError,
    UsageError,
    ValidationError,
    error_class_for_status,
)
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_RETRY_AFTER",
    "TOKEN_ENV_VAR",
    "PreparedRequest",
    "RateLimitHeaders",
    "RawResponse",
    "authorized_request",
    "build_request",
    "decipher_response",
    "encode_json_body",
    "follow_redirect",
    "normalize_base_url",
    "parse_http_date",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "redact_url",
    "request_url",
    "validate_token",
    "validate_user_agent",
]

DEFAULT_BASE_URL = "https://api.wemasy.nl/api"
TOKEN_ENV_VAR = "WEMASY_API_TOKEN"
USER_AGENT = f"wemasy-async/{__version__}"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# A token goes into a header; anything that could split or fold it is refused up front.
_TOKEN_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
# A header value may not hold CR, LF or other control characters (header injection, or aiohttp's ValueError).
_HEADER_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _redacted_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in headers.items()}


@attrs.frozen(repr=False)
class PreparedRequest:
    """A request ready to send. Its repr never shows the ``Authorization`` header."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"PreparedRequest(method={self.method!r}, url={self.url!r}, "
            f"headers={_redacted_headers(self.headers)!r}, body=<{len(self.body or b'')} bytes>)"
        )


def ci_headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    """Headers as a case-insensitive, read-only mapping (aiohttp's are already)."""
    return headers if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers))


#: Makes a ``NamedTuple`` record from a tuple of all its fields, in order, without the ``__new__`` that
#: ``typing.NamedTuple`` writes in Python (a frame a record): for the few records made on every request.
new_record = tuple.__new__


class RawResponse(NamedTuple):
    """What came back: status, headers and the body bytes, with the request it answers.

    ``headers`` must be case-insensitive (:func:`ci_headers`). A tuple rather than a frozen attrs class:
    one is made for every response, at a quarter of the cost.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str = ""
    url: str = ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"RawResponse(status={self.status}, {self.method} {self.url}, body=<{len(self.body)} bytes>)"


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_USERINFO = re.compile(r"(?<=//)[^/?#@]*@")


def redact_url(url: str) -> str:
    """``url`` with any userinfo (``user:password@``) replaced, for messages: a password is never repeated."""
    return _USERINFO.sub("***@", url)


def normalize_base_url(base_url: str, *, allow_insecure_http: bool = False) -> str:
    """Check and normalise the API base URL (no trailing slash).

    Plain ``http://`` would send the token in clear text, so it is refused unless the host is loopback
    (the emulator, a local proxy) or the caller opts in with ``allow_insecure_http=True``. No error repeats
    a password the URL holds.
    """
    if not isinstance(base_url, str) or not base_url:
        shown = redact_url(base_url) if isinstance(base_url, str) else f"a {type(base_url).__name__}"
        raise ConfigurationError(f"base_url must be a non-empty URL string, got {shown!r}")
    shown = redact_url(base_url)
    try:
        parts = urlsplit(base_url)
        hostname, _ = parts.hostname, parts.port  # .port raises for a port that is not a number in range
    except ValueError as exc:
        # Its text may repeat the URL; ours says what is wrong without the password.
        reason = str(exc).replace(base_url, shown)
        raise ConfigurationError(f"base_url is not a valid URL ({reason}): {shown!r}") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ConfigurationError(
            f"base_url must be an absolute http(s) URL such as {DEFAULT_BASE_URL!r}, got {shown!r}"
        )
    if parts.username or parts.password:
        raise ConfigurationError("base_url must not contain credentials; pass the token as token=...")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url must not have a query or fragment, got {shown!r}")
    if _URL_FORBIDDEN.search(base_url):
        raise ConfigurationError(f"base_url contains whitespace or control characters: {shown!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(hostname):
        raise ConfigurationError(
            f"refusing plain http:// to {hostname}: the token would travel unencrypted. "
            "Use https://, or pass allow_insecure_http=True if a trusted proxy terminates TLS."
        )
    return base_url.rstrip("/")


def validate_user_agent(user_agent: object) -> str | None:
    """A caller's ``User-Agent`` prefix, if it can go in a header (no CR, LF or other control characters)."""
    if user_agent is None or user_agent == "":
        return None
    if not isinstance(user_agent, str):
        raise ConfigurationError(f"user_agent must be a str, got {type(user_agent).__name__}")
    if _HEADER_FORBIDDEN.search(user_agent):
        raise ConfigurationError(
            f"user_agent must be one line of printable text (no CR, LF or control characters), got {user_agent!r}"
        )
    return user_agent


def validate_token(token: object) -> str:
    """Return the token if it can be sent as a bearer token; the error never repeats the token."""
    if token is None or token == "":
        raise ConfigurationError(
            f"no API token: pass token=... to WemasyClient or set the {TOKEN_ENV_VAR} environment variable"
        )
    if not isinstance(token, str):
        raise ConfigurationError(f"the API token must be a str, got {type(token).__name__}")
    if _TOKEN_FORBIDDEN.search(token):
        raise ConfigurationError("the API token contains whitespace or control characters; check how it was read")
    return token


def request_url(base_url: str, path: str) -> str:
    """The URL of ``path`` (relative to ``base_url``); a path that names another host is refused."""
    if not isinstance(path, str):
        raise ConfigurationError(f"path must be a str, got {type(path).__name__}")
    if not path.startswith("/"):
        path = "/" + path
    if "://" in path or path.startswith("//"):
        raise ConfigurationError(f"path must be relative to base_url, got {path!r}")
    return base_url + path


def encode_json_body(json_body: Any) -> bytes | None:
    """The compact JSON bytes of a request body (``None`` for none); a value JSON cannot hold is refused."""
    if json_body is None:
        return None
    try:
        return json.dumps(json_body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the JSON body cannot be sent: {exc}") from None


def authorized_request(
    method: str, url: str, body: bytes | None, *, token: str, user_agent: str = USER_AGENT
) -> PreparedRequest:
    """A request to ``url`` with auth and JSON headers. It cannot fail, so no exception's traceback holds a
    frame with the token in its locals: what can fail (:func:`request_url`, :func:`encode_json_body`) runs
    before, without the token.

    ``Accept: application/json`` is always sent: Laravel answers JSON only when the first accepted type is
    JSON, and otherwise redirects an unauthenticated call to a login page. ``Accept-Encoding`` names only
    what the transport inflates itself, within its body cap (aiohttp's would also name ``br`` or ``zstd``
    when their modules are installed).
    """
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": user_agent,
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    return PreparedRequest(method=method.upper(), url=url, headers=headers, body=body)


def build_request(
    method: str,
    base_url: str,
    path: str,
    *,
    token: str,
    json_body: Any = None,
    user_agent: str = USER_AGENT,
) -> PreparedRequest:
    """Build the request for ``path`` (relative to ``base_url``) with auth and JSON headers
    (:func:`request_url`, :func:`encode_json_body` and :func:`authorized_request` in one)."""
    url = request_url(base_url, path)
    body = encode_json_body(json_body)
    return authorized_request(method, url, body, token=token, user_agent=user_agent)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a URL; None for one that cannot be read (a bad port) or carries userinfo."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None:
        return None  # never send the token, or a second identity, along with credentials in a URL
    return parts.scheme, (parts.hostname or "").lower(), port


def follow_redirect(request: PreparedRequest, response: RawResponse) -> PreparedRequest | None:
    """The request to send for a redirect, or ``None`` when it must not be followed.

    Only same-origin redirects are followed, so the token never reaches another host or scheme; a
    ``Location`` that cannot be read or carries userinfo is not followed either. 307 and 308 repeat the
    method and body; 301, 302 and 303 are followed for GET only, since turning a push into a GET would
    silently drop it.
    """
    location = response.headers.get("Location")
    if response.status not in (301, 302, 303, 307, 308) or not location:
        return None
    try:
        target = urljoin(request.url, location)
    except ValueError:
        return None
    origin = _origin(target)
    if origin is None or origin != _origin(request.url):
        return None
    if response.status in (307, 308):
        return attrs.evolve(request, url=target)
    if request.method in ("GET", "HEAD"):
        return attrs.evolve(request, url=target)
    return None


#: A ``Retry-After`` beyond this is absurd (a broken server or proxy); it is read as this many seconds.
MAX_RETRY_AFTER = 7 * 86400.0


def parse_http_date(value: str | None) -> float | None:
    """The unix time of an RFC 9110 HTTP-date, or None when missing or unreadable."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT even when the zone is written as -0000
        return None
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (RFC 9110).

    ``now`` is the unix time the answer was made (its ``Date``, see :func:`parse_rate_limit_headers`).
    Returns ``None`` for a missing or unreadable value; never negative, never more than
    :data:`MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = when - now
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _count(value: str | None) -> int | None:
    # A non-negative integer header; garbage from a proxy counts as absent.
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None


class RateLimitHeaders(NamedTuple):
    """What a response says about the rate limit. Any field may be missing (``None``).

    A tuple rather than a frozen attrs class: one is made for every response, at a quarter of the cost.
    """

    limit: int | None = None
    remaining: int | None = None
    #: Seconds to wait, from ``Retry-After`` or, failing that, ``X-RateLimit-Reset``. Laravel rounds both
    #: down: the window may last up to a second longer.
    retry_after: float | None = None


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitHeaders:
    """Read ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``Retry-After`` and ``X-RateLimit-Reset``.

    ``headers`` must be case-insensitive (as aiohttp's are). An HTTP-date ``Retry-After`` and
    ``X-RateLimit-Reset`` name a moment on the *server's* clock, so they are read against the answer's
    ``Date`` header, which the same clock wrote; ``now`` (unix time, by default the local clock) is used
    only when there is no readable ``Date``. This runs on every answer, so the common case (two
    well-formed counts, no wait) takes no helper calls.
    """
    get = headers.get
    limit, remaining = get("X-RateLimit-Limit"), get("X-RateLimit-Remaining")
    retry_after_header, reset = get("Retry-After"), get("X-RateLimit-Reset")
    try:
        counts = (int(limit) if limit is not None else None, int(remaining) if remaining is not None else None)
    except ValueError:
        counts = (_count(limit), _count(remaining))
    if (counts[0] or 0) < 0 or (counts[1] or 0) < 0:
        counts = (_count(limit), _count(remaining))
    if retry_after_header is None and reset is None:
        return new_record(RateLimitHeaders, (*counts, None))
    server_now = parse_http_date(get("Date"))
    if server_now is None:
        server_now = time.time() if now is None else now
    retry_after = parse_retry_after(retry_after_header, now=server_now)
    reset_at = _count(reset)
    if retry_after is None and reset_at is not None:
        retry_after = min(MAX_RETRY_AFTER, max(0.0, reset_at - server_now))
    return RateLimitHeaders(counts[0], counts[1], retry_after)


def _decode_json(body: bytes) -> tuple[bool, Any]:
    try:
        # JSON on the wire is UTF-8 (RFC 8259); decoding first skips json's encoding sniffing.
        return True, json.loads(body.decode())
    except UnicodeDecodeError:
        pass
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes (a hostile body)
        return False, None
    try:
        return True, json.loads(body)  # UTF-16/32 JSON, which json detects from the bytes
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False, None


_REASONS = {
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _error_message(status: int, decoded: bool, data: Any, body: bytes) -> str:
    if decoded and isinstance(data, dict):
        message = data.get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    if not decoded:
        title = _HTML_TITLE.search(body)
        if title:
            text = " ".join(title.group(1).decode("utf-8", errors="replace").split())
            if text:
                return f"{text[:200]} (non-JSON body)"
        if body.strip():
            return f"{_REASONS.get(status, 'HTTP error')} (non-JSON body)"
    return _REASONS.get(status, "HTTP error")


def _field_errors(data: Any) -> dict[str, tuple[str, ...]]:
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, dict):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for field, messages in errors.items():
        if isinstance(messages, str):
            out[str(field)] = (messages,)
        elif isinstance(messages, list):
            out[str(field)] = tuple(str(m) for m in messages)
    return out


def decipher_response(response: RawResponse, *, now: float | None = None) -> Any:
    """The decoded JSON of a success response; for anything else, raise the matching error.

    Error bodies parse in the documented shape ``{"error": true, "message": ...}`` and in Laravel's stock
    shapes (``{"message": ...}``, and 422's ``{"message", "errors"}``); ``error`` is never required. An
    error status with a non-JSON body (a proxy's HTML 502) still raises the status's class, with
    ``body=None`` and the text in ``raw_text``. ``now`` (unix time) is for an HTTP-date ``Retry-After``.
    """
    status, body = response.status, response.body
    decoded, data = _decode_json(body)
    if 200 <= status <= 299:
        if status == 204 or not body or body.isspace():
            return None
        if not decoded:
            raise _invalid(response, "the response body is not JSON")
        if isinstance(data, dict) and data.get("error") is True:
            message = "a success status with an error body: " + _error_message(status, decoded, data, body)
            raise _invalid(response, message, body=data)
        return data
    cls = error_class_for_status(status)
    common: dict[str, Any] = {
        "status_code": status,
        "body": data if decoded else None,
        "raw_text": response.text,
        "headers": response.headers,
        "method": response.method,
        "url": response.url,
    }
    message = _error_message(status, decoded, data, body)
    if cls is ValidationError:
        raise ValidationError(message, errors=_field_errors(data), **common)
    if cls is RateLimitError:
        hints = parse_rate_limit_headers(response.headers, now=now)
        raise RateLimitError(message, retry_after=hints.retry_after, **common)
    error: APIStatusError = cls(message, **common)
    raise error


def invalid_shape(response: RawResponse, what: str) -> InvalidResponseError:
    """The error for a JSON body that does not have the documented shape."""
    return _invalid(response, f"the response is not the documented shape: {what}")


def _invalid(response: RawResponse, message: str, *, body: Any = None) -> InvalidResponseError:
    return InvalidResponseError(
        message,
        status_code=response.status,
        headers=response.headers,
        raw_text=response.text,
        body=body,
        method=response.method,
        url=response.url,
    )
