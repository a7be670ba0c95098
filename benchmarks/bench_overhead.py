"""Overhead benchmark: the SDK's calls per second against a bare aiohttp loop, with no rate-limit pressure.

Both send the same GET of the status endpoint to the same emulator (in its own process, with a limit too
high to matter), at the same concurrency; the bare loop also decodes the JSON. Rounds alternate, each
order in turn, so drift on a shared machine hits both alike; the medians of the rounds are compared, and
for CPU also the median of each round's own ratio (its two runs are next to each other in time). Client
CPU per call is reported too: it is the SDK's own cost, whatever the server's speed. With two cores or
more, the emulator runs on a core of its own and the clients on the others.

Where valgrind is installed the client's instructions per call are counted with callgrind too (the
difference between a 200-call and a 1200-call run, so start-up cancels out). That count repeats to about
1% but sees neither system calls, page faults nor memory stalls, so CPU per call (user + system) is
compared as well, with the minor page faults per call that explain much of any gap.

The SDK runs twice: with ``budget="process"`` (the in-process budget, the default) and with
``budget="host"`` (a file shared by the host's processes); the difference is the host budget's cost per call.

    python benchmarks/bench_overhead.py [--calls 4000] [--concurrency 32] [--rounds 7] [--no-instructions]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from emulator_process import emulator_in_subprocess, pin_to_other_cores
from results import machine, record

from wemasy_async import WemasyClient

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
#: Each client its own token: the emulator counts each apart, so no budget sees another client's requests in
#: its window (as another user of its token, which would make it share, ramp and wait: not this benchmark's
#: subject).
TOKENS = {"bare": "bench-bare", "process": "bench-sdk", "host": "bench-sdk-host"}


async def bare_loop(base_url: str, calls: int, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {TOKENS['bare']}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            async with slots, session.get(base_url + STATUS) as response:
                data = await response.json()
                assert data["integration"]

        await asyncio.gather(*(one() for _ in range(calls)))


async def sdk(base_url: str, calls: int, concurrency: int, budget: str = "process") -> None:
    token = TOKENS[budget]
    async with WemasyClient(token=token, base_url=base_url, max_concurrency=concurrency, budget=budget) as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(calls)))


async def sdk_host(base_url: str, calls: int, concurrency: int) -> None:
    await sdk(base_url, calls, concurrency, budget="host")


CLIENTS: dict[str, Callable[[str, int, int], Awaitable[None]]] = {
    "bare aiohttp loop": bare_loop,
    "sdk": sdk,
    'sdk, budget="host"': sdk_host,
}


def instructions_per_call(client: str, base_url: str, concurrency: int) -> float:
    """Client instructions per call under callgrind: (1200 calls - 200 calls) / 1000."""

    def count(calls: int) -> int:
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--client", client, "--url", base_url,
            "--calls", str(calls), "--concurrency", str(concurrency),
        ]  # fmt: skip
        # Each run with a host budget file of its own, as each with a process budget of its own: a file the
        # last run used would carry its window into this one (which may end in the middle of it).
        env = {**os.environ, "WEMASY_BUDGET_DIR": tempfile.mkdtemp(prefix="bench-overhead-")}
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            raise RuntimeError("callgrind printed no instruction count")
        return int(found.group(1))

    return (count(1200) - count(200)) / 1000


class Round(NamedTuple):
    """One round of one client."""

    calls_per_second: float
    #: Client CPU (user + system) microseconds per call.
    cpu_us: float
    #: Minor page faults per call.
    faults: float


async def timed(run: Callable[[str, int, int], Awaitable[None]], base_url: str, calls: int, c: int) -> Round:
    before, cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    await run(base_url, calls, c)
    elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before.ru_minflt
    return Round(calls / elapsed, used / calls * 1e6, faults / calls)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--no-instructions", action="store_true", help="skip the callgrind count")
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)  # one client only, for callgrind
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        await CLIENTS[args.client](args.url, args.calls, args.concurrency)
        return

    # The host budget's file in a directory of this run's (the callgrind runs' too), not the user's.
    budget_dir = tempfile.mkdtemp(prefix="bench-overhead-")
    os.environ["WEMASY_BUDGET_DIR"] = budget_dir
    # The emulator on a core of its own, the clients on the others (callgrind's runs too).
    emulator_cpu = pin_to_other_cores()
    with emulator_in_subprocess(limit=1_000_000_000, window_seconds=60.0, cpu=emulator_cpu) as base_url:
        for client in CLIENTS.values():  # warm every path up
            await timed(client, base_url, 500, args.concurrency)
        results: dict[str, list[Round]] = {name: [] for name in CLIENTS}
        for round_number in range(args.rounds):
            # Each order in turn (bare, sdk; sdk, bare; ...): neither client always follows the other.
            order = list(CLIENTS.items()) if round_number % 2 == 0 else list(reversed(CLIENTS.items()))
            for name, client in order:
                results[name].append(await timed(client, base_url, args.calls, args.concurrency))
        instructions: dict[str, float] = {}
        if not args.no_instructions and shutil.which("valgrind"):
            instructions = {name: instructions_per_call(name, base_url, args.concurrency) for name in CLIENTS}

    rate = {name: statistics.median(r.calls_per_second for r in rounds) for name, rounds in results.items()}
    cpu = {name: statistics.median(r.cpu_us for r in rounds) for name, rounds in results.items()}
    faults = {name: statistics.median(r.faults for r in rounds) for name, rounds in results.items()}
    ratio = rate["sdk"] / rate["bare aiohttp loop"]
    lines = [
        f"{args.calls} calls of the status endpoint per round, concurrency {args.concurrency}, median of "
        f"{args.rounds} alternating rounds; the emulator in its own process"
        f"{', on a core of its own' if emulator_cpu is not None else ''}. Targets: SDK >= 0.9x the bare loop's "
        "calls per second, and client CPU (user + system) per call <= 1.10x its.",
        "",
        "| client | calls/s (median) | calls/s (each round) | client CPU us/call (median) | "
        "client instructions/call (callgrind) | client CPU us/call (each round) | page faults/call (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rounds in results.items():
        everything = ", ".join(f"{r.calls_per_second:.0f}" for r in rounds)
        each_cpu = ", ".join(f"{r.cpu_us:.0f}" for r in rounds)
        counted = f"{instructions[name]:,.0f}" if instructions else "not measured"
        lines.append(
            f"| {name} | {rate[name]:.0f} | {everything} | {cpu[name]:.0f} | {counted} | {each_cpu} | "
            f"{faults[name]:.2f} |"
        )
    extra = cpu["sdk"] - cpu["bare aiohttp loop"]
    cpu_ratio = cpu["sdk"] / cpu["bare aiohttp loop"]
    # Each round's two runs are next to each other in time: their ratio cancels the machine's drift (load
    # from other tenants, frequency) between rounds, which the medians of each client's rounds do not.
    paired = statistics.median(
        s.cpu_us / b.cpu_us for s, b in zip(results["sdk"], results["bare aiohttp loop"], strict=True)
    )
    lines += [
        "",
        f"SDK / bare loop, wall clock: {ratio:.3f}x calls per second ({_verdict(ratio >= 0.9)}; target >= 0.9x).",
        f"SDK / bare loop, client CPU per call: {cpu_ratio:.3f}x, {extra:+.0f} us "
        f"({_verdict(cpu_ratio <= 1.1)}; target <= 1.10x); the median of each round's ratio: {paired:.3f}x "
        f"({_verdict(paired <= 1.1)}).",
    ]
    host = 'sdk, budget="host"'
    host_extra = cpu[host] - cpu["sdk"]
    lines.append(
        f"Host budget / in-process budget, client CPU per call: {host_extra:+.1f} us "
        f"({_verdict(host_extra <= 20)}; target <= 20 us added); calls per second {rate[host] / rate['sdk']:.3f}x."
    )
    if instructions:
        by_count = instructions["bare aiohttp loop"] / instructions["sdk"]
        lines.append(f"SDK / bare loop, by instruction count (callgrind): {by_count:.3f}x.")
        by_count = instructions["bare aiohttp loop"] / instructions[host]
        added = instructions[host] - instructions["sdk"]
        lines.append(
            f"SDK with the host budget / bare loop, by instruction count: {by_count:.3f}x "
            f"({_verdict(by_count >= 0.95)}; target >= 0.95x); {added:+,.0f} instructions per call over the "
            "in-process budget."
        )
    shutil.rmtree(budget_dir, ignore_errors=True)
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record(
            "overhead",
            "## Overhead: calls per second with no rate-limit pressure\n\n"
            f"`python benchmarks/bench_overhead.py --calls {args.calls} --concurrency {args.concurrency} "
            f"--rounds {args.rounds}` ({machine()})\n\n{table}\n",
        )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    asyncio.run(main())
