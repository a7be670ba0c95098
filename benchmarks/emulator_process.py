"""Run the emulator in a separate process, so its CPU does not count against the client being measured."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable, Iterator
from typing import Any


def _serve(conn: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    from wemasy_async.testing import WemasyEmulator

    async def main() -> None:
        emulator = WemasyEmulator(**options)
        conn.send(await emulator.start())
        # The log of a million-id run is not needed here; keep the server's memory flat. The start of each
        # of the throttle's windows is kept (one number a window), for the parent to ask for.
        emulator.requests = _Discard()
        starts: set[float] = set()
        throttle, hit = emulator.throttle, emulator.throttle.hit

        def hit_and_note(key: str) -> Any:
            decision = hit(key)
            starts.add(throttle.window_started(key))
            return decision

        throttle.hit = hit_and_note  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        while True:  # until the parent terminates the process
            if await loop.run_in_executor(None, conn.recv) == "windows":
                conn.send(sorted(starts))

    asyncio.run(main())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


@contextlib.contextmanager
def emulator_in_subprocess(**options: Any) -> Iterator[str]:
    """Start a WemasyEmulator(**options) in its own process; yield its base URL; stop it after."""
    with emulator_with_windows_in_subprocess(**options) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def emulator_with_windows_in_subprocess(**options: Any) -> Iterator[tuple[str, Callable[[], list[float]]]]:
    """Like :func:`emulator_in_subprocess`; also yields a function that returns when the throttle's windows
    began (``time.monotonic()`` seconds, which every process on the machine shares)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, options), daemon=True)
    process.start()

    def windows() -> list[float]:
        parent.send("windows")
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not answer within 30 s")
        starts: list[float] = parent.recv()
        return starts

    try:
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not start within 30 s")
        yield parent.recv(), windows
    finally:
        process.terminate()
        process.join(10)
