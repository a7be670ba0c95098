"""OpenTelemetry for the SDK's calls, in OpenTelemetry's HTTP client conventions (the ``otel`` extra).

A span per SDK call, under it a CLIENT span per HTTP attempt, each wait for the budget an event, W3C trace
context on every request, and the metrics listed in docs/telemetry.md. Free when OpenTelemetry is not
installed or no provider is set: a client decides as it is made, and then sends through the plain path.
Never the token, nor a URL's user or password, in an attribute, an event or a metric.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from yarl import URL

from ._protocol import PreparedRequest, RawResponse
from ._version import __version__

if TYPE_CHECKING:
    import aiohttp

    from ._transport import AiohttpTransport
    from .budgets import RateLimitView

__all__ = ["RESENDS", "Telemetry", "TracingTransport", "telemetry_for"]

#: The instrumentation scope's name (of the tracer and the meter).
SCOPE = "wemasy_async"
#: How many times the attempt now being sent was sent before (retries and 429s), for its span.
RESENDS: contextvars.ContextVar[int] = contextvars.ContextVar("wemasy_resends", default=0)
#: Set inside an SDK call's span: the calls it makes (a batch's chunks) add no span of their own.
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("wemasy_in_call", default=False)
#: The duration histogram's buckets, as the HTTP conventions advise (seconds).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def telemetry_for(tracer_provider: Any = None, meter_provider: Any = None) -> Telemetry | None:
    """The telemetry of a new client: with the providers given, else the global ones; None when
    OpenTelemetry is not installed, or neither provider is given nor set globally (nothing would record)."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, trace.ProxyTracerProvider):
            tracer_provider = None  # none set: spans would be dropped
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
        if type(meter_provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"):
            meter_provider = None
    if tracer_provider is None and meter_provider is None:
        return None
    # One per pair of providers: a meter gives each instrument name once (a second gauge's callback would be
    # dropped), so every client of those providers shares the instruments (the providers are kept with it).
    key = (id(tracer_provider), id(meter_provider))
    made = _made.get(key)
    if made is None:
        made = _made[key] = (tracer_provider, meter_provider, Telemetry(tracer_provider, meter_provider))
    return made[2]


_made: dict[tuple[int, int], tuple[Any, Any, Telemetry]] = {}


class Telemetry:
    """One client's tracer and instruments (a no-op tracer or meter for the provider not set)."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, propagate, trace

        self._trace = trace
        self._inject = propagate.inject
        tracer_provider = tracer_provider or trace.NoOpTracerProvider()
        meter_provider = meter_provider or metrics.NoOpMeterProvider()
        self.tracer = tracer_provider.get_tracer(SCOPE, __version__)
        meter = meter_provider.get_meter(SCOPE, __version__)
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.budget_wait = meter.create_histogram(
            "wemasy.budget.wait.duration",
            unit="s",
            description="Time a request waited for the token's rate-limit budget.",
            explicit_bucket_boundaries_advisory=list(_WAIT_BUCKETS),
        )
        self.throttled = meter.create_counter(
            "wemasy.http.throttled", unit="{response}", description="429 answers received."
        )
        self.retries = meter.create_counter(
            "wemasy.http.retries", unit="{request}", description="Requests sent again (a 429 or a failure)."
        )
        #: The budgets whose state the gauges report: (its view, the attributes), of each live client.
        self._budgets: weakref.WeakKeyDictionary[object, tuple[Callable[[], RateLimitView], dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        meter.create_observable_gauge(
            "wemasy.budget.remaining",
            callbacks=[self._observe("remaining")],
            unit="{request}",
            description="Requests the token's budget has left in this window, as last known.",
        )
        meter.create_observable_gauge(
            "wemasy.budget.in_flight",
            callbacks=[self._observe("in_flight")],
            unit="{request}",
            description="Requests of the token's budget sent and not yet answered.",
        )

    def watch(self, owner: object, view: Callable[[], RateLimitView], base_url: str) -> None:
        """Report ``view()`` in the gauges while ``owner`` (a client) lives."""
        self._budgets[owner] = (view, server_attributes(base_url))

    def _observe(self, field: str) -> Callable[[Any], Iterator[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterator[Any]:
            for view, attributes in list(self._budgets.values()):
                value = getattr(view(), field)
                if value is not None:
                    yield Observation(value, attributes)

        return callback

    @contextlib.contextmanager
    def call_span(self, name: str) -> Iterator[Any]:
        """The span of one SDK call (None inside another's: a batch's chunks are part of the batch's)."""
        if _IN_CALL.get():  # a chunk of a batch: no span, but its own count of re-sends
            resends = RESENDS.set(0)
            try:
                yield None
            finally:
                RESENDS.reset(resends)
            return
        in_call, resends = _IN_CALL.set(True), RESENDS.set(0)
        try:
            with self.tracer.start_as_current_span(name, record_exception=False) as span:
                yield span
        finally:
            _IN_CALL.reset(in_call)
            RESENDS.reset(resends)

    async def traced_call(self, name: str, call: Any) -> Any:
        """Await ``call`` (an SDK call's coroutine) inside its span."""
        with self.call_span(name) as span:
            try:
                return await call
            except BaseException as exc:
                if span is not None:
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
                raise

    def waited(self, reason: str, seconds: float | None, priority: str) -> None:
        """A wait for the budget begins: an event on the current span."""
        attributes: dict[str, Any] = {"wemasy.budget.wait.reason": reason, "wemasy.priority": priority}
        if seconds is not None:
            attributes["wemasy.budget.wait.seconds"] = seconds
        self._trace.get_current_span().add_event("wemasy.budget.wait", attributes)


def server_attributes(url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a URL."""
    parsed = URL(url)
    return {"server.address": parsed.host or "", "server.port": parsed.port or 0}


def _full_url(url: str) -> str:
    """The URL with no user or password (the conventions forbid them; ours never carry the token)."""
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


class TracingTransport:
    """The client's transport, each exchange in a CLIENT span with the trace context in its headers."""

    def __init__(self, inner: AiohttpTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # what the client reads of its transport (session headers...)

    async def send(self, request: PreparedRequest, *, timeout: float | aiohttp.ClientTimeout | None) -> RawResponse:
        telemetry = self._telemetry
        trace = telemetry._trace
        common = {"http.request.method": request.method, **server_attributes(request.url)}
        attributes: dict[str, Any] = {**common, "url.full": _full_url(request.url)}
        resends = RESENDS.get()
        if resends:
            attributes["http.request.resend_count"] = resends
        started = time.perf_counter()
        with telemetry.tracer.start_as_current_span(
            request.method,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers = dict(request.headers)
            telemetry._inject(headers)  # W3C traceparent (and what else the global propagator sends)
            traced = PreparedRequest(request.method, request.url, headers, request.body)
            try:
                response = await self._inner.send(traced, timeout=timeout)
            except BaseException as exc:
                error = type(exc).__qualname__
                span.set_attribute("error.type", error)
                span.set_status(trace.Status(trace.StatusCode.ERROR))
                telemetry.duration.record(time.perf_counter() - started, {**common, "error.type": error})
                raise
            status = response.status
            span.set_attribute("http.response.status_code", status)
            measured: dict[str, Any] = {**common, "http.response.status_code": status}
            if status >= 400:
                span.set_attribute("error.type", str(status))
                span.set_status(trace.Status(trace.StatusCode.ERROR))
                measured["error.type"] = str(status)
            if status == 429:
                telemetry.throttled.add(1, common)
            telemetry.duration.record(time.perf_counter() - started, measured)
            return response


def batch_attributes(counts: Mapping[str, int]) -> dict[str, int]:
    """A batch's counts by outcome, as its span's attributes (``wemasy.push.<outcome>``)."""
    return {f"wemasy.push.{name}": value for name, value in counts.items()}
