"""What every budget must do, run against each backend through the ``Budget`` protocol only.

A new backend joins by adding one entry to ``BACKENDS``. The in-process budget runs on a settable clock,
and so does the host one (its "processes" are budgets on one file); the Redis one decides on Redis's
``TIME``, so the tests assert order and outcomes, never durations: windows are either long (nothing ends
during a test) or short (the test waits for them to end, whatever it takes).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from tests.budget_helpers import Caller, FakeClock, OtherLoop, take, within
from wemasy_async import Budget, RateLimitBudget, RateLimitError, RateLimitHeaders, WaitEvent
from wemasy_async._chunk_size import LearnedSizes
from wemasy_async.budgets import Priority
from wemasy_async.budgets._host import HostBudget
from wemasy_async.budgets._redis import RedisBudget

#: A window no test sees the end of.
LONG = 60.0
#: A window the test waits out (its end is the budget's business, not a speed the test asserts).
SHORT = 0.3
_tokens = itertools.count()


Make = Callable[[float], Budget[Any]]
#: Another client's handle on a budget ``Make`` made, to be used on another event loop (and made there).
Share = Callable[[Budget[Any], float], Budget[Any]]


@attrs.define
class Backend:
    """How to make one backend's budgets for a test, on a clock the test may move (for deadlines)."""

    clock: FakeClock
    make: Make
    share: Share


def _in_process(request: pytest.FixtureRequest, clock: FakeClock) -> tuple[Make, Share]:
    # The process's budget is one object, for every client on every loop and thread.
    return (lambda window_seconds: RateLimitBudget(window_seconds, clock=clock)), (lambda budget, _: budget)


def _redis(request: pytest.FixtureRequest, clock: FakeClock) -> tuple[Make, Share]:
    redis_url: str = request.getfixturevalue("redis_url")  # a private redis-server: fails, never skips
    token = f"contract-{next(_tokens)}"

    def make(window_seconds: float) -> Budget[Any]:
        # Polls come a LONG window apart: a waiter is served by the wake that frees it, never by a poll.
        base_url = "http://127.0.0.1/api"
        return RedisBudget(redis_url, base_url, token, window_seconds=window_seconds, clock=clock, poll_seconds=LONG)

    return make, (lambda _, window_seconds: make(window_seconds))  # another process's, on the same token


def _host(request: pytest.FixtureRequest, clock: FakeClock) -> tuple[Make, Share]:
    directory = request.getfixturevalue("tmp_path")
    token = f"contract-{next(_tokens)}"

    def make(window_seconds: float) -> Budget[Any]:
        # Another process's budget is another object on the same file (a lock and a mapping of its own).
        return HostBudget(
            "http://127.0.0.1/api", token, window_seconds=window_seconds, directory=directory, clock=clock
        )

    return make, (lambda _, window_seconds: make(window_seconds))


BACKENDS = {"in-process": _in_process, "redis": _redis, "host": _host}


#: The backends shared beyond the process, whose clients in other processes share what batches learned.
SHARING = [name for name in BACKENDS if name != "in-process"]


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in _backend(request):
        yield made


@pytest.fixture(params=SHARING)
async def sharing_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in _backend(request):
        yield made


async def _backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = FakeClock(1000.0)
    made: list[Budget[Any]] = []
    factory, share = BACKENDS[request.param](request, clock)

    def make(window_seconds: float) -> Budget[Any]:
        made.append(factory(window_seconds))
        return made[-1]

    yield Backend(clock, make, share)
    # Callers a failed test left waiting go first, so that a failure is reported, never a hang.
    await within(Caller.cancel_all())
    for budget in made:
        await within(budget.aclose())


async def spent(budget: Budget[Any]) -> None:
    """Spend a window of 2 requests, both answered: nothing is in flight and the window has a known end."""
    probe = await take(budget)
    await budget.answered(probe, 200, RateLimitHeaders(2, 1))
    await budget.answered(await take(budget), 200, RateLimitHeaders(2, 0))


# --- order -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["interactive", "bulk"])
async def test_waiters_are_served_in_the_order_they_came(backend: Backend, priority: Priority) -> None:
    """Callers of one class queue behind the window's first request; as answers free slots, tickets go in
    arrival order, and a later caller does not overtake the queue on the fast path (so two batches on one
    token, whose requests queue in turn, share the budget evenly)."""
    budget = backend.make(LONG)
    probe = await take(budget, priority)
    served: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def caller(index: int, ready: Caller) -> None:
        served.put_nowait((index, await ready.task))

    callers: list[Caller] = []
    for _ in range(5):
        callers.append(Caller(budget, priority=priority))
        await callers[-1].reported()
    tasks = [asyncio.ensure_future(caller(i, c)) for i, c in enumerate(callers)]
    remaining = 99
    await budget.answered(probe, 200, RateLimitHeaders(100, remaining))
    assert budget.try_acquire(priority) is None  # the waiters come first, though a slot is free
    order: list[int] = []
    while len(order) < len(callers):
        index, ticket = await within(served.get())
        order.append(index)
        remaining -= 1
        await budget.answered(ticket, 200, RateLimitHeaders(100, remaining))
    await asyncio.gather(*tasks)
    assert order == list(range(len(callers)))


async def test_one_freed_slot_lets_one_waiter_go(backend: Backend) -> None:
    """An answer that leaves one slot in the window lets the first waiter go and no other; a slot given
    back (its request never left) goes to the next in line, and only to it."""
    budget = backend.make(LONG)
    probe = await take(budget)
    callers: list[Caller] = []
    for _ in range(4):
        callers.append(Caller(budget))
        await callers[-1].reported()
    await budget.answered(probe, 200, RateLimitHeaders(3, 2))
    await budget.answered(await within(callers[0].task), 200, RateLimitHeaders(3, 1))  # one slot left
    ticket = await within(callers[1].task)
    await callers[2].reported("window")  # still waiting, now for the window's end
    assert budget.view().in_flight == 1
    await budget.release(ticket)  # its request never reached the server: the place goes back
    await within(callers[2].task)
    await callers[3].reported("window")
    assert budget.view().in_flight == 1
    await callers[3].cancelled()


# --- traffic classes -------------------------------------------------------------------------------------


async def test_the_windows_last_slot_goes_to_an_interactive_waiter_before_bulk_ones(backend: Backend) -> None:
    """Two bulk callers and then an interactive one wait for the window's first answer, which leaves one
    slot: it goes to the interactive caller; the bulk ones keep waiting."""
    budget = backend.make(LONG)
    probe = await take(budget)
    bulk = [Caller(budget, priority="bulk"), Caller(budget, priority="bulk")]
    for caller in bulk:
        await caller.reported()
    interactive = Caller(budget)
    await interactive.reported()
    await budget.answered(probe, 200, RateLimitHeaders(2, 1))
    ticket = await within(interactive.task)
    assert not any(caller.task.done() for caller in bulk)
    assert budget.view().in_flight == 1
    await budget.release(ticket)
    for caller in bulk:
        await caller.cancelled()


async def test_bulk_work_leaves_a_slot_that_an_interactive_caller_then_gets_at_once(backend: Backend) -> None:
    """Bulk callers take the window but for its reserve (they wait, reason ``reserve``, until near its
    end, a minute away); an interactive caller arriving then is granted at once, without waiting."""
    budget = backend.make(LONG)
    probe = await take(budget, priority="bulk")
    await budget.answered(probe, 200, RateLimitHeaders(4, 3))
    used = 1
    for _ in range(2):  # one at a time, answered: the window's ramp is the budget's business, not this test's
        ticket = await take(budget, priority="bulk")
        used += 1
        await budget.answered(ticket, 200, RateLimitHeaders(4, 4 - used))
    held = Caller(budget, priority="bulk")
    event = await held.reported("reserve")
    assert event.priority == "bulk"
    assert budget.view().reserved == 1
    interactive = Caller(budget)
    ticket = await within(interactive.task)
    assert not [e for e in interactive.events if e.reason != "queue"]  # no wait for the budget itself
    assert not held.task.done()
    await budget.release(ticket)
    await held.cancelled()


async def test_interactive_calls_that_wait_into_the_next_window_are_counted_once_in_the_window_they_asked_in(
    backend: Backend,
) -> None:
    """The reserve follows interactive demand by the window a call asked in, each call once: three calls
    that ask (fast path first, as the client does) while the window is spent, and are served in the next,
    make that window's reserve the four of the last (the probe and them) for the calls that arrive in it,
    not four less the three (counted again where served) nor more (counted twice where they asked)."""
    window = 2.0  # long enough for the test's steps inside the second window, on Redis's own clock
    budget = backend.make(window)
    probe = await take(budget)
    await budget.answered(probe, 200, RateLimitHeaders(10, 9))
    for left in range(8, -1, -1):  # bulk takes the rest (no reserve yet: the probe asked in this window)
        ticket = await take(budget, priority="bulk")
        await budget.answered(ticket, 200, RateLimitHeaders(10, left))
    callers = []
    for _ in range(3):
        assert budget.try_acquire() is None  # the window is spent
        callers.append(Caller(budget))
        await callers[-1].reported()
    backend.clock.now += window  # the window ends (on Redis, its TIME moves by itself)
    tickets = [await within(caller.task) for caller in callers]
    assert budget.view().reserved == 4
    for ticket in tickets:
        await budget.release(ticket)


# --- the gate a 429 closes -------------------------------------------------------------------------------


async def test_a_429_closes_the_gate_for_every_later_caller(backend: Backend) -> None:
    """After a 429 with Retry-After, a caller that was waiting and one that comes later both wait for the
    gate; nothing is granted on the fast path."""
    budget = backend.make(LONG)
    probe = await take(budget)
    waiting = Caller(budget)
    await waiting.reported()
    gate = await budget.answered(probe, 429, RateLimitHeaders(10, 0, 30.0))
    assert 30.0 <= gate <= 31.0
    event = await waiting.reported("gate")
    assert event.seconds is not None
    assert 29.0 <= event.seconds <= 31.0
    assert budget.try_acquire() is None
    later = Caller(budget)
    await later.reported()
    assert budget.view().gate_closed_for >= 29.0
    assert not waiting.task.done()
    await later.cancelled()
    await waiting.cancelled()


async def test_a_gate_longer_than_max_gate_wait_is_refused_at_once(backend: Backend) -> None:
    """A 429 closes the gate for an hour: callers that wait at most a minute fail at once with
    RateLimitError and the time to wait, wherever they are queued (first in line, between and after callers
    that accept the wait), and so does a later one; those that accept the wait keep waiting."""
    budget = backend.make(LONG)
    probe = await take(budget)
    queued: list[tuple[Caller, bool]] = []
    for patient in (False, True, False, True, False):
        queued.append((Caller(budget, max_gate_wait=7200.0 if patient else 60.0), patient))
        await queued[-1][0].reported()
    gate = await budget.answered(probe, 429, RateLimitHeaders(10, 0, 3600.0))
    assert 3600.0 <= gate <= 3601.0
    for caller, patient in queued:
        if not patient:
            with pytest.raises(RateLimitError) as info:
                await within(caller.task)
            assert info.value.retry_after == pytest.approx(gate, abs=1.0)
    with pytest.raises(RateLimitError):
        await within(budget.acquire(max_gate_wait=60.0))
    waiting = [caller for caller, patient in queued if patient]
    await waiting[0].reported("gate")  # first in line now, and waits for the gate
    assert not any(caller.task.done() for caller in waiting)
    for caller in waiting:
        await caller.cancelled()


# --- deadlines -------------------------------------------------------------------------------------------


async def test_a_wait_known_to_end_after_the_deadline_fails_at_once(backend: Backend) -> None:
    """The window is spent for a minute: a caller whose deadline comes first gets TimeoutError now, not
    at its deadline; the window is not harmed."""
    budget = backend.make(LONG)
    await spent(budget)
    with pytest.raises(TimeoutError):
        await within(budget.acquire(deadline=backend.clock() + 30.0))
    assert budget.view().in_flight == 0


async def test_a_caller_queued_behind_its_own_process_fails_at_once_too(backend: Backend) -> None:
    """Nobody is served before the first in line: a caller behind it whose deadline comes before the
    window's end fails at once as well, and the first keeps its place."""
    budget = backend.make(LONG)
    await spent(budget)
    first = Caller(budget)
    await first.reported("window")
    with pytest.raises(TimeoutError):
        await within(budget.acquire(deadline=backend.clock() + 30.0))
    assert not first.task.done()
    await first.cancelled()


async def test_a_deadline_passing_while_queued_fails_the_caller_in_time(backend: Backend) -> None:
    """Callers wait for an answer that may take any time (no known end): when one's deadline passes, it
    fails then, wherever it is in the queue, and the others keep waiting."""
    budget = backend.make(LONG)
    probe = await take(budget)
    first = Caller(budget)
    await first.reported()
    hurried = Caller(budget, deadline=backend.clock() + 0.05)
    await hurried.reported()
    backend.clock.now += 0.1  # past its deadline; it notices when its own timed wait ends
    with pytest.raises(TimeoutError):
        await within(hurried.task)
    assert not first.task.done()
    await budget.answered(probe, 200, RateLimitHeaders(10, 9))
    await within(first.task)


# --- wakes -----------------------------------------------------------------------------------------------


async def _hold(budget: Budget[Any], wait: str) -> Any:
    """The ticket that makes the next caller wait for ``wait``: the last slot of a LONG window ("window": a
    known end, a minute away), or the window's first request, out to learn the limit ("probe": no end)."""
    probe = await take(budget)
    if wait == "probe":
        return probe
    await budget.answered(probe, 200, RateLimitHeaders(3, 2))
    await budget.answered(await take(budget), 200, RateLimitHeaders(3, 1))  # past the ramp: answers heard
    return await take(budget)


async def _free(budget: Budget[Any], ticket: Any, wait: str) -> None:
    """Free the slot ``ticket`` holds: the probe is answered, or the ticket given back (its request never
    left)."""
    if wait == "probe":
        await budget.answered(ticket, 200, RateLimitHeaders(10, 9))
    else:
        await budget.release(ticket)


async def _shared(backend: Backend, budget: Budget[Any]) -> Budget[Any]:
    return backend.share(budget, LONG)  # made on the loop that runs this


@pytest.mark.parametrize("wait", ["window", "probe"])
async def test_a_slot_freed_elsewhere_as_a_caller_begins_to_wait_reaches_it(backend: Backend, wait: str) -> None:
    """Another client of the token's budget (another process, on Redis; another thread's loop, on the
    process's budget) holds the slot a caller needs, so the caller waits for the end of a LONG window, or
    for that client's answer. The slot is freed just after the caller found none and said why it waits
    (inside its on_wait, while its loop stands still): the caller is served then, not at the window's end
    or at a poll. A wake that comes between a failed try and the wait it starts is not lost."""
    budget = backend.make(LONG)
    other = OtherLoop()
    peer = other.run(_shared(backend, budget))
    try:
        held = other.run(_hold(peer, wait))

        def free_it(event: WaitEvent) -> None:
            assert event.reason == wait
            other.run(_free(peer, held, wait))

        caller = Caller(budget, when_waiting=free_it)
        ticket = await within(caller.task)
        assert [event.reason for event in caller.events] == [wait]
        assert budget.view().in_flight == 1
        await budget.release(ticket)
    finally:
        if peer is not budget:
            other.run(peer.aclose())
        other.close()


# --- cancellation ----------------------------------------------------------------------------------------


async def test_a_cancelled_waiter_gives_its_place_to_the_next(backend: Backend) -> None:
    """The first waiter is cancelled before any slot frees: the next one is served when one does."""
    budget = backend.make(LONG)
    probe = await take(budget)
    first, second = Caller(budget), Caller(budget)
    await first.reported()
    await second.reported()
    await first.cancelled()
    await budget.answered(probe, 200, RateLimitHeaders(10, 9))
    await within(second.task)
    assert budget.view().in_flight == 1


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8])
async def test_a_waiter_cancelled_as_its_slot_frees_gives_the_slot_back(backend: Backend, turns: int) -> None:
    """The answer that frees the window's last slot comes, and the first waiter is cancelled then, or a few
    loop iterations later (while a backend that asks a server may be asking for that slot, or have been
    granted it): the cancelled caller always ends in CancelledError, never with a ticket, and the backend
    itself gives back what was granted to it, so the next waiter is served and nothing stays counted."""
    budget = backend.make(LONG)
    probe = await take(budget)
    first, second = Caller(budget), Caller(budget)
    await first.reported()
    await second.reported()
    await budget.answered(probe, 200, RateLimitHeaders(2, 1))  # one slot left: the first's
    for _ in range(turns):
        await asyncio.sleep(0)  # one loop iteration: the first may be on its way to the slot
    if first.task.cancel():  # still waiting: it ends in CancelledError, and holds nothing
        with pytest.raises(asyncio.CancelledError):
            await within(first.task)
    else:  # served before this point (a backend that needs no server): it settles its ticket as any caller
        await budget.release(first.task.result())
    await within(second.task)
    assert budget.view().in_flight == 1


# --- no endless wait -------------------------------------------------------------------------------------


async def test_a_window_whose_requests_went_unanswered_still_ends(backend: Backend) -> None:
    """Every request of a window went unanswered and nothing is in flight: no answer can come, so the
    wait has an end (a window after the last was given up), and the caller gets a ticket then."""
    budget = backend.make(SHORT)
    await spent(budget)
    backend.clock.now += SHORT  # the first window is over (on Redis, its TIME moves by itself)
    tickets = [await take(budget), await take(budget)]
    for ticket in tickets:
        await budget.no_answer(ticket)
    caller = Caller(budget)
    waits = caller.events
    backend.clock.now += SHORT
    await within(caller.task)
    assert all(event.seconds is not None for event in waits)


# --- learned chunk sizes ---------------------------------------------------------------------------------


async def test_a_sharing_budget_keeps_the_least_maximum_and_the_largest_proven_size(
    sharing_backend: Backend,
) -> None:
    """A budget shared beyond the process keeps what the token's batches learned of the server's request
    sizes: another client of it (another process) gets the least maximum and the largest proven size within
    it, and a higher maximum is never taken (never probed past). (The process's own budget shares nothing:
    its clients share the process's sizer.)"""
    backend = sharing_backend
    budget = backend.make(LONG)
    share = budget.share_chunk_sizes  # type: ignore[attr-defined]
    other_budget = backend.share(budget, LONG)
    other = other_budget.share_chunk_sizes  # type: ignore[attr-defined]
    try:
        assert await share(LearnedSizes(None, 2000)) == LearnedSizes(None, 2000)
        assert await other(LearnedSizes(None, 0)) == LearnedSizes(None, 2000)
        assert await other(LearnedSizes(4000, 4000)) == LearnedSizes(4000, 4000)
        assert await share(LearnedSizes(3000, 0)) == LearnedSizes(3000, 3000)
        assert await other(LearnedSizes(5000, 5000)) == LearnedSizes(3000, 3000)
    finally:
        await other_budget.aclose()
