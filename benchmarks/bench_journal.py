"""Journal benchmark: push 1,000,000 order ids with and without a journal; the journal's cost in client CPU
seconds, peak memory and file size.

The emulator runs in its own process (limit and ids per request too high to matter). Each client runs
in a fresh process of its own, so its CPU and peak RSS are its own:
  no journal   client.sendcloud.push_shipments(<a generator of N ids>), as benchmarks/bench_batch.py.
  journal      the same with journal=FILE: each chunk's outcome committed as it arrives, before its
               worker takes another chunk (so a kill sends again at most the chunks in flight).
  resume       the same call again on the finished journal: it reads the journal back, finds every id
               answered and sends nothing (the cost of checking a journal before a resume).
Target: the journal adds under 20% to the batch's client CPU.

With --round-trip-ms N the emulator answers each request N ms late, as a server across a network does.

    python benchmarks/bench_journal.py [--ids 1000000] [--chunk-size 500] [--runs 3] [--round-trip-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from emulator_process import emulator_in_subprocess
from results import machine, record

from wemasy_async import WemasyClient

TOKEN = "bench-token"
CONCURRENCY = 4


async def push(base_url: str, ids: int, chunk_size: int, journal: str | None) -> str:
    async with WemasyClient(token=TOKEN, base_url=base_url) as client:
        result = await client.sendcloud.push_shipments(
            (i for i in range(1, ids + 1)), chunk_size=chunk_size, max_concurrency=CONCURRENCY, journal=journal
        )
    accounted = result.summary.total_orders + len(result.rejected) + len(result.failed_order_ids)
    return f"{result.summary.new_orders} new, {result.requests} requests, {accounted} ids accounted for"


def run_client(base_url: str, ids: int, chunk_size: int, journal: str | None) -> dict[str, object]:
    """Run one client in this process and report its figures as JSON (the child side)."""
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    outcome = asyncio.run(push(base_url, ids, chunk_size, journal))
    return {
        "cpu": time.process_time() - started_cpu,
        "wall": time.perf_counter() - started_wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "outcome": outcome,
    }


def client_process(base_url: str, ids: int, chunk_size: int, journal: str | None) -> dict[str, object]:
    command = [sys.executable, __file__, "--client", "--url", base_url, "--ids", str(ids)]
    command += ["--chunk-size", str(chunk_size)] + (["--journal", journal] if journal else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="rounds of the three clients; medians are shown")
    parser.add_argument("--round-trip-ms", type=float, default=0.0, help="how late the emulator answers, in ms")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(run_client(args.url, args.ids, args.chunk_size, args.journal)))
        return

    rounds, sizes = run_rounds(args)
    table = report(args, rounds, sizes)
    print(table)
    if not args.no_record:
        late = f" --round-trip-ms {args.round_trip_ms:g}" if args.round_trip_ms else ""
        record(
            "journal-round-trip" if late else "journal",
            f"## Journal: a million order ids with and without it{', over a network' if late else ''}\n\n"
            f"`python benchmarks/bench_journal.py --ids {args.ids} --chunk-size {args.chunk_size} --runs {args.runs}"
            f"{late}` ({machine()})\n\n{table}\n",
        )


Rounds = dict[str, list[dict[str, object]]]


def run_rounds(args: argparse.Namespace) -> tuple[Rounds, list[int]]:
    """Each round: the client with no journal, with one, and the resume on it; and the journal's sizes."""
    server = {
        "limit": 1_000_000_000,
        "max_ids_per_request": args.chunk_size,
        "delay_seconds": args.round_trip_ms / 1000,
    }
    rounds: Rounds = {"plain": [], "journal": [], "resume": []}
    sizes = []
    for _ in range(args.runs):
        # A fresh emulator for each, so both push new orders; the resume goes to the journal's emulator (its
        # base URL is part of the batch's fingerprint).
        with emulator_in_subprocess(**server) as base_url:
            rounds["plain"].append(client_process(base_url, args.ids, args.chunk_size, None))
        with tempfile.TemporaryDirectory() as directory:
            journal = str(Path(directory) / "push.sqlite")
            with emulator_in_subprocess(**server) as base_url:
                rounds["journal"].append(client_process(base_url, args.ids, args.chunk_size, journal))
                sizes.append(sum(p.stat().st_size for p in Path(directory).iterdir()))
                rounds["resume"].append(client_process(base_url, args.ids, args.chunk_size, journal))
    return rounds, sizes


def report(args: argparse.Namespace, rounds: Rounds, sizes: list[int]) -> str:
    """The table of the rounds' medians, the journal's cost and every round's figures."""

    def median(name: str, key: str) -> float:
        return statistics.median(float(f[key]) for f in rounds[name])  # type: ignore[arg-type]

    plain_cpu, journal_cpu = median("plain", "cpu"), median("journal", "cpu")
    # Paired per round (the same machine load), then the median of the rounds' ratios.
    added = statistics.median(
        float(j["cpu"]) / float(p["cpu"]) - 1  # type: ignore[arg-type]
        for p, j in zip(rounds["plain"], rounds["journal"], strict=True)
    )
    lines = [
        f"{args.ids:,} order ids in chunks of {args.chunk_size}, {CONCURRENCY} requests at a time; each client in "
        f"its own process, the emulator in another"
        + (f", answering each request {args.round_trip_ms:g} ms late" if args.round_trip_ms else "")
        + f"; medians of {args.runs} rounds. Target: the journal adds under 20% to the batch's client CPU.",
        "",
        "| client | CPU s | wall s | peak RSS MB | journal MB | outcome |",
        "|---|---|---|---|---|---|",
    ]
    labels = (
        ("plain", "push_shipments, no journal", ""),
        ("journal", "push_shipments, journal=FILE", f"{statistics.median(sizes) / 2**20:.1f}"),
        ("resume", "the same again: reads the finished journal, sends nothing", ""),
    )
    for name, label, size in labels:
        figures = rounds[name]
        outcome = figures[-1]["outcome"]
        lines.append(
            f"| {label} | {median(name, 'cpu'):.2f} | {median(name, 'wall'):.2f} | {median(name, 'peak_rss_mb'):.0f} "
            f"| {size} | {outcome} |"
        )
    met = added < 0.20
    lines += [
        "",
        f"Journal cost: +{journal_cpu - plain_cpu:.2f} s CPU, {added:+.1%} of the batch's client CPU "
        f"(median of the rounds' paired ratios); target {'met' if met else 'MISSED'}.",
        "All rounds (CPU s, no journal / journal / resume): "
        + "; ".join(
            f"{float(p['cpu']):.2f} / {float(j['cpu']):.2f} / {float(r['cpu']):.2f}"  # type: ignore[arg-type]
            for p, j, r in zip(rounds["plain"], rounds["journal"], rounds["resume"], strict=True)
        )
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
