"""When to re-send a call, and how long to wait first: capped exponential backoff with full jitter."""

from __future__ import annotations

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

    ``RetryPolicy(backoff_base=0)`` retries without waiting (for tests); :data:`NO_RETRIES` never retries,
    not even a 429.
    """

    max_attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    max_wait: float = attrs.field(default=120.0, validator=_positive)
    backoff_base: float = attrs.field(default=0.5, validator=_positive)
    backoff_cap: float = attrs.field(default=30.0, validator=_positive)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait before re-sending after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 62))
        return rng.uniform(0.0, ceiling)

    @staticmethod
    def retries_status(status: int) -> bool:
        return status == 429 or 500 <= status <= 599


#: Send once; every failure is raised as it comes.
NO_RETRIES = RetryPolicy(max_attempts=1)
