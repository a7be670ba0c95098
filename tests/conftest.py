"""Shared fixtures: a client bound to the emulator (the ``wemasy_emulator`` fixture is the SDK's own plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.redis_server import RedisServer
from wemasy_async import NO_RETRIES, WemasyClient
from wemasy_async.testing import WemasyEmulator

#: A token distinctive enough that finding it in any text is a real leak.
TOKEN = "wm-tok-9f8e7d6c5b4a-SECRET"


@pytest.fixture
async def client(wemasy_emulator: WemasyEmulator) -> AsyncIterator[WemasyClient]:
    """A client that sends each call once, so every error surfaces as the server gave it."""
    async with WemasyClient(
        token=TOKEN,
        base_url=wemasy_emulator.base_url,
        window_seconds=wemasy_emulator.window_seconds,
        retry=NO_RETRIES,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole run; it fails (never skips) when it cannot start."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied for this test."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url
