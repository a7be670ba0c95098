"""The emulator's Laravel fixed-window throttle, driven by a fake clock."""

from __future__ import annotations

import pytest

from wemasy_async.testing import FixedWindowThrottle


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_window_starts_with_the_first_request_not_the_clock_minute() -> None:
    """The window opens at the key's first request and lasts window_seconds from there."""
    clock = FakeClock(1000.7)
    throttle = FixedWindowThrottle(2, 60.0, clock)
    assert throttle.hit("a").remaining == 1
    clock.now = 1059.0
    assert throttle.hit("a").remaining == 0
    refused = throttle.hit("a")
    assert not refused.allowed
    assert refused.resets_in == pytest.approx(1.7)
    clock.now = 1060.7
    assert throttle.hit("a").remaining == 1


def test_rejected_requests_do_not_consume_budget() -> None:
    """Hammering a closed window does not push its end or eat the next window's budget."""
    clock = FakeClock()
    throttle = FixedWindowThrottle(1, 10.0, clock)
    throttle.hit("a")
    for _ in range(5):
        assert not throttle.hit("a").allowed
    assert throttle.used("a") == 1
    clock.now += 10
    assert throttle.hit("a").allowed


def test_each_key_has_its_own_window() -> None:
    """One token's use leaves another's budget alone."""
    throttle = FixedWindowThrottle(1, 10.0, FakeClock())
    assert throttle.hit("a").allowed
    assert throttle.hit("b").allowed
    assert not throttle.hit("a").allowed


def test_a_changed_limit_applies_from_the_next_request() -> None:
    """Raising or lowering the limit mid-window changes what remains."""
    throttle = FixedWindowThrottle(3, 10.0, FakeClock())
    throttle.hit("a")
    throttle.limit = 5
    assert throttle.hit("a").remaining == 3
    throttle.limit = 2
    assert not throttle.hit("a").allowed


def test_spend_models_another_client_using_the_window() -> None:
    """spend() counts requests as if another process had made them."""
    throttle = FixedWindowThrottle(5, 10.0, FakeClock())
    throttle.spend("a", 4)
    assert throttle.hit("a").remaining == 0
