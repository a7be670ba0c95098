"""WemasyClient: configuration, session ownership, and the one path every request takes.

That path is layered as httpx's is: ``_send`` -> ``_send_handling_retries`` -> ``_send_handling_redirects``
(one attempt, in a concurrency slot) -> ``_send_paid`` (ceiling, budget ticket, transport, settle), so each
concern has one place; docs/design/client.md tells why.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import urllib.request
from asyncio import _get_running_loop
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, cast

import aiohttp
import attrs
from aiolimiter import AsyncLimiter
from yarl import URL

from ._chunk_size import ShareSizes, shared_chunk_sizer
from ._errors import (
    APIConnectionError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    RateLimitError,
    UsageError,
)
from ._logging import setup_logging_from_env
from ._protocol import (
    DEFAULT_BASE_URL,
    TOKEN_ENV_VAR,
    USER_AGENT,
    PreparedRequest,
    RateLimitHeaders,
    RawResponse,
    authorized_request,
    decipher_response,
    encode_json_body,
    follow_redirect,
    new_record,
    normalize_base_url,
    parse_rate_limit_headers,
    request_url,
    validate_token,
    validate_user_agent,
)
from ._retry import NO_RETRIES, RetryPolicy
from ._sender import Deadline, Exchange
from ._telemetry import RESENDS, Telemetry, TracingTransport, telemetry_for
from ._transport import AiohttpTransport, small_reads_connector
from ._types import NOT_GIVEN, NotGiven, Timeout, _is_seconds, checked_timeout
from .budgets import (
    RETRY_AFTER_ROUNDING,
    Budget,
    Priority,
    RateLimitView,
    RetryEvent,
    SchedulerEvent,
    WaitEvent,
    budget_for,
    checked_priority,
)
from .resources.sendcloud import SendcloudResource

__all__ = ["BASE_URL_ENV_VAR", "REDIS_URL_ENV_VAR", "WemasyClient", "checked_timeout"]

BASE_URL_ENV_VAR: Final = "WEMASY_BASE_URL"
REDIS_URL_ENV_VAR: Final = "WEMASY_REDIS_URL"
WINDOW_SECONDS_ENV_VAR: Final = "WEMASY_WINDOW_SECONDS"

logger = logging.getLogger("wemasy_async")


class _Connection:
    """What a client shares with the copies :meth:`WemasyClient.with_options` makes of it: the session (and
    whether the client made it), the transport over it, the event loop they belong to, and whether the
    client they came from is closed. Made once per client made with ``WemasyClient(...)``."""

    __slots__ = ("closed", "loop", "owns_session", "proxy", "proxy_headers", "session", "transport")

    def __init__(self, session: aiohttp.ClientSession | None) -> None:
        self.session = session
        self.owns_session = session is None
        #: The proxy a session the client makes goes through (from the environment), and its credentials.
        self.proxy: URL | None = None
        self.proxy_headers: dict[str, str] | None = None
        self.transport: AiohttpTransport | None = None
        #: The event loop the session belongs to: the one running when the client was first used.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False


class _Call(NamedTuple):
    """What one call hands down the send path's layers (a tuple: made on every call)."""

    method: str
    #: The path as the caller gave it (for the retry events and log).
    path: str
    request: PreparedRequest
    #: The timeout of each HTTP exchange, before the deadline cuts it short.
    timeout: float | aiohttp.ClientTimeout | None
    deadline_at: float | None
    policy: RetryPolicy
    on_sent: Callable[[], None] | None
    priority: Priority


class _Answer(NamedTuple):
    """One paid exchange's answer, as the budget settled it."""

    response: RawResponse
    hints: RateLimitHeaders
    #: Seconds the budget's gate stays closed from now (0 when it is open).
    gate: float


class _Tries:
    """What a call's retry loop counts as it goes."""

    __slots__ = ("ambiguous", "attempt", "first_failure_at", "sends", "waited")

    def __init__(self) -> None:
        #: Attempts used (a 429 that queues again uses none) and sends made.
        self.attempt = self.sends = 1
        #: Backoff waits, and waits after 429s that named no time.
        self.waited = 0.0
        #: A failure that may have reached the server was retried.
        self.ambiguous = False
        #: When the call first failed: retries ride out an outage from then.
        self.first_failure_at: float | None = None


class WemasyClient:
    """An asyncio client of the Wemasy API.

    >>> async with WemasyClient(token="...") as client:
    ...     integration = await client.sendcloud.status()
    ...     result = await client.sendcloud.push_shipments([1001, 1002])

    Every request goes through one rate-limit budget per (base URL, token), shared by all clients and
    tasks of the process (with ``budget="host"``, by this user's other processes on the machine too, through
    a small file; with ``redis_url``, by every process that uses that Redis), which learns the server's
    fixed window from its ``X-RateLimit-*`` headers.

    A client belongs to the event loop it is first used in: make it inside the coroutine that
    ``asyncio.run`` runs. Used in another loop (a second ``asyncio.run``), or after :meth:`close`, every
    call raises :class:`ClientClosedError` before sending anything.

    Args:
        token: the API token; defaults to the ``WEMASY_API_TOKEN`` environment variable.
        base_url: defaults to ``WEMASY_BASE_URL``, else ``https://api.wemasy.nl/api``. Plain ``http://``
            is refused unless the host is loopback or ``allow_insecure_http=True``.
        session: an ``aiohttp.ClientSession`` you own; the client never closes it, and uses it as it is
            (its proxy and ``trust_env`` settings included). Without one the client makes its own on first
            use and closes it in :meth:`close`.
        timeout: for one HTTP exchange: seconds, or an ``aiohttp.ClientTimeout`` for finer limits
            (``connect``, ``sock_read``); ``None``: no limit. Each call may override it.
        deadline: seconds a whole call may take, budget waits, retries and attempts included (``None``: no
            limit, the default); each call may override it. For web handlers that must answer in time: a
            wait for the budget or an exchange that would end after it raises
            :class:`DeadlineExceededError` (at once when the wait is known to end too late); a retry that
            would start after it is not made, and the last failure is raised instead.
        window_seconds: the length of the server's rate-limit window (60 s for Wemasy). ``None`` (the
            default): ``WEMASY_WINDOW_SECONDS`` if set, else what the token's shared budget has: 60 s, or
            what another client named.
        max_concurrency: requests this client has in flight at once, at most, in each class of calls (a
            batch's bulk requests have slots of their own, so they never hold up an interactive call).
        rate_ceiling: ``(requests, seconds)``: a smooth ceiling of this client's own, below the server's.
        retry: how failures are retried; see :class:`RetryPolicy`.
        max_retries: the simple form of ``retry``: re-sends after the first send (``RetryPolicy(
            max_attempts=max_retries + 1)``). ``0`` is :data:`NO_RETRIES`: every failure is raised as it
            comes, a 429 included (no wait for the rate-limit window). Not together with ``retry``.
        on_event: called with a :class:`WaitEvent` before each wait for the budget and a
            :class:`RetryEvent` before each retry (both are also logged at debug level).
        budget: ``"process"`` (the default: each process has the token's budget of its own), ``"host"``
            (shared by this user's processes on this machine, through a file in ``$XDG_RUNTIME_DIR``, as
            ``WEMASY_BUDGET=host`` does), or a budget to use instead (any :class:`Budget`; the client does
            not close it). Where the host's file cannot be used the process's budget is, with one log line.
        redis_url: share the token's budget with every process and host that names the same Redis
            (``redis://host:6379/0``; default: ``WEMASY_REDIS_URL``). Needs ``wemasy-async[redis]``. If
            Redis stops answering, the client carries on with its own (the process's, or the host's) until it
            is back.
        max_redirects: same-origin redirects followed per call. Redirects to another origin are never
            followed, since they would carry the token.
        user_agent: a product token put before the SDK's own in ``User-Agent`` (one line of text).
        trust_env: the session the client makes goes through the proxy that ``HTTPS_PROXY`` (for https)
            or ``HTTP_PROXY`` (for http) names, unless ``NO_PROXY`` lists the host, as requests and httpx
            do; read once, when the session is made. ``False``: connect directly whatever the environment
            says. (A session you pass keeps its own settings.)
        tracer_provider: the OpenTelemetry provider for the client's spans (see docs/telemetry.md); by
            default the global one, if set when the client is made. With neither provider, or without
            ``opentelemetry-api`` (the ``otel`` extra), the client records nothing, at no cost.
        meter_provider: the OpenTelemetry provider for the client's metrics; by default the global one.
    """

    def __init__(  # noqa: PLR0913 -- every option after the token is keyword-only, each with a default
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | aiohttp.ClientTimeout | None = 30.0,
        deadline: float | None = None,
        window_seconds: float | None = None,
        max_concurrency: int = 32,
        rate_ceiling: tuple[float, float] | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        on_event: Callable[[SchedulerEvent], None] | None = None,
        budget: Budget[Any] | str | None = None,
        redis_url: str | None = None,
        allow_insecure_http: bool = False,
        max_redirects: int = 3,
        user_agent: str | None = None,
        trust_env: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        setup_logging_from_env()  # WEMASY_LOG=debug|info: the library's log on stderr
        self._token = validate_token(token if token is not None else os.environ.get(TOKEN_ENV_VAR))
        self.base_url = normalize_base_url(
            base_url or os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(f"session must be an aiohttp.ClientSession, got {type(session).__name__}")
        if not isinstance(trust_env, bool):
            raise ConfigurationError(f"trust_env must be True or False, got {trust_env!r}")
        if on_event is not None and not callable(on_event):
            raise ConfigurationError(f"on_event must be a callable or None, got {type(on_event).__name__}")
        self.timeout = checked_timeout(timeout)
        self.deadline = _checked_seconds("deadline", deadline)
        window_seconds = _checked_seconds("window_seconds", window_seconds)
        if window_seconds is None:
            window_seconds = _window_seconds_from_env()
        self.max_redirects = _checked_count("max_redirects", max_redirects, least=0)
        self.max_concurrency = _checked_count("max_concurrency", max_concurrency, least=1)
        prefix = validate_user_agent(user_agent)
        self.user_agent = f"{prefix} {USER_AGENT}" if prefix else USER_AGENT
        self.retry = _retry_policy(RetryPolicy(), retry, max_retries)
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._bulk_slots = asyncio.Semaphore(self.max_concurrency)  # a batch's: see _send_paid
        self._ceiling = None
        if rate_ceiling is not None:
            self._ceiling = AsyncLimiter(*_checked_ceiling(rate_ceiling))
        self._on_event = on_event
        self._priority: Priority | None = None
        redis_url = redis_url if redis_url is not None else os.environ.get(REDIS_URL_ENV_VAR) or None
        chosen = budget_for(
            self.base_url,
            self._token,
            budget=budget,
            redis_url=redis_url,
            window_seconds=window_seconds,
            lease_seconds=max(10.0, (_total_seconds(self.timeout) or 60.0) + 5.0),
            on_event=self._emit,
        )
        self._budget: Budget[Any] = chosen.budget
        self._owns_budget = chosen.owned
        #: What the token's pushes have learned of the server's request sizes (shared in the process).
        self.chunk_sizer = shared_chunk_sizer(self.base_url, self._token)
        #: How the fleet of a budget kept outside the process (Redis) shares what its batches learned of the
        #: sizes: a budget's optional ``share_chunk_sizes``; None: this process learns alone.
        self.share_chunk_sizes: ShareSizes | None = getattr(self._budget, "share_chunk_sizes", None)
        self._random = random.Random()
        self._conn = _Connection(session)
        if session is None and trust_env:
            self._conn.proxy, self._conn.proxy_headers = _environment_proxy(self.base_url)
        self._is_copy = False
        self._transport_cache: AiohttpTransport | None = None
        #: OpenTelemetry's spans and metrics of this client's calls, or None (nothing would record them).
        self._telemetry = telemetry_for(tracer_provider, meter_provider)
        if self._telemetry is not None:
            self._telemetry.watch(self, self._budget.view, self.base_url)
        self._prepared: dict[tuple[str, str], PreparedRequest] = {}
        #: The calls with no body and the client's own options, by (method, path); a copy has its own.
        self._plain_calls: dict[tuple[str, str], _Call] = {}
        #: This client (or copy) was closed; the session's owner closing sets ``_conn.closed`` for all.
        self._closed = False
        self.sendcloud = SendcloudResource(self)

    def __repr__(self) -> str:
        return f"WemasyClient(base_url={self.base_url!r}, token=<redacted>)"

    def with_options(
        self,
        *,
        timeout: Timeout = NOT_GIVEN,
        deadline: Deadline = NOT_GIVEN,
        retry: RetryPolicy | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        priority: Priority | NotGiven | None = NOT_GIVEN,
    ) -> WemasyClient:
        """A light copy of this client with other defaults for its calls; what is not given stays as it is.

        >>> patient = client.with_options(timeout=120, max_retries=10)
        >>> await patient.sendcloud.push_shipments(ids)

        ``priority`` is the class of the copy's calls for the token's budget: ``"interactive"`` calls are
        served before ``"bulk"`` ones, and bulk work leaves free the slots interactive calls have been using
        lately. ``None`` (the default) leaves it to each call: interactive, but bulk for a push of more than
        one chunk.

        The copy shares everything else with this client: the session, the token's rate-limit budget, the
        ``max_concurrency`` slots and ``rate_ceiling``, so calls through either count against the same
        limits. It owns none of it: closing the copy (or leaving ``async with`` on it) only makes the copy
        refuse further calls, and this client's :meth:`close` closes the session for both. Make as many
        as you like (one per request in a web service is fine): a copy costs a few attribute copies.
        """
        copy = object.__new__(WemasyClient)
        copy.__dict__.update(self.__dict__)
        copy._owns_budget = False
        copy._is_copy = True
        copy._closed = False
        copy._plain_calls = {}
        if timeout is not NOT_GIVEN:
            copy.timeout = checked_timeout(timeout)
        if deadline is not NOT_GIVEN:
            copy.deadline = _checked_seconds("deadline", deadline)
        if retry is not NOT_GIVEN or max_retries is not NOT_GIVEN:
            given = None if retry is NOT_GIVEN else (RetryPolicy() if retry is None else retry)
            copy.retry = _retry_policy(self.retry, given, None if max_retries is NOT_GIVEN else max_retries)
        if priority is not NOT_GIVEN:
            copy._priority = checked_priority(priority)
        copy.sendcloud = SendcloudResource(copy)
        return copy

    @property
    def priority(self) -> Priority | None:
        """The class of this client's calls for the budget (see :meth:`with_options`); None: each call's own."""
        return self._priority

    @property
    def rate_limit(self) -> RateLimitView:
        """The token's budget now (limit, remaining, window end, gate) and its counters."""
        return self._budget.view()

    @property
    def _session(self) -> aiohttp.ClientSession | None:
        return self._conn.session

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
        """Close the session if the client created it; a session passed in is left open.

        On a copy made by :meth:`with_options` only the copy is closed: the session and budget belong to
        the client it was made from.
        """
        self._closed = True
        self._transport_cache = None
        if self._is_copy:
            return
        conn = self._conn
        conn.closed = True
        conn.transport = None
        try:
            if conn.owns_session and conn.session is not None:
                session, conn.session = conn.session, None
                try:
                    await session.close()
                except RuntimeError:  # its event loop is gone (a later asyncio.run), and its connections with it
                    if conn.loop is None or not conn.loop.is_closed():
                        raise
        finally:
            if self._owns_budget:
                self._owns_budget = False
                await self._budget.aclose()

    def _transport(self) -> AiohttpTransport:
        """The transport, made with the session on first use (in the event loop the client then belongs to)."""
        self._check_usable()
        conn = self._conn
        if conn.transport is None:
            conn.loop = asyncio.get_running_loop()
            if conn.session is None:
                # Our own session carries the auth headers and timeout, so calls need not repeat them. It
                # never follows redirects and is never handed out, so the token goes nowhere else.
                session_headers = dict(
                    authorized_request(
                        "GET", self.base_url, None, token=self._token, user_agent=self.user_agent
                    ).headers
                )
                if conn.proxy is not None:
                    # aiohttp adds a session's headers to those it sends the proxy, and sends an Authorization
                    # among them as Proxy-Authorization: the token would go to the proxy (in the clear in
                    # the CONNECT of an https call). Through a proxy, each request carries the token itself.
                    del session_headers["Authorization"]
                timeout = self.timeout
                conn.session = aiohttp.ClientSession(
                    connector=small_reads_connector(),
                    headers=session_headers,
                    timeout=timeout
                    if isinstance(timeout, aiohttp.ClientTimeout)
                    else aiohttp.ClientTimeout(total=timeout),
                    raise_for_status=False,
                )
                conn.transport = AiohttpTransport(
                    conn.session,
                    session_headers=session_headers,
                    session_timeout=timeout,
                    proxy=conn.proxy,
                    proxy_headers=conn.proxy_headers,
                )
            else:
                conn.transport = AiohttpTransport(conn.session)
        transport = conn.transport
        if self._telemetry is not None:
            transport = cast("AiohttpTransport", TracingTransport(transport, self._telemetry))
        self._transport_cache = transport
        return transport

    def _check_usable(self) -> None:
        """Raise :class:`ClientClosedError` when this client cannot send: closed, or its session belongs to
        another event loop."""
        conn = self._conn
        if self._closed:
            raise ClientClosedError("this WemasyClient is closed; make a new one")
        if conn.closed:
            raise ClientClosedError(
                "the WemasyClient this one was made from (with with_options) is closed; make a new one"
            )
        loop, running = conn.loop, _get_running_loop()
        if loop is not None and loop is not running and (running is not None or loop.is_closed()):
            gone = ", which has closed" if loop.is_closed() else ""
            raise ClientClosedError(
                f"this WemasyClient was first used in another event loop{gone}, and its connections belong to "
                "that loop. Make the client inside the coroutine that asyncio.run() runs (one client per "
                "event loop), not once for several asyncio.run() calls."
            )

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
        if not (isinstance(method, str) and method.isascii() and method.isalpha()):
            raise UsageError(f"method must be an HTTP method such as 'GET' or 'POST', got {method!r}")
        if not isinstance(path, str):
            raise UsageError(f"path must be a str, got {type(path).__name__}")
        exchange = await self._send(
            method, path, json_body=json, timeout=timeout, deadline_at=self.deadline_at(deadline)
        )
        return decipher_response(exchange.response)

    def deadline_at(self, deadline: Deadline) -> float | None:
        """The ``time.monotonic()`` time by which a call started now with ``deadline`` must end.

        Every call asks this first, so it is also where a call on a client that cannot send (closed, or
        first used in another event loop) raises :class:`ClientClosedError`, before anything is sent.
        """
        conn = self._conn
        if self._closed or conn.closed or (conn.loop is not None and conn.loop is not _get_running_loop()):
            self._check_usable()
        seconds = self.deadline if deadline is NOT_GIVEN else deadline
        if seconds is None:
            return None
        if not _is_seconds(seconds):
            raise ConfigurationError(f"deadline must be positive seconds or None, got {seconds!r}")
        return time.monotonic() + seconds

    def _emit(self, event: SchedulerEvent) -> None:
        if self._telemetry is not None and isinstance(event, WaitEvent):
            self._telemetry.waited(event.reason, event.seconds, event.priority)
        if self._on_event is not None:
            self._on_event(event)

    def _send(  # noqa: PLR0913 -- the call's options, keyword-only
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: Timeout = NOT_GIVEN,
        deadline_at: float | None = None,
        retry: RetryPolicy | None = None,
        on_sent: Callable[[], None] | None = None,
        priority: Priority | None = None,
        operation: str = "request",
    ) -> Coroutine[Any, Any, Exchange]:
        """Send one call with retries (``retry``: another policy than the client's, for this call); the
        final answer is returned, not yet deciphered. ``on_sent()`` is called as each attempt is handed to
        the transport: from then on the server may have it (a batch counts its ids in doubt if it stops).
        ``priority`` is the call's class for the budget (None: the client's, else interactive).
        ``operation`` names the call's span (``sendcloud.status``...), with OpenTelemetry on.

        The layers, outermost first: :meth:`_send_handling_retries` (backoff, and a 429 queueing again),
        :meth:`_send_handling_redirects` (same-origin hops, entered only after a 3xx) and :meth:`_send_paid`
        (one HTTP exchange: a concurrency slot, a ticket of the budget, the answer settled). Not a coroutine
        itself but the outermost layer's, which the caller awaits: every resume at an I/O wait passes each
        frame of the chain, so the common path has only the two frames it needs.
        """
        transport = self._transport_cache or self._transport()  # none once closed: _transport() raises
        plain = json_body is None and timeout is NOT_GIVEN and deadline_at is None and retry is None
        if plain and on_sent is None and priority is None and self._telemetry is None:
            # A call with no body and the client's own options is the same every time: it is kept.
            call = self._plain_calls.get((method, path))
            if call is not None and call.policy is self.retry and call.timeout is self.timeout:
                return self._send_handling_retries(transport, call)
        request = self._prepared.get((method, path)) if json_body is None else None
        if request is None:
            request = self._prepare(transport, method, path, json_body)
        call = _Call(
            method,
            path,
            request,
            self.timeout if timeout is NOT_GIVEN else checked_timeout(timeout),
            deadline_at,
            self.retry if retry is None else retry,
            on_sent,
            priority or self._priority or "interactive",
        )
        if plain and on_sent is None and priority is None and len(self._plain_calls) < 64:
            self._plain_calls[(method, path)] = call
        if self._telemetry is not None:  # every call in its span (so none is taken from the plain calls)
            return self._telemetry.traced_call(operation, self._send_handling_retries(transport, call))
        return self._send_handling_retries(transport, call)

    def _prepare(self, transport: AiohttpTransport, method: str, path: str, json_body: Any) -> PreparedRequest:
        """The request of a call; one without a body is kept, as it is the same every time."""
        # What can fail is done before the token is handed over (no frame of a raised error holds it).
        url, body = request_url(self.base_url, path), encode_json_body(json_body)
        request = authorized_request(method, url, body, token=self._token, user_agent=self.user_agent)
        if json_body is None and len(self._prepared) < 64:
            # Its headers are the session's own: the transport then passes none.
            if request.headers == transport.session_headers:
                request = attrs.evolve(request, headers=transport.session_headers)
            self._prepared[(method, path)] = request
        return request

    async def _send_handling_retries(self, transport: AiohttpTransport, call: _Call) -> Exchange:
        """Attempts until one is answered for good. A 429 is the budget's business: its gate holds every
        caller until the window has surely ended, and the throttled request queues again using no attempt."""
        tries: _Tries | None = None  # made at the first failure: most calls have none
        policy = call.policy
        while True:
            ambiguous = tries is not None and tries.ambiguous
            failure: RawResponse | APIConnectionError
            try:
                answer = await self._send_paid(transport, call, call.request, ambiguous)
                if 300 <= answer.response.status < 400 and self.max_redirects:
                    answer = await self._send_handling_redirects(transport, call, answer, ambiguous)
            except DeadlineExceededError:
                raise
            except APIConnectionError as exc:
                failure, cause, retry_after = exc, type(exc).__name__, 0.0
            else:
                status = answer.response.status
                if status < 300 or not policy.retries_status(status):
                    return new_record(Exchange, (answer.response, ambiguous))
                failure, cause = answer.response, str(status)
                if status == 429 and policy.wait_on_rate_limit:
                    self._queue_again(call, tries := tries or _Tries(), answer)
                    continue
                retry_after = answer.hints.retry_after or 0.0
            tries = tries or _Tries()
            delay = self._retry_delay(call, tries, failure, retry_after)
            tries.attempt += 1
            tries.sends += 1
            tries.waited += delay
            if isinstance(failure, APIConnectionError) and failure.ambiguous:
                tries.ambiguous = True
            self._count_retry(tries.sends, delay, cause, call.method, call.path)
            if delay > 0:
                await asyncio.sleep(delay)

    def _queue_again(self, call: _Call, tries: _Tries, answer: _Answer) -> None:
        """Count a 429 that queues again behind the gate, or raise when the gate's wait is too long for this
        call: a wait the server names must not pass ``max_wait``; waits it does not name add up to it."""
        policy = call.policy
        if answer.hints.retry_after is not None:
            too_long = answer.hints.retry_after > policy.max_wait
        else:
            tries.waited += answer.gate
            too_long = tries.waited > policy.max_wait
        if too_long:
            raise self._too_long(answer.response, answer.gate, policy)
        tries.sends += 1
        self._count_retry(tries.sends, answer.gate, "429", call.method, call.path)

    def _retry_delay(
        self, call: _Call, tries: _Tries, failure: RawResponse | APIConnectionError, retry_after: float
    ) -> float:
        """The wait before re-sending after ``failure``; the failure is raised instead when the call gives
        up (attempts used, ``max_wait`` or the deadline would pass)."""
        policy = call.policy
        now = time.monotonic()
        if tries.first_failure_at is None:
            tries.first_failure_at = now
        until_deadline = None if call.deadline_at is None else call.deadline_at - now
        room = policy.max_wait - tries.waited
        delay = max(
            policy.delay(tries.attempt, now - tries.first_failure_at, self._random, until_deadline, room), retry_after
        )
        if (
            tries.attempt >= policy.max_attempts
            or tries.waited + delay > policy.max_wait
            or (until_deadline is not None and delay >= until_deadline)
        ):
            if isinstance(failure, APIConnectionError):
                try:
                    raise failure
                finally:
                    failure.__context__ = None  # Python 3.10 would chain aiohttp's error (see the transport)
            decipher_response(failure)  # raises the status's error
        return delay

    async def _send_handling_redirects(
        self, transport: AiohttpTransport, call: _Call, answer: _Answer, ambiguous: bool
    ) -> _Answer:
        """After a 3xx ``answer``: same-origin redirects, up to ``max_redirects`` hops, each one paid for."""
        hop = call.request
        for _ in range(self.max_redirects):
            next_hop = follow_redirect(hop, answer.response)
            if next_hop is None:
                break
            hop = next_hop
            answer = await self._send_paid(transport, call, hop, ambiguous)
            if not 300 <= answer.response.status < 400:
                break
        return answer

    async def _send_paid(
        self, transport: AiohttpTransport, call: _Call, hop: PreparedRequest, ambiguous: bool
    ) -> _Answer:
        """One HTTP exchange: a concurrency slot, the ceiling, a ticket of the budget, the transport, and the
        answer settled. Each class has its own slots: a batch's requests waiting for the budget (the window,
        the reserve) hold bulk slots, so the client's interactive calls never wait for a slot behind them;
        and every call takes its slot before its ticket, so no ticket waits for a slot (a slot holder waiting
        for the answer of a ticket that waits for its slot would wait forever)."""
        deadline_at = call.deadline_at
        slots = self._bulk_slots if call.priority == "bulk" else self._slots
        if deadline_at is None:
            await slots.acquire()
        else:
            await self._until_deadline(slots.acquire(), deadline_at, hop, ambiguous)
        try:
            if self._ceiling is not None:
                await self._wait_for_ceiling(self._ceiling, hop, deadline_at, ambiguous)
            budget = self._budget
            ticket = budget.try_acquire(call.priority)
            if ticket is None:  # a ticket is opaque: 0 or "" may be one
                ticket = await self._acquire(budget, call, hop, ambiguous)
            exchange_timeout = call.timeout
            if deadline_at is not None:
                left = deadline_at - time.monotonic()
                if left <= 0:  # aiohttp reads a timeout of 0 as none at all
                    await budget.release(ticket)
                    raise self._deadline_error(hop, ambiguous=ambiguous, what="to send")
                exchange_timeout = _within(exchange_timeout, left)
            if call.on_sent is not None:
                call.on_sent()
            try:
                response = await transport.send(hop, timeout=exchange_timeout)
            except BaseException as exc:
                error = await self._unanswered(
                    budget, ticket, exc, hop=hop, deadline_at=deadline_at, ambiguous=ambiguous
                )
                if error is exc:
                    raise
                raise error from None
            hints = parse_rate_limit_headers(response.headers)
            gate = await budget.answered(ticket, response.status, hints)
        finally:
            slots.release()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d", hop.method, hop.url, response.status)
        return new_record(_Answer, (response, hints, gate))

    @classmethod
    async def _unanswered(
        cls,
        budget: Budget[Any],
        ticket: Any,
        exc: BaseException,
        *,
        hop: PreparedRequest,
        deadline_at: float | None,
        ambiguous: bool,
    ) -> BaseException:
        """Settle the ticket of an exchange that got no answer (``exc`` was raised), and say what the caller
        raises: ``exc`` itself, or the deadline's error when the deadline passed waiting for the answer."""
        if not isinstance(exc, APIConnectionError):
            # No answer (or cancelled mid-flight): the server may have counted it.
            await budget.no_answer(ticket)
            return exc
        # One refused before a byte was sent (not ambiguous) was never counted: its place goes back.
        await (budget.no_answer(ticket) if exc.ambiguous else budget.release(ticket))
        if deadline_at is not None and time.monotonic() >= deadline_at:
            return cls._deadline_error(hop, ambiguous=exc.ambiguous or ambiguous, what="for an answer")
        return exc

    async def _wait_for_ceiling(
        self, ceiling: AsyncLimiter, hop: PreparedRequest, deadline_at: float | None, ambiguous: bool
    ) -> None:
        if not ceiling.has_capacity():
            self._emit(WaitEvent(reason="ceiling", seconds=None))
        acquiring = ceiling.acquire()
        await (acquiring if deadline_at is None else self._until_deadline(acquiring, deadline_at, hop, ambiguous))

    def _count_retry(self, attempt: int, delay: float, cause: str, method: str, path: str) -> None:
        self._budget.count_retry()
        if self._telemetry is not None:
            RESENDS.set(attempt - 1)  # the next attempt's span says how many sends came before it
            self._telemetry.retries.add(1, {"http.request.method": method, "error.type": cause})
        logger.debug("retrying %s %s (attempt %d) after %s in %.3f s", method, path, attempt, cause, delay)
        self._emit(RetryEvent(attempt=attempt, delay=delay, cause=cause, method=method, path=path))

    async def _acquire(self, budget: Budget[Any], call: _Call, hop: PreparedRequest, ambiguous: bool) -> Any:
        """Wait for the budget, within the call's deadline and the retry policy's longest wait."""
        telemetry = self._telemetry
        if telemetry is not None:
            return await self._acquire_measured(telemetry, budget, call, hop, ambiguous)
        return await self._acquire_reporting(budget, call, hop, ambiguous, self._on_event)

    async def _acquire_reporting(
        self,
        budget: Budget[Any],
        call: _Call,
        hop: PreparedRequest,
        ambiguous: bool,
        on_wait: Callable[[WaitEvent], None] | None,
    ) -> Any:
        """:meth:`_acquire`, each wait told to ``on_wait``."""
        try:
            # A gate stays closed up to a second past the wait the server named (its Retry-After is rounded
            # down): that second is the budget's margin, not part of the wait the caller accepts.
            max_gate_wait = self.retry.max_wait + RETRY_AFTER_ROUNDING
            return await budget.acquire(
                on_wait, max_gate_wait=max_gate_wait, deadline=call.deadline_at, priority=call.priority
            )
        except TimeoutError:
            raise self._deadline_error(hop, ambiguous=ambiguous, what="for the rate-limit budget") from None
        except RateLimitError as error:
            error.method, error.url = hop.method, hop.url
            raise

    async def _acquire_measured(
        self, telemetry: Telemetry, budget: Budget[Any], call: _Call, hop: PreparedRequest, ambiguous: bool
    ) -> Any:
        """:meth:`_acquire` with OpenTelemetry on: each wait an event of the call's span (through _emit), and
        the whole wait's duration in the budget-wait histogram, by the reason it last had and the class."""
        reasons = ["none"]

        def on_wait(event: WaitEvent) -> None:
            reasons[0] = event.reason
            self._emit(event)

        started = time.monotonic()
        try:
            return await self._acquire_reporting(budget, call, hop, ambiguous, on_wait)
        finally:
            attributes = {"wemasy.budget.wait.reason": reasons[0], "wemasy.priority": call.priority}
            telemetry.budget_wait.record(time.monotonic() - started, attributes)

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


def _total_seconds(timeout: float | aiohttp.ClientTimeout | None) -> float | None:
    return timeout.total if isinstance(timeout, aiohttp.ClientTimeout) else timeout


def _within(timeout: float | aiohttp.ClientTimeout | None, left: float) -> float | aiohttp.ClientTimeout:
    """The timeout of an exchange that must end within ``left`` seconds (the call's deadline). One cut short
    is a ``ClientTimeout`` made for this exchange, which the transport does not keep (each one differs)."""
    if timeout is None:
        return aiohttp.ClientTimeout(total=left)
    if isinstance(timeout, aiohttp.ClientTimeout):
        total = timeout.total
        return timeout if total is not None and total <= left else attrs.evolve(timeout, total=left)
    return timeout if timeout <= left else aiohttp.ClientTimeout(total=left)


def _window_seconds_from_env() -> float | None:
    """``WEMASY_WINDOW_SECONDS``, so that an app switches between the emulator and production by its
    environment; None when unset."""
    text = os.environ.get(WINDOW_SECONDS_ENV_VAR, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{WINDOW_SECONDS_ENV_VAR} must be positive seconds, got {text!r}")
    return seconds


def _checked_seconds(name: str, value: object) -> float | None:
    if value is None or _is_seconds(value):
        return value  # type: ignore[return-value]  # _is_seconds said it is an int or float
    raise ConfigurationError(f"{name} must be positive seconds or None, got {value!r}")


def _checked_count(name: str, value: object, *, least: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= least:
        return value
    raise ConfigurationError(f"{name} must be an int of at least {least}, got {value!r}")


def _checked_ceiling(rate_ceiling: object) -> tuple[float, float]:
    if isinstance(rate_ceiling, (tuple, list)) and len(rate_ceiling) == 2 and all(map(_is_seconds, rate_ceiling)):
        return rate_ceiling[0], rate_ceiling[1]
    raise ConfigurationError(
        f"rate_ceiling must be (requests, seconds), two positive numbers such as (50, 60), got {rate_ceiling!r}"
    )


def _retry_policy(current: RetryPolicy, retry: RetryPolicy | None, max_retries: object) -> RetryPolicy:
    """The retry policy from ``retry=`` or ``max_retries=`` (at most one of them), else ``current``."""
    if retry is not None and max_retries is not None:
        raise ConfigurationError(
            "give retry= or max_retries=, not both (max_retries=N is RetryPolicy(max_attempts=N + 1))"
        )
    if max_retries is not None:
        count = _checked_count("max_retries", max_retries, least=0)
        return NO_RETRIES if count == 0 else RetryPolicy(max_attempts=count + 1)
    if retry is not None:
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        return retry
    return current


def _environment_proxy(base_url: str) -> tuple[URL | None, dict[str, str] | None]:
    """The proxy for ``base_url`` that ``HTTPS_PROXY``/``HTTP_PROXY`` name, unless ``NO_PROXY`` lists its host
    (as urllib, requests and httpx read them), with the credentials it holds; ``(None, None)`` for none.

    Read once per client rather than by aiohttp per request (``trust_env=True``), which costs two
    thread-pool hops on every call and would also take a ``~/.netrc`` password for the API host.
    """
    url = URL(base_url)
    host = url.host
    if host is None or urllib.request.proxy_bypass(host):
        return None, None
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy:
        return None, None
    variable = f"{url.scheme.upper()}_PROXY"
    if "://" not in proxy:
        proxy = "http://" + proxy  # as requests does for "host:port"
    try:
        proxy_url = URL(proxy)
        usable = proxy_url.scheme in ("http", "https") and bool(proxy_url.host)
    except ValueError:
        usable = False
    if not usable:
        raise ConfigurationError(
            f"{variable} (from the environment) is not a usable http:// proxy URL; fix it, list "
            f"{host} in NO_PROXY, or pass trust_env=False"
        )
    auth = aiohttp.BasicAuth.from_url(proxy_url)
    # aiohttp moves an Authorization among the proxy's headers to Proxy-Authorization: on the request itself
    # for http://, on the CONNECT for https:// (its proxy_auth= does the same, but is deprecated).
    return proxy_url.with_user(None), None if auth is None else {"Authorization": auth.encode()}
