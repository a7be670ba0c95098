"""The in-process budget: one per (base URL, token) in the process, shared by its clients, tasks and threads.

:class:`WindowState` decides; this module only queues callers first come, first served, hands each freed
slot to the next in line, and wakes each waiter on its own loop. The design: docs/design/rate-limit.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import attrs

from .._protocol import RateLimitHeaders
from ._window import Priority, RateLimitView, Ticket, Wait, WindowState
from .base import WaitEvent, gate_closed_error, report_wait

__all__ = ["RateLimitBudget", "forget_shared_budgets", "shared_budget"]

logger = logging.getLogger("wemasy_async")


@attrs.define(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    bulk: bool = False
    future: asyncio.Future[None] | None = None
    #: A ticket handed to this waiter while it waited (see :meth:`RateLimitBudget._hand_out`).
    ticket: Ticket | None = None


class _Line:
    """The waiters in the order they are served: every interactive one before any bulk one, and first
    come, first served within each class."""

    __slots__ = ("bulk", "interactive")

    def __init__(self) -> None:
        self.interactive: deque[_Waiter] = deque()
        self.bulk: deque[_Waiter] = deque()

    def __bool__(self) -> bool:
        return bool(self.interactive or self.bulk)

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def __iter__(self) -> Iterator[_Waiter]:
        yield from self.interactive
        yield from self.bulk

    def first(self) -> _Waiter:
        return self.interactive[0] if self.interactive else self.bulk[0]

    def popleft(self) -> _Waiter:
        return self.interactive.popleft() if self.interactive else self.bulk.popleft()

    def append(self, waiter: _Waiter) -> None:
        (self.bulk if waiter.bulk else self.interactive).append(waiter)

    def remove(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the line; ValueError if it is not in it."""
        (self.bulk if waiter.bulk else self.interactive).remove(waiter)


@attrs.frozen
class _Pause:
    """A round of :meth:`RateLimitBudget.acquire` that found no ticket: what to wait on, why, how long."""

    future: asyncio.Future[None]
    reason: str
    #: The expected wait as reported to the caller (None: until an answer or a turn).
    seconds: float | None
    timeout: float | None


class RateLimitBudget:
    """One token's budget in this process. Thread-safe; callers on any event loop may share it."""

    def __init__(self, window_seconds: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = WindowState(window_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._queue = _Line()
        self._mismatch_told = False

    def __repr__(self) -> str:
        return f"RateLimitBudget(window_seconds={self.window_seconds:g}, waiting={len(self._queue)})"

    @property
    def window_seconds(self) -> float:
        return self.state.window_seconds

    @window_seconds.setter
    def window_seconds(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"window_seconds must be positive, got {value!r}")
        with self._lock:
            self.state.window_seconds = value

    def try_acquire(self, priority: Priority = "interactive") -> Ticket | None:
        """A ticket if one is free right now and nobody waits before us (the common case, kept cheap)."""
        bulk = priority == "bulk"
        with self._lock:
            queue = self._queue
            if queue.interactive or (bulk and queue.bulk):
                return None  # acquire counts the call's demand as it begins to wait
            decision = self.state.try_acquire(self._clock(), bulk, asking=True)
        return decision if isinstance(decision, Ticket) else None

    async def acquire(
        self,
        on_wait: Callable[[WaitEvent], None] | None = None,
        *,
        max_gate_wait: float = math.inf,
        deadline: float | None = None,
        priority: Priority = "interactive",
    ) -> Ticket:
        """Wait in turn until a request may be sent; the ticket must then be settled exactly once.

        ``deadline`` is a time on the budget's clock (``time.monotonic()`` unless another was given).
        """
        waiter = _Waiter(asyncio.get_running_loop(), bulk=priority == "bulk")
        waited_since: float | None = None
        last_reason = ""
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    if waited_since is None and not waiter.bulk:
                        self.state.asked(now)
                    turn = self._take_turn(waiter, now, max_gate_wait, deadline)
                    if isinstance(turn, Ticket):
                        if waited_since is not None:
                            self._count_wait(waiter, now - waited_since)
                        return turn
                if waited_since is None:
                    waited_since = now
                if turn.reason != last_reason:
                    last_reason = turn.reason
                    report_wait(WaitEvent(reason=turn.reason, seconds=turn.seconds, priority=priority), on_wait)
                await asyncio.wait((turn.future,), timeout=turn.timeout)
        finally:
            if waiter.future is not None:
                with self._lock:
                    self._leave(waiter)

    def _count_wait(self, waiter: _Waiter, seconds: float) -> None:
        stats = self.state.stats
        stats.waited_seconds += seconds
        if not waiter.bulk:
            stats.interactive_waited_seconds += seconds

    def _take_turn(self, waiter: _Waiter, now: float, max_gate_wait: float, deadline: float | None) -> Ticket | _Pause:
        """One round of :meth:`acquire`, with the lock held: a ticket, or the wait before the next round."""
        if waiter.ticket is not None:  # handed one in turn (and taken out of the queue)
            ticket, waiter.ticket, waiter.future = waiter.ticket, None, None
            return ticket
        queue = self._queue
        while queue and queue.first() is not waiter and queue.first().loop.is_closed():
            queue.popleft().future = None  # its caller's loop is gone: it will never take a turn
        in_line = waiter.future is not None
        # First: at the head of the line, or new and with no one of its class (or an interactive one) ahead.
        first = queue.first() is waiter if in_line else not (queue.interactive or (waiter.bulk and queue.bulk))
        decision = self.state.try_acquire(now, waiter.bulk) if first else self.state.peek(now, waiter.bulk)
        if isinstance(decision, Ticket):
            if in_line:
                queue.popleft()
            if queue:
                self._hand_out()  # tickets may be free for the next ones too
            waiter.future = None
            return decision
        until = decision.until if decision is not None else None
        self._refuse_hopeless(now, until, max_gate_wait, deadline)
        return self._pause(waiter, decision, first, now, deadline)

    def _refuse_hopeless(self, now: float, until: float | None, max_gate_wait: float, deadline: float | None) -> None:
        """Fail a caller at once whose wait is known to be longer than it accepts."""
        gate = self.state.gate_until - now
        if gate > max_gate_wait:
            raise gate_closed_error(gate, max_gate_wait)
        # Nobody behind the first is served before the first's wait ends, so a wait known to end after the
        # deadline fails at once wherever the caller is in the queue.
        if deadline is not None and (now >= deadline or (until is not None and until > deadline)):
            raise TimeoutError("no rate-limit budget before the deadline")

    def _pause(self, waiter: _Waiter, decision: Wait | None, first: bool, now: float, deadline: float | None) -> _Pause:
        """Queue the waiter (if it is not yet) with a fresh future, and say how long and why it waits."""
        if waiter.future is None:
            self._queue.append(waiter)
        waiter.future = waiter.loop.create_future()
        until = decision.until if decision is not None else None
        # The first in the queue waits for the budget's time, the others for their turn, and for that time
        # too: if the first's loop closed meanwhile, it is dropped then.
        timeout = max(0.0, until - now) if until is not None else None
        if deadline is not None:
            timeout = min(timeout if timeout is not None else math.inf, max(0.0, deadline - now))
        reason = decision.reason if decision is not None else "queue"
        if not first and reason not in ("gate", "window"):
            reason = "queue"
        seconds = max(0.0, decision.until - now) if decision is not None and decision.until else None
        return _Pause(waiter.future, reason, seconds, timeout)

    def _leave(self, waiter: _Waiter) -> None:
        # A waiter that gives up (cancelled, timed out, refused): out of the queue, and if it was first, or
        # had been woken to take a turn it will not use, the turn passes on.
        future, waiter.future = waiter.future, None
        if waiter.ticket is not None:  # handed a ticket it will not use: it goes back, to the next in line
            ticket, waiter.ticket = waiter.ticket, None
            self.state.release(ticket)
            self._hand_out()
            return
        was_first = bool(self._queue) and self._queue.first() is waiter
        try:
            self._queue.remove(waiter)
        except ValueError:
            return
        if future is not None and not future.done():
            future.cancel()
        elif future is not None:
            was_first = True
        if was_first:
            self._wake_first()

    def _wake(self, waiter: _Waiter, current: asyncio.AbstractEventLoop | None) -> bool:
        future = waiter.future
        if future is None or future.done():
            return True
        if waiter.loop is current:
            future.set_result(None)
            return True
        try:
            waiter.loop.call_soon_threadsafe(_set_done, future)
        except RuntimeError:  # that loop has closed: its caller is gone
            return False
        return True

    def _wake_first(self) -> None:
        # Called with the lock held. Wakes the first waiter on its own loop; a waiter whose loop has closed
        # is dropped and the next one woken instead.
        queue = self._queue
        if not queue:
            return
        current = _running_loop()
        while queue and not self._wake(queue.first(), current):
            queue.popleft().future = None

    def _hand_out(self) -> None:
        # Called with the lock held. Hands the free tickets to the waiters in queue order, all in one pass,
        # and wakes each (one wake per freed slot); then wakes the first still waiting. Waking only the
        # first, which then wakes the next, drains one waiter per loop iteration: while calls keep coming
        # such a queue never empties, and every call pays the slow path.
        queue = self._queue
        if not queue:
            return
        current = _running_loop()
        now = self._clock()
        while queue:
            decision = self.state.try_acquire(now, queue.first().bulk)
            if not isinstance(decision, Ticket):
                break
            waiter = queue.popleft()
            waiter.ticket = decision
            if not self._wake(waiter, current):  # its loop has closed: the ticket goes back
                waiter.ticket = waiter.future = None
                self.state.release(decision)
        self._wake_first()

    def _wake_all(self) -> None:
        # Called with the lock held, after a 429 closed the gate: every waiter checks whether it will wait.
        current = _running_loop()
        for waiter in list(self._queue):
            if not self._wake(waiter, current):
                self._queue.remove(waiter)
                waiter.future = None

    async def release(self, ticket: Ticket) -> None:
        with self._lock:
            self.state.release(ticket)
            if self._queue:
                self._hand_out()

    async def no_answer(self, ticket: Ticket) -> None:
        with self._lock:
            self.state.no_answer(ticket, self._clock())
            if self._queue:
                self._hand_out()

    async def answered(self, ticket: Ticket, status: int, hints: RateLimitHeaders) -> float:
        with self._lock:
            gate_before = self.state.gate_until
            gate = self.state.answered(ticket, self._clock(), status, hints)
            if self.state.mismatch is not None and not self._mismatch_told:
                self._mismatch_told = True
                logger.warning("%s", self.state.mismatch)
            if self._queue:
                if self.state.gate_until != gate_before:
                    self._wake_all()
                else:
                    self._hand_out()
            return gate

    def expect_others(self) -> None:
        """Other processes use this token too, from now on (see :meth:`WindowState.expect_others`)."""
        with self._lock:
            self.state.expect_others()

    def count_retry(self) -> None:
        with self._lock:
            self.state.stats.retried += 1

    def view(self) -> RateLimitView:
        with self._lock:
            return self.state.view(self._clock())

    async def aclose(self) -> None:
        """Nothing to let go of: the in-process budget holds no resources."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str], RateLimitBudget] = {}


def _key(base_url: str, token: str) -> tuple[str, str]:
    # The registry never holds the token itself.
    return base_url, hashlib.sha256(token.encode()).hexdigest()


def shared_budget(base_url: str, token: str, *, window_seconds: float | None = None) -> RateLimitBudget:
    """The process's budget for this token at this base URL, made on first use (60 s windows by default).

    ``window_seconds=None`` uses what the budget has; a client that names another value changes it for
    every client of the budget.
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
