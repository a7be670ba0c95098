"""A fresh client process that makes two normal calls, then the adversarial one (see tests/body_memory.py).

Prints one JSON line: the peak resident memory (VmHWM) after the normal call and after the adversarial
one, in bytes, and what the adversarial call raised. The server runs in another process.

    python tests/body_client.py NORMAL_PORT ADVERSARIAL_PORT KIND   (KIND: status or push)
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys

from wemasy_async import WemasyClient, WemasyError


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


async def call(port: int, kind: str) -> str:
    async with WemasyClient(token="bench-token", base_url=f"http://127.0.0.1:{port}/api") as client:
        try:
            if kind == "push":
                result = await client.sendcloud.push_shipments(list(range(1, 2001)))
                return f"result: {len(result.failed)} failed"
            await client.sendcloud.status()
            return "ok"
        except WemasyError as exc:
            return type(exc).__name__


async def main() -> None:
    normal, adversarial, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    await call(normal, "status")
    await call(normal, "status")
    gc.collect()
    baseline = peak_rss()
    outcome = await call(adversarial, kind)
    print(json.dumps({"baseline": baseline, "peak": peak_rss(), "outcome": outcome}))


if __name__ == "__main__":
    asyncio.run(main())
