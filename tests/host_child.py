"""Processes of tests/test_host_budget.py, started with spawn: each is another process of the host, on the
same budget file as the test (its directory is passed in; the token is the test's)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import time
from pathlib import Path

from tests.conftest import TOKEN
from wemasy_async import RateLimitHeaders, WemasyClient
from wemasy_async.budgets import HostBudget

BASE_URL = "http://127.0.0.1:1/api"
#: No lease runs out during a test: only a holder's death can give its tickets back.
LEASE = 3600.0


def budget(directory: str) -> HostBudget:
    return HostBudget(BASE_URL, TOKEN, window_seconds=3600.0, lease_seconds=LEASE, directory=Path(directory))


def hold_a_ticket(directory: str, conn: multiprocessing.connection.Connection) -> None:
    """Take a ticket, say so, and hold it until killed."""
    ticket = budget(directory).try_acquire()
    conn.send(ticket is not None)
    while True:
        time.sleep(60)


def wait_interactive(directory: str, conn: multiprocessing.connection.Connection) -> None:
    """An interactive call waits (the test holds the window's first request); once granted it says so, waits
    for the test's word, then answers (one slot of 10 used besides the probe) and ends."""

    async def run() -> None:
        host = budget(directory)

        def on_wait(event: object) -> None:
            conn.send("waiting")

        ticket = await host.acquire(on_wait)
        conn.send("granted")
        await asyncio.to_thread(conn.recv)
        await host.answered(ticket, 200, RateLimitHeaders(10, 8))

    asyncio.run(run())


def make_calls(
    base_url: str,
    calls: int,
    window: float,
    ready: multiprocessing.Queue[str],
    start: multiprocessing.synchronize.Event,
) -> None:
    """``calls`` status calls at once on the budget WEMASY_BUDGET names (its type is sent to ``ready``), once
    the test says go."""

    async def run() -> None:
        async with WemasyClient(token=TOKEN, base_url=base_url, window_seconds=window) as client:
            ready.put(type(client._budget).__name__)
            start.wait()
            await asyncio.gather(*(client.sendcloud.status() for _ in range(calls)))

    asyncio.run(run())
