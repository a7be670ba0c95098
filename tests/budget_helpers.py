"""Helpers for the budget tests: a settable clock, a stall detector, a caller waiting on a budget, and an
event loop in another thread for another client of it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from wemasy_async import Budget, WaitEvent
from wemasy_async.budgets import Priority

T = TypeVar("T")

#: Long enough to mean "it hangs"; only a failing test ever waits this long. A stall detector, not a speed bound.
HANG = 10.0


class Hung(AssertionError):
    """A wait that should have ended did not (not a TimeoutError, which some tests expect)."""


async def within(awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or Hung if it has none after HANG seconds (it detects a stall, not a speed)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait((task,), timeout=HANG)
    if not done:
        task.cancel()
        raise Hung(f"still waiting after {HANG} s")
    return task.result()


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def take(budget: Budget[Any], priority: Priority = "interactive") -> Any:
    """A ticket: at once when one is free without I/O, else through ``acquire``."""
    ticket = budget.try_acquire(priority)
    return ticket if ticket is not None else await within(budget.acquire(priority=priority))


class Caller:
    """One ``acquire`` running as a task, with the waits it reported."""

    #: Every caller's task, so that a failed test's waiting callers can be cancelled (:meth:`cancel_all`).
    running: ClassVar[list[asyncio.Future[Any]]] = []

    def __init__(
        self, budget: Budget[Any], *, when_waiting: Callable[[WaitEvent], None] | None = None, **options: Any
    ) -> None:
        """``when_waiting`` is called with the first wait it reports, inside the budget's ``on_wait``: the
        budget has found no ticket then, and takes no further step until it returns."""
        self.events: list[WaitEvent] = []
        self._when_waiting = when_waiting
        self._reported = asyncio.Event()
        self.task: asyncio.Future[Any] = asyncio.ensure_future(budget.acquire(self._on_wait, **options))
        self.running.append(self.task)

    @classmethod
    async def cancel_all(cls) -> None:
        # A task of a test that ran on another (closed) loop cannot be awaited here.
        tasks = [task for task in cls.running if not task.get_loop().is_closed()]
        cls.running[:] = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_wait(self, event: WaitEvent) -> None:
        self.events.append(event)
        self._reported.set()
        if self._when_waiting is not None:
            when_waiting, self._when_waiting = self._when_waiting, None
            when_waiting(event)

    async def reported(self, *reasons: str) -> WaitEvent:
        """The first wait it reported (for one of ``reasons``, if given), once it has; it must still wait."""
        while True:
            for event in self.events:
                if not reasons or event.reason in reasons:
                    assert not self.task.done(), self.task
                    return event
            assert not self.task.done(), self.task
            self._reported.clear()
            waiting = asyncio.ensure_future(self._reported.wait())
            await within(asyncio.wait((waiting, self.task), return_when=asyncio.FIRST_COMPLETED))
            waiting.cancel()

    async def cancelled(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class OtherLoop:
    """An event loop in a thread of its own, for another client of a budget (another process's, for a budget
    kept elsewhere). :meth:`run` blocks the calling thread until the other loop has run the coroutine: run
    from inside a budget's ``on_wait``, it acts between two steps of that budget, while its loop stands still
    (a seam, not a race)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="other-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine``'s result, run on the other loop; Hung if it has none after HANG seconds."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout=HANG)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Hung(f"the other loop still runs it after {HANG} s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(HANG)
        self.loop.close()
