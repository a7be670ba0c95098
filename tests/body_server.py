"""A loopback HTTP server, run in its own process, that answers every request with one adversarial body.

It streams the body in 64 KiB writes (no body is held whole, the gzip bomb excepted: about 1 MB), so the
measured client is the only process whose memory grows. Used through tests/body_memory.py.

    python tests/body_server.py MODE   (prints the port on stdout, then serves until stdin closes)

MODE: ``normal`` (a small JSON status), ``html`` (200, 100 MB of HTML with its length), ``error`` (500,
20 MB of HTML, chunked), ``error-length`` (the same with its length), ``error-7`` (500, 7 MiB, chunked:
under the cap), ``bomb`` (200, 1 GiB of zeros gzipped to about 1 MB, ``Content-Encoding: gzip``).
"""

from __future__ import annotations

import asyncio
import sys
import zlib

MiB = 1024 * 1024
PIECE = 64 * 1024
STATUS_BODY = (
    b'{"error": false, "integration": {"credentials": {}, "id": "1", "is_active": "1", "is_connected": "1",'
    b' "created_at": "2026-01-05T09:30:00.000000Z", "updated_at": "2026-11-02T14:12:09.000000Z"}}'
)


def gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [compressor.compress(zeros) for _ in range(size // MiB)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def read_request(reader: asyncio.StreamReader) -> None:
    """One request: its head, and its body if it has a length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)


async def write_bomb(writer: asyncio.StreamWriter, bomb: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(bomb)
    )
    for start in range(0, len(bomb), PIECE):
        writer.write(bomb[start : start + PIECE])
        await writer.drain()


async def write_html(writer: asyncio.StreamWriter, mode: str) -> None:
    """A large HTML body in pieces: with its length, or chunked."""
    status, total = (b"200 OK", 100 * MiB) if mode == "html" else (b"500 Error", 20 * MiB)
    if mode == "error-7":
        total = 7 * MiB
    chunked = mode in ("error", "error-7")
    total -= total % (PIECE - 2)
    if not chunked:
        writer.write(b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % (status, total))
    else:
        writer.write(b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
    piece = b"<p>" + b"x" * (PIECE - 10) + b"</p>\n"
    sent = 0
    while sent < total:
        if not chunked:
            writer.write(piece)
        else:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")


async def write_answer(writer: asyncio.StreamWriter, mode: str, bomb: bytes) -> None:
    if mode == "normal":
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(STATUS_BODY) + STATUS_BODY
        )
    elif mode == "bomb":
        await write_bomb(writer, bomb)
    else:
        await write_html(writer, mode)
    await writer.drain()


async def main(mode: str) -> None:
    bomb = gzip_bomb(1024 * MiB) if mode == "bomb" else b""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                await write_answer(writer, mode, bomb)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # serve until the parent closes our stdin
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
