"""The rate-limit state machine, driven by hand with a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import email.utils
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wemasy_async._protocol import RateLimitHeaders, parse_rate_limit_headers
from wemasy_async._rate_limit import Ticket, Wait, WindowBudget
from wemasy_async.testing import FixedWindowThrottle

W = 60.0


def hints(limit: int | None = 10, remaining: int | None = None, retry_after: float | None = None) -> RateLimitHeaders:
    return RateLimitHeaders(limit=limit, remaining=remaining, retry_after=retry_after)


def grant(budget: WindowBudget, now: float) -> Ticket:
    decision = budget.try_acquire(now)
    assert isinstance(decision, Ticket), decision
    return decision


def refused(budget: WindowBudget, now: float) -> Wait:
    decision = budget.try_acquire(now)
    assert isinstance(decision, Wait), decision
    return decision


def learned(limit: int = 10, now: float = 0.0, rtt: float = 0.1) -> WindowBudget:
    """A budget whose first request (alone) learned the limit and opened a window."""
    budget = WindowBudget(W)
    ticket = grant(budget, now)
    budget.answered(ticket, now + rtt, 200, hints(limit, limit - 1))
    return budget


def test_first_request_goes_alone_to_learn_the_limit() -> None:
    """Until an answer says the limit, only one request is out; then the rest of the window opens."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    assert refused(budget, 0.0) == Wait(None, "probe")
    budget.answered(probe, 0.1, 200, hints(10, 9))
    tickets = [grant(budget, 0.1) for _ in range(9)]
    assert len(tickets) == 9
    assert refused(budget, 0.1).reason == "window"
    assert budget.view(0.1).limit == 10


def test_window_end_is_first_answer_plus_window_and_then_a_full_window_opens() -> None:
    """When the budget is spent, the wait ends at the window's estimated end, never before."""
    budget = learned(limit=3, now=0.0, rtt=0.1)
    for remaining in (1, 0):
        budget.answered(grant(budget, 1.0), 1.1, 200, hints(3, remaining))
    wait = refused(budget, 1.1)
    assert wait.until == pytest.approx(0.1 + W)
    assert isinstance(budget.try_acquire(0.1 + W - 0.001), Wait)
    assert [isinstance(budget.try_acquire(0.1 + W), Ticket) for _ in range(4)] == [True, True, True, False]


def test_failed_probe_lets_the_next_caller_probe() -> None:
    """A probe that got no answer does not block everyone: another request may go to learn."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.no_answer(probe)
    assert grant(budget, 0.1).probe


def test_remaining_with_requests_in_flight_is_not_double_counted() -> None:
    """Answers that come back out of order, for a sole client, never shrink the budget below L."""
    budget = learned(limit=10)
    flight = [grant(budget, 1.0) for _ in range(5)]
    # The server counted all five (remaining 4) before any answer arrived; they arrive in reverse.
    for offset, ticket in enumerate(reversed(flight)):
        budget.answered(ticket, 1.1 + offset / 100, 200, hints(10, 4))
    assert budget.view(1.2).remaining == 4
    assert len([grant(budget, 1.2) for _ in range(4)]) == 4
    assert isinstance(budget.try_acquire(1.2), Wait)


def test_another_clients_use_is_counted_from_remaining() -> None:
    """If the server counts more than we sent, the difference is someone else's and is not ours to use."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(10, 3))  # 7 used: ours 1, others 6
    assert budget.view(0.1).remaining == 3
    for remaining in (2, 1, 0):  # near the limit with another client about: one at a time
        budget.answered(grant(budget, 0.2), 0.3, 200, hints(10, remaining))
    assert refused(budget, 0.3).reason == "window"


def test_once_another_client_is_seen_each_window_starts_with_a_probe() -> None:
    """A new window opens with one request, so the other client's share is known before bursting."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(10, 5))
    first = grant(budget, 0.1 + W)
    assert first.probe
    assert refused(budget, 0.1 + W).reason == "probe"
    budget.answered(first, 0.2 + W, 200, hints(10, 7))  # the other client used 2 of the new window
    assert budget.view(0.2 + W).remaining == 7


def test_near_the_limit_with_another_client_about_requests_go_one_at_a_time() -> None:
    """With someone else spending the same window, the last slots (as many as they used) go one by one."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(10, 7))  # someone else used 2: 7 free
    burst = [grant(budget, 0.1) for _ in range(5)]  # in parallel while more than 2 are free
    assert len(burst) == 5
    assert refused(budget, 0.1).reason == "shared"
    for ticket, remaining in zip(burst, (6, 5, 4, 3, 2), strict=True):
        budget.answered(ticket, 0.2, 200, hints(10, remaining))
    last = grant(budget, 0.2)
    assert refused(budget, 0.2).reason == "shared"
    budget.answered(last, 0.3, 200, hints(10, 1))
    assert isinstance(budget.try_acquire(0.3), Ticket)
    assert budget.view(0.3).shared


def test_far_from_the_limit_another_client_holds_nothing_back() -> None:
    """A huge budget shared with another client is still spent in parallel."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(1_000_000, 999_000))  # someone else used 999
    assert len([grant(budget, 0.1) for _ in range(500)]) == 500


def test_a_window_without_the_other_client_lets_the_budget_burst_again() -> None:
    """Once a whole window passes with no one else's use, the sole client bursts again."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(10, 5))  # someone else: 4
    second = grant(budget, 0.1 + W)  # new window: a probe, which finds no one else
    budget.answered(second, 0.2 + W, 200, hints(10, 9))
    third = grant(budget, 0.2 + 2 * W)  # the window after a clean one: no probe, a burst
    assert not third.probe
    assert isinstance(budget.try_acquire(0.2 + 2 * W), Ticket)
    assert not budget.view(0.2 + 2 * W).shared


def test_a_server_window_that_began_early_is_followed() -> None:
    """An answer that counts fewer requests than we saw answered before sending means a new window."""
    budget = learned(limit=10, rtt=0.1)  # one answer seen in this epoch
    late = grant(budget, 30.0)
    assert late.answers_before == 1
    budget.answered(late, 30.1, 200, hints(10, 9))  # count 1: the server's window restarted with it
    view = budget.view(30.1)
    assert view.remaining == 9
    assert view.window_ends_in == pytest.approx(W)


def test_429_closes_the_gate_for_everyone_until_retry_after() -> None:
    """After a 429, nobody gets a ticket before Retry-After; then a new window is probed first."""
    budget = learned(limit=10)
    a, b = grant(budget, 1.0), grant(budget, 1.0)
    budget.answered(a, 1.1, 429, hints(10, 0, retry_after=5.0))
    assert refused(budget, 1.1) == Wait(pytest.approx(6.1), "gate")
    assert isinstance(budget.try_acquire(6.0), Wait)
    budget.answered(b, 1.2, 429, hints(10, 0, retry_after=4.9))  # the other in-flight one: same gate
    assert budget.view(1.2).gate_closed_for == pytest.approx(4.9)
    after = grant(budget, 6.11)
    assert after.probe
    assert budget.view(6.1).throttled == 2


@pytest.mark.parametrize("retry_after", [0.0, None])
def test_429_that_says_retry_now_still_waits_a_little(retry_after: float | None) -> None:
    """Retry-After: 0 (or absent, with no window known) does not let callers spin on the server."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 429, hints(10, 0, retry_after=retry_after))
    wait = refused(budget, 0.1)
    assert wait.until is not None
    assert wait.until > 0.1


def test_retry_after_as_http_date_and_absurd_values_reach_the_gate() -> None:
    """An HTTP-date Retry-After closes the gate until that date; an absurd one closes it that long."""
    wall = 1_800_000_000.0
    for value, expected in [(email.utils.formatdate(wall + 20, usegmt=True), 20.0), ("99999999", 99999999.0)]:
        budget = WindowBudget(W)
        probe = grant(budget, 0.0)
        headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "Retry-After": value}
        budget.answered(probe, 0.0, 429, parse_rate_limit_headers(headers, now=wall))
        assert budget.view(0.0).gate_closed_for == pytest.approx(expected)


def test_a_limit_that_changes_applies_at_once() -> None:
    """A lower X-RateLimit-Limit stops sending sooner; a higher one allows more."""
    budget = learned(limit=10)
    t = grant(budget, 1.0)
    budget.answered(t, 1.1, 200, hints(3, 1))  # the plan was cut to 3; 2 are used
    assert budget.view(1.1).remaining == 1
    grant(budget, 1.1)
    assert isinstance(budget.try_acquire(1.1), Wait)


def test_missing_headers_fall_back_to_the_documented_limit() -> None:
    """If a proxy strips the rate-limit headers, the budget assumes 60 per window rather than stalling."""
    budget = WindowBudget(W)
    probe = grant(budget, 0.0)
    budget.answered(probe, 0.1, 200, hints(None, None))
    assert budget.view(0.1).limit == 60
    assert len([grant(budget, 0.2) for _ in range(59)]) == 59
    assert isinstance(budget.try_acquire(0.2), Wait)


def test_a_released_ticket_gives_its_place_back() -> None:
    """A caller cancelled before sending does not use up the window."""
    budget = learned(limit=2)
    ticket = grant(budget, 1.0)
    assert isinstance(budget.try_acquire(1.0), Wait)
    budget.release(ticket)
    assert isinstance(budget.try_acquire(1.0), Ticket)
    assert budget.view(1.0).in_flight == 1


def test_settling_a_ticket_twice_changes_nothing() -> None:
    """Reporting the same request twice is harmless."""
    budget = learned(limit=3)
    ticket = grant(budget, 1.0)
    budget.answered(ticket, 1.1, 200, hints(3, 1))
    budget.no_answer(ticket)
    budget.release(ticket)
    assert budget.view(1.1).in_flight == 0
    assert budget.view(1.1).remaining == 1


@settings(max_examples=1000, deadline=None)
@given(
    limit=st.integers(1, 12),
    window=st.sampled_from([1.0, 2.0, 5.0]),
    requests=st.integers(1, 60),
    concurrency=st.integers(1, 16),
    latency=st.floats(0.001, 0.3),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_sole_client_never_meets_a_429_and_fills_each_window(
    limit: int, window: float, requests: int, concurrency: int, latency: float, jitter: float, seed: int
) -> None:
    """Simulated against the emulator's own throttle with random latencies and reordering: zero 429s,
    and the makespan is what the window or the concurrency allows, plus round trips."""
    rng = random.Random(seed)
    now = 0.0
    server = FixedWindowThrottle(limit, window, lambda: now)
    budget = WindowBudget(window)
    # (time, kind, ticket, status, remaining): arrivals at the server, then answers at the client.
    events: list[tuple[float, int, str, Ticket, int, int]] = []
    order = 0
    done = in_flight = throttled = 0
    next_ask = 0.0
    while done < requests:
        if (
            in_flight < concurrency
            and done + in_flight < requests
            and next_ask <= (events[0][0] if events else next_ask)
        ):
            now = max(now, next_ask)
            decision = budget.try_acquire(now)
            if isinstance(decision, Ticket):
                in_flight += 1
                order += 1
                up = latency * (1 + jitter * rng.random())
                events.append((now + up, order, "arrive", decision, 0, 0))
                events.sort(key=lambda e: (e[0], e[1]))
                continue
            next_ask = decision.until if decision.until is not None else float("inf")
            if not events:
                now = next_ask
                continue
        if not events:
            now = max(now, next_ask)
            continue
        when, _, kind, ticket, status, remaining = events.pop(0)
        now = when
        if kind == "arrive":
            decision_ = server.hit("t")
            status = 200 if decision_.allowed else 429
            down = latency * (1 + jitter * rng.random())
            order += 1
            events.append((now + down, order, "answer", ticket, status, decision_.remaining))
            events.sort(key=lambda e: (e[0], e[1]))
        else:
            in_flight -= 1
            if status == 429:
                throttled += 1
                budget.answered(ticket, now, 429, hints(limit, 0, retry_after=window))
                requests += 1  # it will be re-sent
            else:
                budget.answered(ticket, now, 200, hints(limit, remaining))
            done += status != 429
            next_ask = now
    assert throttled == 0
    windows = -(-requests // limit)
    ideal = (windows - 1) * window
    rt = 2 * latency * (1 + jitter)  # the longest round trip
    # Budget-bound: the ideal, one round trip per window (a window's end is known from its first
    # answer), and the last window's sending. Concurrency-bound: ceil(N / concurrency) round trips.
    budget_bound = ideal + windows * rt + -(-limit // concurrency) * rt
    concurrency_bound = -(-requests // concurrency) * rt
    assert now <= max(budget_bound, concurrency_bound) + rt
