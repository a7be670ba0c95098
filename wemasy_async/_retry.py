"""When to re-send a call, and how long to wait first: capped exponential backoff with full jitter."""

from __future__ import annotations

import math
import random

import attrs

__all__ = ["NO_RETRIES", "RetryPolicy"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How a call is retried after a 429, a 5xx, a failed connection or a timeout. Other 4xx never are.

    A 429 is the rate-limit budget's business, not a failure: its gate holds every caller until the
    server's window has surely ended, and the throttled request is re-sent then without using an
    attempt. A call gives up on 429s only when the wait is longer than ``max_wait`` (a
    :class:`RateLimitError` at once, so the caller can decide; callers waiting behind that gate get one
    too), or, for 429s that name no wait, when their waits add up to more than ``max_wait``.

    Other failures are re-sent after ``uniform(0, min(backoff_cap, backoff_base * 2 ** (attempt - 1)))``
    seconds ("full jitter"), or a 503's ``Retry-After`` if longer. A call gives up, raising the last
    error, after ``max_attempts`` sends, or when the next wait would take its retry waits past
    ``max_wait`` seconds (or past the call's deadline).

    An outage (a server restarting, a deploy, a network blip) is ridden out for sure when it is shorter
    than ``ride_out`` seconds: jitter can draw short waits, so the last retry waits, if need be, until
    ``ride_out`` seconds have passed since the call's first failure. With the defaults a call's retries
    span 10 to 15.5 seconds before it gives up on a server that does not answer. The span is never longer
    than the backoff ceilings could add up to, nor than ``max_wait``, nor past the call's deadline.

    ``RetryPolicy(backoff_base=0)`` retries without waiting (for tests); :data:`NO_RETRIES` never retries,
    not even a 429 (``wait_on_rate_limit=False``).
    """

    max_attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    max_wait: float = attrs.field(default=120.0, validator=_positive)
    backoff_base: float = attrs.field(default=0.5, validator=_positive)
    backoff_cap: float = attrs.field(default=30.0, validator=_positive)
    ride_out: float = attrs.field(default=10.0, validator=_positive)
    #: Whether a 429 waits for the budget's gate and queues again, using no attempt (True), or is a failure like
    #: a 5xx (False: with one attempt, as in NO_RETRIES, it is raised as it comes).
    wait_on_rate_limit: bool = True

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait before re-sending after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 62))
        return rng.uniform(0.0, ceiling)

    def span(self) -> float:
        """The least time a call's retries take before it gives up on failures (see ``ride_out``)."""
        ceilings = sum(
            min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 62))
            for attempt in range(1, min(self.max_attempts, 64))
        )
        return min(self.ride_out, ceilings, self.max_wait)

    def delay(
        self,
        attempt: int,
        since_first_failure: float,
        rng: random.Random,
        left: float | None = None,
        room: float = math.inf,
    ) -> float:
        """The wait before re-sending after failed attempt number ``attempt`` (1-based), ``since_first_failure``
        seconds after the call's first failure: the jittered backoff, but before the last attempt at least what
        makes the retries span :meth:`span`. The stretch is not made when it would not fit: in the ``room``
        left of ``max_wait``, or before the call's deadline (``left`` seconds away) with time for the last
        attempt (a tenth of what is left, up to a second); the jittered wait is kept then."""
        wait = self.backoff(attempt, rng)
        if attempt == self.max_attempts - 1:
            stretched = self.span() - since_first_failure
            fits = stretched <= room and (left is None or stretched < left - min(1.0, left / 10))
            if stretched > wait and fits:
                wait = stretched
        return wait

    @staticmethod
    def retries_status(status: int) -> bool:
        return status == 429 or 500 <= status <= 599


#: Send once; every failure is raised as it comes.
NO_RETRIES = RetryPolicy(max_attempts=1, wait_on_rate_limit=False)
