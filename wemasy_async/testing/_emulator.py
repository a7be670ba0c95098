"""An aiohttp.web emulator of the two Wemasy endpoints, faithful to the Laravel server behind them.

A request goes through ordered tables of small handlers (in front of the app, after the throttle, the
app's routes), so that a new fault is one function and one row; docs/design/emulator.md tells the stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Literal, NamedTuple, NoReturn, TypeAlias

import attrs
from aiohttp import web

from .._chunk_size import forget_chunk_sizers
from ..budgets import forget_shared_budgets
from ._throttle import FixedWindowThrottle, ThrottleDecision

__all__ = ["CannedResponse", "Fault", "FaultSwitches", "RequestRecord", "WemasyEmulator"]

STATUS_PATH = "/services/webshop/v1/integrations/sendcloud/status"
PUSH_PATH = "/services/webshop/v1/orders/sendcloud/shipments/push"
API_PREFIX = "/api"
# How many orders the server's own jobs take per chunk; only shapes `total_chunks` in answers.
SERVER_JOB_CHUNK = 50

_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class Fault(enum.Enum):
    """One-shot faults, queued with :meth:`WemasyEmulator.inject` and applied to the next requests in turn."""

    #: Laravel's 500 (``{"message": "Server Error"}``); counted by the throttle, with its headers.
    SERVER_ERROR = "server_error"
    #: 503 JSON, as in maintenance mode; counted, with rate-limit headers.
    SERVICE_UNAVAILABLE = "service_unavailable"
    #: A proxy's HTML 502 page: the app never saw the request; no rate-limit headers.
    BAD_GATEWAY_HTML = "bad_gateway_html"
    #: A proxy's HTML 504 page: the app never saw the request; no rate-limit headers.
    GATEWAY_TIMEOUT_HTML = "gateway_timeout_html"
    #: A 200 HTML page from something in front of the app (a captive portal, a misrouted proxy).
    HTML_OK = "html_ok"
    #: The app answers, but its JSON body is cut short (a body that cannot be parsed).
    TRUNCATED_JSON = "truncated_json"
    #: The connection closes before the app sees the request.
    DROP = "drop"
    #: The app handles the request (a push queues its orders), then the connection closes unanswered.
    DROP_AFTER_PROCESSING = "drop_after_processing"


@attrs.frozen
class CannedResponse:
    """An answer to send in place of the app's, for a status the emulator has no reason to produce.

    It passes the throttle like any request (counted, with rate-limit headers).

    >>> emulator.inject(CannedResponse(400, {"message": "Bad request."}))
    """

    status: int
    json: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.define
class FaultSwitches:
    """Faults that apply at random (seeded) or to every request; change them at any time."""

    #: Fraction of requests answered with Laravel's 500 (after the throttle counted them).
    server_error_rate: float = 0.0
    #: Fraction of requests answered by a proxy's HTML 502 page (not counted, no rate-limit headers).
    html_error_rate: float = 0.0
    #: Fraction of connections dropped before the app sees the request.
    drop_rate: float = 0.0
    #: Seconds every response is held back (a slow server).
    delay_seconds: float = 0.0
    #: Send ``X-RateLimit-Limit`` and ``-Remaining``; False models a proxy that strips them.
    rate_limit_headers: bool = True
    #: ``Retry-After`` on a 429: ``seconds`` as Laravel sends it, the whole seconds left in the window rounded
    #: *down* (``0`` in its last second; ``X-RateLimit-Reset`` likewise names the epoch second in which the
    #: window ends); ``rounded-up`` whole seconds (a server that is never early); ``fractional`` seconds,
    #: rounded up to the millisecond; or an RFC 9110 ``http-date`` (the epoch second in which it ends).
    retry_after: Literal["seconds", "rounded-up", "fractional", "http-date"] = "seconds"


@attrs.frozen
class RequestRecord:
    """One request as the emulator saw it. ``status`` is ``None`` when the connection was dropped."""

    at: float
    method: str
    path: str
    status: int | None
    token: str | None = attrs.field(repr=False)
    order_ids: tuple[Any, ...] | None = None
    fault: Fault | CannedResponse | None = None
    #: Whether the throttle counted it against the window.
    counted: bool = False
    #: The request headers, ``Authorization`` left out.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    #: The headers of the answer (empty when the connection was dropped).
    response_headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.define
class _Exchange:
    """One request on its way through the handlers: what it carried, the fault it meets, and (once it has
    passed the throttle) whether it was authenticated and counted, with the rate-limit headers it gets."""

    request: web.Request
    arrived: float
    path: str
    token: str | None
    headers: Mapping[str, str]
    fault: Fault | CannedResponse | None
    raw: bytes
    body: Any
    order_ids: tuple[Any, ...] | None
    authenticated: bool = False
    counted: bool = False
    rate_headers: dict[str, str] = attrs.field(factory=dict)


class _Reply(NamedTuple):
    """What the app answers, before it is rendered for the client (JSON, a page or a redirect)."""

    status: int
    payload: Any


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _wants_json(request: web.Request) -> bool:
    # Laravel's wantsJson(): the first acceptable type decides.
    first = request.headers.get("Accept", "").split(",")[0].split(";")[0].strip().lower()
    return "/json" in first or "+json" in first


def _json_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _is_laravel_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str):
        text = value.strip()
        return text.lstrip("-").isdigit() and text == value
    return False


def _is_laravel_boolean(value: object) -> bool:
    return value in (True, False, 0, 1, "0", "1") and not isinstance(value, float)


class WemasyEmulator:
    """The Wemasy API for tests, benchmarks and demos: both SendCloud endpoints, a Laravel-style
    fixed-window throttle per token, auth, validation, order state, a request log and fault switches.

    >>> async with WemasyEmulator(limit=5, window_seconds=0.5) as emulator:
    ...     async with WemasyClient(token="t", base_url=emulator.base_url) as client:
    ...         await client.sendcloud.push_shipments([1, 2, 3])

    Args:
        limit: the throttle's requests per window per token.
        window_seconds: the throttle's window.
        max_ids_per_request: more order ids than this in one push is a 422 on ``order_ids`` (Laravel's
            ``max`` rule); ``None``: no maximum.
        seconds_per_id: with ``seconds_per_id_pair``, the time a push takes to validate its n ids,
            ``seconds_per_id * n + seconds_per_id_pair * n * n`` (Laravel validates each id, and its
            ``distinct`` rule compares pairs), before it is answered, whatever the answer; 0 by default. A
            real app measured 0.03 s for 500 ids and 0.45 s for 4,000: about ``5.25e-5`` and ``1.5e-8``.
        seconds_per_id_pair: see ``seconds_per_id``; 0 by default.
        max_body_bytes: a larger request body is a 413, as Laravel's ``ValidatePostSize`` (``None``: no limit).
        valid_tokens: the tokens that authenticate (401 for others); ``None`` accepts any bearer token.
        forbidden_tokens: tokens that authenticate but lack permission (403).
        unknown_order_ids: ids that do not exist (422 ``The selected order_ids.N is invalid.``).
        failed_order_ids: ids whose earlier shipment failed; their next push reports them as retry.
        queued_order_ids: ids already pushed before; a push reports them as skipped.
        poison_order_ids: ids whose processing makes the server fail: a push holding one answers 500
            (as a Laravel job that throws on that order would), and queues nothing.
        integration: the ``integration`` object the status endpoint returns.
        error_bodies: ``documented`` (``{"error": true, "message"}``) or ``laravel`` (``{"message"}``).
        seed: seeds the random fault switches.
        clock: a monotonic clock for the throttle and the request log.
        wall_clock: the clock of unix times (the ``Date`` header, ``X-RateLimit-Reset`` and HTTP-date
            ``Retry-After``): give it an offset to model a server whose clock is wrong.
    """

    def __init__(  # noqa: PLR0913  (keyword-only options, each a knob of the emulated server)
        self,
        *,
        limit: int = 60,
        window_seconds: float = 60.0,
        max_ids_per_request: int | None = 1000,
        seconds_per_id: float = 0.0,
        seconds_per_id_pair: float = 0.0,
        max_body_bytes: int | None = None,
        valid_tokens: Collection[str] | None = None,
        forbidden_tokens: Collection[str] = (),
        unknown_order_ids: Collection[int] = (),
        failed_order_ids: Collection[int] = (),
        queued_order_ids: Collection[int] = (),
        poison_order_ids: Collection[int] = (),
        integration: Mapping[str, Any] | None = None,
        error_bodies: Literal["documented", "laravel"] = "documented",
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.throttle = FixedWindowThrottle(limit, window_seconds, clock)
        self.max_ids_per_request = max_ids_per_request
        self.seconds_per_id = seconds_per_id
        self.seconds_per_id_pair = seconds_per_id_pair
        self.max_body_bytes = max_body_bytes
        self.valid_tokens = None if valid_tokens is None else set(valid_tokens)
        self.forbidden_tokens = set(forbidden_tokens)
        self.unknown_order_ids = set(unknown_order_ids)
        self.failed_order_ids = set(failed_order_ids)
        self.poison_order_ids = set(poison_order_ids)
        #: Called with each request's record as it is logged (``serve -v`` prints them).
        self.on_request: Callable[[RequestRecord], None] | None = None
        self.integration: dict[str, Any] = dict(
            integration
            if integration is not None
            else {
                "credentials": {},
                "id": "1",
                "is_active": "1",
                "is_connected": "1",
                "created_at": "2026-01-05T09:30:00.000000Z",
                "updated_at": "2026-11-02T14:12:09.000000Z",
            }
        )
        self.error_bodies = error_bodies
        self.faults = FaultSwitches()
        #: Same-origin or cross-origin redirects to answer: path (after ``/api``) -> (status, location).
        self.redirects: dict[str, tuple[int, str]] = {}
        #: Every request, in arrival order.
        self.requests: list[RequestRecord] = []
        #: Order ids in the order they were queued by pushes (an id queued twice would show twice).
        self.queued: list[int] = []
        self._queued_set: set[int] = set(queued_order_ids)
        self._scripted: deque[Fault | CannedResponse] = deque()
        #: Requests being handled right now, and the most at any one moment.
        self.active_requests = 0
        self.max_concurrent = 0
        self._activity = threading.Condition()
        self._random = random.Random(seed)
        self._clock = clock
        self._wall_clock = wall_clock
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._bound = ("127.0.0.1", 0)
        #: Times the server went down (:meth:`restart`, :meth:`stop_serving`).
        self.restarts = 0

    # --- configuration -------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self.throttle.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self.throttle.limit = value

    @property
    def window_seconds(self) -> float:
        return self.throttle.window_seconds

    @window_seconds.setter
    def window_seconds(self, value: float) -> None:
        self.throttle.window_seconds = value

    def inject(self, *faults: Fault | CannedResponse) -> None:
        """Apply these faults (or canned answers) to the next requests, one each, in order."""
        self._scripted.extend(faults)

    def spend(self, token: str, count: int) -> None:
        """Count ``count`` requests against ``token``'s current window, as another client using it would."""
        self.throttle.spend(f"user:{token}", count)

    def used(self, token: str) -> int:
        """Requests counted in ``token``'s current window."""
        return self.throttle.used(f"user:{token}")

    @property
    def queued_order_ids(self) -> frozenset[int]:
        return frozenset(self._queued_set)

    # --- serving -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL to give the client (``http://127.0.0.1:PORT/api``)."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not running; use `async with` or start()")
        return self._base_url

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._date_header)
        return app

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        # The server's own clock (``wall_clock``), which may differ from the client's, as real servers' do.
        response.headers["Date"] = email.utils.formatdate(self._wall_clock(), usegmt=True)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (port 0: a free one) and return the base URL."""
        base_url = await self._serve(host, port)
        # A new server at an address where this process may have learned of another (a port reused: an
        # earlier emulator's, or an address a client tried while nothing served it): none of it holds here.
        self._forget_what_was_learned()
        return base_url

    async def _serve(self, host: str, port: int) -> str:
        # In-flight handlers (a slow-response fault) are cut short on close, not waited for.
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._bound = (host, bound_port)
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self._base_url = f"http://{bound_host}:{bound_port}{API_PREFIX}"
        return self._base_url

    async def restart(self, down_for: float = 0.0) -> None:
        """Restart the server, as a deploy does: open connections are closed, new ones refused for ``down_for``
        seconds, then it serves again on the same port with its state (throttle, queued orders) kept.

        For a restart in the middle of a test, start it as a task: ``asyncio.create_task(emulator.restart(2))``,
        or call :meth:`stop_serving` and :meth:`resume_serving` yourself.
        """
        await self.stop_serving()
        if down_for > 0:
            await asyncio.sleep(down_for)
        await self.resume_serving()

    async def stop_serving(self) -> None:
        """Go down: close open connections and refuse new ones (the port stays this emulator's)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running")
        runner, self._runner = self._runner, None
        await runner.cleanup()
        self.restarts += 1

    async def resume_serving(self) -> None:
        """Serve again on the port :meth:`stop_serving` left (the same server: what clients learned holds)."""
        await self._serve(*self._bound)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        # A later server on the same port is another server: budgets learned here must not carry over.
        self._forget_what_was_learned()

    def _forget_what_was_learned(self) -> None:
        """Drop this process's budgets (its own and the host's) and learned chunk sizes of this base URL."""
        if self._base_url is not None:
            forget_shared_budgets(self._base_url)
            forget_chunk_sizers(self._base_url)

    async def _close_in_thread(self) -> None:
        await self.close()
        # Handlers held by a slow-response fault would be left pending when the thread's loop stops.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def __aenter__(self) -> WemasyEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[WemasyEmulator]:
        """Serve from a background thread with its own event loop, for sync code or any test runner."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="wemasy-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(host, port), loop).result(timeout=30)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self._close_in_thread(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    # --- request handling ----------------------------------------------------------------------

    def _next_fault(self) -> Fault | CannedResponse | None:
        if self._scripted:
            return self._scripted.popleft()
        for fault, rate_of in _RANDOM_FAULTS:
            rate = rate_of(self.faults)
            if rate and self._random.random() < rate:
                return fault
        return None

    def _error(self, status: int, message: str) -> dict[str, Any]:
        if self.error_bodies == "laravel":
            return {"message": message}
        return {"error": True, "message": message}

    def _html(self, status: int, reason: str) -> web.Response:
        return web.Response(
            status=status, text=_HTML_PAGE.format(status=status, reason=reason), content_type="text/html"
        )

    def _rate_headers(self, decision: ThrottleDecision) -> dict[str, str]:
        if not self.faults.rate_limit_headers:
            return {}
        headers = {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining)}
        if not decision.allowed:
            # Laravel: Retry-After = timer - now in whole seconds, X-RateLimit-Reset = now + Retry-After, where
            # both `timer` (the window's end) and `now` are whole epoch seconds. The window's true end then
            # lies in [now + Retry-After, now + Retry-After + 1 s).
            reset_at = self._wall_clock() + decision.resets_in
            write = _RETRY_AFTER.get(self.faults.retry_after, _retry_after_seconds)
            headers["Retry-After"] = write(decision.resets_in, reset_at)
            headers["X-RateLimit-Reset"] = str(math.floor(reset_at))
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._activity:
            self.active_requests += 1
            self.max_concurrent = max(self.max_concurrent, self.active_requests)
            self._activity.notify_all()
        try:
            return await self._answer(request)
        finally:
            with self._activity:
                self.active_requests -= 1

    def wait_for_active(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests are being handled at once (thread-safe); False on timeout.

        From async code: ``await asyncio.to_thread(emulator.wait_for_active)``.
        """
        with self._activity:
            return self._activity.wait_for(lambda: self.active_requests >= count, timeout)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        """Answer as the stack in front of the app would, then the throttle, then the app: each stage is a
        table of small handlers, tried in order, the first answer wins."""
        exchange = await self._receive(request)
        for _name, handler in _BEFORE_THE_THROTTLE:
            if (response := handler(self, exchange)) is not None:
                return response
        if self.faults.delay_seconds:  # a slow app: what reaches it is held back
            await asyncio.sleep(self.faults.delay_seconds)
        self._pass_throttle(exchange)
        if exchange.counted and exchange.order_ids and (self.seconds_per_id or self.seconds_per_id_pair):
            n = len(exchange.order_ids)  # validating the ids takes the app its time
            await asyncio.sleep(self.seconds_per_id * n + self.seconds_per_id_pair * n * n)
        for _name, handler in _AFTER_THE_THROTTLE:
            if (response := handler(self, exchange)) is not None:
                return response
        return self._process(exchange)

    async def _receive(self, request: web.Request) -> _Exchange:
        """The request as the handlers read it, with the fault it is to meet (drawn before its body is read)."""
        arrived = self._clock()
        path = request.path[len(API_PREFIX) :] if request.path.startswith(API_PREFIX + "/") else request.path
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        fault = self._next_fault()
        raw = await request.read()
        body = _json_or_none(raw)
        order_ids = None
        if isinstance(body, dict) and isinstance(body.get("order_ids"), list):
            order_ids = tuple(body["order_ids"])
        return _Exchange(
            request=request,
            arrived=arrived,
            path=path,
            token=_bearer(request),
            headers=headers,
            fault=fault,
            raw=raw,
            body=body,
            order_ids=order_ids,
        )

    def _pass_throttle(self, exchange: _Exchange) -> None:
        """Count the request, as Laravel's throttle middleware does: by user, or by address for a guest."""
        token = exchange.token
        exchange.authenticated = token is not None and (
            self.valid_tokens is None or token in self.valid_tokens or token in self.forbidden_tokens
        )
        key = f"user:{token}" if exchange.authenticated else f"ip:{exchange.request.remote}"
        decision = self.throttle.hit(key)
        exchange.counted = decision.allowed
        exchange.rate_headers = self._rate_headers(decision)

    def _process(self, exchange: _Exchange) -> web.StreamResponse:
        """The app: the first route that takes the request answers it (404 if none does)."""
        for _name, route in _ROUTES:
            if (reply := route(self, exchange)) is not None:
                break
        else:
            reply = _Reply(404, self._error(404, f"The route api{exchange.path} could not be found."))
        if exchange.fault is Fault.DROP_AFTER_PROCESSING:
            self._log(exchange, None)
            self._drop(exchange.request)
        return self._app_answer(exchange, reply)

    def _app_answer(self, exchange: _Exchange, reply: _Reply) -> web.StreamResponse:
        """The app's answer as Laravel renders it: JSON for an API client, a redirect or a page for a browser."""
        rate_headers = exchange.rate_headers
        status = reply.status
        self._log(exchange, status, rate_headers)
        wants_json = _wants_json(exchange.request)
        if not wants_json and status in (401, 422):
            # Laravel redirects a browser: to the login page, or back to the form.
            target = "/login" if status == 401 else exchange.request.headers.get("Referer", "/")
            return web.Response(status=302, headers={**rate_headers, "Location": target})
        if not wants_json and status >= 400:
            return web.Response(
                status=status,
                text=f"<html><body>{status}</body></html>",
                content_type="text/html",
                headers=rate_headers,
            )
        if exchange.fault is Fault.TRUNCATED_JSON:
            text = json.dumps(reply.payload)
            return web.Response(
                text=text[: len(text) // 2], status=status, content_type="application/json", headers=rate_headers
            )
        return web.json_response(reply.payload, status=status, headers=rate_headers)

    def _log(self, exchange: _Exchange, status: int | None, response_headers: Mapping[str, str] | None = None) -> None:
        record = RequestRecord(
            at=exchange.arrived,
            method=exchange.request.method,
            path=exchange.path,
            status=status,
            token=exchange.token,
            order_ids=exchange.order_ids,
            fault=exchange.fault,
            counted=exchange.counted,
            headers=exchange.headers,
            response_headers=dict(response_headers or {}),
        )
        self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)

    def _poisoned(self, order_ids: tuple[Any, ...] | None) -> bool:
        poison = self.poison_order_ids
        return bool(poison and order_ids and any(value in poison for value in order_ids))

    @staticmethod
    def _drop(request: web.Request) -> NoReturn:
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPInternalServerError()  # never written: the connection is already closed

    def _validation_errors(self, body: Mapping[str, Any]) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        if "create_label" not in body or body["create_label"] is None:
            errors["create_label"] = ["The create_label field is required."]
        elif not _is_laravel_boolean(body["create_label"]):
            errors["create_label"] = ["The create_label field must be true or false."]
        ids = body.get("order_ids")
        if ids is None or ids == [] or ids == "":
            errors["order_ids"] = ["The order_ids field is required."]
            return errors
        if not isinstance(ids, list):
            errors["order_ids"] = ["The order_ids field must be an array."]
            return errors
        if self.max_ids_per_request is not None and len(ids) > self.max_ids_per_request:
            errors["order_ids"] = [f"The order_ids field must not have more than {self.max_ids_per_request} items."]
        for index, value in enumerate(ids):
            if not _is_laravel_integer(value):
                errors[f"order_ids.{index}"] = [f"The order_ids.{index} field must be an integer."]
            elif int(value) <= 0 or int(value) in self.unknown_order_ids:
                errors[f"order_ids.{index}"] = [f"The selected order_ids.{index} is invalid."]
        return errors

    def _push(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        errors = self._validation_errors(body)
        if errors:
            messages = [m for field_messages in errors.values() for m in field_messages]
            message = messages[0]
            if len(messages) > 1:
                more = len(messages) - 1
                message += f" (and {more} more error{'s' if more > 1 else ''})"
            return 422, {"message": message, "errors": errors}
        new: list[str] = []
        retry: list[str] = []
        skipped: list[str] = []
        queued: list[int] = []
        for value in body["order_ids"]:
            order_id = int(value)
            if order_id in self._queued_set:
                skipped.append(str(order_id))
                continue
            (retry if order_id in self.failed_order_ids else new).append(str(order_id))
            self.failed_order_ids.discard(order_id)
            self._queued_set.add(order_id)
            self.queued.append(order_id)
            queued.append(order_id)
        create_label = body["create_label"] in (True, 1, "1")
        chunks = math.ceil(len(queued) / SERVER_JOB_CHUNK)
        return 200, {
            "error": False,
            "message": f"{len(queued)} orders queued for SendCloud processing in {chunks} chunks.",
            "summary": {
                "total_orders": len(body["order_ids"]),
                "new_orders": len(new),
                "retry_orders": len(retry),
                "skipped_orders": len(skipped),
                "queued_orders": len(queued),
            },
            "details": {
                "new_orders": new,
                "retry_orders": retry,
                "skipped_orders": skipped,
                "queued_orders": queued,
            },
            "total_chunks": chunks,
            "labels_will_be_created": "yes" if create_label else "no",
        }

    # --- helpers for tests ---------------------------------------------------------------------

    def requests_for(self, path: str | None = None, *, token: str | None = None) -> list[RequestRecord]:
        """The logged requests, optionally only those for ``path`` and/or ``token``."""
        return [r for r in self.requests if (path is None or r.path == path) and (token is None or r.token == token)]


# --- the handlers: each answers the request, or returns None to hand it on to the next ---------------

_Handler: TypeAlias = Callable[[WemasyEmulator, _Exchange], web.StreamResponse | None]
_Route: TypeAlias = Callable[[WemasyEmulator, _Exchange], _Reply | None]


def _dropped(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """``Fault.DROP``: the connection closes before the app sees the request."""
    if exchange.fault is not Fault.DROP:
        return None
    emulator._log(exchange, None)
    emulator._drop(exchange.request)


def _proxy_page(emulator: WemasyEmulator, exchange: _Exchange, status: int, reason: str) -> web.StreamResponse:
    emulator._log(exchange, status)
    return emulator._html(status, reason)


def _bad_gateway_page(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """``Fault.BAD_GATEWAY_HTML``: a proxy's HTML 502, with no rate-limit headers."""
    return _proxy_page(emulator, exchange, 502, "Bad Gateway") if exchange.fault is Fault.BAD_GATEWAY_HTML else None


def _gateway_timeout_page(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """``Fault.GATEWAY_TIMEOUT_HTML``: a proxy's HTML 504, with no rate-limit headers."""
    if exchange.fault is not Fault.GATEWAY_TIMEOUT_HTML:
        return None
    return _proxy_page(emulator, exchange, 504, "Gateway Time-out")


def _portal_page(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """``Fault.HTML_OK``: a 200 HTML page from something in front of the app."""
    if exchange.fault is not Fault.HTML_OK:
        return None
    emulator._log(exchange, 200)
    return web.Response(text="<html><body>Welcome to the hotel network</body></html>", content_type="text/html")


def _login_page(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """Laravel's web login page, where a client that does not ask for JSON is sent."""
    if exchange.request.path != "/login":
        return None
    emulator._log(exchange, 200)
    return web.Response(
        text="<html><head><title>Login</title></head><body>Log in</body></html>", content_type="text/html"
    )


def _body_too_large(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """Laravel's global ValidatePostSize middleware: a 413 before the throttle, so no rate-limit headers."""
    if emulator.max_body_bytes is None or len(exchange.raw) <= emulator.max_body_bytes:
        return None
    emulator._log(exchange, 413)
    return web.json_response(emulator._error(413, "The POST data is too large."), status=413)


def _redirect(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """A redirect set in ``emulator.redirects`` for this path."""
    if exchange.path not in emulator.redirects:
        return None
    status, location = emulator.redirects[exchange.path]
    emulator._log(exchange, status)
    return web.Response(status=status, headers={"Location": location})


def _outside_api(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """Outside /api no route matches (a base URL without /api): Laravel's 404, before the api middleware, so
    neither authenticated nor throttled."""
    request = exchange.request
    if request.path.startswith(API_PREFIX + "/"):
        return None
    emulator._log(exchange, 404)
    if not _wants_json(request):
        return web.Response(status=404, text="<html><body>Not Found</body></html>", content_type="text/html")
    return web.json_response(
        emulator._error(404, f"The route {request.path.lstrip('/')} could not be found."), status=404
    )


def _throttled(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    if exchange.counted:
        return None
    return emulator._app_answer(exchange, _Reply(429, emulator._error(429, "Too Many Attempts.")))


def _unauthenticated(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    if exchange.authenticated:
        return None
    return emulator._app_answer(exchange, _Reply(401, emulator._error(401, "Unauthenticated.")))


def _forbidden(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    if exchange.token not in emulator.forbidden_tokens:
        return None
    return emulator._app_answer(exchange, _Reply(403, emulator._error(403, "This action is unauthorized.")))


def _canned(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """A :class:`CannedResponse`, sent as it is with the rate-limit headers (its own headers win)."""
    canned = exchange.fault
    if not isinstance(canned, CannedResponse):
        return None
    headers = {**exchange.rate_headers, **canned.headers}
    emulator._log(exchange, canned.status, headers)
    return web.json_response(canned.json, status=canned.status, headers=headers)


#: The faults answered as Laravel's own error pages, counted by the throttle: 500 (an exception), 503 (maintenance).
_ERROR_PAGES: dict[Fault, tuple[int, str]] = {
    Fault.SERVER_ERROR: (500, "Server Error"),
    Fault.SERVICE_UNAVAILABLE: (503, "Service Unavailable"),
}


def _error_page(emulator: WemasyEmulator, exchange: _Exchange) -> web.StreamResponse | None:
    """``Fault.SERVER_ERROR`` and ``Fault.SERVICE_UNAVAILABLE``: the app's error page for the fault."""
    page = _ERROR_PAGES.get(exchange.fault) if isinstance(exchange.fault, Fault) else None
    if page is None:
        return None
    status, message = page
    return emulator._app_answer(exchange, _Reply(status, emulator._error(status, message)))


def _status_route(emulator: WemasyEmulator, exchange: _Exchange) -> _Reply | None:
    if exchange.path != STATUS_PATH or exchange.request.method not in ("GET", "HEAD"):
        return None
    return _Reply(200, {"error": False, "integration": emulator.integration})


def _poisoned_push(emulator: WemasyEmulator, exchange: _Exchange) -> _Reply | None:
    """A push holding a poison id fails as a Laravel job that throws on it would, and queues nothing."""
    if exchange.path != PUSH_PATH or exchange.request.method != "POST" or not emulator._poisoned(exchange.order_ids):
        return None
    return _Reply(500, emulator._error(500, "Server Error"))


def _push_route(emulator: WemasyEmulator, exchange: _Exchange) -> _Reply | None:
    if exchange.path != PUSH_PATH or exchange.request.method != "POST":
        return None
    return _Reply(*emulator._push(exchange.body if isinstance(exchange.body, dict) else {}))


def _wrong_method(emulator: WemasyEmulator, exchange: _Exchange) -> _Reply | None:
    if exchange.path not in (STATUS_PATH, PUSH_PATH):
        return None
    method = exchange.request.method
    return _Reply(405, emulator._error(405, f"The {method} method is not supported for route api{exchange.path}."))


#: What stands in front of the app, in order: faults of the network and of proxies, then Laravel's global
#: middleware and routing. None of them is counted by the throttle, and none sends rate-limit headers.
_BEFORE_THE_THROTTLE: tuple[tuple[str, _Handler], ...] = (
    ("drop", _dropped),
    ("bad gateway page", _bad_gateway_page),
    ("gateway timeout page", _gateway_timeout_page),
    ("portal page", _portal_page),
    ("login page", _login_page),
    ("body too large", _body_too_large),
    ("redirect", _redirect),
    ("outside /api", _outside_api),
)

#: After the throttle counted the request: its 429, auth, then the injected errors (all with rate headers).
_AFTER_THE_THROTTLE: tuple[tuple[str, _Handler], ...] = (
    ("throttled", _throttled),
    ("unauthenticated", _unauthenticated),
    ("forbidden", _forbidden),
    ("canned response", _canned),
    ("error pages (500, 503)", _error_page),
)

#: The app's routes, in order; no match is a 404. ``Fault.DROP_AFTER_PROCESSING`` applies after them.
_ROUTES: tuple[tuple[str, _Route], ...] = (
    ("status", _status_route),
    ("poison ids", _poisoned_push),
    ("push", _push_route),
    ("wrong method", _wrong_method),
)

#: The random switches, rolled in this order (one roll each, only while its rate is set).
_RANDOM_FAULTS: tuple[tuple[Fault, Callable[[FaultSwitches], float]], ...] = (
    (Fault.DROP, lambda switches: switches.drop_rate),
    (Fault.BAD_GATEWAY_HTML, lambda switches: switches.html_error_rate),
    (Fault.SERVER_ERROR, lambda switches: switches.server_error_rate),
)


def _retry_after_seconds(resets_in: float, reset_at: float) -> str:
    return str(math.floor(resets_in))  # Laravel's: whole seconds rounded down, 0 in the window's last second


def _retry_after_rounded_up(resets_in: float, reset_at: float) -> str:
    return str(math.ceil(resets_in))


def _retry_after_fractional(resets_in: float, reset_at: float) -> str:
    return f"{math.ceil(resets_in * 1000) / 1000:.3f}"


def _retry_after_http_date(resets_in: float, reset_at: float) -> str:
    return email.utils.formatdate(math.floor(reset_at), usegmt=True)


#: How a 429's Retry-After is written, by ``FaultSwitches.retry_after`` (Laravel's ``seconds`` otherwise).
_RETRY_AFTER: Mapping[str, Callable[[float, float], str]] = {
    "seconds": _retry_after_seconds,
    "rounded-up": _retry_after_rounded_up,
    "fractional": _retry_after_fractional,
    "http-date": _retry_after_http_date,
}
