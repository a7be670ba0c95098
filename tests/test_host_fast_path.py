"""The host budget's fast path: a step takes a few tickets for the process's next callers of the same turn of
its event loop, and answers are written a turn later. Two budgets on one file stand for two processes (as in
the contract suite); turns of the loop are yielded with ``sleep(0)``, which waits for no time."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.budget_helpers import FakeClock
from wemasy_async import RateLimitHeaders, WemasyClient
from wemasy_async.budgets._host import HostBudget, HostTicket
from wemasy_async.testing import WemasyEmulator

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
    first = mine.try_acquire()  # from what the last turn's step took for its callers
    assert isinstance(first, HostTicket)
    assert mine._pooled
    # The other process waits for the answers this one keeps (its ramp): its step makes this one write them.
    theirs = await asyncio.wait_for(other.acquire(), 10)  # a stall detector
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


# --- what a review found (each test fails on the code before its fix) --------------------------------------


@pytest.mark.parametrize(
    "news", [RateLimitHeaders(LIMIT, 0), RateLimitHeaders(10, 0)], ids=["window spent", "limit lowered"]
)
async def test_an_answer_kept_in_the_turn_stops_the_turns_pool(tmp_path: Path, news: RateLimitHeaders) -> None:
    """An answer that says the window is spent (another host's client used it) or that the limit fell comes
    in the turn whose first step took tickets for its next callers: none of them is handed out (each would
    be a 429), as the in-process budget, told the same, hands out none."""
    clock = FakeClock(1000.0)
    mine, _ = budgets(tmp_path, clock)
    last = await busy(mine, 6)
    assert mine.try_acquire() is not None  # the turn's first step: it takes a few for the turn
    assert mine._pooled
    await mine.answered(last[0], 200, news)  # kept, to be written a turn later
    assert [mine.try_acquire() for _ in range(5)] == [None] * 5


def _in_a_fork(check: Callable[[], bool]) -> None:
    """Run ``check`` in a forked child (os.fork, as a preloading server's workers are made); its verdict comes
    back as the exit code. A child that hangs is killed after a bounded wait and fails the test."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)  # a bounded wait for a child process: no event to wait on across a fork
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not finish")


async def test_a_forked_childs_first_step_takes_no_ticket_it_cannot_hand_out(tmp_path: Path) -> None:
    """A child of fork starts with the pools of its own that its first step makes: tickets that step takes
    for the turn's next callers are in them (handed out, or given back), never in the parent's list, where
    they would stay in flight in the file and never be handed out nor given back."""
    clock = FakeClock(1000.0)
    parent, other = budgets(tmp_path, clock)
    for left, ticket in enumerate(await busy(parent, 6)):
        await parent.answered(ticket, 200, RateLimitHeaders(LIMIT, 900 - left))
    await turns(3)
    assert other.view().in_flight == 0
    assert parent._want  # the child inherits it: its first step takes tickets for the turn

    def child() -> bool:
        async def main() -> bool:
            ticket = parent.try_acquire()
            assert ticket is not None
            await parent.answered(ticket, 200, RateLimitHeaders(LIMIT, 800))
            await turns(5)
            return parent._pooled == sum(pool.count for pool in parent._pools) and other.view().in_flight == 0

        return asyncio.run(main())

    _in_a_fork(child)


def test_a_forked_child_whose_file_is_gone_falls_back_and_goes_on(tmp_path: Path) -> None:
    """A child of fork opens the file again; when that fails (its directory was removed), the child goes on
    with its own budget (one log line), and its next call does not hang on a lock left taken."""
    directory = tmp_path / "budgets"
    directory.mkdir(mode=0o700)
    budget = HostBudget("http://127.0.0.1/api", "gone", window_seconds=60.0, directory=directory)
    budget.view()
    shutil.rmtree(directory)

    def child() -> bool:
        first = budget.try_acquire()
        finished = threading.Event()
        threading.Thread(target=lambda: (budget.try_acquire(), finished.set()), daemon=True).start()
        return first is not None and finished.wait(10) and budget.detached is not None

    _in_a_fork(child)


def test_a_loop_closed_before_its_turns_end_leaves_nothing_unwritten(tmp_path: Path) -> None:
    """A loop run with run_until_complete and closed while the end of its turn was still to come: the next
    loop's turns write what the first kept (answers, tickets taken for the turn), so another process does
    not see them in flight until a lease runs out."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)

    async def first() -> None:
        for left, ticket in enumerate(await busy(mine, 6)):
            await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, 900 - left))
        await turns(3)
        ticket = mine.try_acquire()  # a step that takes a few for the turn
        assert ticket is not None
        assert mine._pooled
        await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, 890))  # kept: the loop ends in this turn

    async def second() -> None:
        ticket = mine.try_acquire()
        assert ticket is not None
        await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, 889))
        await turns(10)

    for run in (first, second):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(run())
        finally:
            loop.close()
    assert other.view().in_flight == 0


async def test_a_clients_close_writes_what_the_host_budget_keeps(
    wemasy_emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a client with budget="host" has the budget write what it keeps for the process (answers,
    tickets taken for the turn): nothing is left in flight, and the budget stays for the process's other
    clients of the token."""
    closed: list[HostBudget] = []
    close = HostBudget.aclose

    async def spy(self: HostBudget) -> None:
        closed.append(self)
        await close(self)

    monkeypatch.setattr(HostBudget, "aclose", spy)
    async with WemasyClient(token="close", base_url=wemasy_emulator.base_url, budget="host") as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(8)))
        budget = client._budget
    assert closed == [budget]
    assert isinstance(budget, HostBudget)
    assert budget.view().in_flight == 0
    async with WemasyClient(token="close", base_url=wemasy_emulator.base_url, budget="host") as again:
        assert again._budget is budget
        await again.sendcloud.status()


async def test_a_busy_process_writes_what_it_keeps_once_another_process_waits(tmp_path: Path) -> None:
    """A process busy every turn keeps its answers for a later step (nothing in them changes its pools); once
    another process has taken a step (it waits: its ramp counts answers), the busy one writes them at the end
    of the turn, busy or not, so others see them in a turn, not when it is done."""
    clock = FakeClock(1000.0)
    mine, other = budgets(tmp_path, clock)
    tickets = await busy(mine, 6)
    answered = 16 + 6  # busy()'s: its ramp's 1 + 1 + 2 + 4 + 8, then a turn's 6 (the next 6 are in flight)

    async def busy_turn() -> None:  # one caller a turn: a step's tickets serve several turns
        nonlocal tickets, answered
        for ticket in tickets:
            answered += 1
            await mine.answered(ticket, 200, RateLimitHeaders(LIMIT, LIMIT - answered))
        tickets = [mine.try_acquire()]  # type: ignore[list-item]
        assert None not in tickets
        await asyncio.sleep(0)

    for _ in range(40):  # until the answers of several turns are kept and the pool has tickets for two more
        await busy_turn()
        if len(mine._pending) >= 3 and mine._pooled >= 3:
            break
    assert len(mine._pending) >= 3, "answers are not kept across turns while busy"
    waiter = asyncio.ensure_future(other.acquire())
    await busy_turn()  # the other's step comes in this turn; at the next turn's end this one writes
    await busy_turn()
    assert len(mine._pending) <= 1  # only what the last turn's answer left
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
