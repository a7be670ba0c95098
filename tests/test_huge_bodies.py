"""Huge answers (a long HTML page, big 500s, a gzip bomb) cost memory bounded by the body cap, in a fresh process.

Each case runs the client in its own process against a server in another (tests/body_memory.py) and
reads the client's peak resident memory; the normal calls before it are the baseline. Also: what the
transport inflates itself (gzip, deflate) still decodes, and what it did not ask for is refused.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import aiohttp.web
import pytest

from tests.body_memory import body_server, measure
from wemasy_async import InvalidResponseError, WemasyClient
from wemasy_async._transport import EXCERPT_BYTES, MAX_BODY_BYTES

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def normal_port() -> Iterator[int]:
    with body_server("normal") as port:
        yield port


@pytest.mark.parametrize(
    ("mode", "kind", "bound"),
    [
        # a length past the cap is refused before the body is read
        ("html", "status", 4 * MiB),  # 200, 100 MB of HTML
        ("error-length", "push", 4 * MiB),  # every chunk of the push answered 500 with 20 MB
        # inflated a bounded step at a time, up to the cap and no further
        ("bomb", "status", MAX_BODY_BYTES + 4 * MiB),  # 1 GiB of zeros, gzipped to 1 MB
        # no length: each of the push's 4 concurrent chunks may hold up to the cap
        ("error", "push", 4 * MAX_BODY_BYTES + 8 * MiB),
    ],
)
@pytest.mark.once  # a client in another process, its peak memory measured: not this Python's code path
def test_a_huge_answer_costs_memory_bounded_by_the_cap(normal_port: int, mode: str, kind: str, bound: int) -> None:
    result = measure(mode, kind, normal_port)
    assert result.outcome == ("InvalidResponseError" if kind == "status" else "result: 4 failed")
    assert result.rise < bound, f"{mode}: peak memory rose {result.rise / MiB:.1f} MiB"


async def _serve(body: bytes, encoding: str) -> aiohttp.web.AppRunner:
    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        assert request.headers["Accept-Encoding"] == "gzip, deflate"
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        return aiohttp.web.Response(body=body, headers=headers)

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


STATUS = (
    b'{"error": false, "integration": {"credentials": {}, "id": "1", "is_active": "1", "is_connected": "1",'
    b' "created_at": "2026-01-05T09:30:00.000000Z", "updated_at": "2026-11-02T14:12:09.000000Z"}}'
)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(STATUS)),
        ("deflate", zlib.compress(STATUS)),
        ("deflate", _raw_deflate(STATUS)),  # deflate without its zlib header, as some servers send it
    ],
)
async def test_a_compressed_answer_is_inflated(encoding: str, body: bytes) -> None:
    runner = await _serve(body, encoding)
    port = runner.addresses[0][1]
    try:
        async with WemasyClient(token="t", base_url=f"http://127.0.0.1:{port}/api") as client:
            integration = await client.sendcloud.status()
        assert integration.is_active == "1"
        # a caller's session that inflates by itself gets the same
        async with aiohttp.ClientSession() as session:
            async with WemasyClient(token="t", base_url=f"http://127.0.0.1:{port}/api", session=session) as client:
                assert (await client.sendcloud.status()).is_active == "1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("br", b"\x0b\x02\x80" + STATUS, "encoded as 'br', which was not asked for"),
        ("gzip", b"\x1f\x8b not gzip", "gzip encoding is damaged"),
        ("gzip", gzip.compress(b"<html>" + b"x" * (MAX_BODY_BYTES + 1)), "larger than 8 MiB"),
    ],
)
async def test_an_answer_that_cannot_be_inflated_within_the_cap_is_refused(
    encoding: str, body: bytes, message: str
) -> None:
    runner = await _serve(body, encoding)
    port = runner.addresses[0][1]
    try:
        async with WemasyClient(token="t", base_url=f"http://127.0.0.1:{port}/api") as client:
            with pytest.raises(InvalidResponseError, match=message) as caught:
                await client.sendcloud.status()
        assert len(caught.value.raw_text) <= EXCERPT_BYTES
        if message.startswith("larger"):
            assert caught.value.raw_text.startswith("<html>xxx")
    finally:
        await runner.cleanup()


async def test_a_refused_answer_drops_its_connection_rather_than_draining_it() -> None:
    """The unread rest of a refused body is never read: its connection is closed, and the next call opens one."""
    peers: list[object] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if len(peers) == 1:  # a body past the cap, with its length
            return aiohttp.web.Response(body=b"<html>" + b"x" * MAX_BODY_BYTES, content_type="text/html")
        return aiohttp.web.Response(body=STATUS, content_type="application/json")

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with WemasyClient(token="t", base_url=f"http://127.0.0.1:{port}/api") as client:
            with pytest.raises(InvalidResponseError, match="larger than 8 MiB"):
                await client.sendcloud.status()
            assert (await client.sendcloud.status()).is_active == "1"
        assert len(peers) == 2
        assert peers[0] != peers[1]
    finally:
        await runner.cleanup()
