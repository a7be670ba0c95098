"""The emulator behaves as the Laravel server does: throttle headers, validation, state and faults."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN
from wemasy_async import NO_RETRIES, APIConnectionError, RateLimitError, RetryPolicy, WemasyClient
from wemasy_async.testing import Fault, WemasyEmulator

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"
JSON_HEADERS = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    emulator: WemasyEmulator,
    path: str = STATUS,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    method = "GET" if body is None else "POST"
    async with http.request(
        method, emulator.base_url + path, json=body, headers=headers or JSON_HEADERS, allow_redirects=False
    ) as response:
        text = await response.text()
        data = json.loads(text) if response.content_type == "application/json" else text
        return response.status, dict(response.headers), data


@pytest.mark.wemasy_emulator(limit=2, window_seconds=30)
async def test_every_answer_carries_limit_and_remaining(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """X-RateLimit-Limit and -Remaining count down through the window."""
    seen = [(await call(http, wemasy_emulator))[1] for _ in range(2)]
    assert [(h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) for h in seen] == [("2", "1"), ("2", "0")]


@pytest.mark.wemasy_emulator(limit=1, window_seconds=30)
async def test_429_has_retry_after_reset_and_zero_remaining_and_costs_nothing(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """A throttled request gets Retry-After (whole seconds), X-RateLimit-Reset and is not counted."""
    await call(http, wemasy_emulator)
    status, headers, body = await call(http, wemasy_emulator)
    assert status == 429
    assert body == {"error": True, "message": "Too Many Attempts."}
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["Retry-After"] in ("29", "30")
    assert abs(int(headers["X-RateLimit-Reset"]) - (time.time() + 30)) <= 2
    assert [r.counted for r in wemasy_emulator.requests] == [True, False]
    assert wemasy_emulator.used(TOKEN) == 1


class FakeClocks:
    """A monotonic clock and a wall clock that move together, by hand."""

    def __init__(self, wall: float) -> None:
        self.now = 0.0
        self.wall0 = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall0 + self.now


@pytest.mark.parametrize(
    ("style", "at", "retry_after"),
    [("seconds", 0.4, "29"), ("seconds", 29.3, "0"), ("rounded-up", 0.4, "30"), ("rounded-up", 29.3, "1")],
)
async def test_retry_after_is_rounded_down_as_laravel_does(
    http: aiohttp.ClientSession, style: Any, at: float, retry_after: str
) -> None:
    """Laravel's Retry-After is the window's whole seconds left, rounded down ("0" in its last second), and
    X-RateLimit-Reset the epoch second in which the window ends; rounding up is a switch."""
    clocks = FakeClocks(wall=1_800_000_000.25)
    emulator = WemasyEmulator(limit=1, window_seconds=30, clock=clocks.monotonic, wall_clock=clocks.wall)
    emulator.faults.retry_after = style
    async with emulator:
        await call(http, emulator)
        clocks.now = at
        status, headers, _ = await call(http, emulator)
    assert status == 429
    assert headers["Retry-After"] == retry_after
    window_end = clocks.wall0 + 30
    if style == "seconds":
        assert int(headers["X-RateLimit-Reset"]) == int(window_end)
        # The true end lies in [now + Retry-After, now + Retry-After + 1 s).
        assert clocks.wall() + int(retry_after) <= window_end < clocks.wall() + int(retry_after) + 1
    assert email.utils.parsedate_to_datetime(headers["Date"]).timestamp() == int(clocks.wall())


@pytest.mark.wemasy_emulator(limit=1, window_seconds=30)
async def test_retry_after_can_be_an_http_date(http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator) -> None:
    """The http-date switch sends Retry-After as an RFC 9110 date."""
    wemasy_emulator.faults.retry_after = "http-date"
    await call(http, wemasy_emulator)
    _, headers, _ = await call(http, wemasy_emulator)
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert 28 <= when - time.time() <= 32


@pytest.mark.wemasy_emulator(limit=1, window_seconds=30)
async def test_each_token_has_its_own_window(http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator) -> None:
    """A second token is not throttled by the first one's use."""
    assert (await call(http, wemasy_emulator))[0] == 200
    other = {**JSON_HEADERS, "Authorization": "Bearer another-token"}
    assert (await call(http, wemasy_emulator, headers=other))[0] == 200
    assert (await call(http, wemasy_emulator))[0] == 429


async def test_non_json_accept_gets_laravels_login_redirect(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """Without Accept: application/json an unauthenticated call is redirected, as Laravel does."""
    status, headers, _ = await call(http, wemasy_emulator, headers={"Accept": "text/html"})
    assert status == 302
    assert headers["Location"] == "/login"


@pytest.mark.wemasy_emulator(max_ids_per_request=2)
@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {},
            {
                "create_label": ["The create_label field is required."],
                "order_ids": ["The order_ids field is required."],
            },
        ),
        (
            {"create_label": "maybe", "order_ids": [1]},
            {"create_label": ["The create_label field must be true or false."]},
        ),
        ({"create_label": False, "order_ids": 5}, {"order_ids": ["The order_ids field must be an array."]}),
        (
            {"create_label": False, "order_ids": [1, "x", 2.5]},
            {
                "order_ids": ["The order_ids field must not have more than 2 items."],
                "order_ids.1": ["The order_ids.1 field must be an integer."],
                "order_ids.2": ["The order_ids.2 field must be an integer."],
            },
        ),
    ],
)
async def test_validation_messages_are_laravels(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator, body: Any, errors: dict[str, list[str]]
) -> None:
    """422 bodies have Laravel's shape: a message and per-field (per-index) errors, no error key."""
    status, _, data = await call(http, wemasy_emulator, PUSH, body=body)
    assert status == 422
    assert data["errors"] == errors
    assert "error" not in data
    assert data["message"].startswith(next(iter(errors.values()))[0])


async def test_duplicate_ids_in_one_push_are_queued_once(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """The second occurrence of an id in one push is skipped, never queued twice."""
    _, _, data = await call(http, wemasy_emulator, PUSH, body={"create_label": True, "order_ids": [8, 8]})
    assert data["details"]["new_orders"] == ["8"]
    assert data["details"]["skipped_orders"] == ["8"]
    assert data["labels_will_be_created"] == "yes"
    assert wemasy_emulator.queued == [8]


async def test_request_log_records_time_token_path_status_and_ids(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """Each request is logged with when it arrived and what it carried; the token stays out of the repr."""
    before = time.monotonic()
    await call(http, wemasy_emulator, PUSH, body={"create_label": False, "order_ids": [3, 4]})
    (record,) = wemasy_emulator.requests_for(PUSH, token=TOKEN)
    assert before <= record.at <= time.monotonic()
    assert (record.method, record.status, record.order_ids, record.counted) == ("POST", 200, (3, 4), True)
    assert TOKEN not in repr(record)
    assert "Authorization" not in record.headers


async def test_random_fault_switches_apply(http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator) -> None:
    """The rate switches make every request fail the chosen way."""
    wemasy_emulator.faults.server_error_rate = 1.0
    assert (await call(http, wemasy_emulator))[0] == 500
    wemasy_emulator.faults.html_error_rate = 1.0
    status, headers, body = await call(http, wemasy_emulator)
    assert status == 502
    assert "X-RateLimit-Limit" not in headers
    assert "<title>502 Bad Gateway</title>" in body
    wemasy_emulator.faults.drop_rate = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, wemasy_emulator, PUSH, body={"create_label": False, "order_ids": [1]})
    assert wemasy_emulator.queued == []


async def test_a_drop_before_processing_queues_nothing_but_after_processing_does(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """DROP loses the request; DROP_AFTER_PROCESSING loses only the answer."""
    wemasy_emulator.inject(Fault.DROP, Fault.DROP_AFTER_PROCESSING)
    for order_id in (1, 2):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(http, wemasy_emulator, PUSH, body={"create_label": False, "order_ids": [order_id]})
    assert wemasy_emulator.queued == [2]
    assert [r.status for r in wemasy_emulator.requests] == [None, None]


@pytest.mark.wemasy_emulator(limit=1, window_seconds=30, valid_tokens=[TOKEN])
async def test_a_guest_is_throttled_by_its_address_before_auth(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """As Laravel's throttle runs before auth: a bad token's 401 is counted against its address, its next
    request is a 429 (not a 401), and a valid token keeps its own window."""
    guest = {"Authorization": "Bearer not-a-token", "Accept": "application/json"}
    assert (await call(http, wemasy_emulator, headers=guest))[0] == 401
    status, headers, _ = await call(http, wemasy_emulator, headers=guest)
    assert (status, headers["X-RateLimit-Remaining"]) == (429, "0")
    assert (await call(http, wemasy_emulator))[0] == 200
    assert [r.counted for r in wemasy_emulator.requests] == [True, False, True]


@pytest.mark.wemasy_emulator(limit=1, window_seconds=30)
async def test_proxy_faults_come_before_the_throttle_and_app_faults_after_it(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """A proxy's 502 page is answered even past the limit and not counted; an injected 500 past the limit
    is a 429, as the app never ran."""
    assert (await call(http, wemasy_emulator))[0] == 200
    wemasy_emulator.inject(Fault.BAD_GATEWAY_HTML, Fault.SERVER_ERROR)
    assert (await call(http, wemasy_emulator))[0] == 502
    assert (await call(http, wemasy_emulator))[0] == 429
    assert [(r.status, r.counted) for r in wemasy_emulator.requests] == [(200, True), (502, False), (429, False)]


def test_the_emulator_runs_in_a_thread_for_sync_code() -> None:
    """run_in_thread() serves plain blocking clients too, and stops cleanly."""
    with WemasyEmulator().run_in_thread() as emulator:
        request = urllib.request.Request(emulator.base_url + STATUS, headers=JSON_HEADERS)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["integration"]["is_active"] == "1"
        url = emulator.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + STATUS, timeout=2)


async def test_outside_api_is_a_404_without_auth_or_throttle(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """The routes live under /api, as on the real server: a base URL without /api meets Laravel's 404,
    which no throttle counts and no token changes."""
    root = wemasy_emulator.base_url.removesuffix("/api")
    async with http.get(root + STATUS, headers=JSON_HEADERS) as response:
        assert response.status == 404
        assert "X-RateLimit-Limit" not in response.headers
        assert "could not be found" in (await response.json())["message"]
    assert wemasy_emulator.used(TOKEN) == 0
    status, _, _ = await call(http, wemasy_emulator)
    assert status == 200


async def test_a_restart_refuses_connections_then_serves_with_its_state(http: aiohttp.ClientSession) -> None:
    """While down, connections are refused; back on the same port, the throttle and queued orders are kept."""
    async with WemasyEmulator(limit=5, window_seconds=60) as emulator:
        status, _, _ = await call(http, emulator, PUSH, body={"create_label": False, "order_ids": [1]})
        assert status == 200
        base_url = emulator.base_url
        await emulator.stop_serving()
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(http, emulator)
        await emulator.resume_serving()
        assert emulator.base_url == base_url
        status, headers, _ = await call(http, emulator, PUSH, body={"create_label": False, "order_ids": [1]})
        assert status == 200
        assert headers["X-RateLimit-Remaining"] == "3"
        assert emulator.queued == [1]
        assert emulator.restarts == 1


async def test_injected_error_pages_are_laravels_500_and_503_and_are_counted(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """SERVER_ERROR answers Laravel's 500 and SERVICE_UNAVAILABLE its 503 (maintenance), each in Laravel's
    JSON error shape and counted by the throttle (the rate-limit headers go with it)."""
    wemasy_emulator.inject(Fault.SERVER_ERROR, Fault.SERVICE_UNAVAILABLE)
    answers = [await call(http, wemasy_emulator) for _ in range(2)]
    assert [status for status, _, _ in answers] == [500, 503]
    assert [body["message"] for _, _, body in answers] == ["Server Error", "Service Unavailable"]
    assert all("X-RateLimit-Remaining" in headers for _, headers, _ in answers)
    assert [r.counted for r in wemasy_emulator.requests] == [True, True]


@pytest.mark.wemasy_emulator(max_ids_per_request=None, seconds_per_id=0.0001, seconds_per_id_pair=0.00000005)
async def test_a_push_takes_the_time_its_ids_take_to_validate(
    http: aiohttp.ClientSession, wemasy_emulator: WemasyEmulator
) -> None:
    """A push of n ids is answered no sooner than ``seconds_per_id * n + seconds_per_id_pair * n * n``
    after it arrives (what validating them takes the app); with no maximum, 3,000 ids are taken in one."""
    ids = list(range(1, 3001))
    started = time.monotonic()
    status, _, data = await call(http, wemasy_emulator, PUSH, body={"create_label": False, "order_ids": ids})
    assert time.monotonic() - started >= 0.0001 * 3000 + 0.00000005 * 3000 * 3000
    assert status == 200
    assert data["summary"]["total_orders"] == 3000


async def test_a_new_emulator_at_an_address_starts_with_nothing_learned_there() -> None:
    """A port is reused: a client's request went unanswered at an address (a server that dropped it), then
    an emulator starts there. It is another server, so a client of it starts afresh: after one answer, the
    first window's ramp lets one request out at a time, and a spent window costs one 429, not two."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    dropping = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = dropping.sockets[0].getsockname()[1]
    async with WemasyClient(token=TOKEN, base_url=f"http://127.0.0.1:{port}/api", retry=NO_RETRIES) as client:
        with pytest.raises(APIConnectionError):
            await client.sendcloud.status()
    dropping.close()
    await dropping.wait_closed()

    emulator = WemasyEmulator(limit=5, window_seconds=3600.0)
    await emulator.start(port=port)
    try:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=RetryPolicy(max_wait=60)) as client:
            await client.sendcloud.status()
            emulator.spend(TOKEN, 5)
            results = await asyncio.gather(*(client.sendcloud.status() for _ in range(4)), return_exceptions=True)
        assert all(isinstance(result, RateLimitError) for result in results), results
        assert [r.status for r in emulator.requests] == [200, 429]
    finally:
        await emulator.close()
