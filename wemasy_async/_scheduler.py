"""The shared rate-limit budget: one per (base URL, token) in the process, behind a small interface.

Every request of every client asks the budget for a ticket before it is sent and reports the answer after.
The state machine (:class:`WindowBudget`) decides; this module only waits. Waiting works across event
loops and threads (a budget may be shared by clients on different loops), so it uses a thread lock and
wakes each waiter on its own loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ._protocol import RateLimitHeaders
from ._rate_limit import RateLimitView, Ticket, Wait, WindowBudget

__all__ = [
    "Budget",
    "RateLimitBudget",
    "RetryEvent",
    "SchedulerEvent",
    "WaitEvent",
    "forget_shared_budgets",
    "shared_budget",
]

logger = logging.getLogger("wemasy_async")


@attrs.frozen
class WaitEvent:
    """A call is about to wait for the budget.

    ``reason`` is ``window`` (budget spent until the window ends), ``gate`` (a 429 closed it),
    ``probe`` (a request is out learning the limit or the window's count) or ``ceiling`` (the client's
    own ceiling). ``seconds`` is the expected wait, or None when it ends with the next answer.
    """

    reason: str
    seconds: float | None


@attrs.frozen
class RetryEvent:
    """A call is about to be re-sent after ``cause`` (a status such as 429/503, or an error name)."""

    attempt: int
    delay: float
    cause: str
    method: str
    path: str


SchedulerEvent = WaitEvent | RetryEvent


@runtime_checkable
class Budget(Protocol):
    """What the client needs of a rate-limit budget. The in-process one is :class:`RateLimitBudget`;
    one shared across processes can implement the same methods."""

    def try_acquire(self) -> Ticket | None: ...

    async def acquire(self, on_wait: Callable[[WaitEvent], None] | None = None) -> Ticket: ...

    def release(self, ticket: Ticket) -> None: ...

    def no_answer(self, ticket: Ticket) -> None: ...

    def answered(self, ticket: Ticket, status: int, hints: RateLimitHeaders) -> None: ...

    def view(self) -> RateLimitView: ...

    def count_retry(self) -> None: ...


class RateLimitBudget:
    """One token's budget in this process. Thread-safe; callers on any event loop may share it."""

    def __init__(self, window_seconds: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = WindowBudget(window_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def window_seconds(self) -> float:
        return self.state.window_seconds

    @window_seconds.setter
    def window_seconds(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"window_seconds must be positive, got {value!r}")
        with self._lock:
            self.state.window_seconds = value

    def try_acquire(self) -> Ticket | None:
        """A ticket if one is free right now, without waiting (the common case, kept cheap)."""
        with self._lock:
            decision = self.state.try_acquire(self._clock())
        return decision if isinstance(decision, Ticket) else None

    async def acquire(self, on_wait: Callable[[WaitEvent], None] | None = None) -> Ticket:
        """Wait until a request may be sent; the ticket must then be settled exactly once."""
        loop = asyncio.get_running_loop()
        waited_since: float | None = None
        last_reason = ""
        while True:
            with self._lock:
                now = self._clock()
                decision = self.state.try_acquire(now)
                if isinstance(decision, Ticket):
                    if waited_since is not None:
                        self.state.stats.waited_seconds += now - waited_since
                    return decision
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            if waited_since is None:
                waited_since = now
            timeout = None if decision.until is None else max(0.0, decision.until - now)
            if decision.reason != last_reason:
                last_reason = decision.reason
                self._report_wait(decision, timeout, on_wait)
            try:
                await asyncio.wait((future,), timeout=timeout)
            finally:
                with self._lock:
                    try:
                        self._waiters.remove((loop, future))
                    except ValueError:
                        pass
                    else:
                        future.cancel()

    @staticmethod
    def _report_wait(decision: Wait, seconds: float | None, on_wait: Callable[[WaitEvent], None] | None) -> None:
        if seconds is None:
            logger.debug("rate limit: waiting (%s) for the next answer", decision.reason)
        else:
            logger.debug("rate limit: waiting %.3f s (%s)", seconds, decision.reason)
        if on_wait is not None:
            on_wait(WaitEvent(reason=decision.reason, seconds=seconds))

    def _wake_all(self) -> None:
        # Called with the lock held, when there are waiters. Each future is woken on its own loop.
        waiters, self._waiters = self._waiters, []
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, future in waiters:
            if loop is current:
                if not future.done():
                    future.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_set_done, future)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self.state.release(ticket)
            if self._waiters:
                self._wake_all()

    def no_answer(self, ticket: Ticket) -> None:
        with self._lock:
            self.state.no_answer(ticket)
            if self._waiters:
                self._wake_all()

    def answered(self, ticket: Ticket, status: int, hints: RateLimitHeaders) -> None:
        with self._lock:
            self.state.answered(ticket, self._clock(), status, hints)
            if self._waiters:
                self._wake_all()

    def count_retry(self) -> None:
        with self._lock:
            self.state.stats.retried += 1

    def view(self) -> RateLimitView:
        with self._lock:
            return self.state.view(self._clock())


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str], RateLimitBudget] = {}


def _key(base_url: str, token: str) -> tuple[str, str]:
    # The registry never holds the token itself.
    return base_url, hashlib.sha256(token.encode()).hexdigest()


def shared_budget(base_url: str, token: str, *, window_seconds: float | None = None) -> RateLimitBudget:
    """The process's budget for this token at this base URL, made on first use.

    A later client that names another ``window_seconds`` changes it for every client of the budget.
    """
    with _registry_lock:
        budget = _registry.get(_key(base_url, token))
        if budget is None:
            budget = _registry[_key(base_url, token)] = RateLimitBudget(window_seconds or 60.0)
        elif window_seconds is not None and window_seconds != budget.window_seconds:
            budget.window_seconds = window_seconds
        return budget


def forget_shared_budgets(base_url: str | None = None) -> None:
    """Drop the shared budgets (of one base URL, or all), e.g. when a test server at that address stops."""
    with _registry_lock:
        for key in [k for k in _registry if base_url is None or k[0] == base_url.rstrip("/")]:
            del _registry[key]
