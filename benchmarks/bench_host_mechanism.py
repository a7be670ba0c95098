"""The host budget's mechanism, measured: one atomic step on a small shared record, three ways, and the step
as the host budget takes it, beside the in-process budget.

Each raw step locks, reads the ~200-byte state, writes it back and unlocks: an ``fcntl.flock`` over an
mmap'd struct record; ``flock`` with ``pread``/``pwrite``; SQLite in WAL mode (``BEGIN IMMEDIATE``, a select,
an update, a commit). Then a request's two steps (``try_acquire`` and ``answered``) on each budget, and the
CPU a spawned process burns while it waits a whole window for the host's budget: for the window's end
(another process spent it), and for another process's answer (the window's first request, held); and how
soon a waiter is served once the process holding that request is SIGKILLed.

    python benchmarks/bench_host_mechanism.py [--steps 20000] [--window 10] [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import mmap
import multiprocessing
import multiprocessing.connection
import os
import signal
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import machine, record

from wemasy_async import RateLimitHeaders
from wemasy_async.budgets import Budget, RateLimitBudget
from wemasy_async.budgets._host import HostBudget

RECORD = struct.Struct("<" + "q" * 20 + "d" * 5)
VALUES = (*range(20), 1.0, 2.0, 3.0, 4.0, 5.0)
WAITS = {
    "window": "for the window's end (another process spent it)",
    "answer": "for another process's answer (the window's first request, answered after a window)",
}


def per_step(step: Callable[[], object], steps: int) -> float:
    """Microseconds per step, the best of five runs (the machine is shared)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - started) / steps * 1e6)
    return best


def raw_steps(directory: Path, steps: int) -> dict[str, float]:
    fd = os.open(directory / "record", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4096)
    mapped = mmap.mmap(fd, 4096)
    RECORD.pack_into(mapped, 0, *VALUES)

    def on_mmap() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = RECORD.pack(*RECORD.unpack_from(mapped, 0))
        mapped[: RECORD.size] = data
        zlib.crc32(data)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def on_pread() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, RECORD.pack(*RECORD.unpack(os.pread(fd, RECORD.size, 0))), 0)
        fcntl.flock(fd, fcntl.LOCK_UN)

    db = sqlite3.connect(directory / "record.db", isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")
    db.execute("create table state(k integer primary key, v blob)")
    db.execute("insert into state values(1, ?)", (RECORD.pack(*VALUES),))

    def on_sqlite() -> None:
        db.execute("begin immediate")
        (value,) = db.execute("select v from state where k = 1").fetchone()
        db.execute("update state set v = ? where k = 1", (value,))
        db.execute("commit")

    try:
        return {
            "flock + mmap'd struct record (+ CRC-32)": per_step(on_mmap, steps),
            "flock + pread/pwrite": per_step(on_pread, steps),
            "SQLite WAL: BEGIN IMMEDIATE, select, update, commit": per_step(on_sqlite, steps),
        }
    finally:
        db.close()
        mapped.close()
        os.close(fd)


async def request_steps(budget: Budget[object], steps: int) -> float:
    """Microseconds per request on ``budget``: a ticket on the fast path, then its answer."""
    limit = 10**12
    counter = iter(range(10**12))

    async def rounds() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            ticket = budget.try_acquire()
            assert ticket is not None
            await budget.answered(ticket, 200, RateLimitHeaders(limit, limit - 1 - next(counter)))
        return (time.perf_counter() - started) / steps * 1e6

    await rounds()  # warm up
    return min([await rounds() for _ in range(5)])


def wait_in_child(directory: str, window: float, conn: multiprocessing.connection.Connection) -> None:
    """Wait for a ticket of the host's budget; send back (CPU seconds, wall seconds) of the wait."""

    async def run() -> None:
        budget = HostBudget("http://bench/api", "t", window_seconds=window, directory=Path(directory))
        conn.send("ready")
        cpu, wall = time.process_time(), time.monotonic()
        await budget.acquire()
        conn.send((time.process_time() - cpu, time.monotonic() - wall))

    asyncio.run(run())


def hold_in_child(directory: str, conn: multiprocessing.connection.Connection) -> None:
    """Take the window's first ticket (leases of an hour), say so, and hold it until killed."""
    budget = HostBudget("http://bench/api", "k", window_seconds=60.0, lease_seconds=3600.0, directory=Path(directory))
    conn.send(budget.try_acquire() is not None)
    while True:
        time.sleep(60)


async def slots_back_after_kill(directory: Path) -> float:
    """Seconds from SIGKILLing a process that holds the window's first request (leases of an hour) until a
    caller here, waiting for that request's answer, is served."""
    spawn = multiprocessing.get_context("spawn")
    mine, theirs = spawn.Pipe()
    holder = spawn.Process(target=hold_in_child, args=(str(directory), theirs))
    holder.start()
    try:
        assert await asyncio.to_thread(mine.recv) is True
        budget = HostBudget("http://bench/api", "k", window_seconds=60.0, lease_seconds=3600.0, directory=directory)
        waiting = asyncio.ensure_future(budget.acquire())
        await asyncio.sleep(0.5)  # it is waiting (a benchmark, not a test: a pause is fine here)
        assert not waiting.done()
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.wait_for(waiting, 30)
        return time.monotonic() - killed
    finally:
        holder.join(10)


async def waiting_cpu(directory: Path, window: float, wait: str) -> tuple[float, float]:
    """CPU and wall seconds of a process that waits for ``wait`` (``window``: the window's end; ``answer``:
    another process's answer, given after ``window`` seconds)."""
    budget = HostBudget("http://bench/api", "t", window_seconds=window, directory=directory)
    probe = budget.try_acquire()
    assert probe is not None
    if wait == "window":
        await budget.answered(probe, 200, RateLimitHeaders(2, 1))
        ticket = budget.try_acquire()
        assert ticket is not None
        await budget.answered(ticket, 200, RateLimitHeaders(2, 0))
    mine, theirs = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(target=wait_in_child, args=(str(directory), window, theirs))
    child.start()
    try:
        assert await asyncio.to_thread(mine.recv) == "ready"
        if wait == "answer":
            await asyncio.sleep(window)
            await budget.answered(probe, 200, RateLimitHeaders(2, 1))
        if not await asyncio.to_thread(mine.poll, 3 * window + 10):
            raise RuntimeError("the waiting process was never served")
        cpu, wall = mine.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    return cpu, wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--window", type=float, default=10.0, help="the window a process waits out")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        raw = raw_steps(directory, args.steps)
        process = await request_steps(RateLimitBudget(3600.0), args.steps // 4)
        host = await request_steps(
            HostBudget("http://bench/api", "t", window_seconds=3600.0, directory=directory), args.steps // 4
        )
        waits = {}
        for wait in ("window", "answer"):
            (directory / wait).mkdir()
            waits[wait] = await waiting_cpu(directory / wait, args.window, wait)
        (directory / "killed").mkdir()
        killed = await slots_back_after_kill(directory / "killed")
    lines = [
        "| one step on shared state | us per step (best of 5) |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in raw.items()),
        "",
        "| a request's two steps (try_acquire, answered) | us per request (best of 5) |",
        "|---|---|",
        f"| in-process budget | {process:.2f} |",
        f"| host budget (flock + mmap) | {host:.2f} |",
        "",
        f"The host budget adds {host - process:.1f} us per request (target: at most 20 us).",
        "",
        "| a process waits for the host's budget | wall s | CPU s | CPU / wall |",
        "|---|---|---|---|",
        *(
            f"| {WAITS[wait]} ({args.window:g} s window) | {wall:.2f} | {cpu:.4f} | {cpu / wall:.3%} |"
            for wait, (cpu, wall) in waits.items()
        ),
        "",
        "Target: a waiting process burns < 1% CPU: "
        + ("met." if all(cpu / wall < 0.01 for cpu, wall in waits.values()) else "MISSED."),
        "",
        f"A process holding the window's first request (leases of an hour) is SIGKILLed: a caller of another "
        f"process waiting for its answer is served {killed:.3f} s later (target: within 1 s: "
        f"{'met' if killed <= 1.0 else 'MISSED'}).",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record(
            "host-mechanism",
            "## Host budget: the cost of one step on shared state\n\n"
            f"`python benchmarks/bench_host_mechanism.py --steps {args.steps} --window {args.window:g}` "
            f"({machine()})\n\n{table}\n",
        )


if __name__ == "__main__":
    asyncio.run(main())
