"""A batch push with a journal, run as its own process by tests/test_journal.py, which kills it with SIGKILL.

It prints ``ready`` once the journal is open, then one line per chunk the stream yields (a JSON list of the
ids that chunk settled: accepted or rejected), then ``done``. With ACK 1 it waits, after each line, for
a line on stdin, blocking its event loop meanwhile: everything stands still until the parent answers or
kills it, so the kill lands at a known point, with chunks in flight. With ACK 0 it runs freely and the
kill lands wherever it is.

    python tests/journal_child.py BASE_URL JOURNAL FIRST LAST CHUNK_SIZE CONCURRENCY AGENT ACK
"""

from __future__ import annotations

import asyncio
import json
import sys

from wemasy_async import WemasyClient


async def main(
    base_url: str, journal: str, first: int, last: int, chunk_size: int, concurrency: int, agent: str, ack: bool
) -> None:
    # The token comes from WEMASY_API_TOKEN; the agent names this run in the emulator's request log.
    async with WemasyClient(base_url=base_url, user_agent=agent) as client:
        stream = client.sendcloud.iter_push_shipments(
            range(first, last + 1), chunk_size=chunk_size, max_concurrency=concurrency, journal=journal
        )
        print("ready", flush=True)
        async with stream:
            async for chunk in stream:
                settled = [*chunk.details.new_orders, *chunk.details.retry_orders, *chunk.details.skipped_orders]
                settled += [str(r.order_id) for r in chunk.rejected]
                print(json.dumps([int(x) for x in settled]), flush=True)
                if ack:
                    sys.stdin.readline()  # blocks the loop on purpose: see the module's doc
    print("done", flush=True)


if __name__ == "__main__":
    url, path, low, high, size, workers, name, wait = sys.argv[1:9]
    asyncio.run(main(url, path, int(low), int(high), int(size), int(workers), name, wait == "1"))
