"""A worker that pushes a batch with a journal, and carries on where it stopped when it is started again.

Run it under a supervisor that restarts it (systemd's Restart=, a Kubernetes Job, a queue worker): killed
half-way (a deploy, an OOM kill, SIGKILL), the same command started again sends only what its journal does
not show as answered. Ids of the chunks in flight at the kill (at most one per request in flight) are sent
again: the server reports those it had already queued as skipped, so no order is shipped twice. The result
it prints at the end is the whole batch's, as if it had run once.

    export WEMASY_API_TOKEN=...          # and WEMASY_BASE_URL, WEMASY_WINDOW_SECONDS for the emulator
    python examples/resume_worker.py order_ids.txt push.sqlite [--chunk-size 500]

It prints a line per chunk on stdout and, at the end, the batch's places as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from wemasy_async import WemasyClient, read_journal


async def push(ids: list[int], journal: Path, chunk_size: int | None) -> None:
    # The pid in User-Agent tells this run's requests apart in the server's log (and the emulator's).
    async with WemasyClient(user_agent=f"resume-worker/{os.getpid()}") as client:
        stream = client.sendcloud.iter_push_shipments(ids, journal=journal, chunk_size=chunk_size)
        async with stream:
            async for chunk in stream:
                print(f"chunk: {chunk.summary.total_orders} accepted, {stream.done}/{stream.total} done", flush=True)
            result = stream.result()
    details = result.details
    places = {
        "accepted": sorted(int(i) for i in (*details.new_orders, *details.retry_orders, *details.skipped_orders)),
        "skipped": sorted(int(i) for i in result.details.skipped_orders),
        "rejected": sorted(rejection.order_id for rejection in result.rejected),
        "retry_later": sorted(result.retry_order_ids),
    }
    print(json.dumps(places), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids_file", type=Path, help="order ids, one per line or separated by spaces or commas")
    parser.add_argument("journal", type=Path, help="the batch's journal (SQLite); made on the first run")
    parser.add_argument("--chunk-size", type=int, default=None, help="ids per request, at most (default: learned)")
    args = parser.parse_args()
    words = args.ids_file.read_text(encoding="utf-8").replace(",", " ").split()
    bad = next((word for word in words if not word.isdigit()), None)
    if bad is not None:
        parser.error(f"{args.ids_file}: {bad!r} is not an order id")
    ids = [int(word) for word in words]
    if args.journal.exists():
        before = read_journal(args.journal)  # what the runs before this one settled
        print(f"resuming: {before.accepted} accepted, {before.to_send} to send, run {before.runs + 1}", flush=True)
    asyncio.run(push(ids, args.journal, args.chunk_size))


if __name__ == "__main__":
    main()
