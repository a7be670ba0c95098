"""WemasyClient: configuration, session ownership, and the one path every request takes.

That path, for every call (``_send``): retries around [concurrency slot -> optional ceiling -> the
token's shared budget -> one HTTP exchange -> the answer reported back to the budget], same-origin
redirects included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

from ._errors import APIConnectionError, ConfigurationError, RateLimitError, WemasyError
from ._protocol import (
    DEFAULT_BASE_URL,
    TOKEN_ENV_VAR,
    USER_AGENT,
    PreparedRequest,
    RawResponse,
    build_request,
    decipher_response,
    follow_redirect,
    normalize_base_url,
    parse_rate_limit_headers,
    validate_token,
)
from ._rate_limit import RateLimitView
from ._retry import RetryPolicy
from ._scheduler import Budget, RetryEvent, SchedulerEvent, WaitEvent, shared_budget
from ._transport import AiohttpTransport
from ._types import NOT_GIVEN, Timeout
from .resources.sendcloud import SendcloudResource

__all__ = ["BASE_URL_ENV_VAR", "Exchange", "WemasyClient"]

BASE_URL_ENV_VAR: Final = "WEMASY_BASE_URL"

logger = logging.getLogger("wemasy_async")


class Exchange(NamedTuple):
    """The final answer of a call, after retries and redirects (a tuple: made on every call)."""

    response: RawResponse
    #: The call was re-sent after a failure that may have reached the server (timeout, dropped connection).
    ambiguous_retry: bool


class WemasyClient:
    """An asyncio client of the Wemasy API.

    >>> async with WemasyClient(token="...") as client:
    ...     integration = await client.sendcloud.status()
    ...     result = await client.sendcloud.push_shipments([1001, 1002])

    Every request goes through one rate-limit budget per (base URL, token), shared by all clients and
    tasks of the process, which learns the server's fixed window from its ``X-RateLimit-*`` headers.

    Args:
        token: the API token; defaults to the ``WEMASY_API_TOKEN`` environment variable.
        base_url: defaults to ``WEMASY_BASE_URL``, else ``https://api.wemasy.nl/api``. Plain ``http://``
            is refused unless the host is loopback or ``allow_insecure_http=True``.
        session: an ``aiohttp.ClientSession`` you own; the client never closes it. Without one the
            client makes its own on first use and closes it in :meth:`close`.
        timeout: seconds for one HTTP exchange (``None``: no limit); each call may override it.
        window_seconds: the length of the server's rate-limit window (60 s for Wemasy).
        max_concurrency: requests this client has in flight at once, at most.
        rate_ceiling: ``(requests, seconds)``: a smooth ceiling of this client's own, below the server's.
        retry: how failures are retried; see :class:`RetryPolicy`.
        on_event: called with a :class:`WaitEvent` before each wait for the budget and a
            :class:`RetryEvent` before each retry (both are also logged at debug level).
        budget: a budget to use instead of the process-wide one (for one shared across processes).
        max_redirects: same-origin redirects followed per call. Redirects to another origin are never
            followed, since they would carry the token.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = 30.0,
        window_seconds: float = 60.0,
        max_concurrency: int = 32,
        rate_ceiling: tuple[float, float] | None = None,
        retry: RetryPolicy | None = None,
        on_event: Callable[[SchedulerEvent], None] | None = None,
        budget: Budget | None = None,
        allow_insecure_http: bool = False,
        max_redirects: int = 3,
        user_agent: str | None = None,
    ) -> None:
        self._token = validate_token(token if token is not None else os.environ.get(TOKEN_ENV_VAR))
        self.base_url = normalize_base_url(
            base_url or os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be positive seconds or None, got {timeout!r}")
        if not window_seconds > 0:
            raise ConfigurationError(f"window_seconds must be positive, got {window_seconds!r}")
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.user_agent = f"{user_agent} {USER_AGENT}" if user_agent else USER_AGENT
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._ceiling = None
        if rate_ceiling is not None:
            requests, seconds = rate_ceiling
            if not (requests > 0 and seconds > 0):
                raise ConfigurationError(f"rate_ceiling must be (requests, seconds), both positive: {rate_ceiling!r}")
            self._ceiling = AsyncLimiter(requests, seconds)
        self._budget: Budget = (
            budget if budget is not None else shared_budget(self.base_url, self._token, window_seconds=window_seconds)
        )
        self._on_event = on_event
        self._random = random.Random()
        self._session = session
        self._transport_cache: AiohttpTransport | None = None
        self._prepared: dict[tuple[str, str], PreparedRequest] = {}
        self._owns_session = session is None
        self._closed = False
        self.sendcloud = SendcloudResource(self)

    def __repr__(self) -> str:
        return f"WemasyClient(base_url={self.base_url!r}, token=<redacted>)"

    @property
    def rate_limit(self) -> RateLimitView:
        """The token's budget now (limit, remaining, window end, gate) and its counters."""
        return self._budget.view()

    async def __aenter__(self) -> WemasyClient:
        self._transport()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client created it; a session passed in is left open."""
        self._closed = True
        self._transport_cache = None
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _transport(self) -> AiohttpTransport:
        if self._closed:
            raise WemasyError("this WemasyClient is closed; make a new one")
        if self._transport_cache is None:
            if self._session is None:
                # Our own session carries the auth headers and timeout, so calls need not repeat them. It
                # never follows redirects and is never handed out, so the token goes nowhere else.
                headers = build_request(
                    "GET", self.base_url, "/", token=self._token, user_agent=self.user_agent
                ).headers
                self._session = aiohttp.ClientSession(
                    headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout), raise_for_status=False
                )
                self._transport_cache = AiohttpTransport(
                    self._session, session_headers=headers, session_timeout=self.timeout
                )
            else:
                self._transport_cache = AiohttpTransport(self._session)
        return self._transport_cache

    async def request(
        self,
        method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | str,
        path: str,
        *,
        json: Any = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> Any:
        """Call any Wemasy endpoint (``path`` relative to ``base_url``) and return its decoded JSON.

        Same auth, rate limiting, retries and error mapping as the modelled calls:

        >>> await client.request("GET", "/services/webshop/v1/integrations/sendcloud/status")
        {'error': False, 'integration': {...}}
        """
        exchange = await self._send(method, path, json_body=json, timeout=timeout)
        return decipher_response(exchange.response)

    def _emit(self, event: SchedulerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> Exchange:
        """Send one call with retries; the final answer is returned, not yet deciphered.

        Each attempt holds a concurrency slot, and every HTTP exchange in it (redirect hops included) is
        paid for from the budget. This is the hot path of every call, so it is one coroutine around the
        transport.
        """
        transport = self._transport_cache or self._transport()  # none once closed: _transport() raises
        request = self._prepared.get((method, path)) if json_body is None else None
        if request is None:
            request = build_request(
                method, self.base_url, path, token=self._token, json_body=json_body, user_agent=self.user_agent
            )
            if json_body is None and len(self._prepared) < 64:
                # A request without a body is the same every time; its headers are the session's own.
                if request.headers == transport.session_headers:
                    request = attrs.evolve(request, headers=transport.session_headers)
                self._prepared[(method, path)] = request
        seconds = self.timeout if timeout is NOT_GIVEN else timeout
        budget = self._budget
        policy = self.retry
        waited = 0.0
        ambiguous = False
        attempt = 1
        while True:
            failure: RawResponse | APIConnectionError
            try:
                async with self._slots:
                    hop = request
                    for _ in range(self.max_redirects + 1):
                        if self._ceiling is not None:
                            if not self._ceiling.has_capacity():
                                self._emit(WaitEvent(reason="ceiling", seconds=None))
                            await self._ceiling.acquire()
                        ticket = budget.try_acquire() or await budget.acquire(self._on_event)
                        try:
                            response = await transport.send(hop, timeout=seconds)
                        except BaseException:
                            # No answer (or cancelled mid-flight): the server may have counted it.
                            budget.no_answer(ticket)
                            raise
                        status = response.status
                        hints = parse_rate_limit_headers(response.headers)
                        budget.answered(ticket, status, hints)
                        if logger.isEnabledFor(logging.DEBUG):
                            logger.debug("%s %s -> %d", hop.method, hop.url, status)
                        if not 300 <= status < 400:
                            break
                        next_hop = follow_redirect(hop, response)
                        if next_hop is None:
                            break
                        hop = next_hop
            except APIConnectionError as exc:
                failure, cause, delay = exc, type(exc).__name__, policy.backoff(attempt, self._random)
            else:
                if status < 300 or not policy.retries_status(status):
                    return Exchange(response, ambiguous)
                failure, cause = response, str(status)
                hint = hints.retry_after
                if status == 429:
                    # The budget's gate holds every caller until then; this call just queues again.
                    delay = 0.0
                    if hint is not None and waited + hint > policy.max_wait:
                        raise self._too_long(response, hint, policy)
                    waited += hint or 0.0
                else:
                    delay = max(policy.backoff(attempt, self._random), hint or 0.0)
            if attempt >= policy.max_attempts or waited + delay > policy.max_wait:
                if isinstance(failure, APIConnectionError):
                    raise failure
                decipher_response(failure)  # raises the status's error
            attempt += 1
            waited += delay
            if isinstance(failure, APIConnectionError) and failure.ambiguous:
                ambiguous = True
            budget.count_retry()
            logger.debug("retrying %s %s (attempt %d) after %s in %.3f s", method, path, attempt, cause, delay)
            self._emit(RetryEvent(attempt=attempt, delay=delay, cause=cause, method=request.method, path=path))
            if delay > 0:
                await asyncio.sleep(delay)

    @staticmethod
    def _too_long(response: RawResponse, retry_after: float, policy: RetryPolicy) -> RateLimitError:
        try:
            decipher_response(response)
        except RateLimitError as error:
            error.message = (
                f"{error.message} The server asks to wait {retry_after:.0f} s, longer than this call's "
                f"retry budget (RetryPolicy.max_wait={policy.max_wait:g} s)."
            )
            error.args = (error.message,)
            return error
        raise AssertionError("a 429 always deciphers to RateLimitError")  # pragma: no cover
