"""What only the in-process budget does: a constant cost per grant, waiters on other event loops, the window
mismatch warning (what every budget does is in test_budget_contract.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import pytest

from tests.budget_helpers import HANG, FakeClock, within
from tests.conftest import TOKEN
from wemasy_async import Budget, RateLimitBudget, RateLimitHeaders, WemasyClient
from wemasy_async.budgets import Ticket
from wemasy_async.testing import WemasyEmulator


def counting(budget: RateLimitBudget) -> list[int]:
    """Count how often the budget's state machine is asked for a decision."""
    calls = [0]
    state = budget.state
    try_acquire, peek = state.try_acquire, state.peek

    def counted_try(now: float, bulk: bool = False) -> object:
        calls[0] += 1
        return try_acquire(now, bulk)

    def counted_peek(now: float, bulk: bool = False) -> object:
        calls[0] += 1
        return peek(now, bulk)

    state.try_acquire = counted_try  # type: ignore[method-assign,assignment]
    state.peek = counted_peek  # type: ignore[method-assign,assignment]
    return calls


async def queued(budget: RateLimitBudget, count: int) -> None:
    """Let the event loop run until ``count`` callers wait in the budget's queue."""
    for _ in range(100 * count + 100):
        if len(budget._queue) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {len(budget._queue)} of {count} callers queued")


async def waiter_whose_loop_closes(budget: RateLimitBudget) -> None:
    """A caller waits on the budget from another thread's event loop, which then closes under it."""
    started = threading.Event()
    loop = asyncio.new_event_loop()
    tasks = []

    def other_thread() -> None:
        tasks.append(loop.create_task(budget.acquire(lambda event: started.set())))
        while not started.is_set():
            loop.run_until_complete(asyncio.sleep(0.0))

    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, HANG)
    assert started.is_set()
    loop.close()


def test_the_in_process_budget_is_a_budget() -> None:
    """RateLimitBudget implements the public Budget protocol that other budgets implement too."""
    assert isinstance(RateLimitBudget(), Budget)


async def test_waiters_are_served_first_come_first_served_at_a_constant_cost_per_grant() -> None:
    """2,000 callers wait behind a probe; as answers free slots they get tickets in arrival order, and
    each grant costs a bounded number of decisions however many wait (waking all would cost N each)."""
    clock = FakeClock()
    budget = RateLimitBudget(60.0, clock=clock)
    probe = budget.try_acquire()
    assert probe is not None
    served: list[int] = []
    tickets: asyncio.Queue[Ticket] = asyncio.Queue()

    async def caller(index: int) -> None:
        ticket = await budget.acquire()
        served.append(index)
        tickets.put_nowait(ticket)

    callers = [asyncio.create_task(caller(i)) for i in range(2000)]
    await queued(budget, 2000)
    calls = counting(budget)
    remaining = 100_000
    await budget.answered(probe, 200, RateLimitHeaders(100_000, remaining))
    while len(served) < 2000:
        ticket = await tickets.get()
        remaining -= 1
        await budget.answered(ticket, 200, RateLimitHeaders(100_000, remaining))
    await asyncio.gather(*callers)
    assert served == list(range(2000))
    assert calls[0] / 2000 <= 3


async def test_a_request_without_an_answer_wakes_a_waiter_on_another_event_loop() -> None:
    """A probe that is dropped on this loop lets a caller waiting on another thread's loop go."""
    budget = RateLimitBudget(60.0)
    probe = budget.try_acquire()
    assert probe is not None
    started = threading.Event()
    result: concurrent.futures.Future[Ticket] = concurrent.futures.Future()

    def other_thread() -> None:
        async def wait() -> Ticket:
            return await budget.acquire(lambda event: started.set())

        try:
            result.set_result(asyncio.run(asyncio.wait_for(wait(), HANG)))
        except BaseException as exc:
            result.set_exception(exc)

    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    assert await asyncio.to_thread(started.wait, HANG)
    await budget.no_answer(probe)
    ticket = await asyncio.wrap_future(result)
    assert isinstance(ticket, Ticket)
    await asyncio.to_thread(thread.join, HANG)


async def test_a_waiter_whose_loop_has_closed_does_not_fail_the_caller_that_frees_a_slot() -> None:
    """The first waiter's loop closed while it waited: the answer that frees a slot still succeeds, and
    the turn passes to the next waiter."""
    budget = RateLimitBudget(60.0)
    probe = budget.try_acquire()
    assert probe is not None
    await waiter_whose_loop_closes(budget)  # it never ran its cleanup: it is still first in the queue
    assert len(budget._queue) == 1
    await budget.answered(probe, 200, RateLimitHeaders(10, 9))  # waking it fails: it is dropped, quietly
    assert not budget._queue
    assert isinstance(await within(budget.acquire()), Ticket)


async def test_a_first_waiter_whose_loop_closed_during_a_timed_wait_does_not_hold_up_the_rest() -> None:
    """The first waiter waits for the window's end on another loop, which closes; nothing is in flight,
    so no answer will wake anyone: the others still get their tickets when the window ends."""
    clock = FakeClock()
    budget = RateLimitBudget(1.0, clock=clock)
    probe = budget.try_acquire()
    assert probe is not None
    await budget.answered(probe, 200, RateLimitHeaders(1, 0))  # spent until 1.0
    await waiter_whose_loop_closes(budget)
    dead = budget._queue.first()
    mine = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)  # it runs up to its wait
    assert len(budget._queue) == 1
    assert budget._queue.first() is not dead  # the caller whose loop is gone was dropped, not waited behind
    clock.now = 1.0  # the window ends; the timer for it runs in real time, so wake the waiter now
    with budget._lock:
        budget._wake_all()
    assert isinstance(await within(mine), Ticket)


async def test_a_server_window_far_shorter_than_configured_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Configured for 60 s against a server whose window is 1 s: the client cannot tell until the server's
    count starts again; then it says so once, in the log, naming the option to set."""
    clock = FakeClock()
    async with WemasyEmulator(limit=50, window_seconds=1.0, clock=clock) as emulator:
        budget = RateLimitBudget(60.0, clock=clock)
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, budget=budget) as client:
            with caplog.at_level(logging.WARNING, logger="wemasy_async"):
                for _ in range(3):
                    await client.sendcloud.status()
                clock.now += 1.5  # the server's window is over; the budget's runs for a minute
                for _ in range(3):
                    await client.sendcloud.status()
                clock.now += 1.5
                for _ in range(3):
                    await client.sendcloud.status()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not 60 s" in warnings[0]
    assert "window_seconds" in warnings[0]
    assert TOKEN not in warnings[0]
