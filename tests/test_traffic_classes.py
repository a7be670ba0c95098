"""Traffic classes in the pure state machine: bulk work leaves the reserve, borrows it late, and the reserve
follows interactive demand and other clients' use. Driven by hand with a number for a clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.budget_helpers import Caller, FakeClock, take, within
from tests.conftest import TOKEN
from tests.simulation import Outcome, simulate
from wemasy_async import RateLimitBudget, WaitEvent, WemasyClient
from wemasy_async._protocol import RateLimitHeaders
from wemasy_async.budgets import Ticket, Wait, WindowState
from wemasy_async.budgets._window import LEND_FRACTION, RECENT_WINDOWS
from wemasy_async.testing import WemasyEmulator

W = 60.0
LIMIT = 10


def opened(limit: int = LIMIT, at: float = 0.0) -> tuple[WindowState, float]:
    """A budget whose first request (interactive) was answered at ``at`` + 0.1: the limit is known and the
    window dated; nothing in flight. Returns it and the window's estimated end."""
    budget = WindowState(W)
    first = budget.try_acquire(at)
    assert isinstance(first, Ticket)
    budget.answered(first, at + 0.1, 200, RateLimitHeaders(limit, limit - 1))
    return budget, at + 0.1 + W


class Server:
    """The server's count of the current window, as the answers report it."""

    def __init__(self, used: int = 1) -> None:
        self.used = used

    def serve(self, budget: WindowState, now: float, *, bulk: bool, most: int = 10_000) -> int:
        """Take tickets at ``now`` (at most ``most``), each answered at once; how many were granted."""
        granted = 0
        while granted < most and isinstance(decision := budget.try_acquire(now, bulk, asking=not bulk), Ticket):
            self.used += 1
            budget.answered(decision, now, 200, RateLimitHeaders(LIMIT, LIMIT - self.used))
            granted += 1
        return granted

    def new_window(self) -> None:
        self.used = 0


def test_bulk_leaves_a_slot_that_an_interactive_call_then_takes() -> None:
    """With no interactive demand seen yet, bulk work still leaves one slot of the window free; it waits
    (reason ``reserve``) until the window's last tenth; an interactive call gets the slot at once."""
    budget, end = opened()
    assert Server().serve(budget, 1.0, bulk=True) == LIMIT - 1 - 1  # the first request, and the reserve
    wait = budget.try_acquire(1.0, bulk=True)
    assert wait == Wait(end - LEND_FRACTION * W, "reserve")
    assert isinstance(budget.try_acquire(1.0, asking=True), Ticket)  # the interactive call: served
    assert isinstance(budget.try_acquire(1.0, asking=True), Wait)  # and the window is spent


def test_bulk_borrows_the_reserve_in_the_windows_last_tenth() -> None:
    """Reserved slots no interactive call took go to bulk work near the window's end, so a batch alone
    spends the whole window."""
    budget, end = opened()
    assert Server().serve(budget, 1.0, bulk=True) == LIMIT - 2
    lend_at = end - LEND_FRACTION * W
    assert isinstance(budget.try_acquire(lend_at - 0.01, bulk=True), Wait)
    assert isinstance(budget.try_acquire(lend_at, bulk=True), Ticket)
    assert budget.try_acquire(lend_at, bulk=True) == Wait(end, "window")


def test_the_reserve_is_the_peak_of_recent_interactive_demand_capped_at_half_the_limit() -> None:
    """Interactive calls asked 4 times in a window: the next windows keep 4 slots from bulk work; 8 asks
    keep half the limit (5); windows without interactive calls bring it back to one."""
    budget, end = opened()
    for _ in range(4):
        budget.asked(1.0)
    assert budget.view(1.0).reserved == 0  # 4 asked in this window already: their slots were theirs
    server, now = Server(), end + 0.1  # the next window
    server.new_window()
    assert server.serve(budget, now, bulk=True) == LIMIT - 4
    assert budget.view(now).reserved == 4

    budget, end = opened()
    for _ in range(8):
        budget.asked(1.0)
    server, now = Server(), end + 0.1
    server.new_window()
    assert server.serve(budget, now, bulk=True) == LIMIT - LIMIT // 2
    for _ in range(RECENT_WINDOWS):  # windows of bulk work only, each ending as the next begins
        now += W + 0.1
        server.new_window()
        server.serve(budget, now, bulk=True)
    assert budget.view(now).reserved == 1


def test_an_interactive_call_that_asked_counts_once_it_is_served_in_the_same_window() -> None:
    """An interactive call served from the reserve uses it up: bulk work is not held back twice for it."""
    budget, _end = opened()
    server = Server()
    assert server.serve(budget, 1.0, bulk=False, most=1) == 1
    assert budget.view(1.0).reserved == 0
    assert server.serve(budget, 1.0, bulk=True) == LIMIT - 2


def test_bulk_leaves_other_clients_more_than_they_used_in_the_last_window() -> None:
    """Answers showed another client (another process, no shared store) using 2 requests of a window: in
    the next window bulk work leaves it twice that (its use was what the reserve let it have, so room to
    grow), and the one slot for interactive calls; a client that used 3 gets half the limit at most."""
    budget, end = opened()
    Server(used=1 + 2).serve(budget, 1.0, bulk=True)  # 2 requests of someone else's counted after our first
    server, now = Server(), end + 0.1
    server.new_window()
    assert server.serve(budget, now, bulk=True) == LIMIT - 2 * 2 - 1
    assert budget.view(now).reserved == 2 * 2 + 1

    budget, end = opened()
    Server(used=1 + 3).serve(budget, 1.0, bulk=True)
    server, now = Server(), end + 0.1
    server.new_window()
    assert server.serve(budget, now, bulk=True) == LIMIT - LIMIT // 2


def test_interactive_calls_are_never_held_for_the_reserve() -> None:
    """The reserve binds bulk work only: interactive calls take every slot of the window."""
    budget, _end = opened()
    assert Server().serve(budget, 1.0, bulk=False) == LIMIT - 1


# --- the budget and the client ---------------------------------------------------------------------------


async def test_interactive_waiters_are_served_before_bulk_waiters_that_came_first() -> None:
    """Two bulk callers and then an interactive one wait for the window's first answer; as answers free
    slots, the interactive caller is served first, then the bulk ones in the order they came."""
    budget = RateLimitBudget(W, clock=FakeClock(1000.0))
    probe = await take(budget)
    served: asyncio.Queue[tuple[str, Ticket]] = asyncio.Queue()

    async def caller(name: str, waiting: Caller) -> None:
        served.put_nowait((name, await waiting.task))

    callers = {"bulk 1": Caller(budget, priority="bulk"), "bulk 2": Caller(budget, priority="bulk")}
    callers["interactive"] = Caller(budget)
    for waiting in callers.values():
        await waiting.reported()
    tasks = [asyncio.ensure_future(caller(name, waiting)) for name, waiting in callers.items()]
    remaining = 99
    await budget.answered(probe, 200, RateLimitHeaders(100, remaining))
    order: list[str] = []
    while len(order) < len(callers):
        name, ticket = await within(served.get())
        order.append(name)
        remaining -= 1
        await budget.answered(ticket, 200, RateLimitHeaders(100, remaining))
    await asyncio.gather(*tasks)
    assert order == ["interactive", "bulk 1", "bulk 2"]


@pytest.mark.wemasy_emulator(limit=LIMIT, window_seconds=W)
@pytest.mark.parametrize("slots", [32, 4])
async def test_a_web_call_is_served_at_once_while_a_batch_waits_for_the_window(
    wemasy_emulator: WemasyEmulator, slots: int
) -> None:
    """A batch needs more than the window on the same client; once it waits, a status() call is still
    answered at once (from the slot the batch left), without waiting for the window, and it is counted
    as interactive. So too when the batch's waiting requests are as many as the client's concurrency
    slots: a bulk request waits for the budget holding no slot."""
    holding = asyncio.Event()
    events: list[WaitEvent] = []
    held: list[WaitEvent] = []  # the batch's waits from the first for the reserve on

    def on_event(event: object) -> None:
        if isinstance(event, WaitEvent):
            events.append(event)
            if event.priority == "bulk" and (held or event.reason == "reserve"):
                held.append(event)
            if len(held) >= 4:  # each of the batch's four requests waits (the first for the reserve)
                holding.set()

    base_url = wemasy_emulator.base_url
    options = {"window_seconds": W, "on_event": on_event, "max_concurrency": slots}
    async with WemasyClient(token=TOKEN, base_url=base_url, **options) as client:
        batch = asyncio.ensure_future(client.sendcloud.push_shipments(range(1, 31), chunk_size=1, max_concurrency=4))
        await within(holding.wait())
        integration = await within(client.sendcloud.status())
        assert integration.active is not None
        assert not batch.done()  # the batch still waits: the window is long
        assert [e for e in events if e.priority == "interactive"] == []
        view = client.rate_limit
        assert (view.interactive_sent, view.interactive_waited_seconds) == (1, 0.0)
        assert view.sent == LIMIT - 1 + 1
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch


# --- simulated against Laravel's throttle --------------------------------------------------------------


def _arrivals(start: float, gaps: list[float], window: float, limit: int) -> list[float]:
    """Interactive calls at ``start`` and then after each gap, spaced so that no window holds more than
    half the limit of them (more than that cannot all be served within a window, by any rule)."""
    least = window / max(1, limit // 2)
    times, at = [], start
    for gap in gaps:
        times.append(at)
        at += least * (1 + gap)
    return times


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    limit=st.integers(2, 12),
    window=st.sampled_from([2.0, 4.0]),
    batch=st.integers(1, 80),
    concurrency=st.integers(1, 16),
    latency=st.floats(0.001, 0.05),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    start=st.floats(0.0, 2.0),
    gaps=st.lists(st.floats(0.0, 1.0), max_size=20),
)
def test_in_one_process_every_interactive_call_is_served_within_a_window_of_asking(
    limit: int,
    window: float,
    batch: int,
    concurrency: int,
    latency: float,
    jitter: float,
    seed: int,
    start: float,
    gaps: list[float],
) -> None:
    """A batch and interactive calls arriving at any times share one process's budget: no 429, nothing
    stalls, and every interactive call is granted within one window of asking (plus round trips)."""
    arrivals = _arrivals(start, gaps, window, limit)
    outcome = simulate(
        limit=limit,
        window=window,
        calls=[batch],
        concurrency=concurrency,
        latency=latency,
        jitter=jitter,
        seed=seed,
        bulk=[True],
        arrivals=[arrivals],
    )
    assert not outcome.stalled
    assert sum(outcome.throttled.values()) == 0
    served = outcome.clients[0].served
    assert len(served) == len(arrivals)
    rt = latency * (1 + jitter)
    assert max((granted - arrived for arrived, granted, _ in served), default=0.0) <= window + 2 * rt + 1e-9


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    limit=st.integers(1, 12),
    window=st.sampled_from([1.0, 2.0, 60.0]),
    requests=st.integers(1, 80),
    concurrency=st.integers(1, 16),
    latency=st.floats(0.001, 0.05),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_batch_alone_ends_when_it_would_without_classes(
    limit: int, window: float, requests: int, concurrency: int, latency: float, jitter: float, seed: int
) -> None:
    """Sent as bulk, a batch alone spends every window as it did before classes (it borrows the reserve
    near each window's end, and its last call goes as interactive): no 429, and the same makespan."""

    def run(bulk: list[bool] | None) -> Outcome:
        calls = [requests]
        return simulate(
            limit=limit,
            window=window,
            calls=calls,
            concurrency=concurrency,
            latency=latency,
            jitter=jitter,
            seed=seed,
            bulk=bulk,
        )

    before, bulk = run(None), run([True])
    assert not bulk.stalled
    assert sum(bulk.throttled.values()) == 0
    assert bulk.requests == before.requests
    rt = latency * (1 + jitter)
    assert bulk.makespan <= before.makespan * 1.01 + 2 * rt


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    limit=st.integers(2, 12),
    window=st.sampled_from([2.0, 4.0]),
    batch=st.integers(1, 80),
    concurrency=st.integers(1, 16),
    latency=st.floats(0.001, 0.05),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    start=st.floats(0.0, 2.0),
    gaps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
)
def test_without_a_shared_store_a_web_process_beside_a_batch_gets_its_calls_through(
    limit: int,
    window: float,
    batch: int,
    concurrency: int,
    latency: float,
    jitter: float,
    seed: int,
    start: float,
    gaps: list[float],
) -> None:
    """A batch process and a web process on one token, each with its own budget: the batch leaves the
    web's use (as the server's counts show it) free, so every web call is served, none waits behind the
    whole batch, and no process meets more than one 429 in a window (and the web none while it is alone
    in asking)."""
    arrivals = _arrivals(start, gaps, window, limit)
    outcome = simulate(
        limit=limit,
        window=window,
        calls=[batch, 0],
        concurrency=concurrency,
        latency=latency,
        jitter=jitter,
        seed=seed,
        bulk=[True, False],
        arrivals=[[], arrivals],
    )
    assert not outcome.stalled
    served = outcome.clients[1].served
    assert len(served) == len(arrivals)
    # Each process reads the window from its own answers, and the web's, opened by the batch before its
    # first request, ends earlier than it can tell: a web call may wait past one window, never three.
    assert max(granted - arrived for arrived, granted, _ in served) <= 3 * window
    assert max(outcome.throttled.values(), default=0) <= 2


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    limit=st.integers(2, 12),
    window=st.sampled_from([1.0, 2.0, 60.0]),
    windows=st.integers(3, 12),
    concurrency=st.integers(1, 16),
    latency=st.floats(0.001, 0.05),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_without_a_shared_store_two_batches_on_one_token_share_it(
    limit: int, window: float, windows: int, concurrency: int, latency: float, jitter: float, seed: int
) -> None:
    """Two batch processes of the same size on one token, each with its own budget: neither waits for the
    other to end (had one gone first, it would end at half the other's time): the first to end does so
    after at least 0.6 of the other's time, and both end with every call answered."""
    requests = limit * windows
    outcome = simulate(
        limit=limit,
        window=window,
        calls=[requests, requests],
        concurrency=concurrency,
        latency=latency,
        jitter=jitter,
        seed=seed,
        bulk=[True, True],
    )
    assert not outcome.stalled
    first, second = sorted(client.finished_at for client in outcome.clients)
    assert first >= 0.6 * second


@pytest.mark.wemasy_emulator(limit=LIMIT, window_seconds=W)
async def test_web_calls_and_a_batch_request_on_one_slot_never_wait_for_each_other(
    wemasy_emulator: WemasyEmulator,
) -> None:
    """max_concurrency=1: a web call in flight, a batch request waiting for the budget (the window's first
    answer), and a second web call: all three are answered. (Had the batch request held its ticket while it
    waited for the slot the second web call took, that call would wait for an answer that never comes.)"""
    wemasy_emulator.faults.delay_seconds = 0.3  # the first call stays in flight while the others line up
    bulk_waits = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, WaitEvent) and event.priority == "bulk":
            bulk_waits.set()

    options = {"window_seconds": W, "max_concurrency": 1, "on_event": on_event}
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, **options) as client:
        first = asyncio.ensure_future(client.sendcloud.status())
        await within(asyncio.to_thread(wemasy_emulator.wait_for_active, count=1, timeout=20))
        batch = asyncio.ensure_future(client.with_options(priority="bulk").sendcloud.status())
        await within(bulk_waits.wait())
        second = asyncio.ensure_future(client.sendcloud.status())
        await within(asyncio.gather(first, batch, second))
