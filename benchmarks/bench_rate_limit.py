"""Rate-limit benchmark: how fast N calls get through a Laravel fixed window, and how many 429s it costs.

Approaches, each against a fresh emulator (L requests per W-second window, Laravel semantics):
  sdk             WemasyClient: the shared, header-fed budget.
  static-limiter  a bare aiohttp loop behind aiolimiter.AsyncLimiter(L, W), re-sending each 429 through it.
  retry-gather    a bare aiohttp gather that sleeps Retry-After on a 429 and re-sends.

Single process (in this process, with the emulator): each approach runs twice, as the token's sole
client and while another client spends part of every window. Figures come from the emulator's request
log; the runs are drawn in benchmarks/rate_limit_timeline.png.

Multi-process: each approach in P OS processes at once (P = 1, 2, 4, 8 by default), all with one token,
the calls split evenly between them; the workers are spawned, get ready, and are released together.
The emulator runs in a process of its own with its default settings (Retry-After rounded down, as
Laravel sends it), fresh for each (approach, P). static-limiter gets AsyncLimiter(L/P, W) in each
process; retry-gather sleeps at least 0.01 s on a 429. Each worker counts from its own side (see
rate_limit_processes.py); the makespan runs from the release to the last answer, and a worker still
calling --stop-after times the ideal makespan after the release is stopped. SDK target: every call
succeeds, at most one 429 per process per window, makespan <= 1.15 x ideal.

    python benchmarks/bench_rate_limit.py [--calls 60] [--limit 10] [--window 2]
        [--multi-calls 120] [--processes 1,2,4,8] [--stop-after 10] [--single-only | --multi-only] [--no-record]

Prints a table for each part and records it in its own section of benchmarks/RESULTS.md
(rate-limit, rate-limit-multiprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).parent))
from rate_limit_processes import APPROACHES, Case, run_case
from results import machine, record

from wemasy_async import WemasyClient
from wemasy_async.testing import RequestRecord, WemasyEmulator

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
TOKEN = "bench-token"
OTHER_AGENT = "another-client"
HERE = Path(__file__).parent


@attrs.frozen
class Run:
    approach: str
    scenario: str
    makespan: float
    records: list[RequestRecord]
    started: float

    @property
    def ours(self) -> list[RequestRecord]:
        return [r for r in self.records if r.headers.get("User-Agent") != OTHER_AGENT]

    def throttled_per_window(self, window: float) -> int:
        times = [r.at for r in self.ours if r.status == 429]
        return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}


async def via_sdk(base_url: str, calls: int, limit: int, window: float) -> None:
    async with WemasyClient(token=TOKEN, base_url=base_url, window_seconds=window) as client:
        await asyncio.gather(*(client.sendcloud.status() for _ in range(calls)))


async def via_static_limiter(base_url: str, calls: int, limit: int, window: float) -> None:
    limiter = AsyncLimiter(limit, window)
    async with aiohttp.ClientSession(headers=_headers()) as session:

        async def one() -> None:
            while True:
                async with limiter, session.get(base_url + STATUS) as response:
                    await response.read()
                    if response.status != 429:
                        return

        await asyncio.gather(*(one() for _ in range(calls)))


async def via_retry_gather(base_url: str, calls: int, limit: int, window: float) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:

        async def one() -> None:
            while True:
                async with session.get(base_url + STATUS) as response:
                    await response.read()
                    if response.status != 429:
                        return
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

        await asyncio.gather(*(one() for _ in range(calls)))


async def another_client(base_url: str, per_window: int, window: float, stop: asyncio.Event) -> None:
    """Spends ``per_window`` requests of every window, evenly spread, with the same token."""
    headers = {**_headers(), "User-Agent": OTHER_AGENT}
    async with aiohttp.ClientSession(headers=headers) as session:
        while not stop.is_set():
            async with session.get(base_url + STATUS) as response:
                await response.read()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), window / per_window)


async def measure(
    name: str,
    approach: Callable[[str, int, int, float], Awaitable[None]],
    scenario: str,
    *,
    calls: int,
    limit: int,
    window: float,
) -> Run:
    emulator = WemasyEmulator(limit=limit, window_seconds=window)
    async with emulator:
        stop = asyncio.Event()
        other = None
        if scenario == "shared":
            other = asyncio.create_task(another_client(emulator.base_url, max(1, limit // 4), window, stop))
            await asyncio.sleep(window / 3)  # the other client is already into its window
        started = time.monotonic()
        await approach(emulator.base_url, calls, limit, window)
        makespan = time.monotonic() - started
        stop.set()
        if other is not None:
            await other
        return Run(name, scenario, makespan, list(emulator.requests), started)


async def round_trip() -> float:
    """The median time of one unthrottled call on this machine."""
    async with WemasyEmulator(limit=10_000) as emulator, aiohttp.ClientSession(headers=_headers()) as session:
        times = []
        for _ in range(30):
            started = time.monotonic()
            async with session.get(emulator.base_url + STATUS) as response:
                await response.read()
            times.append(time.monotonic() - started)
        return statistics.median(times)


def draw(runs: list[Run], calls: int, limit: int, window: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 1.25 * len(runs) + 1.2), sharex=True)
    for ax, run in zip(axes, runs, strict=True):
        # The server's windows, rebuilt from what it counted (a window starts with its first request).
        end = -math.inf
        shade = False
        for r in sorted(run.records, key=lambda r: r.at):
            if r.counted and r.at >= end:
                end = r.at + window
                shade = not shade
                ax.axvspan(r.at - run.started, end - run.started, color="#dde6f3" if shade else "#eef2f8", lw=0)
        ok = [r.at - run.started for r in run.ours if r.status != 429]
        bad = [r.at - run.started for r in run.ours if r.status == 429]
        other = [r.at - run.started for r in run.records if r.headers.get("User-Agent") == OTHER_AGENT]
        ax.plot(ok, [0.6] * len(ok), "|", color="#2a7a2a", ms=14, label="answered")
        ax.plot(bad, [0.35] * len(bad), "x", color="#c0392b", ms=7, label="429")
        if other:
            ax.plot(other, [0.12] * len(other), "|", color="#888888", ms=8, label="another client")
        ax.axvline((math.ceil(calls / limit) - 1) * window, color="black", ls="--", lw=1)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(f"{run.approach}\n{run.scenario}", rotation=0, ha="right", va="center", fontsize=9)
        ax.text(1.005, 0.5, f"{len(bad)} x 429\n{run.makespan:.1f} s", transform=ax.transAxes, fontsize=8, va="center")
    axes[0].set_title(
        f"{calls} calls, {limit} per {window:g} s window (shaded: the server's windows; dashed: ideal end)", fontsize=10
    )
    axes[-1].set_xlabel("seconds since the first call")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 0.94, 1))
    fig.savefig(path, dpi=110)


async def single_process(args: argparse.Namespace) -> None:
    calls, limit, window = args.calls, args.limit, args.window

    rtt = await round_trip()
    approaches: list[tuple[str, Callable[[str, int, int, float], Awaitable[None]]]] = [
        ("sdk", via_sdk),
        ("static-limiter", via_static_limiter),
        ("retry-gather", via_retry_gather),
    ]
    runs = [
        await measure(name, approach, scenario, calls=calls, limit=limit, window=window)
        for scenario in ("sole", "shared")
        for name, approach in approaches
    ]

    windows = math.ceil(calls / limit)
    ideal = (windows - 1) * window
    allowed = 1.03 * (ideal + windows * rtt)
    lines = [
        f"{calls} calls, limit {limit} per {window:g} s window; ideal makespan (ceil(N/L)-1)*W = {ideal:.2f} s; "
        f"round trip {rtt * 1000:.2f} ms; sole-client target: makespan <= 1.03 x (ideal + 1 round trip per "
        f"window) = {allowed:.3f} s and zero 429s; shared: at most one 429 per window.",
        "",
        "| approach | scenario | requests sent | answered | 429s | most 429s in one window | makespan s | "
        "makespan / ideal | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ours = run.ours
        throttled = sum(r.status == 429 for r in ours)
        answered = sum(r.status == 200 for r in ours)
        per_window = run.throttled_per_window(window)
        if run.approach != "sdk":
            verdict = "baseline"
        elif run.scenario == "sole":
            verdict = "met" if throttled == 0 and run.makespan <= allowed and answered == calls else "MISSED"
        else:
            verdict = "met" if per_window <= 1 and answered == calls else "MISSED"
        lines.append(
            f"| {run.approach} | {run.scenario} | {len(ours)} | {answered} | {throttled} | {per_window} | "
            f"{run.makespan:.3f} | {run.makespan / ideal:.3f} | {verdict} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        plot = HERE / "rate_limit_timeline.png"
        draw(runs, calls, limit, window, plot)
        record(
            "rate-limit",
            "## Rate limit: budget use and 429s\n\n"
            f"`python benchmarks/bench_rate_limit.py --calls {calls} --limit {limit} --window {window:g}` "
            f"({machine()})\n\n{table}\n\n![timeline](rate_limit_timeline.png)\n",
        )
        print(f"\nrecorded in {HERE / 'RESULTS.md'}; timeline in {plot}")


#: SDK target with P processes on one token: makespan within this factor of the ideal.
MULTI_TARGET = 1.15


def _failed(case: Case) -> str:
    failures = case.failures
    total = sum(failures.values())
    if not total:
        return "0"
    return f"{total}: " + ", ".join(f"{name} x{count}" for name, count in failures.most_common())


def multi_process(args: argparse.Namespace) -> None:
    calls, limit, window, stop_after = args.multi_calls, args.limit, args.window, args.stop_after
    ideal = (math.ceil(calls / limit) - 1) * window
    time_limit = stop_after * max(ideal, window)
    cases: list[Case] = []
    began = time.monotonic()
    for approach in APPROACHES:
        for processes in args.processes:
            case = run_case(approach, calls, limit=limit, window=window, processes=processes, time_limit=time_limit)
            state = "" if case.complete else " (stopped)"
            print(f"  {approach} x{processes}: {case.makespan:.1f} s{state}", file=sys.stderr, flush=True)
            cases.append(case)

    lines = [
        f"{calls} calls split evenly over P processes, one token; limit {limit} per {window:g} s window; the "
        "emulator in a process of its own with its default settings (Retry-After rounded down), fresh for each "
        f"row; ideal makespan (ceil(N/L)-1)*W = {ideal:.2f} s; makespan from the common release to the last "
        f"answer; workers stopped {stop_after:g} x ideal after the release. static-limiter: AsyncLimiter(L/P, W) "
        f"in each process; retry-gather: sleeps Retry-After, at least 0.01 s. SDK target: every call succeeds, "
        f"at most one 429 per process per window, makespan <= {MULTI_TARGET} x ideal = {MULTI_TARGET * ideal:.2f} s.",
        "",
        "| approach | processes | requests sent | answered | 429s | most 429s in one window (one process) | "
        "failed calls | makespan s | makespan / ideal | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for case in cases:
        per_window = case.most_throttled_per_window
        failed = sum(case.failures.values())
        if case.approach != "sdk":
            verdict = "baseline"
        else:
            met = case.complete and failed == 0 and case.answered == calls and per_window <= 1
            verdict = "met" if met and case.makespan <= MULTI_TARGET * ideal else "MISSED"
            if case.throttle_times_seen != case.throttled:
                notes.append(
                    f"sdk x{case.processes}: {case.throttled} 429s counted by rate_limit.throttled, "
                    f"{case.throttle_times_seen} seen as retries or RateLimitError (the per-window column uses these)."
                )
        makespan = f"{case.makespan:.3f}" + ("" if case.complete else " (stopped)")
        ratio = "-" if ideal <= 0 else ("" if case.complete else ">= ") + f"{case.makespan / ideal:.3f}"
        lines.append(
            f"| {case.approach} | {case.processes} | {case.sent} | {case.answered} | {case.throttled} | {per_window} | "
            f"{_failed(case)} | {makespan} | {ratio} | {verdict} |"
        )
    if notes:
        lines += ["", *(f"Note: {note}" for note in notes)]
    table = "\n".join(lines)
    print(table)
    print(f"\nmulti-process part: {time.monotonic() - began:.0f} s", file=sys.stderr)
    if not args.no_record:
        command = (
            f"python benchmarks/bench_rate_limit.py --multi-only --multi-calls {calls} --limit {limit} "
            f"--window {window:g} --processes {','.join(map(str, args.processes))} --stop-after {stop_after:g}"
        )
        record(
            "rate-limit-multiprocess",
            f"## Rate limit: one token, several processes\n\n`{command}` ({machine()})\n\n{table}\n",
        )
        print(f"\nrecorded in {HERE / 'RESULTS.md'}")


def _process_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive process counts such as 1,2,4,8, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60, help="calls of the single-process part")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--multi-calls", type=int, default=120, help="calls of the multi-process part, all processes")
    parser.add_argument(
        "--processes", type=_process_counts, default=[1, 2, 4, 8], help="process counts, comma-separated"
    )
    parser.add_argument(
        "--stop-after", type=float, default=10.0, help="stop a multi-process run after this many x its ideal makespan"
    )
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--single-only", action="store_true", help="run only the single-process part")
    part.add_argument("--multi-only", action="store_true", help="run only the multi-process part")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md and the plot alone")
    args = parser.parse_args()
    if not args.multi_only:
        asyncio.run(single_process(args))
    if not args.single_only:
        if not args.multi_only:
            print()
        multi_process(args)


if __name__ == "__main__":
    main()
