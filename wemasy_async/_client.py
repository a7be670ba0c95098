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
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

from ._errors import APIConnectionError, ClientClosedError, ConfigurationError, DeadlineExceededError, RateLimitError
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
from ._rate_limit import RETRY_AFTER_ROUNDING, RateLimitView
from ._retry import RetryPolicy
from ._scheduler import Budget, RetryEvent, SchedulerEvent, WaitEvent, shared_budget
from ._sender import Deadline, Exchange
from ._transport import AiohttpTransport
from ._types import NOT_GIVEN, Timeout
from .resources.sendcloud import SendcloudResource

__all__ = ["BASE_URL_ENV_VAR", "REDIS_URL_ENV_VAR", "WemasyClient"]

BASE_URL_ENV_VAR: Final = "WEMASY_BASE_URL"
REDIS_URL_ENV_VAR: Final = "WEMASY_REDIS_URL"

logger = logging.getLogger("wemasy_async")


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
        deadline: seconds a whole call may take, budget waits, retries and attempts included (``None``: no
            limit, the default); each call may override it. For web handlers that must answer in time: a
            wait for the budget or an exchange that would end after it raises
            :class:`DeadlineExceededError` (at once when the wait is known to end too late); a retry that
            would start after it is not made, and the last failure is raised instead.
        window_seconds: the length of the server's rate-limit window (60 s for Wemasy). ``None`` (the
            default) keeps what the token's shared budget has: 60 s, or what another client named.
        max_concurrency: requests this client has in flight at once, at most.
        rate_ceiling: ``(requests, seconds)``: a smooth ceiling of this client's own, below the server's.
        retry: how failures are retried; see :class:`RetryPolicy`.
        on_event: called with a :class:`WaitEvent` before each wait for the budget and a
            :class:`RetryEvent` before each retry (both are also logged at debug level).
        budget: a budget to use instead of the process-wide one (any :class:`Budget`); the client does not
            close it.
        redis_url: share the token's budget with every process and host that names the same Redis
            (``redis://host:6379/0``; default: ``WEMASY_REDIS_URL``). Needs ``wemasy-async[redis]``. If
            Redis stops answering, the client carries on with the process's own budget until it is back.
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
        deadline: float | None = None,
        window_seconds: float | None = None,
        max_concurrency: int = 32,
        rate_ceiling: tuple[float, float] | None = None,
        retry: RetryPolicy | None = None,
        on_event: Callable[[SchedulerEvent], None] | None = None,
        budget: Budget[Any] | None = None,
        redis_url: str | None = None,
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
        if deadline is not None and not deadline > 0:
            raise ConfigurationError(f"deadline must be positive seconds or None, got {deadline!r}")
        if window_seconds is not None and not window_seconds > 0:
            raise ConfigurationError(f"window_seconds must be positive, got {window_seconds!r}")
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        self.timeout = timeout
        self.deadline = deadline
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
        self._on_event = on_event
        redis_url = redis_url if redis_url is not None else os.environ.get(REDIS_URL_ENV_VAR) or None
        local = shared_budget(self.base_url, self._token, window_seconds=window_seconds)
        self._owns_budget = budget is None and redis_url is not None
        if budget is not None:
            self._budget: Budget[Any] = budget
        elif redis_url is not None:
            self._budget = _redis_budget(
                redis_url,
                self.base_url,
                self._token,
                window_seconds=window_seconds or local.window_seconds,
                lease_seconds=max(10.0, (timeout or 60.0) + 5.0),
                fallback=local,
                on_event=self._emit,
            )
        else:
            self._budget = local
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
        try:
            if self._owns_session and self._session is not None:
                session, self._session = self._session, None
                await session.close()
        finally:
            if self._owns_budget:
                self._owns_budget = False
                await self._budget.aclose()

    def _transport(self) -> AiohttpTransport:
        if self._closed:
            raise ClientClosedError("this WemasyClient is closed; make a new one")
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
        deadline: Deadline = NOT_GIVEN,
    ) -> Any:
        """Call any Wemasy endpoint (``path`` relative to ``base_url``) and return its decoded JSON.

        Same auth, rate limiting, retries and error mapping as the modelled calls:

        >>> await client.request("GET", "/services/webshop/v1/integrations/sendcloud/status")
        {'error': False, 'integration': {...}}
        """
        exchange = await self._send(
            method, path, json_body=json, timeout=timeout, deadline_at=self.deadline_at(deadline)
        )
        return decipher_response(exchange.response)

    def deadline_at(self, deadline: Deadline) -> float | None:
        """The ``time.monotonic()`` time by which a call started now with ``deadline`` must end."""
        seconds = self.deadline if deadline is NOT_GIVEN else deadline
        if seconds is None:
            return None
        if not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ConfigurationError(f"deadline must be positive seconds or None, got {seconds!r}")
        return time.monotonic() + seconds

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
        deadline_at: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Exchange:
        """Send one call with retries (``retry``: another policy than the client's, for this call); the
        final answer is returned, not yet deciphered.

        Each attempt holds a concurrency slot, and every HTTP exchange in it (redirect hops included) is
        paid for from the budget. A 429 is the budget's business: its gate holds every caller until the
        window has surely ended, and the throttled request queues again without using an attempt. This is
        the hot path of every call, so it is one coroutine around the transport.
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
        policy = self.retry if retry is None else retry
        waited = 0.0  # backoff waits, and waits after 429s that named no time
        ambiguous = False
        first_failure_at: float | None = None  # when this call first failed (retries ride out an outage from then)
        attempt = sends = 1
        while True:
            failure: RawResponse | APIConnectionError
            try:
                if deadline_at is None:
                    await self._slots.acquire()
                else:
                    await self._until_deadline(self._slots.acquire(), deadline_at, request, ambiguous)
                try:
                    hop = request
                    for _ in range(self.max_redirects + 1):
                        if self._ceiling is not None:
                            if not self._ceiling.has_capacity():
                                self._emit(WaitEvent(reason="ceiling", seconds=None))
                            acquiring = self._ceiling.acquire()
                            await (
                                acquiring
                                if deadline_at is None
                                else self._until_deadline(acquiring, deadline_at, hop, ambiguous)
                            )
                        ticket = budget.try_acquire()
                        if ticket is None:  # a ticket is opaque: 0 or "" may be one
                            ticket = await self._acquire(budget, hop, deadline_at, ambiguous)
                        exchange_timeout = seconds
                        if deadline_at is not None:
                            left = deadline_at - time.monotonic()
                            if left <= 0:  # aiohttp reads a timeout of 0 as none at all
                                await budget.release(ticket)
                                raise self._deadline_error(hop, ambiguous=ambiguous, what="to send")
                            exchange_timeout = left if seconds is None else min(seconds, left)
                        try:
                            response = await transport.send(hop, timeout=exchange_timeout)
                        except APIConnectionError as exc:
                            # One refused before a byte was sent (not ambiguous) was never counted: its
                            # place goes back to the budget.
                            await (budget.no_answer(ticket) if exc.ambiguous else budget.release(ticket))
                            if deadline_at is not None and time.monotonic() >= deadline_at:
                                what = "for an answer"
                                raise self._deadline_error(
                                    hop, ambiguous=exc.ambiguous or ambiguous, what=what
                                ) from None
                            raise
                        except BaseException:
                            # No answer (or cancelled mid-flight): the server may have counted it.
                            await budget.no_answer(ticket)
                            raise
                        status = response.status
                        hints = parse_rate_limit_headers(response.headers)
                        gate = await budget.answered(ticket, status, hints)
                        if logger.isEnabledFor(logging.DEBUG):
                            logger.debug("%s %s -> %d", hop.method, hop.url, status)
                        if not 300 <= status < 400:
                            break
                        next_hop = follow_redirect(hop, response)
                        if next_hop is None:
                            break
                        hop = next_hop
                finally:
                    self._slots.release()
            except DeadlineExceededError:
                raise
            except APIConnectionError as exc:
                failure, cause, retry_after = exc, type(exc).__name__, 0.0
            else:
                if status < 300 or not policy.retries_status(status):
                    return Exchange(response, ambiguous)
                failure, cause = response, str(status)
                if status == 429 and policy.wait_on_rate_limit:
                    # The gate holds every caller until then; this call just queues again, using no attempt.
                    # A wait the server names is refused when it is longer than max_wait; waits it does not
                    # name add up to at most max_wait.
                    if hints.retry_after is not None:
                        too_long = hints.retry_after > policy.max_wait
                    else:
                        waited += gate
                        too_long = waited > policy.max_wait
                    if too_long:
                        raise self._too_long(response, gate, policy)
                    sends += 1
                    self._count_retry(sends, gate, cause, method, path)
                    continue
                retry_after = hints.retry_after or 0.0
            now = time.monotonic()
            if first_failure_at is None:
                first_failure_at = now
            until_deadline = None if deadline_at is None else deadline_at - now
            delay = max(policy.delay(attempt, now - first_failure_at, self._random, until_deadline), retry_after)
            if (
                attempt >= policy.max_attempts
                or waited + delay > policy.max_wait
                or (until_deadline is not None and delay >= until_deadline)
            ):
                if isinstance(failure, APIConnectionError):
                    raise failure
                decipher_response(failure)  # raises the status's error
            attempt += 1
            sends += 1
            waited += delay
            if isinstance(failure, APIConnectionError) and failure.ambiguous:
                ambiguous = True
            self._count_retry(sends, delay, cause, method, path)
            if delay > 0:
                await asyncio.sleep(delay)

    def _count_retry(self, attempt: int, delay: float, cause: str, method: str, path: str) -> None:
        self._budget.count_retry()
        logger.debug("retrying %s %s (attempt %d) after %s in %.3f s", method, path, attempt, cause, delay)
        self._emit(RetryEvent(attempt=attempt, delay=delay, cause=cause, method=method, path=path))

    async def _acquire(
        self, budget: Budget[Any], hop: PreparedRequest, deadline_at: float | None, ambiguous: bool
    ) -> Any:
        """Wait for the budget, within the call's deadline and the retry policy's longest wait."""
        try:
            # A gate stays closed up to a second past the wait the server named (its Retry-After is rounded
            # down): that second is the budget's margin, not part of the wait the caller accepts.
            max_gate_wait = self.retry.max_wait + RETRY_AFTER_ROUNDING
            return await budget.acquire(self._on_event, max_gate_wait=max_gate_wait, deadline=deadline_at)
        except TimeoutError:
            raise self._deadline_error(hop, ambiguous=ambiguous, what="for the rate-limit budget") from None
        except RateLimitError as error:
            error.method, error.url = hop.method, hop.url
            raise

    async def _until_deadline(self, waiting: Any, deadline_at: float, hop: PreparedRequest, ambiguous: bool) -> None:
        try:
            await asyncio.wait_for(waiting, max(0.0, deadline_at - time.monotonic()))
        except asyncio.TimeoutError:
            raise self._deadline_error(hop, ambiguous=ambiguous, what="for a free slot") from None

    @staticmethod
    def _deadline_error(hop: PreparedRequest, *, ambiguous: bool, what: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"the call's deadline passed while waiting {what}", method=hop.method, url=hop.url, ambiguous=ambiguous
        )

    @staticmethod
    def _too_long(response: RawResponse, wait: float, policy: RetryPolicy) -> RateLimitError:
        try:
            decipher_response(response)
        except RateLimitError as error:
            error.message = (
                f"{error.message} The rate limit's gate is closed for {wait:.0f} s, longer than this call "
                f"waits (RetryPolicy.max_wait={policy.max_wait:g} s)."
            )
            error.args = (error.message,)
            return error
        raise AssertionError("a 429 always deciphers to RateLimitError")  # pragma: no cover


def _redis_budget(redis_url: str, base_url: str, token: str, **options: Any) -> Budget[Any]:
    """A budget shared through Redis; the ``redis`` extra is imported only when one is asked for."""
    if not isinstance(redis_url, str) or not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError("redis_url must be a redis://, rediss:// or unix:// URL")
    try:
        from ._redis_budget import RedisBudget
    except ImportError:
        raise ConfigurationError(
            'a shared budget through Redis needs the redis extra: pip install "wemasy-async[redis]"'
        ) from None
    try:
        return RedisBudget(redis_url, base_url, token, **options)
    except ValueError:  # its text may repeat the URL, password and all
        raise ConfigurationError("redis_url is not a usable Redis URL (redis://[:password@]host:port/db)") from None
