"""The budget as the client sees it: the :class:`Budget` protocol every backend implements, and its events.

Nothing here knows a backend; the client and every backend import it, and it imports no backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

import attrs

from .._errors import RateLimitError
from .._protocol import RateLimitHeaders
from ._window import Priority, RateLimitView

__all__ = [
    "Budget",
    "BudgetEvent",
    "RetryEvent",
    "SchedulerEvent",
    "WaitEvent",
    "gate_closed_error",
    "report_wait",
]

logger = logging.getLogger("wemasy_async")

TicketT = TypeVar("TicketT")


@attrs.frozen
class WaitEvent:
    """A call is about to wait for the budget.

    ``reason`` is ``window`` (budget spent until the window ends), ``gate`` (a 429 closed it),
    ``probe`` (requests are out learning the limit or the window's count), ``shared`` (another client
    uses the token, so the window's last slots go one at a time), ``reserve`` (a bulk call: the slots
    left are kept for interactive calls and other clients until near the window's end), ``queue``
    (earlier calls wait first) or ``ceiling`` (the client's own ceiling). ``seconds`` is the expected
    wait, or None when it ends with an answer. ``priority`` is the waiting call's class.
    """

    reason: str
    seconds: float | None
    priority: Priority = "interactive"


@attrs.frozen
class RetryEvent:
    """A call is about to be re-sent after ``cause`` (a status such as 429/503, or an error name)."""

    attempt: int
    delay: float
    cause: str
    method: str
    path: str


@attrs.frozen
class BudgetEvent:
    """A budget shared through Redis changed hands: ``backend`` is ``local`` when Redis stopped answering
    (this process now counts on its own) and ``redis`` when it answers again."""

    backend: str
    reason: str


SchedulerEvent = WaitEvent | RetryEvent | BudgetEvent


@runtime_checkable
class Budget(Protocol[TicketT]):
    """A token's rate-limit budget, as the client uses it. :class:`RateLimitBudget` is the in-process one;
    a budget shared across processes implements the same methods.

    The client, for every HTTP exchange: takes a ticket (:meth:`try_acquire`, else :meth:`acquire`), sends,
    then settles the ticket exactly once: :meth:`answered` with the status and parsed rate-limit headers,
    :meth:`no_answer` when the request may have reached the server but got no answer (dropped, timed out,
    cancelled in flight), or :meth:`release` when it surely did not (cancelled before sending, connection
    refused). The ticket is opaque to the client.

    What every budget must do:

    * Close its gate on a 429 for every caller until the server's window has surely ended. The client
      re-sends a throttled request at once through :meth:`acquire`, without a delay of its own, and does
      not count it as a failed attempt.
    * Never make a caller wait for an answer when nothing is in flight: every wait then has an end.
    * Raise :class:`RateLimitError` from :meth:`acquire`, at once, while the gate is closed for longer than
      the caller's ``max_gate_wait``; raise :class:`TimeoutError` when no ticket can be had before the
      caller's ``deadline`` (at once if the wait is known to end after it).
    * Give up a waiter's place when its ``acquire`` is cancelled.
    * Serve ``interactive`` callers before ``bulk`` ones (first come, first served within a class), and
      have bulk work leave free, in each window, the slots interactive calls have been using lately (and
      other clients' use, as the server's counts show it), borrowing them only near the window's end.
    """

    def try_acquire(self, priority: Priority = "interactive") -> TicketT | None:
        """A ticket if one is free right now without waiting or I/O (a budget that needs I/O returns None)."""
        ...

    async def acquire(
        self,
        on_wait: Callable[[WaitEvent], None] | None = None,
        *,
        max_gate_wait: float = math.inf,
        deadline: float | None = None,
        priority: Priority = "interactive",
    ) -> TicketT:
        """Wait for a ticket. ``deadline`` is a ``time.monotonic()`` time."""
        ...

    async def release(self, ticket: TicketT) -> None: ...

    async def no_answer(self, ticket: TicketT) -> None: ...

    async def answered(self, ticket: TicketT, status: int, hints: RateLimitHeaders) -> float:
        """Report an answer; return the seconds the gate stays closed from now (0 when it is open)."""
        ...

    def count_retry(self) -> None: ...

    def view(self) -> RateLimitView: ...

    async def aclose(self) -> None:
        """Let go of what the budget holds (connections, timers); the in-process budget holds nothing."""
        ...


def gate_closed_error(seconds: float, max_gate_wait: float) -> RateLimitError:
    """The error for a call that will not wait behind a gate a 429 closed for ``seconds``."""
    message = f"The rate limit's gate is closed for {seconds:.0f} s after a 429, longer than this call waits."
    return RateLimitError(message, retry_after=seconds, status_code=429, body=None, raw_text="", headers=None)


def report_wait(event: WaitEvent, on_wait: Callable[[WaitEvent], None] | None) -> None:
    """Log a wait for the budget (debug; a bulk call held back for the reserve at info) and tell ``on_wait``."""
    level = logging.INFO if event.reason == "reserve" else logging.DEBUG
    if logger.isEnabledFor(level):
        waiting = "until an answer" if event.seconds is None else f"{event.seconds:.3f} s"
        if event.reason == "reserve":
            logger.info(
                "rate limit: a batch yields %s, keeping this window's last slots for interactive calls", waiting
            )
        else:
            logger.debug("rate limit: waiting %s (%s, %s)", waiting, event.reason, event.priority)
    if on_wait is not None:
        on_wait(event)
