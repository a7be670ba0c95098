"""Wait-queue benchmark: how waiting callers are woken as slots free up, and in what order they are served.

N callers (2,000 by default) wait on one token's budget at once, against a server allowing L requests
(50) per short window (0.05 s); each granted request is answered at once by an in-process copy of the
emulator's throttle, until every caller has had a ticket. No sockets: only the waking is measured.

  sdk        RateLimitBudget: waiters queue first come, first served; a freed slot wakes the first.
  wake-all   the same state machine behind the wake-every-waiter-on-every-answer loop the SDK had
             before (kept here as the baseline).

Prints, for each: state-machine decisions per grant, the worst grant position against arrival order
(0: served in arrival order), and CPU seconds; records them in benchmarks/RESULTS.md.

    python benchmarks/bench_wait_queue.py [--waiters 2000] [--limit 50] [--window 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import machine, record

from wemasy_async import RateLimitBudget, RateLimitHeaders, WaitEvent
from wemasy_async.budgets import Priority, Ticket, Wait
from wemasy_async.testing import FixedWindowThrottle


class WakeAllBudget(RateLimitBudget):
    """The SDK's budget before the wait queue: every answer wakes every waiter, who all ask again."""

    def __init__(self, window_seconds: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(window_seconds, clock=clock)
        self._waiters: list[asyncio.Future[None]] = []

    def try_acquire(self, priority: Priority = "interactive") -> Ticket | None:
        with self._lock:
            decision = self.state.try_acquire(self._clock())
        return decision if isinstance(decision, Ticket) else None

    async def acquire(
        self,
        on_wait: Callable[[WaitEvent], None] | None = None,
        *,
        max_gate_wait: float = float("inf"),
        deadline: float | None = None,
        priority: Priority = "interactive",
    ) -> Ticket:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                now = self._clock()
                decision = self.state.try_acquire(now)
                if isinstance(decision, Ticket):
                    return decision
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append(future)
            timeout = None if decision.until is None else max(0.0, decision.until - now)
            try:
                await asyncio.wait((future,), timeout=timeout)
            finally:
                with self._lock:
                    if future in self._waiters:
                        self._waiters.remove(future)

    async def answered(self, ticket: Ticket, status: int, hints: RateLimitHeaders) -> float:
        with self._lock:
            gate = self.state.answered(ticket, self._clock(), status, hints)
            waiters, self._waiters = self._waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            return gate


async def run(budget: RateLimitBudget, waiters: int, limit: int, window: float) -> tuple[float, int, float]:
    """Decisions per grant, the worst position a caller was served away from its arrival, CPU seconds."""
    calls = [0]
    state = budget.state
    try_acquire, peek = state.try_acquire, state.peek

    def counted_try(now: float, bulk: bool = False, *, asking: bool = False) -> Ticket | Wait:
        calls[0] += 1
        return try_acquire(now, bulk, asking=asking)

    def counted_peek(now: float, bulk: bool = False) -> Wait | None:
        calls[0] += 1
        return peek(now, bulk)

    state.try_acquire = counted_try  # type: ignore[method-assign]
    state.peek = counted_peek  # type: ignore[method-assign]
    server = FixedWindowThrottle(limit, window, time.monotonic)
    served: list[int] = []
    tickets: asyncio.Queue[Ticket] = asyncio.Queue()

    async def caller(index: int) -> None:
        ticket = await budget.acquire()
        served.append(index)
        tickets.put_nowait(ticket)

    tasks = []
    for index in range(waiters):
        tasks.append(asyncio.create_task(caller(index)))
        await asyncio.sleep(0)  # arrivals in this order
    started = time.process_time()
    while len(served) < waiters or not tickets.empty():
        ticket = await tickets.get()
        decision = server.hit("token")
        status = 200 if decision.allowed else 429
        await budget.answered(ticket, status, RateLimitHeaders(limit, decision.remaining, decision.resets_in))
        assert status == 200
    cpu = time.process_time() - started
    await asyncio.gather(*tasks)
    worst = max(abs(position - index) for position, index in enumerate(served))
    return calls[0] / waiters, worst, cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=0.05)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    for name, cls in (("sdk (FIFO queue, wake one)", RateLimitBudget), ("wake-all (before)", WakeAllBudget)):
        per_grant, worst, cpu = await run(cls(args.window), args.waiters, args.limit, args.window)
        rows.append(f"| {name} | {per_grant:,.1f} | {worst} | {cpu:.2f} |")
    table = "\n".join(
        [
            f"{args.waiters} callers wait at once; the server allows {args.limit} requests per {args.window:g} s.",
            "",
            "| budget | decisions per grant | worst grant position against arrival | CPU s |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if not args.no_record:
        record(
            "wait-queue",
            "## Wait queue: waking waiters\n\n"
            f"`python benchmarks/bench_wait_queue.py --waiters {args.waiters} --limit {args.limit} "
            f"--window {args.window:g}` ({machine()})\n\n{table}\n",
        )


if __name__ == "__main__":
    asyncio.run(main())
