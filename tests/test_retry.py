"""Retry waits: jittered backoff, and a span that rides out an outage whatever the jitter draws."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import TOKEN
from wemasy_async import NO_RETRIES, APIConnectionError, RetryEvent, RetryPolicy, WemasyClient
from wemasy_async.testing import CannedResponse, Fault, WemasyEmulator


class LowDraws(random.Random):
    """Jitter that always draws the shortest wait: the worst case for riding out an outage."""

    def uniform(self, a: float, b: float) -> float:
        return a


def waits(policy: RetryPolicy, rng: random.Random) -> list[float]:
    """The waits of a call whose every attempt fails at once, as the client computes them."""
    elapsed, out = 0.0, []
    for attempt in range(1, policy.max_attempts):
        wait = policy.delay(attempt, elapsed, rng)
        out.append(wait)
        elapsed += wait
    return out


def test_the_default_policy_rides_out_ten_seconds_even_when_jitter_draws_no_wait() -> None:
    """Full jitter may draw waits near 0; the last wait then makes up the rest, so a server that is back
    within 10 s is reached by the last attempt."""
    assert RetryPolicy().span() == 10.0
    drawn = waits(RetryPolicy(), LowDraws())
    assert drawn[:-1] == [0.0, 0.0, 0.0, 0.0]
    assert sum(drawn) == pytest.approx(10.0)


@given(seed=st.integers(0, 2**32 - 1), attempt_seconds=st.floats(0, 3))
def test_retries_span_at_least_the_ride_out_and_at_most_the_ceilings(seed: int, attempt_seconds: float) -> None:
    """Whatever the jitter draws, the waits add up to at least ``span()`` since the first failure and never
    exceed what the backoff ceilings allow (15.5 s with the defaults)."""
    policy = RetryPolicy()
    rng = random.Random(seed)
    elapsed, first_failure = 0.0, None
    for attempt in range(1, policy.max_attempts):
        elapsed += attempt_seconds  # the attempt, then its failure
        first_failure = elapsed if first_failure is None else first_failure
        elapsed += policy.delay(attempt, elapsed - first_failure, rng)
    assert elapsed - first_failure >= policy.span() - 1e-9
    assert elapsed - first_failure <= 15.5 + 4 * attempt_seconds + 1e-9


def test_the_span_is_bounded_by_the_backoff_the_wait_budget_and_a_deadline() -> None:
    """No backoff means no waits (tests); the span never passes max_wait; a stretch that would pass the
    call's deadline is not made (the jittered wait is kept, so the last attempt still has time)."""
    assert RetryPolicy(backoff_base=0).span() == 0
    assert sum(waits(RetryPolicy(backoff_base=0), random.Random(1))) == 0
    assert RetryPolicy(max_wait=3).span() == 3
    assert RetryPolicy(ride_out=2.5).span() == 2.5
    assert RetryPolicy(max_attempts=1).span() == 0
    low = LowDraws()
    assert RetryPolicy().delay(5, 1.0, low, left=5.0) == 0.0
    assert RetryPolicy().delay(5, 1.0, low, left=20.0) == pytest.approx(9.0)
    assert RetryPolicy().delay(5, 1.0, low, left=9.5) == 0.0  # no time left for the last attempt
    assert RetryPolicy().delay(4, 1.0, low) == 0.0  # only the last wait is stretched
    # Waits already spent (429s that named no time) leave 7 s of max_wait: the stretch to 9 s does not fit,
    # and the call keeps its jittered wait rather than giving up.
    assert RetryPolicy(max_wait=12).delay(5, 1.0, low, room=7.0) == 0.0
    assert RetryPolicy(max_wait=12).delay(5, 1.0, low, room=9.0) == pytest.approx(9.0)


def test_no_retries_does_not_wait_on_a_429_but_a_send_once_probe_does() -> None:
    assert NO_RETRIES.wait_on_rate_limit is False
    assert RetryPolicy(max_attempts=1).wait_on_rate_limit is True


async def test_a_restart_shorter_than_the_ride_out_is_ridden_out() -> None:
    """The server goes down (connections refused) for 0.3 s while a call is made: its retries, with jitter
    that draws no wait at all, still reach the server once it is back, because they span 0.4 s."""
    policy = RetryPolicy(max_attempts=4, backoff_base=0.2, ride_out=0.4)
    retries: list[RetryEvent] = []

    def on_event(event: object) -> None:
        if isinstance(event, RetryEvent):
            retries.append(event)

    async def back_after(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await emulator.resume_serving()

    async with WemasyEmulator() as emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=policy, on_event=on_event) as client:
            client._random = LowDraws()
            await client.sendcloud.status()  # connected once: going down also closes a kept-alive connection
            await emulator.stop_serving()
            restart = asyncio.create_task(back_after(0.3))
            integration = await client.sendcloud.status()
            await restart
    assert integration.active
    assert emulator.restarts == 1
    assert len(retries) == 3  # three refused sends, then the last attempt after the server came back
    assert sum(e.delay for e in retries) <= 0.4 + 1e-9  # the stretch: the span since the first failure


async def test_a_server_down_longer_than_the_ride_out_fails_the_call() -> None:
    """Past the span, the call gives up with the connection error (the batch then stops: see test_batching)."""
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, ride_out=0.02)
    async with WemasyEmulator() as emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=policy) as client:
            await emulator.stop_serving()
            with pytest.raises(APIConnectionError):
                await client.sendcloud.status()
            await emulator.resume_serving()
            assert (await client.sendcloud.status()).active  # the same emulator, serving again


async def test_a_429_that_queues_again_uses_no_attempt() -> None:
    """With two attempts, a 429, then a 500, then a 200: the 429 only queued the call again behind the gate,
    so the 500 is the first attempt's failure and the second attempt gets the 200."""
    policy = RetryPolicy(max_attempts=2, backoff_base=0)
    retries: list[RetryEvent] = []

    def on_event(event: object) -> None:
        if isinstance(event, RetryEvent):
            retries.append(event)

    async with WemasyEmulator() as emulator:
        emulator.inject(
            CannedResponse(429, {"message": "Too Many Attempts."}, {"Retry-After": "0"}), Fault.SERVER_ERROR
        )
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=policy, on_event=on_event) as client:
            integration = await client.sendcloud.status()
    assert integration.active
    assert [(e.attempt, e.cause) for e in retries] == [(2, "429"), (3, "500")]
