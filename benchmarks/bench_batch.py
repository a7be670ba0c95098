"""Batch benchmark: push 1,000,000 order ids and measure the client's CPU seconds and peak memory.

The emulator runs in its own process (limit and ids per request too high to matter). Each client runs
in a fresh process of its own, so its peak RSS is its own:
  sdk        client.sendcloud.push_shipments(<a generator of N ids>): validate, de-duplicate, chunk,
             send 4 at a time, merge into one result with every id accounted for.
  bare loop  aiohttp posting the same chunks of a prepared list, 4 at a time, keeping each response.

Then the requests a batch spends under faults, against an in-process emulator (limit too high to matter),
the SDK beside a plain chunk loop (what the SDK did before it learned to stop, learn and bisect; what a
user's own loop over the same client does): each chunk sent with the client's retries, a size 422 halving
that chunk only, any other error failing the chunk and the loop going on.
  poison      5 ids anywhere in the batch make the server answer 500 for any request holding them
  server max  the server takes 300 ids per request; the chunks are 500
  revoked     the token is revoked (403) once 10% of the ids are queued

Then the chunk economy (issue 20): the requests the SDK's learned chunk size spends beside fixed 500-id
chunks, against an in-process emulator whose maximum the client is not told: 500, 1,000, 4,000, and none but
slow validation (a real Laravel app's times: 5.25e-5 s an id and 1.5e-8 s a pair of ids), and a million
ids at a 1,000 maximum.

    python benchmarks/bench_batch.py [--ids 1000000] [--chunk-size 500] [--faults-only] [--economy-only]
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

from wemasy_async import RetryPolicy, ValidationError, WemasyClient, WemasyError
from wemasy_async.testing import WemasyEmulator

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


# --- under faults ------------------------------------------------------------------------------------

#: Both sides retry alike; short backoffs keep the run quick (the requests spent are what is measured).
FAULT_RETRIES = RetryPolicy(max_attempts=6, backoff_base=0.001, ride_out=0)


async def sdk_batch(client: WemasyClient, ids: range, chunk_size: int) -> tuple[int, int]:
    """The SDK's push_shipments: returns (ids accepted, ids not accepted)."""
    try:
        result = await client.sendcloud.push_shipments(ids, chunk_size=chunk_size, max_concurrency=CONCURRENCY)
    except WemasyError as error:  # stopped: a 403 after the revocation
        if error.result is None:
            raise
        result = error.result
    return result.summary.total_orders, len(result.retry_order_ids) + len(result.rejected)


async def chunk_loop(client: WemasyClient, ids: range, chunk_size: int) -> tuple[int, int]:
    """A plain loop of push requests over the same client (its budget and retries)."""
    chunks = iter([list(ids[i : i + chunk_size]) for i in range(0, len(ids), chunk_size)])
    accepted = not_accepted = 0

    async def push(chunk: list[int]) -> None:
        nonlocal accepted, not_accepted
        try:
            data = await client.request("POST", PUSH, json={"create_label": False, "order_ids": chunk})
            accepted += data["summary"]["total_orders"]
        except ValidationError:
            if len(chunk) == 1:
                not_accepted += 1
                return
            await push(chunk[: len(chunk) // 2])
            await push(chunk[len(chunk) // 2 :])
        except WemasyError:
            not_accepted += len(chunk)

    async def worker() -> None:
        for chunk in chunks:
            await push(chunk)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return accepted, not_accepted


async def one_fault(fault: str, way: str, ids: int, chunk_size: int) -> dict[str, object]:
    order_ids = range(1, ids + 1)
    options: dict[str, object] = {"limit": 1_000_000_000, "max_ids_per_request": chunk_size}
    if fault == "poison":
        options["poison_order_ids"] = {ids * k // 6 for k in range(1, 6)}
    elif fault == "server max":
        options["max_ids_per_request"] = 300
    emulator = WemasyEmulator(**options)  # type: ignore[arg-type]
    if fault == "revoked":
        push, tenth = emulator._push, ids // 10

        def push_then_revoke(body: object) -> tuple[int, dict[str, object]]:
            answer = push(body)  # type: ignore[arg-type]
            if len(emulator.queued) >= tenth:
                emulator.forbidden_tokens.add(TOKEN)
            return answer

        emulator._push = push_then_revoke  # type: ignore[method-assign]
    async with emulator:
        emulator.requests = []
        started = time.perf_counter()
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=FAULT_RETRIES) as client:
            accepted, not_accepted = await {"sdk": sdk_batch, "loop": chunk_loop}[way](client, order_ids, chunk_size)
        wall = time.perf_counter() - started
        statuses = [r.status for r in emulator.requests]
    return {
        "requests": len(statuses),
        "errors": sum(1 for s in statuses if s is None or s >= 400),
        "accepted": accepted,
        "not_accepted": not_accepted,
        "wall": wall,
    }


def fault_table(ids: int, chunk_size: int) -> str:
    lines = [
        f"{ids:,} order ids in chunks of {chunk_size}, {CONCURRENCY} requests at a time, against an in-process "
        "emulator; both clients retry 5xx 6 times (short backoffs: the requests are the figure).",
        "",
        "| fault | client | requests | error answers | ids accepted | ids not accepted | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault in ("poison", "server max", "revoked"):
        for way, label in (("sdk", "sdk push_shipments"), ("loop", "plain chunk loop")):
            f = asyncio.run(one_fault(fault, way, ids, chunk_size))
            lines.append(
                f"| {fault} | {label} | {f['requests']:,} | {f['errors']:,} | {f['accepted']:,} | "
                f"{f['not_accepted']:,} | {f['wall']:.1f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


# --- the chunk economy ---------------------------------------------------------------------------------

#: (name, emulator options): the server's maximum ids per request, or none but slow validation.
ECONOMY_CASES: list[tuple[str, dict[str, object]]] = [
    ("maximum 500", {"max_ids_per_request": 500}),
    ("maximum 1,000", {"max_ids_per_request": 1000}),
    ("maximum 4,000", {"max_ids_per_request": 4000}),
    ("none, slow", {"max_ids_per_request": None, "seconds_per_id": 5.25e-5, "seconds_per_id_pair": 1.5e-8}),
]
#: The answer bound of a learned size with the client's default 30 s timeout (see _chunk_size).
BOUND = 5.0


async def economy_run(options: dict[str, object], ids: int, chunk_size: int | None) -> dict[str, float]:
    emulator = WemasyEmulator(limit=1_000_000_000, **options)  # type: ignore[arg-type]
    async with emulator:
        emulator.requests = []
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
            result = await client.sendcloud.push_shipments(range(1, ids + 1), chunk_size=chunk_size)
        sizes = [len(r.order_ids) for r in emulator.requests if r.order_ids]
    largest = max(sizes)
    per_id, per_pair = float(options.get("seconds_per_id", 0.0)), float(options.get("seconds_per_id_pair", 0.0))  # type: ignore[arg-type]
    return {
        "requests": len(sizes),
        "refused": sum(1 for r in emulator.requests if r.order_ids and r.status == 422),
        "largest": largest,
        "slowest": per_id * largest + per_pair * largest * largest,
        "unaccepted": len(result.retry_order_ids) + len(result.rejected),
    }


def fewest(options: dict[str, object], ids: int) -> int:
    """The fewest requests the server allows: its maximum, or the largest request answered within the bound."""
    most = options.get("max_ids_per_request")
    if most is None:
        per_id, per_pair = float(options["seconds_per_id"]), float(options["seconds_per_id_pair"])  # type: ignore[arg-type]
        most = max(n for n in range(1, 16_001) if per_id * n + per_pair * n * n <= BOUND)
    return -(-ids // int(most))  # type: ignore[call-overload]


def economy_table(ids: int) -> str:
    lines = [
        f"{ids:,} order ids (and a million at a 1,000 maximum), {CONCURRENCY} requests at a time, against an "
        "in-process emulator (limit too high to matter) whose maximum the client is not told. Target: requests "
        "<= 1.15 x the fewest + 4; no answer slower than the bound (5 s) plus one step's growth; no id left "
        "unaccepted by a probe.",
        "",
        "| server | client | requests | fewest | refused for size | largest request | its modelled answer s | "
        "ids not accepted | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cases = [(name, options, ids) for name, options in ECONOMY_CASES]
    cases.append(("maximum 1,000 (a million ids)", {"max_ids_per_request": 1000}, 1_000_000))
    for name, options, n in cases:
        least = fewest(options, n)
        for label, chunk_size in (("sdk, learned (default)", None), ("fixed 500-id chunks", 500)):
            f = asyncio.run(economy_run(options, n, chunk_size))
            verdict = ""
            if chunk_size is None:
                met = f["requests"] <= 1.15 * least + 4 and f["slowest"] <= 4 * BOUND and not f["unaccepted"]
                verdict = "met" if met else "MISSED"
            lines.append(
                f"| {name} | {label} | {f['requests']:,.0f} | {least:,} | {f['refused']:.0f} | {f['largest']:,.0f} | "
                f"{f['slowest']:.2f} | {f['unaccepted']:.0f} | {verdict} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


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
    parser.add_argument("--faults-only", action="store_true", help="only the requests spent under faults")
    parser.add_argument("--economy-only", action="store_true", help="only the chunk economy")
    args = parser.parse_args()
    if args.client:
        print(json.dumps(run_client(args.client, args.url, args.ids, args.chunk_size)))
        return
    if not (args.faults_only or args.economy_only):
        memory_and_cpu(args)
    # After the clients' own processes: a child forked from a large parent starts with its peak RSS.
    if not args.faults_only:
        economy = economy_table(40_000)
        print(economy)
        if not args.no_record:
            record(
                "batch-economy",
                "## Batch: the requests a learned chunk size spends\n\n"
                f"`python benchmarks/bench_batch.py --economy-only` ({machine()})\n\n{economy}\n",
            )
        if args.economy_only:
            return
    faults = fault_table(args.ids, args.chunk_size)
    print(faults)
    if not args.no_record:
        record(
            "batch-faults",
            "## Batch under faults: requests spent\n\n"
            f"`python benchmarks/bench_batch.py --ids {args.ids} --chunk-size {args.chunk_size}` ({machine()})\n\n"
            f"{faults}\n",
        )


def memory_and_cpu(args: argparse.Namespace) -> None:

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
