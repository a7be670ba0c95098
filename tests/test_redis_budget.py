"""The fleet's budget in a real redis-server: the Lua port decides as the Python reference does."""

from __future__ import annotations

import asyncio
import itertools
import signal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.budget_helpers import Caller, within
from tests.redis_server import RedisServer
from wemasy_async import RateLimitHeaders
from wemasy_async.budgets import Ticket, Wait, WindowState
from wemasy_async.budgets._redis import FleetTicket, RedisBudget, RedisUnavailableError, redis_keys

W = 2.0
_tokens = itertools.count()

#: An interactive call's try, a bulk call's, and a try that brings the first asks of 1-3 interactive calls
#: (the window's demand).
acquire = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(["interactive", "bulk"])),
    st.tuples(st.just("acquire"), st.just("asking"), st.integers(1, 3)),
)
answer = st.tuples(
    st.just("answer"),
    st.integers(0, 50),
    st.sampled_from([200] * 6 + [429]),
    st.one_of(st.just(8), st.just(8), st.none(), st.integers(1, 12)),
    st.integers(0, 8),
    st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, 0.3])),
)
step = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 2.5])),
    acquire,
    acquire,
    answer,
    answer,
    st.tuples(st.just("drop"), st.integers(0, 50)),
    st.tuples(st.just("release"), st.integers(0, 50)),
)


@pytest.mark.once  # Redis's Lua against the Python reference: the server's behaviour, not this Python's
@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=80), start=st.floats(1000.0, 2000.0))
def test_the_lua_budget_decides_as_the_python_reference(
    redis_server: RedisServer, steps: list[tuple[object, ...]], start: float
) -> None:
    """Random grants (interactive and bulk), answers (429s with and without Retry-After, limits that
    change), drops, releases and time steps, given to both: the same tickets and waits (reason and end),
    the same gate after each answer, the same view (the reserve kept from bulk work included)."""
    asyncio.run(_compare(redis_server.url, steps, start))


#: Sequences that reach every branch of the state machine, beside the random ones.
BRANCHES = {
    "a window of dropped requests ends": [
        ("acquire",), ("answer", 0, 200, 3, 2, None), ("advance", 2.5),
        *[("acquire",), ("drop", 0)] * 3, ("acquire",), ("advance", 1.9), ("acquire",), ("advance", 0.2), ("acquire",),
    ],
    "a window of dropped requests that has already ended": [
        ("acquire",), ("answer", 0, 200, 3, 2, None), ("advance", 2.5),
        *[("acquire",), ("drop", 0)] * 3, ("advance", 2.5), ("acquire",), ("acquire",),
    ],
    "others near the limit: one at a time": [
        ("acquire",), ("answer", 0, 200, 8, 6, None), ("acquire",), ("answer", 0, 200, 8, 5, None),
        ("acquire",), ("answer", 0, 200, 8, 4, None), ("acquire",), ("acquire",),
    ],
    "the server's window began early": [
        ("acquire",), ("answer", 0, 200, 8, 7, None), ("acquire",), ("advance", 1.0),
        ("answer", 0, 200, 8, 7, None), ("acquire",), ("acquire",),
    ],
    "a 429 at the estimated end waits a little": [
        ("acquire",), ("answer", 0, 200, 8, 7, None), ("advance", 1.99), ("acquire",), ("answer", 0, 429, 8, 0, 0.0),
        ("acquire",), ("advance", 0.04), ("acquire",), ("advance", 0.02), ("acquire",),
    ],
    "a limit lowered across a window end": [
        ("acquire",), ("answer", 0, 200, 8, 7, None), ("acquire",), ("answer", 0, 200, 8, 6, None), ("acquire",),
        ("advance", 2.5), ("acquire",), ("answer", 0, 200, 2, 0, None), ("answer", 0, 200, 2, 0, None),
        ("acquire",), ("advance", 2.5), ("acquire",),
    ],
    "an answer after the window's end is carried into the next": [
        ("acquire",), ("answer", 0, 200, 8, 1, None), ("acquire",), ("advance", 2.0), ("answer", 0, 200, 8, 7, None),
        ("acquire",), ("acquire",),
    ],
    "bulk work leaves the reserve and borrows it near the window's end": [
        *[step for left in range(7, 0, -1) for step in (("acquire", "bulk"), ("answer", 0, 200, 8, left, None))],
        ("acquire", "bulk"), ("advance", 1.75), ("acquire", "bulk"), ("advance", 0.1), ("acquire", "bulk"),
    ],
    "an interactive call takes the reserve": [
        *[step for left in range(7, 0, -1) for step in (("acquire", "bulk"), ("answer", 0, 200, 8, left, None))],
        ("acquire", "bulk"), ("acquire", "asking"), ("acquire", "bulk"),
    ],
    "bulk work leaves other clients their use": [
        ("acquire", "bulk"), ("answer", 0, 200, 8, 4, None), ("advance", 2.5), ("acquire", "bulk"),
        ("answer", 0, 200, 8, 7, None), ("acquire", "bulk"), ("acquire", "bulk"), ("acquire", "bulk"),
        ("advance", 1.85), ("acquire", "bulk"),
    ],
    "a request given up after the window's end is carried into the next": [
        ("acquire",), ("answer", 0, 200, 8, 1, None), ("acquire",), ("advance", 2.0), ("drop", 0),
        ("acquire",), ("acquire",),
    ],
}  # fmt: skip


@pytest.mark.parametrize("steps", list(BRANCHES.values()), ids=list(BRANCHES))
async def test_the_lua_budget_takes_every_branch_as_the_reference(
    redis_server: RedisServer, steps: list[tuple[object, ...]]
) -> None:
    """Hand-made sequences through each branch (the random ones seldom reach some): the same decisions."""
    await _compare(redis_server.url, steps, 1000.0)


def _asks(args: list[object]) -> int:
    """An acquire's count of interactive calls that began to ask since the process's last acquire."""
    if not args or args[0] != "asking":
        return 0
    return int(args[1]) if len(args) > 1 else 1  # type: ignore[call-overload]


async def _compare(redis_url: str, steps: list[tuple[object, ...]], start: float) -> None:
    reference = WindowState(W)
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", f"token-{next(_tokens)}", window_seconds=W)
    fleet.lease_seconds = 1e6  # no lease runs out here: that is not in the reference
    now = start
    fleet.fixed_now = now
    outstanding: list[tuple[Ticket, str]] = []
    try:
        for action, *args in steps:
            if action == "advance":
                now += float(args[0])  # type: ignore[arg-type]
                fleet.fixed_now = now
            elif action == "acquire":
                kind_of_call = args[0] if args else "interactive"
                bulk = kind_of_call == "bulk"
                asks = _asks(args)
                reference.asked(now, asks)
                expected = reference.try_acquire(now, bulk)
                kind, first, second, *_ = await fleet.run("acquire", "", "1" if bulk else "", str(asks or ""))
                if isinstance(expected, Ticket):
                    assert kind == b"ticket", (expected, kind, first, second)
                    outstanding.append((expected, first.decode()))
                else:
                    assert kind == b"wait", (expected, kind, first)
                    assert first.decode() == expected.reason
                    _same_wait(expected, second, now)
            elif outstanding:
                chosen = int(args[0])  # type: ignore[call-overload]
                index = chosen % len(outstanding)
                ticket, lease = outstanding[index]
                if action == "answer":
                    status, limit, remaining, retry_after = args[1:]
                    hints = RateLimitHeaders(limit, remaining, retry_after)  # type: ignore[arg-type]
                    gate = reference.answered(ticket, now, status, hints)  # type: ignore[arg-type]
                    got = await fleet._settle(FleetTicket(lease=lease), "answered", status, hints)  # type: ignore[arg-type]
                    assert got == pytest.approx(gate, abs=1e-9)
                elif action == "drop":
                    reference.no_answer(ticket, now)
                    await fleet._settle(FleetTicket(lease=lease), "no_answer")
                elif chosen % 2:
                    reference.release(ticket)
                    await fleet._settle(FleetTicket(lease=lease), "release")
                else:  # given back by its name (its caller left): a release
                    reference.release(ticket)
                    await fleet.run("abandon", lease.rsplit(":", 1)[1])
                if chosen < 45:  # else settled again later: harmless for both
                    del outstanding[index]
            await fleet.run("view")
            _same_view(reference, fleet, now)
    finally:
        await fleet.aclose()


def _same_wait(expected: Wait, seconds: bytes, now: float) -> None:
    if expected.until is None:
        assert seconds == b""
    else:
        assert float(seconds) == pytest.approx(expected.until - now, abs=1e-6)


def _same_view(reference: WindowState, fleet: RedisBudget, now: float) -> None:
    want, got = reference.view(now), fleet._view
    assert got is not None
    assert (got.limit, got.remaining, got.in_flight, got.shared, got.reserved) == (
        want.limit,
        want.remaining,
        want.in_flight,
        want.shared,
        want.reserved,
    )
    assert got.gate_closed_for == pytest.approx(want.gate_closed_for, abs=1e-6)
    if want.window_ends_in is None:
        assert got.window_ends_in is None
    else:
        assert got.window_ends_in == pytest.approx(want.window_ends_in, abs=1e-6)


async def test_keys_hold_no_token_and_expire(redis_url: str) -> None:
    """The token is only hashed into the keys' names, and every key has a time to live."""
    import redis.asyncio as aioredis

    token = "wm-tok-9f8e7d6c5b4a-SECRET"
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W)
    try:
        ticket = await fleet.acquire()
        await fleet.answered(ticket, 200, RateLimitHeaders(10, 9))
        await fleet.acquire()  # in flight: a lease
        client = aioredis.Redis.from_url(redis_url)
        keys = await client.keys("*")
        assert sorted(k.decode() for k in keys) == sorted(redis_keys("http://127.0.0.1/api", token)[:2])
        for key in keys:
            assert token.encode() not in key
            assert 0 < await client.pttl(key) <= 3 * max(W, fleet.lease_seconds) * 1000
            dump = await client.dump(key)
            assert dump is not None
            assert token.encode() not in dump
        await client.aclose()
    finally:
        await fleet.aclose()


async def test_a_lease_that_runs_out_frees_its_place(redis_url: str) -> None:
    """A process that took the window's first ticket and died: its lease runs out, and then another
    process may send, as if that request had gone unanswered."""
    dead = RedisBudget(redis_url, "http://127.0.0.1/api", "t-lease", window_seconds=W, lease_seconds=5.0)
    alive = RedisBudget(redis_url, "http://127.0.0.1/api", "t-lease", window_seconds=W, lease_seconds=5.0)
    dead.fixed_now = alive.fixed_now = 100.0
    try:
        kind, *_ = await dead.run("acquire")
        assert kind == b"ticket"  # ... and its process is killed
        kind, reason, seconds, *_ = await alive.run("acquire")
        assert (kind, reason, seconds) == (b"wait", b"probe", b"")
        alive.fixed_now = 105.0
        kind, *_ = await alive.run("acquire")
        assert kind == b"ticket"
    finally:
        await dead.aclose()
        await alive.aclose()


async def test_the_lua_script_knows_no_other_operation(redis_url: str) -> None:
    """A typo in an operation is an error from Redis, not a silent no-op."""
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", "t-typo", window_seconds=W)
    try:
        with pytest.raises(RedisUnavailableError, match="unknown operation"):
            await fleet.run("acquier")
    finally:
        await fleet.aclose()


def _stopped(redis_server: RedisServer) -> RedisServer:
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    return redis_server


def _resume(redis_server: RedisServer) -> None:
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGCONT)


async def _leases(redis_url: str, token: str) -> int:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    try:
        count: int = await admin.zcard(redis_keys("http://127.0.0.1/api", token)[1])
        return count
    finally:
        await admin.aclose()


async def _all_sent(fleet: RedisBudget) -> None:
    """Wait (bounded) until the budget has sent Redis every report it kept."""
    for _ in range(200):
        sender = getattr(fleet, "_sender", None)
        if sender is None or sender.done():
            break
        await asyncio.wait((sender,), timeout=0.5)
    assert not getattr(fleet, "_unsent", [])


@pytest.mark.parametrize("how", ["redis-timeout", "cancelled"])
async def test_a_ticket_granted_after_its_caller_left_is_given_back(
    redis_server: RedisServer, redis_url: str, how: str
) -> None:
    """Redis grants a ticket after its caller stopped waiting (its Redis timeout passed, or the caller was
    cancelled): the process gives it back by the name it chose, once Redis answers, and another process
    then gets a ticket at once rather than waiting for the lease (lease_seconds) on a 'probe'."""
    token = f"t-late-{how}"
    late = RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W, redis_timeout=0.5)
    other = RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W)
    try:
        await late.run("view")  # connected
        _stopped(redis_server)
        try:
            if how == "redis-timeout":
                ticket = await late.acquire()  # from the in-process budget, Redis being away
                assert ticket.local is not None
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(late.acquire(), 0.1)
        finally:
            _resume(redis_server)
        await _all_sent(late)
        kind, *_ = await other.run("acquire")
        assert kind == b"ticket"
        assert await _leases(redis_url, token) == 1  # the other's own
    finally:
        await late.aclose()
        await other.aclose()


async def test_a_caller_cancelled_as_redis_grants_its_ticket_ends_cancelled_and_gives_it_back(redis_url: str) -> None:
    """Redis grants the ticket and its answer is in, but the caller is cancelled before it runs again: it
    ends in CancelledError, never with the ticket (asyncio.wait_for before Python 3.12 returns the answer
    then, and the cancel is lost), and the process gives the grant back by its name."""
    token = "t-cancel-granted"
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W)
    script = fleet._script
    callers: list[asyncio.Future[FleetTicket]] = []

    async def granted_then_cancelled(**call: Any) -> Any:
        reply = await script(**call)
        if call["args"][0] == "acquire" and reply[0] == b"ticket":
            callers[0].cancel()  # the answer is in; the caller has not run since it asked
        return reply

    fleet._script = granted_then_cancelled  # type: ignore[assignment]
    try:
        callers.append(asyncio.ensure_future(fleet.acquire()))
        with pytest.raises(asyncio.CancelledError):
            await within(callers[0])
        await _all_sent(fleet)
        assert await _leases(redis_url, token) == 0
    finally:
        await fleet.aclose()


async def test_the_view_is_the_newest_redis_made_whatever_order_its_replies_come_in(redis_url: str) -> None:
    """Two calls overlap on two connections (a ticket given back, and the next caller's acquire): Redis runs
    the give-back first, but its reply is read last. The view is the acquire's, not the older one."""
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", "t-view-order", window_seconds=W)
    script = fleet._script
    ran, read = asyncio.Event(), asyncio.Event()

    async def reply_held_back(**call: Any) -> Any:
        reply = await script(**call)
        if call["args"][0] == "release":
            ran.set()  # Redis has run it ...
            await read.wait()  # ... and its reply is read after the acquire's
        return reply

    try:
        ticket = await fleet.acquire()
        fleet._script = reply_held_back  # type: ignore[assignment]
        releasing = asyncio.ensure_future(fleet.release(ticket))
        await within(ran.wait())
        await within(fleet.acquire())
        assert fleet.view().in_flight == 1
        read.set()
        await within(releasing)
        assert fleet.view().in_flight == 1  # the release's reply (nothing in flight) came last, but is older
    finally:
        await fleet.aclose()


async def test_the_view_follows_redis_when_its_clock_steps_back(redis_url: str) -> None:
    """A call asked after the view kept came is newer, whatever Redis's clock says: the view follows it."""
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", "t-view-clock", window_seconds=W)
    fleet.fixed_now = 100.0
    try:
        kind, ticket, *_ = await fleet.run("acquire")
        assert kind == b"ticket"
        assert fleet.view().in_flight == 1
        fleet.fixed_now = 90.0  # Redis's clock stepped back
        await fleet.release(FleetTicket(lease=ticket.decode()))
        assert fleet.view().in_flight == 0
    finally:
        await fleet.aclose()


async def test_an_answer_redis_did_not_take_is_sent_again(redis_server: RedisServer, redis_url: str) -> None:
    """A report (answer, no answer) that Redis was too slow to take, and those made while the process is
    on its own budget, are sent again when Redis answers: no lease is left to run out."""
    token = "t-unsettled"
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W, redis_timeout=0.5)
    try:
        for left in (9, 8):  # two answers heard: two requests may be in flight (no wait for a lease to end)
            await fleet.answered(await fleet.acquire(), 200, RateLimitHeaders(10, left))
        first, second = await fleet.acquire(), await fleet.acquire()
        assert first.lease is not None
        assert second.lease is not None
        _stopped(redis_server)
        try:
            await fleet.answered(first, 200, RateLimitHeaders(10, 9))  # Redis does not answer in time
        finally:
            _resume(redis_server)
        assert not fleet._usable()  # on its own budget for a while
        await fleet.no_answer(second)
        await _all_sent(fleet)
        assert await _leases(redis_url, token) == 0
    finally:
        await fleet.aclose()


async def test_a_name_abandoned_before_its_acquire_runs_is_granted_nothing(redis_url: str) -> None:
    """The give-back can reach Redis before the acquire it gives back (another connection): the acquire,
    when it runs, grants no lease; the name is forgotten a lease's time later."""
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", "t-gone", window_seconds=W, lease_seconds=5.0)
    fleet.fixed_now = 100.0
    try:
        kind, *_ = await fleet.run("abandon", "n1")
        assert kind == b"settled"
        kind, *_ = await fleet.run("acquire", "n1")
        assert kind == b"gone"
        assert await _leases(redis_url, "t-gone") == 0
        kind, *_ = await fleet.run("abandon", "n2")
        fleet.fixed_now = 105.0
        kind, *_ = await fleet.run("acquire", "n2")
        assert kind == b"ticket"
    finally:
        await fleet.aclose()


async def test_an_acquire_that_reaches_redis_again_after_its_give_back_is_granted_nothing(redis_url: str) -> None:
    """redis-py sends a command again after a timeout, so an acquire may run twice, before its give-back or
    after it. A copy never grants a second ticket (its lease would be no one's, holding a slot until it ran
    out, and the window's next caller would wait for it)."""
    fleet = RedisBudget(redis_url, "http://127.0.0.1/api", "t-twice", window_seconds=W)
    try:
        kind, first, *_ = await fleet.run("acquire", "n1")
        assert kind == b"ticket"
        kind, again, *_ = await fleet.run("acquire", "n1")  # both copies ran before the give-back: one ticket
        assert (kind, again) == (b"ticket", first)
        assert await _leases(redis_url, "t-twice") == 1
        kind, *_ = await fleet.run("abandon", "n1")
        kind, *_ = await fleet.run("acquire", "n1")  # a copy that runs after it: nothing
        assert kind == b"gone"
        assert await _leases(redis_url, "t-twice") == 0
    finally:
        await fleet.aclose()


async def test_an_interactive_caller_that_gives_up_lets_the_fleets_bulk_calls_go_at_once(redis_url: str) -> None:
    """While an interactive caller waits, the fleet's bulk callers wait behind it ("queue"); when it gives
    up (here cancelled), its mark goes at once and they are woken to wait for what they would have without
    it (the window's first answer), not left queued until the mark's time or their next poll."""
    token = f"token-{next(_tokens)}"
    web, batch = (
        RedisBudget(redis_url, "http://127.0.0.1/api", token, window_seconds=W, poll_seconds=60.0) for _ in range(2)
    )
    try:
        probe = await within(web.acquire())  # the window's first request, unanswered: others wait for it
        interactive = Caller(web)
        await interactive.reported("probe")
        bulk = Caller(batch, priority="bulk")
        await bulk.reported("queue")
        await interactive.cancelled()
        await bulk.reported("probe")
        await web.answered(probe, 200, RateLimitHeaders(10, 9))
        await batch.release(await within(bulk.task))
    finally:
        await Caller.cancel_all()
        for budget in (web, batch):
            await budget.aclose()
