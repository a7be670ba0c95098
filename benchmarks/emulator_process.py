"""Run the emulator in a separate process, so its CPU does not count against the client being measured."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
from collections.abc import Callable, Iterator
from typing import Any

import attrs


@attrs.frozen
class Seen:
    """One request as the emulator process keeps it (with ``log_requests=True``)."""

    #: When it arrived; ``time.monotonic()`` seconds, which every process on the machine shares.
    at: float
    status: int | None
    #: The first word of its ``User-Agent`` (which worker sent it, when the workers say so).
    agent: str
    #: The request's path (which endpoint: a status call or a push).
    path: str = ""


@attrs.frozen
class ServerStats:
    """What the emulator process counted since it started."""

    #: When the throttle's windows began (monotonic seconds), in order.
    window_starts: list[float]
    #: Requests that reached the throttle: counted (allowed) and refused with a 429.
    allowed: int
    refused: int
    #: Every request, in arrival order (empty unless the emulator was started with ``log_requests=True``).
    log: list[Seen]

    @property
    def requests(self) -> int:
        return self.allowed + self.refused


def _serve(conn: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    from wemasy_async.testing import WemasyEmulator

    log_requests = bool(options.pop("log_requests", False))
    delay_seconds = float(options.pop("delay_seconds", 0.0))
    cpu = options.pop("cpu", None)
    if cpu is not None:  # the emulator on a core of its own (see pin_to_other_cores)
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        emulator = WemasyEmulator(**options)
        emulator.faults.delay_seconds = delay_seconds  # each answer that late: a network's round trip
        conn.send(await emulator.start())
        # The log of a million-id run is not needed here; keep the server's memory flat (or, when asked, keep
        # four small fields a request). The start of each of the throttle's windows is kept (one number a
        # window), and the requests the throttle counted and refused, for the parent to ask for.
        emulator.requests = _Compact() if log_requests else _Discard()
        starts: set[float] = set()
        counts = {"allowed": 0, "refused": 0}
        throttle, hit = emulator.throttle, emulator.throttle.hit

        def hit_and_note(key: str) -> Any:
            decision = hit(key)
            starts.add(throttle.window_started(key))
            counts["allowed" if decision.allowed else "refused"] += 1
            return decision

        throttle.hit = hit_and_note  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        while True:  # until the parent terminates the process
            question = await loop.run_in_executor(None, conn.recv)
            if question == "windows":
                conn.send(sorted(starts))
            elif question == "stats":
                log = list(emulator.requests) if isinstance(emulator.requests, _Compact) else []
                conn.send(ServerStats(sorted(starts), counts["allowed"], counts["refused"], log))

    asyncio.run(main())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


class _Compact(list):  # type: ignore[type-arg]
    """Keeps when each request arrived, its status, its sender's first User-Agent word and its path; nothing
    else."""

    def append(self, item: Any) -> None:
        agent = next((v for k, v in item.headers.items() if k.lower() == "user-agent"), "")
        super().append(Seen(item.at, item.status, agent.split(" ", 1)[0], item.path))


@contextlib.contextmanager
def emulator_in_subprocess(**options: Any) -> Iterator[str]:
    """Start a WemasyEmulator(**options) in its own process; yield its base URL; stop it after."""
    with emulator_with_windows_in_subprocess(**options) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def emulator_with_windows_in_subprocess(**options: Any) -> Iterator[tuple[str, Callable[[], list[float]]]]:
    """Like :func:`emulator_in_subprocess`; also yields a function that returns when the throttle's windows
    began (``time.monotonic()`` seconds, which every process on the machine shares)."""
    with emulator_with_stats_in_subprocess(**options) as (base_url, stats):
        yield base_url, lambda: stats().window_starts


@contextlib.contextmanager
def emulator_with_stats_in_subprocess(**options: Any) -> Iterator[tuple[str, Callable[[], ServerStats]]]:
    """Like :func:`emulator_in_subprocess`; also yields a function that returns the :class:`ServerStats`
    so far. ``log_requests=True`` (not an emulator option) keeps a :class:`Seen` for every request."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, options), daemon=True)
    process.start()

    def stats() -> ServerStats:
        parent.send("stats")
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not answer within 30 s")
        answer: ServerStats = parent.recv()
        return answer

    try:
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not start within 30 s")
        yield parent.recv(), stats
    finally:
        process.terminate()
        process.join(10)


def pin_to_other_cores() -> int | None:
    """Keep this process off one core and return that core, for the emulator (``cpu=`` option), where the
    platform allows it and the machine has at least two cores: then neither process's scheduling lands in
    the other's CPU figures, which makes a client's CPU per call repeat more closely between rounds."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    os.sched_setaffinity(0, set(cores[:-1]))
    return cores[-1]
