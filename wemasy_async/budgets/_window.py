"""The rate-limit state machine: one token's budget against Laravel's fixed window, as pure state.

Nothing here sleeps or reads a clock: every method takes ``now``, so it is tested step by step and the
Lua port is checked against it decision by decision. The design: docs/design/rate-limit.md.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import attrs

from .._protocol import RateLimitHeaders

__all__ = [
    "RETRY_AFTER_ROUNDING",
    "Priority",
    "RateLimitStats",
    "RateLimitView",
    "Ticket",
    "Wait",
    "WindowState",
]

#: The class of a call: ``interactive`` (a person or a request handler waits on it; served first) or
#: ``bulk`` (a batch: leaves the slots interactive calls have been using free, and borrows them only when
#: they would go unused, near the window's end).
Priority = Literal["interactive", "bulk"]

#: A 429 that says "retry now" still waits this long, so a late clock cannot spin.
MIN_THROTTLE_WAIT = 0.05
#: ``Retry-After`` and ``X-RateLimit-Reset`` are whole seconds rounded down: the window may last this much longer.
RETRY_AFTER_ROUNDING = 1.0
#: How many past windows the interactive demand is remembered for (its peak sets the reserve).
RECENT_WINDOWS = 3
#: Bulk work borrows the reserve in the last this much of a window (as a fraction of it).
LEND_FRACTION = 0.1


@attrs.define(eq=False)
class Ticket:
    """Permission to send one request, and what the budget needs to read its answer. Opaque to callers."""

    epoch: int
    #: Counted answers of this epoch received before the grant (see docs/design/rate-limit.md).
    answers_before: int
    bulk: bool = False
    settled: bool = False


@attrs.frozen
class Wait:
    """No permission yet. ``until`` is when to ask again, or None to ask at the next answer.

    ``until`` is None only while a request is in flight, so an answer (or its failure) is sure to come.
    """

    until: float | None
    reason: str


@attrs.define
class RateLimitStats:
    """Counters of one budget since the process started using it."""

    #: Requests granted and sent, and of them the interactive ones (the rest are bulk).
    sent: int = 0
    interactive_sent: int = 0
    #: 429 answers.
    throttled: int = 0
    #: Requests re-sent after a 429, a 5xx or a failed connection.
    retried: int = 0
    #: Seconds callers spent waiting for the budget, added over callers, and the interactive ones' part.
    waited_seconds: float = 0.0
    interactive_waited_seconds: float = 0.0


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
    #: Slots of this window that bulk work leaves to interactive calls and other clients (it borrows them in
    #: the window's last tenth).
    reserved: int = 0
    #: Of ``sent`` and ``waited_seconds``, the interactive calls' part (the rest is bulk work's).
    interactive_sent: int = 0
    interactive_waited_seconds: float = 0.0


class WindowState:
    """One token's budget against a fixed window of ``window_seconds`` (see docs/design/rate-limit.md).

    ``assumed_limit`` is used only if answers never carry ``X-RateLimit-Limit`` (a proxy strips it).
    """

    def __init__(self, window_seconds: float = 60.0, *, assumed_limit: int = 60) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
        self.window_seconds = window_seconds
        self.assumed_limit = assumed_limit
        self.limit: int | None = None
        self.stats = RateLimitStats()
        #: When the gate a 429 closed opens again (monotonic seconds).
        self.gate_until = -math.inf
        self._window_end: float | None = None
        self._epoch = 0
        self._granted = 0  # our grants counted in this window, in-flight ones carried over included
        self._others = 0  # lower bound of requests in this window that were not ours (the limit after a 429)
        self._others_learned = 0  # ...as the answers of this window showed it
        # Others' use in the last window we heard about: what to expect of them (None: no window yet).
        self._others_before: int | None = None
        self._others_expected = 0  # others told of (expect_others), until a window shows none
        self._expected_from = 0
        self._answers = 0  # counted answers of this epoch's requests
        self._sent = 0  # this epoch's own grants (carried ones not included)
        self._settled = 0  # ...and how many of them have been settled
        self._in_flight = 0
        self._last_settled = -math.inf
        self._unclear_epoch = -2  # the last epoch in which a request went unanswered or uncounted
        self._first_sent = -math.inf  # when this epoch's first request of ours was sent
        self._carried_in = 0  # requests in flight when this epoch began (sent in an earlier one)
        self._asked = 0  # interactive calls that asked for a ticket in this window
        self._asked_recent: deque[int] = deque(maxlen=RECENT_WINDOWS)  # ...in each of the last windows
        #: What showed the server's window to differ from ``window_seconds`` (first sign only), or None.
        self.mismatch: str | None = None

    # --- asking ----------------------------------------------------------------------------------

    def try_acquire(self, now: float, bulk: bool = False, *, asking: bool = False) -> Ticket | Wait:
        """A ticket to send now, or how long to wait before asking again. ``asking``: an interactive call's
        first try, counted in the window's demand if it is granted (one that must wait is counted by
        :meth:`asked` as it begins to wait)."""
        decision = self.peek(now, bulk)
        if decision is not None:
            return decision
        if asking and not bulk:
            self._asked += 1
        if not self._sent:
            self._first_sent = now
        self._granted += 1
        self._sent += 1
        self._in_flight += 1
        self.stats.sent += 1
        if not bulk:
            self.stats.interactive_sent += 1
        return Ticket(self._epoch, self._answers, bulk)

    def asked(self, now: float, calls: int = 1) -> None:
        """``calls`` interactive calls ask for a ticket: the peak of this demand over recent windows is the reserve
        bulk work leaves free. Each call is counted once, in the window in which it first asks (a call that
        waits into the next window takes a slot there, but is not that window's demand)."""
        self._roll(now)
        self._asked += calls

    def peek(self, now: float, bulk: bool = False) -> Wait | None:
        """What :meth:`try_acquire` would answer, without taking a ticket: a wait, or None (one is free)."""
        if now < self.gate_until:
            return Wait(self.gate_until, "gate")
        end = self._window_end
        if end is not None and now >= end:  # _roll, inlined: this is every call's path
            self._new_epoch(window_end=None, carried=self._in_flight, others=0)
        limit = self.limit
        if limit is None:
            return Wait(None, "probe") if self._in_flight else None
        if self._others_before != 0 and self._sent - self._settled >= max(1, self._settled):
            return Wait(None, "probe")  # the ramp: no more in flight than answers heard in this window
        free = limit - self._granted - self._others
        if free <= 0:
            return self._spent(now)
        if bulk and free <= self.reserved(limit):
            wait = self._until_lent(now)
            if wait is not None:
                return wait
        others_seen = self._in_flight and (self._others_before or self._others_learned)
        return self._held_for_others(free) if others_seen else None

    def room(self, now: float, bulk: bool = False) -> int:
        """How many tickets :meth:`try_acquire` would grant in a row now, with no answer between (0: it would
        wait); for bulk work only those above the reserve are counted (a lower bound, then). For a budget
        that takes several at once, with :meth:`grant_more`."""
        if self.peek(now, bulk) is not None:
            return 0
        limit = self.limit
        if limit is None:
            return 1  # the probe goes alone
        # Each grant adds one to what is granted, sent and in flight; peek's every rule is a bound "i < x" on
        # the i-th grant after this one, so the room is the least of those bounds (and this one's grant).
        free = limit - self._granted - self._others
        room = free
        in_flight = self._sent - self._settled
        if self._others_before != 0:  # the ramp
            room = min(room, max(1, self._settled) - in_flight)
        if bulk:
            room = min(room, free - self.reserved(limit))
        learned = self._others_learned
        if self._others_before or learned:  # the last free slots go one at a time (_held_for_others)
            before = self._others_before or 0
            room = min(room, free - 1, (free - 2 * learned - in_flight + 1) // 2, free - before + learned)
        return max(1, room)

    def grant_more(self, count: int, bulk: bool = False) -> None:
        """Grant ``count`` tickets at once, at most :meth:`room` (the caller asked it with no step between):
        each is a ticket like ``Ticket(epoch, answers_before, bulk)`` of the state as it is, made by the
        budget when it hands one out."""
        self._granted += count
        self._sent += count
        self._in_flight += count
        self.stats.sent += count
        if not bulk:
            self.stats.interactive_sent += count

    def reserved(self, limit: int) -> int:
        """The slots of this window that bulk work leaves free, at most half the limit: for interactive calls
        the peak of their demand in recent windows (at least one) less what asked in this one, and for other
        clients one more than their use in the last window, less what they have used in this one."""
        half = limit // 2
        interactive = max(1, *self._asked_recent) if self._asked_recent else 1
        # One more than the others used: their use is what the reserve let them have, so it could not show
        # that they wanted more; with the one more it grows a slot a window until it meets their demand.
        others = max(self._others_before + 1, 2 * self._others_before) if self._others_before else 0
        return min(half, max(0, interactive - self._asked) + max(0, others - self._others_learned))

    def _until_lent(self, now: float) -> Wait | None:
        """Only reserved slots are free, for bulk work: it borrows them in the window's last tenth, when they
        would otherwise go unused (None: now), and waits until then."""
        end = self._window_end
        if end is None:
            # Not dated yet: an answer will date it; with none in flight none can, and the request opens it.
            return Wait(None, "reserve") if self._in_flight else None
        lend_at = end - LEND_FRACTION * self.window_seconds
        if now < lend_at:
            return Wait(lend_at, "reserve")
        if self._in_flight and (self._others_before or self._others_learned):
            # Other clients may have used those slots unseen: borrowed one at a time, each answer's count first.
            return Wait(None, "shared")
        return None

    def _spent(self, now: float) -> Wait | None:
        """The window is spent: wait for its end, or an answer that dates it; None if it has just ended."""
        if self._window_end is None:
            if self._in_flight:
                return Wait(None, "window")
            # No answer dated this window, and none can come: it is over a window after the last request of
            # ours was given up (see docs/design/rate-limit.md).
            self._window_end = self._last_settled + self.window_seconds
            if now >= self._window_end:
                self._new_epoch(window_end=None, carried=0, others=0)
                return None
        return Wait(self._window_end, "window")

    def _held_for_others(self, free: int) -> Wait | None:
        """Another client uses the token (and requests of ours are in flight, whose answers will count them):
        the window's last ``free`` slots go one at a time."""
        # Others may use as much again as they have in this window (they may be ramping up as we are, and
        # our requests in flight hide as many of theirs from the count), or what they used in the last.
        before = self._others_before or 0
        in_flight = self._sent - self._settled
        others_may_use = max(2 * self._others_learned + in_flight, before - self._others_learned)
        return Wait(None, "shared") if free <= max(1, others_may_use) else None

    def expect_others(self) -> None:
        """Other processes use the token now (a fleet whose shared budget is away): from here on, expect
        them to use the whole window, so the window opens with one request and its slots go one at a time
        until a window without them is seen."""
        self._others_expected = self.limit or self.assumed_limit
        self._expected_from = self._epoch + 1  # the first whole window after this that shows none clears it
        self._others_before = max(self._others_before or 0, self._others_expected)

    def _roll(self, now: float) -> None:
        """Past the window's estimated end a new one begins, and the requests still in flight may land in it.
        Done first at every step, so an answer that comes after the end is read as carried into the new
        window (its request may have been counted there), never as the old window's."""
        if self._window_end is not None and now >= self._window_end:
            self._new_epoch(window_end=None, carried=self._in_flight, others=0)

    def _new_epoch(self, *, window_end: float | None, carried: int, others: int) -> None:
        self._epoch += 1
        self._asked_recent.append(self._asked)
        self._asked = 0
        if self._answers:
            if not self._others_learned and self._epoch > self._expected_from:
                self._others_expected = 0  # a window without the others: no need to expect them any more
            self._others_before = max(self._others_learned, self._others_expected)
        self._window_end = window_end
        # Requests still in flight may land in the new window: count them there, to be safe.
        self._granted = carried
        self._carried_in = self._in_flight
        self._others = others
        self._others_learned = 0
        self._answers = self._sent = self._settled = 0

    def _settle(self, ticket: Ticket, now: float) -> bool:
        if ticket.settled:
            return False
        ticket.settled = True
        self._in_flight -= 1
        if ticket.epoch == self._epoch:
            self._settled += 1
        if now > self._last_settled:
            self._last_settled = now
        return True

    # --- hearing back ----------------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The ticket's request never reached the server (cancelled before sending, connection refused):
        give its place back."""
        if ticket.settled:
            return
        ticket.settled = True
        self._in_flight -= 1
        self.stats.sent -= 1
        if not ticket.bulk:
            self.stats.interactive_sent -= 1
        if ticket.epoch == self._epoch:
            self._sent -= 1
            if self._granted > 0:
                self._granted -= 1

    def no_answer(self, ticket: Ticket, now: float) -> None:
        """The request got no answer (dropped, timed out): it may have been counted, so it stays counted."""
        self._roll(now)
        if self._settle(ticket, now):
            self._unclear_epoch = self._epoch

    def answered(self, ticket: Ticket, now: float, status: int, hints: RateLimitHeaders) -> float:
        """Read one answer's status and rate-limit headers; return how long the gate is closed from now."""
        self._roll(now)
        if not self._settle(ticket, now):
            return max(0.0, self.gate_until - now)
        if hints.limit is not None and hints.limit > 0:
            self.limit = hints.limit
        elif self.limit is None:
            self.limit = self.assumed_limit
        limit = self.limit

        if status == 429:
            self.stats.throttled += 1
            self._throttled(now, hints.retry_after, limit)
            return self.gate_until - now

        if ticket.epoch != self._epoch:
            return max(0.0, self.gate_until - now)  # an earlier window's: already counted in this one
        if self._window_end is None:
            self._window_end = now + self.window_seconds
        if hints.remaining is None:
            # No count (a proxy's page, which the server's throttle never saw): the answers no longer say how
            # many requests the server counted.
            self._unclear_epoch = self._epoch
            self._answers += 1
            return 0.0
        count = limit - hints.remaining
        if ticket.answers_before > 0 and count <= ticket.answers_before:
            # Fewer requests in this window than we had seen answered before sending: the server began a
            # new window since. It began before this answer, so its end is before now + window_seconds.
            # Its count so far includes this request of ours: booking it as ours (not as another
            # client's) keeps the count safe without mistaking ourselves for someone else.
            # The server's last window began when a request of this epoch arrived (no one else was seen and
            # none was carried in), so it lasted at most from our first send of the epoch until now.
            lasted = now - self._first_sent
            if lasted < self.window_seconds / 2 and self._sole_and_clear():
                # No one else opened it earlier than we thought: the server's window is this short.
                self._window_looks_shorter(lasted)
            self._new_epoch(window_end=now + self.window_seconds, carried=self._in_flight + count, others=0)
            self._answers = self._sent = self._settled = 1
            self._carried_in += 1  # this request, sent in the last epoch, is in the new window
            return 0.0
        others = count - self._granted
        if others > self._others_learned:
            self._others_learned = others
            self._others = max(self._others, others)
        self._answers += 1
        return 0.0

    def _throttled(self, now: float, retry_after: float | None, limit: int) -> None:
        estimate = self._window_end if self._window_end is not None and self._window_end > now else None
        if retry_after is None:
            until = estimate if estimate is not None else now + self.window_seconds
        else:
            # The window ends in [now + Retry-After, now + Retry-After + 1 s): the estimate, if it lies there
            # (one before it is shown wrong, so only the interval's end is sure).
            low, high = now + retry_after, now + retry_after + RETRY_AFTER_ROUNDING
            until = high if estimate is None or estimate < low else min(estimate, high)
        self.gate_until = max(self.gate_until, until, now + MIN_THROTTLE_WAIT)
        # Only someone else's use brings a 429: expect it in the next window too.
        others_before = max(self._others_before or 0, self._others_learned, 1)
        # The window is full until then; our in-flight requests are refused too, and count for nothing.
        self._new_epoch(window_end=self.gate_until, carried=0, others=limit)
        self._others_before = others_before

    def _sole_and_clear(self) -> bool:
        """No one else seen, none carried in, and every request of this window and the last answered with
        the server's count: a server window at odds with ours can only mean window_seconds is wrong (an
        unanswered request may have opened the server's window unseen, another client before our first
        request, and an answer without a count is no evidence of one)."""
        return (
            not (self._others_before or self._others_learned)
            and self._epoch - self._unclear_epoch > 1
            and not self._carried_in
        )

    def _window_looks_shorter(self, lasted: float) -> None:
        if self.mismatch is None:
            self.mismatch = (
                f"the server's rate-limit window is not {self.window_seconds:g} s: it began anew {lasted:.3g} s "
                "into a window; set window_seconds (--window-seconds) to the server's window, or the budget goes "
                "unused"
            )

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
            gate_closed_for=max(0.0, self.gate_until - now),
            in_flight=self._in_flight,
            shared=bool(self._others_before or self._others_learned),
            window_seconds=self.window_seconds,
            sent=self.stats.sent,
            throttled=self.stats.throttled,
            retried=self.stats.retried,
            waited_seconds=self.stats.waited_seconds,
            reserved=self.reserved(self.limit) if self.limit is not None else 0,
            interactive_sent=self.stats.interactive_sent,
            interactive_waited_seconds=self.stats.interactive_waited_seconds,
        )
