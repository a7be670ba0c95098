"""The host budget beyond the contract suite: real processes (spawned) on one file, a holder killed, a fork,
and every way the file can be unusable (the process's own budget then, one log line, no failed call)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import host_child
from tests.budget_helpers import HANG, Caller, Hung, within
from tests.conftest import TOKEN
from wemasy_async import RateLimitBudget, RateLimitHeaders, WemasyClient
from wemasy_async._errors import ConfigurationError
from wemasy_async._protocol import normalize_base_url
from wemasy_async.budgets import HostBudget
from wemasy_async.budgets._host import FORMAT_VERSION, MAGIC, budget_directory, budget_file
from wemasy_async.testing import WemasyEmulator

LIMIT, WINDOW = 5, 0.5
spawn = multiprocessing.get_context("spawn")
#: Run once in CI, on the coverage Python (noxfile.py): other processes on the host, not this Python (the
#: budget's steps run on every Python in the contract suite).
pytestmark = pytest.mark.once


@pytest.fixture
def emulator(wemasy_emulator: WemasyEmulator) -> WemasyEmulator:
    wemasy_emulator.limit, wemasy_emulator.window_seconds = LIMIT, WINDOW
    return wemasy_emulator


@pytest.fixture
def processes() -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """Processes a test starts; any still running at its end are killed."""
    started: list[multiprocessing.process.BaseProcess] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


@pytest.fixture(autouse=True)
def host_budget_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients here (and the processes these tests spawn) ask for the host's budget: it is not the default."""
    monkeypatch.setenv("WEMASY_BUDGET", "host")


def _receive(conn: multiprocessing.connection.Connection) -> object:
    if not conn.poll(HANG):
        raise Hung(f"nothing from the other process after {HANG} s")
    return conn.recv()


async def received(conn: multiprocessing.connection.Connection) -> object:
    """What the other process sends next (a thread waits for it, never longer than HANG: a failing test ends)."""
    return await asyncio.to_thread(_receive, conn)


async def ended(process: multiprocessing.process.BaseProcess) -> int:
    """The process's exit code, once it has ended; Hung if it has not after HANG seconds."""
    await asyncio.to_thread(process.join, HANG)
    if process.exitcode is None:
        raise Hung(f"the process still runs after {HANG} s")
    return process.exitcode


def host_file(base_url: str) -> Path:
    return budget_file(budget_directory(), normalize_base_url(base_url, allow_insecure_http=True), TOKEN)


def budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "budget" in r.getMessage()]


async def test_processes_of_one_host_share_the_budget_with_no_429(
    emulator: WemasyEmulator, processes: list[multiprocessing.process.BaseProcess]
) -> None:
    """Three spawned processes with WEMASY_BUDGET=host and nothing else in common send 8 calls each at
    once: exactly 24 requests reach the server, none of them refused."""
    start, ready = spawn.Event(), spawn.Queue()
    for _ in range(3):
        args = (emulator.base_url, 8, WINDOW, ready, start)
        processes.append(spawn.Process(target=host_child.make_calls, args=args))
        processes[-1].start()
    for _ in processes:  # each has its client, on the host's budget
        assert await asyncio.to_thread(ready.get, timeout=HANG) == "HostBudget"
    start.set()
    for process in processes:
        assert await ended(process) == 0
    assert [r.status for r in emulator.requests] == [200] * 24


async def test_a_killed_holders_tickets_come_back_at_once(
    tmp_path: Path, processes: list[multiprocessing.process.BaseProcess]
) -> None:
    """Another process holds the window's first request (leases of an hour) and is SIGKILLed: a caller
    here, waiting for that request's answer, is served once the holder is gone (before its parent has
    reaped it), and only its own ticket is in flight then."""
    mine, theirs = spawn.Pipe()
    holder = spawn.Process(target=host_child.hold_a_ticket, args=(str(tmp_path), theirs))
    processes.append(holder)
    holder.start()
    assert await received(mine) is True
    budget = host_child.budget(str(tmp_path))
    assert budget.view().in_flight == 1
    caller = Caller(budget)
    await caller.reported("probe")
    assert budget.try_acquire() is None
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    ticket = await within(caller.task)  # the holder is not reaped yet (a zombie): gone all the same
    assert await ended(holder) == -signal.SIGKILL
    assert budget.view().in_flight == 1
    await budget.release(ticket)


async def test_an_interactive_caller_of_another_process_goes_before_bulk_ones_here(
    tmp_path: Path, processes: list[multiprocessing.process.BaseProcess]
) -> None:
    """Another process's interactive call waits for the window's first answer, and so does a bulk call
    here: the answer frees slots, and the other process's call is granted first, while the bulk one here
    waits; it is served once that call is answered."""
    budget = host_child.budget(str(tmp_path))
    probe = budget.try_acquire()
    assert probe is not None
    mine, theirs = spawn.Pipe()
    other = spawn.Process(target=host_child.wait_interactive, args=(str(tmp_path), theirs))
    processes.append(other)
    other.start()
    assert await received(mine) == "waiting"
    bulk = Caller(budget, priority="bulk")
    await bulk.reported()
    await budget.answered(probe, 200, RateLimitHeaders(10, 9))
    while (said := await received(mine)) != "granted":
        assert said == "waiting"
    assert not bulk.task.done()
    mine.send("answer")
    ticket = await within(bulk.task)
    await budget.release(ticket)
    assert await ended(other) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_is_a_holder_of_its_own(tmp_path: Path) -> None:
    """A child forked from a process using the budget takes a ticket and exits without settling it: the
    ticket was the child's (its pid), so the parent settles it as unanswered and goes on."""
    budget = host_child.budget(str(tmp_path))

    async def probe() -> None:
        ticket = budget.try_acquire()
        assert ticket is not None
        await budget.answered(ticket, 200, RateLimitHeaders(10, 9))

    asyncio.run(probe())
    pid = os.fork()
    if pid == 0:  # the child: one ticket, never settled
        os._exit(0 if budget.try_acquire() is not None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert budget.view().in_flight == 1  # the child's, counted until someone finds it gone
    # With the child's request in flight the ramp holds the next one: a caller that would wait finds the
    # holder gone, settles its ticket, and is granted.
    assert budget.try_acquire() is not None
    assert budget.view().in_flight == 1


async def test_a_damaged_file_means_the_processs_own_budget_with_one_log_line(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget file that is not one (garbage in it): the client uses the process's own budget, says so once,
    and every call succeeds."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    path = host_file(emulator.base_url)
    path.write_bytes(os.urandom(4096))
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as client:
        assert type(client._budget) is RateLimitBudget
        await asyncio.gather(*(client.sendcloud.status() for _ in range(8)))
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as client:
        await client.sendcloud.status()
    assert [r.status for r in emulator.requests] == [200] * 9
    (warning,) = budget_warnings(caplog)
    assert "damaged" in warning
    assert TOKEN not in caplog.text


async def test_a_file_damaged_while_in_use_means_the_processs_own_budget_from_then_on(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Something overwrites the file while the client uses it: the next step finds its state's checksum
    wrong, the client goes on with the state it had as its own budget (one log line), and no call fails."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    # A deadline, so that a budget misled by garbage (a gate closed for ages) fails the test, not hangs it.
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW, deadline=HANG) as client:
        assert isinstance(client._budget, HostBudget)
        await client.sendcloud.status()
        path = host_file(emulator.base_url)
        with path.open("r+b") as raw:
            raw.seek(32)  # the committed version and what follows: as if another program wrote there
            raw.write(os.urandom(512))
        await asyncio.gather(*(client.sendcloud.status() for _ in range(8)))
    assert [r.status for r in emulator.requests] == [200] * 9
    (warning,) = budget_warnings(caplog)
    assert "damaged" in warning


async def test_a_file_of_another_version_is_left_alone(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget file another version of the SDK made (another format): the client neither reads nor
    changes it; it uses the process's own budget, says why once, and its calls succeed."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    path = host_file(emulator.base_url)
    other = MAGIC + (FORMAT_VERSION + 1).to_bytes(4, "little") + bytes(4096)
    path.write_bytes(other)
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(3)))
    assert [r.status for r in emulator.requests] == [200] * 3
    (warning,) = budget_warnings(caplog)
    assert f"format {FORMAT_VERSION + 1}" in warning
    assert path.read_bytes() == other


async def test_a_directory_that_cannot_be_made_means_the_processs_own_budget(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """WEMASY_BUDGET_DIR names a directory that cannot be made (a file is in the way): one log line, the
    process's own budget, calls succeed."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("WEMASY_BUDGET_DIR", str(tmp_path / "a-file" / "budgets"))
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as client:
        assert type(client._budget) is RateLimitBudget
        await client.sendcloud.status()
    assert [r.status for r in emulator.requests] == [200]
    (warning,) = budget_warnings(caplog)
    assert "cannot make" in warning


async def test_a_directory_others_can_write_to_is_not_used(
    emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A budget directory other users may write to (someone could plant a file there) is not used."""
    caplog.set_level(logging.WARNING, logger="wemasy_async")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("WEMASY_BUDGET_DIR", str(shared))
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=WINDOW) as client:
        assert type(client._budget) is RateLimitBudget
        await client.sendcloud.status()
    (warning,) = budget_warnings(caplog)
    assert "not this user's alone" in warning


async def test_budget_process_keeps_each_process_on_its_own(
    emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default, budget="process" and WEMASY_BUDGET=process are the process's own budget and make no
    file; budget="host" and WEMASY_BUDGET=host are the host's (budget= wins over the environment); anything
    else is a ConfigurationError before any request."""
    monkeypatch.delenv("WEMASY_BUDGET")
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
        assert type(client._budget) is RateLimitBudget
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, budget="process") as client:
        assert type(client._budget) is RateLimitBudget
    assert not host_file(emulator.base_url).exists()
    monkeypatch.setenv("WEMASY_BUDGET", "process")
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
        assert type(client._budget) is RateLimitBudget
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, budget="host") as host:
            assert isinstance(host._budget, HostBudget)
    monkeypatch.setenv("WEMASY_BUDGET", "host")
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
        assert isinstance(client._budget, HostBudget)
        assert TOKEN not in repr(client._budget)
        assert TOKEN not in str(client._budget.path)
    with pytest.raises(ConfigurationError, match="'host' or 'process'"):
        WemasyClient(token=TOKEN, base_url=emulator.base_url, budget="hots")
    monkeypatch.setenv("WEMASY_BUDGET", "redis")
    with pytest.raises(ConfigurationError, match="WEMASY_BUDGET"):
        WemasyClient(token=TOKEN, base_url=emulator.base_url)
    assert emulator.requests == []


async def test_the_redis_budgets_stand_in_is_the_hosts(emulator: WemasyEmulator) -> None:
    """With redis_url and the host's budget asked for, while Redis is away the host's budget stands in (not
    the process's alone); by default, the process's."""
    async with WemasyClient(token=TOKEN, base_url=emulator.base_url, redis_url="redis://127.0.0.1:1/0") as client:
        assert isinstance(client._budget._local, HostBudget)  # type: ignore[attr-defined]
    async with WemasyClient(
        token=TOKEN, base_url=emulator.base_url, redis_url="redis://127.0.0.1:1/0", budget="process"
    ) as client:
        assert type(client._budget._local) is RateLimitBudget  # type: ignore[attr-defined]
