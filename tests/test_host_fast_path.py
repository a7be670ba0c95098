"""The host budget's fast path: a step takes a few tickets for the process's next callers of the same turn of
its event loop, and answers are written a turn later. Two budgets on one file stand for two processes (as in
the contract suite); turns of the loop are yielded with ``sleep(0)``, which waits for no time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.budget_helpers import FakeClock
from wemasy_async import RateLimitHeaders
from wemasy_async.budgets._host import HostBudget, HostTicket

LIMIT = 1000  # plenty: a step may take tickets for the turn's next callers


def budgets(tmp_path: Path, clock: FakeClock) -> tuple[HostBudget, HostBudget]:
    def one() -> HostBudget:
        return HostBudget("http://127.0.0.1/api", "fast-path", window_seconds=60.0, directory=tmp_path, clock=clock)

    return one(), one()


async def turns(count: int = 2) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def busy(budget: HostBudget, calls: int, answered: int = 0) -> list[HostTicket]:
    """The window's first requests answered (the limit is learned, the ramp has room), then ``calls``
    tickets in each of two turns, each turn's answered at the next (so the next turn's first step takes
    tickets for the rest). The last turn's tickets are returned, unanswered."""
    while answered < 2 * calls:  # the first window's ramp: as many in flight as answers so far
        ramp = []
        while (ticket := budget.try_acquire()) is not None:
            ramp.append(ticket)
        for ticket in ramp:
            answered += 1
            await budget.answered(ticket, 200, RateLimitHeaders(LIMIT, LIMIT - answered))
        await turns()
    tickets: list[HostTicket] = []
    for _ in range(2):
        for ticket in tickets:
            answered += 1
            await budget.answered(ticket, 200, RateLimitHeaders(LIMIT, LIMIT - answered))
        tickets = [budget.try_acquire() for _ in range(calls)]  # type: ignore[misc]
        assert None not in tickets
        await turns(1)
    return tickets


async def test_a_turns_callers_share_one_step_and_what_is_kept_reaches_the_others(tmp_path: Path) -> None:
    """Six callers of one turn are served by the turn's first step (the others from what it took); once the
    turn has ended, another process sees exactly the six in flight, and their answers once they came."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    tickets = await busy(mine, 6)
    assert {ticket.slot for ticket in tickets} == {tickets[0].slot}  # one step, one slot
    await turns()
    assert other.view().in_flight == 6
    for ticket in tickets:
        await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, 900))
    await turns()
    view = other.view()
    assert view.in_flight == 0
    assert view.remaining == 900  # as the last answer counted


async def test_tickets_taken_and_not_used_go_back_when_a_turn_uses_none(tmp_path: Path) -> None:
    """A turn with fewer callers than the step took for: what is left goes back once a turn passes without
    use, so another process sees only the tickets that were handed out."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    tickets = await busy(mine, 6)
    for ticket in tickets:
        await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, 900))
    used = mine.try_acquire()  # the next turn: one caller of the six the step took for
    assert used is not None
    await turns(3)
    assert other.view().in_flight == 1
    await mine.release(used)
    await turns()
    assert other.view().in_flight == 0


async def test_another_processs_429_voids_the_tickets_a_step_took(tmp_path: Path) -> None:
    """Another process's 429 closes the gate: the tickets this process's step took for its turn are not
    handed out (a step looks at the file first), and they go back."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    await busy(mine, 6)
    first = mine.try_acquire()  # the turn's first step: it takes tickets for five more
    assert isinstance(first, HostTicket)
    assert mine._pooled
    theirs = other.try_acquire()
    assert theirs is not None
    await other.answered(theirs, 429, RateLimitHeaders(LIMIT, 0, retry_after=30.0))
    assert mine.try_acquire() is None
    assert not mine._pooled
    await mine.release(first)
    assert other.view().in_flight == 6  # the six of the last turn, still unanswered; none taken for callers


async def test_a_kept_answer_serves_another_processs_waiter_after_the_turn(tmp_path: Path) -> None:
    """The window's first request is this process's: another process's caller waits for its answer, which
    is written by the end of the turn it came in, and the waiter is served."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    probe = mine.try_acquire()
    assert probe is not None
    waiter = asyncio.ensure_future(other.acquire())
    await turns()
    assert not waiter.done()
    await mine.answered(probe, 200, RateLimitHeaders(LIMIT, LIMIT - 1))
    ticket = await asyncio.wait_for(waiter, 10)  # a stall detector: its poll finds the answer written
    await other.release(ticket)


async def test_a_waiters_look_wakes_it_once_another_process_has_committed(tmp_path: Path) -> None:
    """Between its steps a waiter only looks at the file's committed version: a look finds nothing new
    while no one else committed (and looks again later), and wakes the waiter once another process has."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    probe = other.try_acquire()
    assert probe is not None
    mine.view()  # a step: this process has read the file as it is
    woken = asyncio.get_running_loop().create_future()
    mine._look(woken, 60.0, 60.0)
    assert not woken.done()
    assert mine._watch is not None  # it looks again later
    mine._watch.cancel()
    await other.answered(probe, 429, RateLimitHeaders(LIMIT, 0, retry_after=1.0))  # written at once
    mine._look(woken, 60.0, 60.0)
    assert woken.done()
