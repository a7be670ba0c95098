"""The scheduler against the emulator over loopback, with short windows (5 requests per 0.5 s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import TOKEN
from wemasy_async import (
    NO_RETRIES,
    APIConnectionError,
    APITimeoutError,
    DeadlineExceededError,
    RateLimitError,
    RateLimitHeaders,
    RateLimitView,
    RetryEvent,
    RetryPolicy,
    ServerError,
    ValidationError,
    WaitEvent,
    WemasyClient,
)
from wemasy_async.budgets import WindowState, shared_budget
from wemasy_async.testing import CannedResponse, Fault, RequestRecord, WemasyEmulator

LIMIT, WINDOW = 5, 0.5
PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"
FAST_RETRIES = RetryPolicy(backoff_base=0.001)
#: Long enough to mean "it hangs"; only a failing test ever waits this long.
HANG = 10.0


class OpenBudget:
    """A budget that never makes anyone wait: a Budget implemented outside the package."""

    def try_acquire(self) -> object:
        return object()

    async def acquire(self, on_wait: object = None, *, max_gate_wait: float = 0, deadline: object = None) -> object:
        return object()

    async def release(self, ticket: object) -> None:
        pass

    async def no_answer(self, ticket: object) -> None:
        pass

    async def answered(self, ticket: object, status: int, hints: RateLimitHeaders) -> float:
        return 0.0

    def count_retry(self) -> None:
        pass

    def view(self) -> RateLimitView:
        return WindowState().view(0.0)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def emulator(wemasy_emulator: WemasyEmulator) -> WemasyEmulator:
    wemasy_emulator.limit, wemasy_emulator.window_seconds = LIMIT, WINDOW
    return wemasy_emulator


@pytest.fixture
async def client(emulator: WemasyEmulator) -> AsyncIterator[WemasyClient]:
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, retry=FAST_RETRIES) as c:
        yield c


def statuses(emulator: WemasyEmulator) -> list[int | None]:
    return [r.status for r in emulator.requests]


def throttled_per_window(records: list[RequestRecord]) -> int:
    """The most 429s the server gave within any one window length."""
    times = [r.at for r in records if r.status == 429]
    return max((sum(1 for u in times if t <= u < t + WINDOW) for t in times), default=0)


async def test_sole_client_spends_the_whole_budget_without_a_429(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """23 concurrent calls: every one answered, no 429, and no faster than the windows allow."""
    results = await asyncio.gather(*(client.sendcloud.status() for _ in range(23)))
    assert len(results) == 23
    assert statuses(emulator) == [200] * 23
    span = emulator.requests[-1].at - emulator.requests[0].at
    assert span >= (math.ceil(23 / LIMIT) - 1) * WINDOW - 0.01
    view = client.rate_limit
    assert (view.limit, view.sent, view.throttled) == (LIMIT, 23, 0)
    assert view.waited_seconds > 0


async def test_window_partly_used_by_another_client_costs_at_most_one_429_per_window(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """Another client spent 3 of 5 before we start: at most one 429 in any window, nothing lost."""
    emulator.spend(TOKEN, 3)
    await asyncio.gather(*(client.sendcloud.status() for _ in range(17)))
    assert statuses(emulator).count(200) == 17
    assert throttled_per_window(emulator.requests) <= 1


async def test_another_client_active_throughout_costs_at_most_one_429_per_window(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """Another process keeps spending 2 of every window: each window may cost us one 429, no more."""
    stop = asyncio.Event()

    async def other_process() -> None:
        while not stop.is_set():
            emulator.spend(TOKEN, 2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), WINDOW)

    other = asyncio.create_task(other_process())
    try:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(12)))
    finally:
        stop.set()
        await other
    assert statuses(emulator).count(200) == 12
    assert throttled_per_window(emulator.requests) <= 1


async def test_two_clients_with_one_token_share_one_budget(emulator: WemasyEmulator) -> None:
    """Two clients in one process, same token, sending at once: they share the budget, so no 429."""
    async with (
        WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as a,
        WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as b,
    ):
        await asyncio.gather(*(c.sendcloud.status() for c in (a, b) for _ in range(9)))
    assert statuses(emulator) == [200] * 18


async def test_another_token_has_its_own_budget(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """One token's spent window does not hold back another token."""
    await asyncio.gather(*(client.sendcloud.status() for _ in range(LIMIT)))
    async with WemasyClient(token="other-token", base_url=emulator.base_url, window_seconds=WINDOW) as other:
        await other.sendcloud.status()
        assert other.rate_limit.sent == 1
    assert client.rate_limit.remaining == 0
    assert emulator.requests[-1].token == "other-token"
    assert emulator.requests[-1].at - emulator.requests[0].at < WINDOW


async def test_after_a_429_nothing_reaches_the_server_before_retry_after(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """A 429 closes the gate for every task; the throttled calls are re-sent, not failed."""
    await client.sendcloud.status()  # the window is learned: 4 left, the client believes
    emulator.spend(TOKEN, LIMIT)  # ...but another process takes them
    results = await asyncio.gather(*(client.sendcloud.status() for _ in range(6)))
    assert len(results) == 6
    first_429 = next(r for r in emulator.requests if r.status == 429)
    reopens = first_429.at + float(first_429.response_headers["Retry-After"])
    later = [r for r in emulator.requests if r.at > first_429.at and r.status != 429]
    assert later
    assert min(r.at for r in later) >= reopens
    assert client.rate_limit.throttled >= 1


async def test_server_errors_are_retried_with_backoff(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """A 500 and a proxy's 502 are re-sent; the caller sees only the success."""
    emulator.inject(Fault.SERVER_ERROR, Fault.BAD_GATEWAY_HTML)
    assert (await client.sendcloud.status()).active is True
    assert statuses(emulator) == [500, 502, 200]
    assert client.rate_limit.retried == 2


async def test_validation_errors_are_never_retried(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """A 422 is raised at once: re-sending the same body cannot help."""
    emulator.unknown_order_ids = {7}
    with pytest.raises(ValidationError):
        await client.request("POST", PUSH, json={"create_label": False, "order_ids": [7]})
    assert statuses(emulator) == [422]


async def test_retries_stop_after_max_attempts(emulator: WemasyEmulator) -> None:
    """A call that keeps failing raises its last error after max_attempts sends."""
    emulator.faults.server_error_rate = 1.0
    policy = RetryPolicy(max_attempts=3, backoff_base=0.001)
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, retry=policy) as client:
        with pytest.raises(ServerError):
            await client.sendcloud.status()
    assert statuses(emulator) == [500, 500, 500]


async def test_retries_stop_when_waits_would_pass_max_wait(emulator: WemasyEmulator) -> None:
    """The total of retry waits per call is capped."""
    emulator.faults.server_error_rate = 1.0
    policy = RetryPolicy(max_attempts=1000, max_wait=0.05, backoff_base=0.02, backoff_cap=0.02)
    retries: list[RetryEvent] = []
    async with WemasyClient(
        token=TOKEN,
        base_url=emulator.base_url,
        window_seconds=WINDOW,
        retry=policy,
        on_event=lambda e: retries.append(e) if isinstance(e, RetryEvent) else None,
    ) as client:
        with pytest.raises(ServerError):
            await client.sendcloud.status()
    assert sum(r.delay for r in retries) <= policy.max_wait
    assert len(emulator.requests) == len(retries) + 1 < policy.max_attempts


async def test_retry_after_beyond_the_callers_limit_raises_rate_limit_error(emulator: WemasyEmulator) -> None:
    """A server that says "come back in an hour" is answered with a RateLimitError the caller can act on."""
    emulator.window_seconds = 3600.0
    emulator.spend(TOKEN, LIMIT)
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=RetryPolicy(max_wait=60)) as client:
        with pytest.raises(RateLimitError, match="max_wait=60") as info:
            await client.sendcloud.status()
    assert info.value.retry_after is not None
    assert info.value.retry_after > 3500
    assert statuses(emulator) == [429]


async def test_a_push_resent_after_a_lost_answer_is_marked_ambiguous(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """The first push was queued but its answer lost; the retry reports it skipped and says why."""
    emulator.inject(Fault.DROP_AFTER_PROCESSING)
    result = await client.sendcloud.push_shipments([1, 2])
    assert result.ambiguous_retry is True
    assert result.details.skipped_orders == ("1", "2")
    assert emulator.queued == [1, 2]
    clean = await client.sendcloud.push_shipments([3])
    assert clean.ambiguous_retry is False


async def test_timeouts_are_retried_and_mark_the_push_ambiguous(emulator: WemasyEmulator) -> None:
    """A timed-out push is re-sent and marked ambiguous; it succeeds once the server is quick again."""
    emulator.faults.delay_seconds = 0.3
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, timeout=0.1, retry=FAST_RETRIES
    ) as client:
        task = asyncio.create_task(client.sendcloud.push_shipments([4]))
        assert await asyncio.to_thread(emulator.wait_for_active)
        emulator.faults.delay_seconds = 0.0
        result = await task
        assert client.rate_limit.retried == 1
    assert result.ambiguous_retry is True
    assert emulator.queued == [4]


async def test_every_wait_and_retry_is_hooked_and_logged(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """on_event sees each wait for the window and each retry; the same goes to the debug log."""
    caplog.set_level(logging.DEBUG, logger="wemasy_async")
    events: list[object] = []
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, retry=FAST_RETRIES, on_event=events.append
    ) as client:
        emulator.inject(Fault.SERVER_ERROR)
        await asyncio.gather(*(client.sendcloud.status() for _ in range(LIMIT + 2)))
    retries = [e for e in events if isinstance(e, RetryEvent)]
    waits = [e for e in events if isinstance(e, WaitEvent)]
    assert [(r.attempt, r.cause) for r in retries] == [(2, "500")]
    assert {w.reason for w in waits} >= {"probe", "window"}
    assert any("retrying GET" in m for m in caplog.messages)
    assert any("rate limit: waiting" in m for m in caplog.messages)


async def test_cancelled_waiters_free_their_places(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """Calls cancelled while waiting for the window hold nothing: later calls go as if they never were."""
    await asyncio.gather(*(client.sendcloud.status() for _ in range(LIMIT)))
    waiting = [asyncio.create_task(client.sendcloud.status()) for _ in range(10)]
    await asyncio.sleep(0)  # let them queue
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    budget = shared_budget(emulator.base_url, TOKEN)
    assert budget.view().in_flight == 0
    assert not budget._queue
    await asyncio.gather(*(client.sendcloud.status() for _ in range(LIMIT)))
    assert statuses(emulator) == [200] * (2 * LIMIT)


async def test_a_call_cancelled_in_flight_frees_its_place(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """Cancelling a call whose request is out releases its slot; the request stays counted."""
    emulator.faults.delay_seconds = 5.0
    task = asyncio.create_task(client.sendcloud.status())
    assert await asyncio.to_thread(emulator.wait_for_active)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    view = client.rate_limit
    assert view.in_flight == 0
    assert view.sent == 1


async def test_concurrency_cap_holds(emulator: WemasyEmulator) -> None:
    """max_concurrency bounds how many requests the server sees at once."""
    emulator.limit = 100
    emulator.faults.delay_seconds = 0.05
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, max_concurrency=2) as c:
        await asyncio.gather(*(c.sendcloud.status() for _ in range(8)))
    assert emulator.max_concurrent == 2


async def test_rate_ceiling_keeps_below_the_servers_limit(emulator: WemasyEmulator) -> None:
    """A client ceiling of 5 per second spreads 10 calls over at least a second despite budget to spare."""
    emulator.limit = 100
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, rate_ceiling=(5, 1.0)
    ) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.sendcloud.status() for _ in range(10)))
    # From the calls' start (the emulator's clock is the same monotonic clock): a late first arrival on a
    # busy machine cannot shorten this, and without the ceiling the tenth call would land within ms.
    assert max(r.at for r in emulator.requests) - started >= 0.9


async def test_a_raised_limit_is_used_at_once(client: WemasyClient, emulator: WemasyEmulator) -> None:
    """When the server's limit goes up, the next answers raise the client's budget within the window."""
    await client.sendcloud.status()
    emulator.limit = 20
    await asyncio.gather(*(client.sendcloud.status() for _ in range(15)))
    assert client.rate_limit.limit == 20
    assert statuses(emulator).count(429) == 0


async def test_missing_rate_limit_headers_do_not_stall_the_client(
    client: WemasyClient, emulator: WemasyEmulator
) -> None:
    """Without X-RateLimit headers the client assumes the documented 60 per window and keeps going."""
    emulator.limit = 100
    emulator.faults.rate_limit_headers = False
    emulator.faults.delay_seconds = 0.02
    await asyncio.gather(*(client.sendcloud.status() for _ in range(20)))
    assert client.rate_limit.limit == 60
    assert emulator.max_concurrent > 1


async def test_slow_server_timeout_surfaces_after_retries(emulator: WemasyEmulator) -> None:
    """A server slower than the timeout on every attempt ends in APITimeoutError."""
    emulator.faults.delay_seconds = 1.0
    policy = RetryPolicy(max_attempts=2, backoff_base=0.001)
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, timeout=0.05, retry=policy
    ) as client:
        with pytest.raises(APITimeoutError):
            await client.sendcloud.status()
    assert client.rate_limit.retried == 1


# --- the budget against Laravel's rounded-down Retry-After, stalls and unbounded waits ------------------


def server_windows(records: list[RequestRecord], window: float) -> list[float]:
    """When the server's windows began, rebuilt from what it counted (a window starts with a request)."""
    starts: list[float] = []
    for record in sorted(records, key=lambda r: r.at):
        if record.counted and (not starts or record.at >= starts[-1] + window):
            starts.append(record.at)
    return starts


async def test_processes_without_a_shared_store_meet_at_most_one_429_each_per_window(
    emulator: WemasyEmulator,
) -> None:
    """Two processes on one token, each with its own budget, against Laravel's rounded-down Retry-After
    ("0" in a window's last second): every call succeeds and neither meets more than one 429 a window."""
    from wemasy_async import RateLimitBudget

    async def process(name: str) -> None:
        async with WemasyClient(
            token=TOKEN, base_url=emulator.base_url, budget=RateLimitBudget(WINDOW), user_agent=name
        ) as client:
            await asyncio.gather(*(client.sendcloud.status() for _ in range(12)))

    await asyncio.gather(process("first"), process("second"))
    assert statuses(emulator).count(200) == 24
    starts = server_windows(emulator.requests, WINDOW)
    for name in ("first", "second"):
        throttled = [r.at for r in emulator.requests if r.status == 429 and r.headers["User-Agent"].startswith(name)]
        per_window = [sum(1 for t in throttled if start <= t < start + WINDOW) for start in starts]
        assert max(per_window, default=0) <= 1, (name, per_window)


async def test_after_a_retry_after_of_0_nothing_is_sent_into_the_same_window(emulator: WemasyEmulator) -> None:
    """Retry-After: 0 comes while up to a second of the window remains: the gate stays closed until the
    window has ended, so the re-sent request is answered, not throttled again."""
    emulator.window_seconds = 1.0
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=FAST_RETRIES) as client:
        emulator.spend(TOKEN, LIMIT)  # another process spent the window just before our first request
        await client.sendcloud.status()
    assert statuses(emulator) == [429, 200]
    assert (
        emulator.requests[0].response_headers["Retry-After"] == "0"
    )  # the re-send waited for the window's end all the same


async def test_a_window_of_dropped_requests_does_not_stall_later_calls(emulator: WemasyEmulator) -> None:
    """Every request of a window is dropped: the budget never hears when that window ends, yet once the
    server answers again, later calls go through."""
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=NO_RETRIES, window_seconds=WINDOW) as client:
        await client.sendcloud.status()
        emulator.faults.drop_rate = 1.0
        results = await asyncio.gather(*(client.sendcloud.status() for _ in range(2 * LIMIT)), return_exceptions=True)
        assert all(isinstance(r, APIConnectionError) for r in results)
        emulator.faults.drop_rate = 0.0
        integration = await asyncio.wait_for(client.sendcloud.status(), HANG)
    assert integration.active is True


async def test_throttled_resends_do_not_use_up_attempts(emulator: WemasyEmulator) -> None:
    """Four 429s in a row and a call allowed two attempts: it still succeeds, since a 429 is the budget's
    business (this budget opens its gate at once, to show the client's own rule)."""
    emulator.inject(*[CannedResponse(429, {"message": "Too Many Attempts."}, {"Retry-After": "0"})] * 4)
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, budget=OpenBudget(), retry=RetryPolicy(max_attempts=2)
    ) as client:
        assert (await client.sendcloud.status()).active is True
    assert statuses(emulator) == [429, 429, 429, 429, 200]


async def test_429s_without_retry_after_wait_at_most_max_wait_in_total(emulator: WemasyEmulator) -> None:
    """A server that throttles without saying for how long: the call gives up after max_wait seconds of
    such waits, not after max_attempts windows."""
    emulator.inject(*[CannedResponse(429, {"message": "Too Many Attempts."})] * 20)
    policy = RetryPolicy(max_attempts=20, max_wait=1.2)
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=policy, window_seconds=WINDOW) as client:
        with pytest.raises(RateLimitError, match=r"max_wait=1\.2"):
            await client.sendcloud.status()
    assert 2 <= len(emulator.requests) <= 3  # waits of about a window each: 0.5, 1.0, then 1.5 > 1.2


async def test_a_long_gate_fails_every_waiting_and_later_call_at_once(emulator: WemasyEmulator) -> None:
    """A 429 asking for an hour: the call that got it, the calls queued behind it and later calls all
    raise RateLimitError with the wait at once; nothing else is sent."""
    emulator.window_seconds = 3600.0
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=RetryPolicy(max_wait=60)) as client:
        await client.sendcloud.status()
        emulator.spend(TOKEN, LIMIT)
        results = await asyncio.wait_for(
            asyncio.gather(*(client.sendcloud.status() for _ in range(6)), return_exceptions=True), HANG
        )
        assert all(isinstance(r, RateLimitError) for r in results), results
        assert all(r.retry_after is not None and r.retry_after > 3500 for r in results)  # type: ignore[union-attr]
        with pytest.raises(RateLimitError):
            await asyncio.wait_for(client.sendcloud.status(), HANG)
    assert statuses(emulator) == [200, 429]


@pytest.mark.parametrize("skew", [-300.0, 300.0])
async def test_an_http_date_retry_after_is_read_on_the_servers_clock(skew: float) -> None:
    """A server whose clock is five minutes off sends dates in its own time, and its Date header with
    them: the wait is read against that, so a 1 s window costs one 429 and about a second either way."""
    emulator = WemasyEmulator(limit=2, window_seconds=1.0, wall_clock=lambda: time.time() + skew)
    emulator.faults.retry_after = "http-date"
    with emulator.run_in_thread():
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=RetryPolicy(max_wait=10)) as client:
            emulator.spend(TOKEN, 2)
            await client.sendcloud.status()
    assert [r.status for r in emulator.requests] == [429, 200]


async def test_a_deadline_fails_at_once_when_the_budget_frees_too_late(emulator: WemasyEmulator) -> None:
    """A web handler's call with a deadline shorter than the wait for the next window fails now with
    DeadlineExceededError, and sends nothing."""
    emulator.window_seconds = 60.0
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(LIMIT)))
        deadline_at = time.monotonic() + 5.0
        with pytest.raises(DeadlineExceededError, match="rate-limit budget") as info:
            await client.sendcloud.status(deadline=5.0)
        assert time.monotonic() < deadline_at  # at once, not when the deadline came
    assert info.value.ambiguous is False
    assert len(emulator.requests) == LIMIT


async def test_a_ticket_granted_after_the_deadline_is_not_used(emulator: WemasyEmulator) -> None:
    """A budget that grants only after the call's deadline has passed: nothing is sent, the ticket goes
    back, and the call raises DeadlineExceededError (a request sent then would have no time limit)."""

    class LateBudget(OpenBudget):
        def __init__(self) -> None:
            self.released: list[object] = []

        def try_acquire(self) -> object:
            return None  # type: ignore[return-value]

        async def acquire(self, on_wait: object = None, *, max_gate_wait: float = 0, deadline: object = None) -> object:
            await asyncio.sleep(0.2)  # a slow grant (an event loop busy elsewhere), past the deadline
            return 0

        async def release(self, ticket: object) -> None:
            self.released.append(ticket)

    budget = LateBudget()
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, budget=budget, deadline=0.05) as client:
        with pytest.raises(DeadlineExceededError):
            await client.sendcloud.status()
    assert budget.released == [0]  # a falsy ticket is a ticket too
    assert emulator.requests == []


async def test_a_429_whose_wait_fits_in_max_wait_is_waited_for(emulator: WemasyEmulator) -> None:
    """Retry-After: 1 and max_wait=1: the call waits (the gate's extra second for Laravel's rounding is
    the budget's margin, not part of the wait asked for) and succeeds."""
    emulator.inject(CannedResponse(429, {"message": "Too Many Attempts."}, {"Retry-After": "1"}))
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, retry=RetryPolicy(max_wait=1.0)
    ) as client:
        assert (await client.sendcloud.status()).active is True
    assert statuses(emulator) == [429, 200]


async def test_a_deadline_cuts_a_slow_answer_short(emulator: WemasyEmulator) -> None:
    """The deadline covers the exchange too: a server slower than it ends the call with an ambiguous
    DeadlineExceededError, though the exchange's own timeout is longer."""
    emulator.faults.delay_seconds = 5.0
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, timeout=30.0, deadline=0.3) as client:
        with pytest.raises(DeadlineExceededError) as info:
            await asyncio.wait_for(client.sendcloud.status(), HANG)
    assert info.value.ambiguous is True
    assert emulator.max_concurrent == 1  # it reached the server, which is still working on it


async def test_a_default_client_keeps_the_window_another_client_named(emulator: WemasyEmulator) -> None:
    """window_seconds=None (the default) uses what the token's shared budget has."""
    async with (
        WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as named,
        WemasyClient(token=TOKEN, base_url=emulator.base_url) as default,
    ):
        assert named.rate_limit.window_seconds == default.rate_limit.window_seconds == WINDOW
