"""OpenTelemetry: the SDK's spans and metrics, read back from the real OpenTelemetry SDK's in-memory exporter
and metric reader (the providers are given to the client, so no global state is touched)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import TOKEN
from wemasy_async import WemasyClient
from wemasy_async._telemetry import telemetry_for
from wemasy_async.resources.sendcloud import PUSH_PATH, STATUS_PATH
from wemasy_async.testing import WemasyEmulator

DOCS = Path(__file__).parent.parent / "docs" / "telemetry.md"


class Recorded:
    """Providers of the real SDK, and what they recorded."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def client(self, base_url: str, **options: Any) -> WemasyClient:
        return WemasyClient(
            token=TOKEN,
            base_url=base_url,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **options,
        )

    def finished(self) -> list[ReadableSpan]:
        return sorted(self.spans.get_finished_spans(), key=lambda span: span.start_time or 0)

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        found = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    made = Recorded()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


async def spend_the_window(base_url: str, limit: int) -> None:
    """Another client (a bare aiohttp session on the token) sends the window's ``limit`` requests."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as other:
        for _ in range(limit):
            async with other.get(base_url + STATUS_PATH) as response:
                assert response.status == 200


def tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree: name, kind, status code and the events, for the docs."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            attributes = span.attributes or {}
            words = [span.name, span.kind.name]
            if "http.response.status_code" in attributes:
                words.append(str(attributes["http.response.status_code"]))
            if "http.request.resend_count" in attributes:
                words.append(f"resend_count={attributes['http.request.resend_count']}")
            if "wemasy.push.new_orders" in attributes:
                words.append(f"new_orders={attributes['wemasy.push.new_orders']}")
            lines.append("  " * depth + " ".join(words))
            for event in span.events:
                reason = (event.attributes or {}).get("wemasy.budget.wait.reason")
                lines.append("  " * (depth + 1) + f"event {event.name} reason={reason}")
            assert span.context is not None
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def test_a_call_is_a_span_with_a_client_span_per_attempt_in_the_http_conventions(recorded: Recorded) -> None:
    """status(): an SDK span with one CLIENT span under it, in the HTTP client conventions, whose trace
    context the request carried (W3C traceparent); the duration histogram has the answer."""
    async with WemasyEmulator() as emulator:
        async with recorded.client(emulator.base_url) as client:
            await client.sendcloud.status()
        call, attempt = recorded.finished()
        assert (call.name, call.kind, attempt.name, attempt.kind) == (
            "sendcloud.status",
            SpanKind.INTERNAL,
            "GET",
            SpanKind.CLIENT,
        )
        assert attempt.parent is not None
        assert call.context is not None
        assert attempt.parent.span_id == call.context.span_id
        port = int(emulator.base_url.split(":")[2].split("/")[0])
        assert dict(attempt.attributes or {}) == {
            "http.request.method": "GET",
            "server.address": "127.0.0.1",
            "server.port": port,
            "url.full": emulator.base_url + STATUS_PATH,
            "http.response.status_code": 200,
        }
        assert attempt.status.status_code is StatusCode.UNSET
        [seen] = emulator.requests
        assert attempt.context is not None
        sent = seen.headers.get("traceparent", "")
        assert sent.startswith(f"00-{attempt.context.trace_id:032x}-{attempt.context.span_id:016x}-")
        assert int(sent[-2:], 16) & 1  # sampled
    [point] = recorded.points("http.client.request.duration")
    assert point.count == 1
    assert dict(point.attributes) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
    }


async def test_a_throttled_push_shows_the_429_the_wait_and_the_resend(recorded: Recorded) -> None:
    """Another client spent the window: the push's first request is answered 429, the batch waits for the
    gate (an event of the batch's span, and the budget-wait histogram), the request goes again (its span
    says resend_count 1), and the batch's span carries its counts; the docs show this tree."""
    async with WemasyEmulator(limit=3, window_seconds=1.0) as emulator:
        await spend_the_window(emulator.base_url, 3)
        async with recorded.client(emulator.base_url, window_seconds=1.0) as client:
            result = await client.sendcloud.push_shipments([1, 2, 3])
        assert result.ok
    spans = recorded.finished()
    rendered = tree(spans)
    assert rendered == (
        "sendcloud.push_shipments INTERNAL new_orders=3\n"
        "  event wemasy.budget.wait reason=gate\n"
        "  POST CLIENT 429\n"
        "  POST CLIENT 200 resend_count=1"
    )
    throttled = next(s for s in spans if (s.attributes or {}).get("http.response.status_code") == 429)
    assert (throttled.attributes or {})["error.type"] == "429"
    assert throttled.status.status_code is StatusCode.ERROR
    batch = spans[0]
    assert {k: v for k, v in (batch.attributes or {}).items() if k.startswith("wemasy.push.")} == {
        "wemasy.push.total_orders": 3,
        "wemasy.push.new_orders": 3,
        "wemasy.push.retry_orders": 0,
        "wemasy.push.skipped_orders": 0,
        "wemasy.push.duplicates": 0,
        "wemasy.push.requests": 1,
        "wemasy.push.rejected": 0,
        "wemasy.push.failed": 0,
        "wemasy.push.unreported": 0,
        "wemasy.push.in_doubt": 0,
        "wemasy.push.not_sent": 0,
    }
    assert [p.value for p in recorded.points("wemasy.http.throttled")] == [1]
    assert [p.value for p in recorded.points("wemasy.http.retries")] == [1]
    [waited] = [
        p for p in recorded.points("wemasy.budget.wait.duration") if p.attributes["wemasy.budget.wait.reason"] == "gate"
    ]
    assert waited.count == 1
    assert waited.sum > 0
    statuses = sorted(
        p.attributes["http.response.status_code"] for p in recorded.points("http.client.request.duration")
    )
    assert statuses == [200, 429]
    # The docs show the same tree.
    assert "```text\n" + rendered + "\n```" in DOCS.read_text(encoding="utf-8")


async def test_the_budget_gauges_report_the_window(recorded: Recorded) -> None:
    """remaining and in_flight of the token's budget, as observable gauges, by server."""
    async with WemasyEmulator(limit=5, window_seconds=60.0) as emulator:
        async with recorded.client(emulator.base_url) as client:
            await client.sendcloud.status()
            remaining = recorded.points("wemasy.budget.remaining")
            in_flight = recorded.points("wemasy.budget.in_flight")
    assert [p.value for p in remaining] == [4]
    assert [p.value for p in in_flight] == [0]
    assert remaining[0].attributes["server.address"] == "127.0.0.1"


async def test_no_token_in_any_span_event_or_metric(recorded: Recorded) -> None:
    """Spans, events and metrics of calls that succeed, fail and wait: the token is in none of them."""
    async with WemasyEmulator(limit=2, window_seconds=1.0) as emulator:
        async with recorded.client(emulator.base_url, window_seconds=1.0) as client:
            await client.sendcloud.status()
            await client.sendcloud.push_shipments(range(1, 5), chunk_size=1)
            with pytest.raises(Exception):  # noqa: B017,PT011 -- any of the SDK's errors: a 404
                await client.request("GET", "/no/such/path")
    text = "\n".join(span.to_json() for span in recorded.spans.get_finished_spans())
    data = recorded.metrics.get_metrics_data()
    assert data is not None
    text += data.to_json()
    assert re.search(r"wemasy\.budget\.wait", text)  # the waits are there...
    assert TOKEN not in text  # ...and the token is not
    assert "Bearer" not in text
    assert json.loads(recorded.spans.get_finished_spans()[0].to_json())


def test_with_no_provider_the_client_records_nothing_at_no_cost() -> None:
    """No provider given and none set globally: no telemetry object, and the plain send path."""
    assert telemetry_for() is None
    client = WemasyClient(token=TOKEN, base_url="http://127.0.0.1:1/api")
    assert client._telemetry is None


def test_without_opentelemetry_installed_the_client_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API not importable (the otel extra not installed): providers are ignored, calls go on."""
    import builtins

    real_import = builtins.__import__

    def no_opentelemetry(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_opentelemetry)
    assert telemetry_for(tracer_provider=object()) is None


async def test_a_push_of_one_chunk_is_one_call_span(recorded: Recorded) -> None:
    """iter_push_shipments' chunks each get the push's span name; within push_shipments they are one."""
    async with WemasyEmulator() as emulator:
        async with recorded.client(emulator.base_url) as client:
            async with client.sendcloud.iter_push_shipments([1, 2, 3, 4], chunk_size=2) as stream:
                async for _chunk in stream:
                    pass
    names = sorted(span.name for span in recorded.finished())
    assert names == ["POST", "POST", "sendcloud.push_shipments", "sendcloud.push_shipments"]
    assert all(r.path.endswith(PUSH_PATH) for r in emulator.requests)


async def test_a_resend_is_counted_on_its_own_attempt_only(recorded: Recorded) -> None:
    """A batch whose first request was throttled: only that request's re-send says resend_count; the
    chunks after it, sent once each, say nothing of re-sends."""
    async with WemasyEmulator(limit=3, window_seconds=1.0) as emulator:
        await spend_the_window(emulator.base_url, 3)
        async with recorded.client(emulator.base_url, window_seconds=1.0) as client:
            result = await client.sendcloud.push_shipments([1, 2, 3], chunk_size=1, max_concurrency=1)
        assert result.ok
    attempts = [s for s in recorded.finished() if s.kind is SpanKind.CLIENT]
    assert [(s.attributes or {}).get("http.request.resend_count") for s in attempts] == [None, 1, None, None]
