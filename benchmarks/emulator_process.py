"""Run the emulator in a separate process, so its CPU does not count against the client being measured."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
from collections.abc import Iterator
from typing import Any


def _serve(conn: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    from wemasy_async.testing import WemasyEmulator

    async def main() -> None:
        emulator = WemasyEmulator(**options)
        conn.send(await emulator.start())
        # The log of a million-id run is not needed here; keep the server's memory flat.
        emulator.requests = _Discard()
        await asyncio.Event().wait()  # until the parent terminates the process

    asyncio.run(main())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


@contextlib.contextmanager
def emulator_in_subprocess(**options: Any) -> Iterator[str]:
    """Start a WemasyEmulator(**options) in its own process; yield its base URL; stop it after."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, options), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not start within 30 s")
        yield parent.recv()
    finally:
        process.terminate()
        process.join(10)
