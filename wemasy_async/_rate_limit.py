"""The rate-limit state machine: one token's budget against Laravel's fixed window, as pure state.

The server counts requests per user in a window that starts with the first request and says how many
remain, but not when the window ends (except in a 429). From the client's side:

* The limit is unknown until the first answer, so one request goes out alone to learn it.
* A window's end is estimated as (first answer of the window) + ``window_seconds``. The server's window
  began when some request *arrived*, which is before that answer, so the estimate is never early: a
  request sent after it cannot land in the old window. It is late by at most one round trip.
* What is used in the window is our grants in it plus a lower bound on everyone else's:
  ``count - our grants``, where ``count = limit - X-RateLimit-Remaining`` of an answer. For a sole client
  that bound is 0 and the budget is spent exactly, however answers are reordered in flight.
* An answer whose count is no larger than the number of our answers that came back before its request
  was sent cannot be from the same window: the server started a new one earlier than estimated, and the
  state follows it.
* A 429 closes the gate for everyone until its ``Retry-After`` and marks the window full until then.
* Once another client has been seen on the token, each new window starts with one request alone (so the
  other's share is learned first), and the last slots of a window go out one at a time: parallel
  sending stops while fewer slots are free than the other client has used in this window. Its use then
  costs at most one 429 per window (that 429 closes the gate until the window ends), unless it spends
  more than that within one round trip. Far from the limit nothing is held back. A window with no sign
  of another client lifts all this, and a sole client bursts the whole window at once.

Nothing here sleeps or reads a clock: every method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import math

import attrs

from ._protocol import RateLimitHeaders

__all__ = ["RateLimitStats", "RateLimitView", "Ticket", "Wait", "WindowBudget"]

#: A 429 that says "retry now" (Retry-After: 0) still waits this long, so a late clock cannot spin.
MIN_THROTTLE_WAIT = 0.05


@attrs.define(eq=False)
class Ticket:
    """Permission to send one request, and what the budget needs to read its answer."""

    epoch: int
    #: Counted answers of this epoch received before the grant (see the module doc).
    answers_before: int
    #: Sent alone to learn the limit or the window's count.
    probe: bool = False
    settled: bool = False


@attrs.frozen
class Wait:
    """No permission yet. ``until`` is when to ask again, or None to ask at the next answer."""

    until: float | None
    reason: str


@attrs.define
class RateLimitStats:
    """Counters of one budget since the process started using it."""

    #: Requests granted and sent.
    sent: int = 0
    #: 429 answers.
    throttled: int = 0
    #: Requests re-sent after a 429, a 5xx or a failed connection.
    retried: int = 0
    #: Seconds callers spent waiting for the budget, added over callers.
    waited_seconds: float = 0.0


@attrs.frozen
class RateLimitView:
    """The budget as the client sees it at one moment."""

    #: Requests per window, learned from ``X-RateLimit-Limit`` (None until the first answer).
    limit: int | None
    #: Requests the client may still send in this window (None while the limit is unknown).
    remaining: int | None
    #: Seconds until the window is estimated to end (None when no window is known to be open).
    window_ends_in: float | None
    #: Seconds until the gate a 429 closed opens again (0 when open).
    gate_closed_for: float
    in_flight: int
    #: Another client has used this token lately, so a window's last slots go out one at a time.
    shared: bool
    window_seconds: float
    sent: int
    throttled: int
    retried: int
    waited_seconds: float


class WindowBudget:
    """One token's budget against a fixed window of ``window_seconds`` (see the module doc).

    ``assumed_limit`` is used only if answers never carry ``X-RateLimit-Limit`` (a proxy strips it).
    """

    def __init__(self, window_seconds: float = 60.0, *, assumed_limit: int = 60) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
        self.window_seconds = window_seconds
        self.assumed_limit = assumed_limit
        self.limit: int | None = None
        self.stats = RateLimitStats()
        self._window_end: float | None = None
        self._gate_until = -math.inf
        self._epoch = 0
        self._granted = 0  # our grants in this epoch, in-flight ones carried over included
        self._others = 0  # lower bound of requests in this window that were not ours
        self._answers = 0  # counted answers received in this epoch
        self._in_flight = 0
        self._probing = False
        self._others_seen = False  # another client used this token lately: careful near the limit
        self._others_in_epoch = False  # ...and in this epoch

    # --- asking ----------------------------------------------------------------------------------

    def try_acquire(self, now: float) -> Ticket | Wait:
        """A ticket to send now, or how long to wait before asking again."""
        if now < self._gate_until:
            return Wait(self._gate_until, "gate")
        if self._window_end is not None and now >= self._window_end:
            self._new_epoch(window_end=None, carried=self._in_flight, others=0)
        if self._probing:
            return Wait(None, "probe")
        if self.limit is None or (self._others_seen and self._window_end is None and self._answers == 0):
            # Learn the limit (first request ever) or the new window's count (another client is about).
            return self._grant(probe=True)
        free = self.limit - self._granted - self._others
        if free <= 0:
            return Wait(self._window_end, "window")
        if self._others_seen and self._in_flight and free <= max(1, self._others):
            return Wait(None, "shared")
        return self._grant(probe=False)

    def _grant(self, *, probe: bool) -> Ticket:
        self._granted += 1
        self._in_flight += 1
        self._probing = probe
        self.stats.sent += 1
        return Ticket(self._epoch, self._answers, probe)

    def _new_epoch(self, *, window_end: float | None, carried: int, others: int) -> None:
        self._epoch += 1
        self._others_seen, self._others_in_epoch = self._others_in_epoch, False
        self._window_end = window_end
        # Requests still in flight may land in the new window: count them there, to be safe.
        self._granted = carried
        self._others = others
        self._answers = 0

    def _settle(self, ticket: Ticket) -> bool:
        if ticket.settled:
            return False
        ticket.settled = True
        self._in_flight -= 1
        if ticket.probe:
            self._probing = False
        return True

    # --- hearing back ----------------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The ticket was not used (the caller was cancelled before sending): give its place back."""
        if self._settle(ticket):
            self.stats.sent -= 1
            if ticket.epoch == self._epoch and self._granted > 0:
                self._granted -= 1

    def no_answer(self, ticket: Ticket) -> None:
        """The request got no answer (dropped, timed out): it may have been counted, so it stays counted."""
        self._settle(ticket)

    def answered(self, ticket: Ticket, now: float, status: int, hints: RateLimitHeaders) -> None:
        """Read one answer's status and rate-limit headers."""
        if not self._settle(ticket):
            return
        if hints.limit is not None and hints.limit > 0:
            self.limit = hints.limit
        elif self.limit is None:
            self.limit = self.assumed_limit
        limit = self.limit

        if status == 429:
            self.stats.throttled += 1
            wait = hints.retry_after
            if wait is None:
                wait = self._window_end - now if self._window_end is not None else self.window_seconds
            until = now + max(wait, MIN_THROTTLE_WAIT)
            self._gate_until = max(self._gate_until, until)
            # The window is full until then; our in-flight requests are refused too, and count for nothing.
            self._new_epoch(window_end=self._gate_until, carried=0, others=limit)
            self._others_seen = self._others_in_epoch = True  # only someone else's use brings us a 429
            return

        if ticket.epoch != self._epoch:
            return  # it belongs to an earlier window of ours and is already counted in this one
        if self._window_end is None:
            self._window_end = now + self.window_seconds
        if hints.remaining is None:
            self._answers += 1
            return
        count = limit - hints.remaining
        if ticket.answers_before > 0 and count <= ticket.answers_before:
            # Fewer requests in this window than we had seen answered before sending: the server began a
            # new window since. It began before this answer, so its end is before now + window_seconds.
            # Its count so far includes this request of ours: booking it as ours (not as another
            # client's) keeps the count safe without mistaking ourselves for someone else.
            self._new_epoch(window_end=now + self.window_seconds, carried=self._in_flight + count, others=0)
            self._answers = 1
            return
        others = count - self._granted
        if others > 0:
            self._others_seen = self._others_in_epoch = True
            self._others = max(self._others, others)
        self._answers += 1

    # --- looking ---------------------------------------------------------------------------------

    def view(self, now: float) -> RateLimitView:
        window_open = self._window_end is not None and now < self._window_end
        if self.limit is None:
            remaining = None
        elif self._window_end is not None and not window_open:
            remaining = self.limit  # the window has ended; the next request opens a fresh one
        else:
            remaining = max(0, self.limit - self._granted - self._others)
        return RateLimitView(
            limit=self.limit,
            remaining=remaining,
            window_ends_in=(self._window_end - now) if window_open and self._window_end is not None else None,
            gate_closed_for=max(0.0, self._gate_until - now),
            in_flight=self._in_flight,
            shared=self._others_seen,
            window_seconds=self.window_seconds,
            sent=self.stats.sent,
            throttled=self.stats.throttled,
            retried=self.stats.retried,
            waited_seconds=self.stats.waited_seconds,
        )
