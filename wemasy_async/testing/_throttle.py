"""Laravel's fixed-window throttle, as a pure state machine with an injectable clock."""

from __future__ import annotations

from collections.abc import Callable

import attrs

__all__ = ["FixedWindowThrottle", "ThrottleDecision"]


@attrs.frozen
class ThrottleDecision:
    """The throttle's answer to one request."""

    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the key's window ends (always set; the server only sends it on a 429).
    resets_in: float


@attrs.define
class _Window:
    started: float
    hits: int = 0


class FixedWindowThrottle:
    """Counts requests per key in a window that starts with the key's first request, as Laravel's
    ``ThrottleRequests`` does: not sliding, not aligned to the clock minute. A rejected request does not
    count. ``limit`` and ``window_seconds`` may be changed at any time; a change applies from the next
    request on.
    """

    def __init__(self, limit: int, window_seconds: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("limit must be >= 1 and window_seconds > 0")
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str) -> _Window:
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now >= window.started + self.window_seconds:
            window = self._windows[key] = _Window(started=now)
        return window

    def hit(self, key: str) -> ThrottleDecision:
        """Count one request for ``key`` if the window allows it."""
        window = self._window(key)
        resets_in = max(0.0, window.started + self.window_seconds - self._clock())
        if window.hits >= self.limit:
            return ThrottleDecision(allowed=False, limit=self.limit, remaining=0, resets_in=resets_in)
        window.hits += 1
        return ThrottleDecision(allowed=True, limit=self.limit, remaining=self.limit - window.hits, resets_in=resets_in)

    def window_started(self, key: str) -> float:
        """When ``key``'s current window began (its first counted request)."""
        return self._window(key).started

    def used(self, key: str) -> int:
        """Requests counted in ``key``'s current window (another client's use, for tests)."""
        return self._window(key).hits

    def spend(self, key: str, count: int) -> None:
        """Count ``count`` requests for ``key`` as if another client had made them."""
        window = self._window(key)
        window.hits = min(self.limit, window.hits + count)
