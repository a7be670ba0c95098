"""Clients that share a token's budget through a real Redis, against the emulator (5 requests per 0.5 s)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import pytest

from tests.conftest import TOKEN
from tests.helpers import FLEET_LIMIT, FLEET_WINDOW, at_fleet_pace, fleet_client
from tests.redis_server import RedisServer
from wemasy_async import BudgetEvent, ConfigurationError, RetryPolicy, WemasyClient
from wemasy_async.testing import WemasyEmulator

LIMIT, WINDOW = FLEET_LIMIT, FLEET_WINDOW
FAST_RETRIES = RetryPolicy(backoff_base=0.001)


@pytest.fixture
def emulator(wemasy_emulator: WemasyEmulator) -> WemasyEmulator:
    return at_fleet_pace(wemasy_emulator)


async def test_clients_sharing_redis_never_meet_a_429(emulator: WemasyEmulator, redis_url: str) -> None:
    """Three "processes" (clients with budgets of their own, sharing only Redis) send 30 calls at once:
    exactly 30 requests, no 429, and the windows are filled."""

    async def process(name: str) -> None:
        async with fleet_client(emulator, redis_url, name) as client:
            await asyncio.gather(*(client.sendcloud.status() for _ in range(10)))

    await asyncio.gather(*(process(f"p{i}") for i in range(3)))
    statuses = [r.status for r in emulator.requests]
    assert statuses == [200] * 30
    span = emulator.requests[-1].at - emulator.requests[0].at
    assert span >= (30 // LIMIT - 1) * WINDOW - 0.01  # no faster than the windows allow


async def test_the_view_is_the_fleets_and_the_counters_this_processs(emulator: WemasyEmulator, redis_url: str) -> None:
    """client.rate_limit shows the budget as Redis holds it for the whole fleet, and this client's counts."""
    async with fleet_client(emulator, redis_url, "a") as a, fleet_client(emulator, redis_url, "b") as b:
        await asyncio.gather(*(a.sendcloud.status() for _ in range(3)))
        await b.sendcloud.status()
        view = b.rate_limit
    assert view.limit == LIMIT
    assert view.remaining == 1  # four of five used, three of them by the other client
    assert view.sent == 1


async def test_a_client_outside_redis_costs_at_most_one_429_per_window(
    emulator: WemasyEmulator, redis_url: str
) -> None:
    """Another program spends 3 of the window before the fleet starts: nothing lost, at most one 429."""
    emulator.spend(TOKEN, 3)
    async with fleet_client(emulator, redis_url, "a") as a, fleet_client(emulator, redis_url, "b") as b:
        await asyncio.gather(*(c.sendcloud.status() for c in (a, b) for _ in range(6)))
    statuses = [r.status for r in emulator.requests]
    assert statuses.count(200) == 12
    assert statuses.count(429) <= 2  # two windows at most, one each


async def test_redis_going_away_fails_no_call_and_its_return_is_noticed(
    emulator: WemasyEmulator, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops mid-run: calls go on with the process's own budget (one warning, one event); when it
    is back, the budget is the fleet's again."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    events: list[object] = []
    async with fleet_client(emulator, redis_url, "a", on_event=events.append) as client:
        await client.sendcloud.status()
        redis_server.stop()
        try:
            results = await asyncio.gather(*(client.sendcloud.status() for _ in range(8)))
            assert len(results) == 8
        finally:
            redis_server.start()
        client._budget._down_until = 0.0  # type: ignore[attr-defined]  # try Redis now, not in 5 s
        await client.sendcloud.status()
        budget_events = [e for e in events if isinstance(e, BudgetEvent)]
        assert [e.backend for e in budget_events] == ["local", "redis"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(str(redis_server.port) in r.getMessage() for r in warnings)
    assert [r.status for r in emulator.requests] == [200] * len(emulator.requests)


async def test_a_redis_url_with_a_password_never_shows_it(emulator: WemasyEmulator) -> None:
    """The Redis password stays out of reprs and errors; a bad URL says what is wrong."""
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, redis_url="redis://:hunter2-secret@127.0.0.1:1/0"
    ) as client:
        assert "hunter2" not in repr(client._budget)
    with pytest.raises(ConfigurationError, match="redis://") as info:
        WemasyClient(token=TOKEN, base_url=emulator.base_url, redis_url="http://:hunter2-secret@127.0.0.1:1/0")
    assert "hunter2" not in str(info.value)


def test_a_redis_url_without_the_redis_extra_says_what_to_install(
    emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-py installed, a redis_url is a ConfigurationError naming the extra to install."""
    monkeypatch.delitem(sys.modules, "wemasy_async.budgets._redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    with pytest.raises(ConfigurationError, match=r"wemasy-async\[redis\]"):
        WemasyClient(token=TOKEN, base_url=emulator.base_url, redis_url="redis://127.0.0.1:1/0")


async def test_redis_url_comes_from_the_environment(
    emulator: WemasyEmulator, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WEMASY_REDIS_URL configures a fleet without code changes."""
    monkeypatch.setenv("WEMASY_REDIS_URL", redis_url)
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
        await client.sendcloud.status()
        assert type(client._budget).__name__ == "RedisBudget"


async def test_scripts_forgotten_by_redis_are_loaded_again(emulator: WemasyEmulator, redis_url: str) -> None:
    """A Redis that lost its scripts (restart, failover: NOSCRIPT) gets them again; nothing falls back."""
    import redis.asyncio as aioredis

    events: list[object] = []
    async with fleet_client(emulator, redis_url, "a", on_event=events.append) as client:
        await client.sendcloud.status()
        admin = aioredis.Redis.from_url(redis_url)
        await admin.script_flush()
        await admin.aclose()
        await client.sendcloud.status()
    assert not [e for e in events if isinstance(e, BudgetEvent)]


async def test_a_redis_that_stops_answering_is_not_waited_for(
    emulator: WemasyEmulator, redis_server: RedisServer, redis_url: str
) -> None:
    """Redis hangs (its process frozen): the call is answered while it still hangs, on the process's own
    budget, and the fleet's budget is back once Redis answers again."""
    events: list[object] = []
    async with fleet_client(emulator, redis_url, "a", on_event=events.append) as client:
        await client.sendcloud.status()
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            integration = await client.sendcloud.status()  # done while Redis cannot answer
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert integration.active is True
        client._budget._down_until = 0.0  # type: ignore[attr-defined]  # try Redis now, not in 5 s
        await client.sendcloud.status()
    assert [e.backend for e in events if isinstance(e, BudgetEvent)] == ["local", "redis"]
    assert [r.status for r in emulator.requests] == [200, 200, 200]


async def test_a_redis_restarted_between_calls_is_used_again_at_once(
    emulator: WemasyEmulator, redis_server: RedisServer, redis_url: str
) -> None:
    """Redis restarts while the client is idle: its pooled connections are dead, but the next call makes
    a new one and stays on the fleet's budget (no fall-back for a connection that merely went stale)."""
    events: list[object] = []
    async with fleet_client(emulator, redis_url, "a", on_event=events.append) as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(3)))
        redis_server.stop()
        redis_server.start()
        await asyncio.gather(*(client.sendcloud.status() for _ in range(3)))
        assert client.rate_limit.sent == 6
    assert not [e for e in events if isinstance(e, BudgetEvent)]


async def test_this_processs_counters_survive_a_fall_back(
    emulator: WemasyEmulator, redis_server: RedisServer, redis_url: str
) -> None:
    """client.rate_limit counts every request of this process, whichever budget granted it."""
    async with fleet_client(emulator, redis_url, "a") as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(2)))
        redis_server.stop()
        try:
            await asyncio.gather(*(client.sendcloud.status() for _ in range(3)))
            assert client.rate_limit.sent == 5
        finally:
            redis_server.start()
