"""Batch benchmark: push 1,000,000 order ids and measure the client's CPU seconds and peak memory.

The emulator runs in its own process (limit and ids per request too high to matter). Each client runs
in a fresh process of its own, so its peak RSS is its own:
  sdk        client.sendcloud.push_shipments(<a generator of N ids>): validate, de-duplicate, chunk,
             send 4 at a time, merge into one result with every id accounted for.
  bare loop  aiohttp posting the same chunks of a prepared list, 4 at a time, keeping each response.

    python benchmarks/bench_batch.py [--ids 1000000] [--chunk-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from emulator_process import emulator_in_subprocess
from results import machine, record

from wemasy_async import WemasyClient

PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"
TOKEN = "bench-token"
CONCURRENCY = 4


async def sdk(base_url: str, ids: int, chunk_size: int) -> str:
    async with WemasyClient(token=TOKEN, base_url=base_url) as client:
        result = await client.sendcloud.push_shipments(
            (i for i in range(1, ids + 1)), chunk_size=chunk_size, max_concurrency=CONCURRENCY
        )
    accounted = result.summary.total_orders + len(result.rejected) + len(result.failed_order_ids)
    return f"{result.summary.new_orders} new, {result.requests} requests, {accounted} ids accounted for"


async def bare_loop(base_url: str, ids: int, chunk_size: int) -> str:
    order_ids = list(range(1, ids + 1))
    chunks = [order_ids[i : i + chunk_size] for i in range(0, ids, chunk_size)]
    slots = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(chunk: list[int]) -> dict[str, object]:
            async with slots, session.post(base_url + PUSH, json={"create_label": False, "order_ids": chunk}) as r:
                data: dict[str, object] = await r.json()
                return data

        answers = await asyncio.gather(*(one(chunk) for chunk in chunks))
    new = sum(a["summary"]["new_orders"] for a in answers)  # type: ignore[index]
    return f"{new} new, {len(answers)} requests"


def run_client(name: str, base_url: str, ids: int, chunk_size: int) -> dict[str, object]:
    """Run one client in this process and report its figures as JSON (the child side)."""
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    outcome = asyncio.run({"sdk": sdk, "bare": bare_loop}[name](base_url, ids, chunk_size))
    return {
        "cpu": time.process_time() - started_cpu,
        "wall": time.perf_counter() - started_wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "outcome": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--client", choices=["sdk", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(run_client(args.client, args.url, args.ids, args.chunk_size)))
        return

    figures = {}
    for name in ("sdk", "bare"):
        # A fresh emulator for each, so both push new orders.
        with emulator_in_subprocess(limit=1_000_000_000, max_ids_per_request=args.chunk_size) as base_url:
            command = [sys.executable, __file__, "--client", name, "--url", base_url, "--ids", str(args.ids)]
            command += ["--chunk-size", str(args.chunk_size)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures[name] = json.loads(done.stdout.strip().splitlines()[-1])

    lines = [
        f"{args.ids:,} order ids in chunks of {args.chunk_size}, {CONCURRENCY} requests at a time; each client in "
        "its own process, the emulator in another. Target for the SDK: under 3 s CPU and 300 MB peak RSS.",
        "",
        "| client | CPU s | wall s | peak RSS MB | outcome |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("sdk", "sdk push_shipments (from a generator)"), ("bare", "bare aiohttp loop (a list)")):
        f = figures[name]
        lines.append(f"| {label} | {f['cpu']:.2f} | {f['wall']:.2f} | {f['peak_rss_mb']:.0f} | {f['outcome']} |")
    sdk_figures = figures["sdk"]
    met = sdk_figures["cpu"] < 3 and sdk_figures["peak_rss_mb"] < 300
    lines += ["", f"SDK target: {'met' if met else 'MISSED'}."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record(
            "batch",
            "## Batch: a million order ids\n\n"
            f"`python benchmarks/bench_batch.py --ids {args.ids} --chunk-size {args.chunk_size}` ({machine()})\n\n"
            f"{table}\n",
        )


if __name__ == "__main__":
    main()
