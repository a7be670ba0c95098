"""Mixed traffic: a batch and single calls on one token (issue 19's traffic classes), beside first come, first served.

Each run has a fresh emulator in a process of its own, L = 10 requests per W = 2 s window (its throttle is
Laravel 8's fixed window), and spawned worker processes released at one moment (rate_limit_processes.py,
approach ``sdk-mixed``); every client has ``window_seconds=2`` and ``timeout=5``. The batch is
``push_shipments`` of 3000 ids in chunks of 50 (60 requests: 10 s at the full budget alone); the single
calls are ``status()`` calls begun every 0.5 s from the release, each in a task of its own (web requests
arrive whether or not the last one was answered), until the batch has ended.

  one process   one client in one process: the batch and the single calls are two tasks.
  Redis fleet   two processes, one with the batch and one with the single calls, both with ``redis_url`` of
                a private redis-server this benchmark starts on a free 127.0.0.1 port (no persistence).
  no store      the same two processes without Redis: each has a budget of its own.
  batch alone   the batch in one process, no single calls.

Each case runs twice in one invocation: "sdk" (traffic classes with their defaults: the batch is bulk, the
single calls interactive) and "baseline" (the batch given ``priority="interactive"``: one class and no
reserve, the behaviour before classes). With ``--rounds`` above 1 the two alternate in order (sdk first in
odd rounds, baseline first in even ones) and the table shows medians over rounds, but failed calls and
429s, which show the worst round.

  wait      a status() call's duration, from its start to its answer.
  makespan  from the release to the moment push_shipments returned.
  ideal     (ceil(R / L) - 1) * W, R = the batch's requests (60) + the single calls made in that run: the
            time R requests take at the full budget, windows back to back, the last sent as the last
            window opens. Batch alone: R = 60, ideal 10 s.
  429s      from the emulator's log: each process has its own User-Agent word, and a push and a status
            call have different paths; per process per server window with the emulator's window starts.

Targets (the sdk rows; the baseline's figures are shown beside them):
  one process, Redis fleet  single calls' p90 wait <= 0.25 s and max <= W; every call succeeds; the batch
                            meets no 429; batch makespan <= 1.05 x ideal.
  no store                  single calls' median wait <= 0.25 s and max <= W + 0.5 s; at most one 429 per
                            process per server window.
  batch alone               makespan <= 1.01 x the baseline's.

    python benchmarks/bench_mixed_traffic.py [--rounds 1] [--time-limit 60] [--no-record]

Every run talks only to 127.0.0.1; a worker stops its calls --time-limit s after the release, and one that
has not reported a few seconds later is terminated. Records the table in benchmarks/RESULTS.md
(mixed-traffic).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # tests.redis_server
from bench_fleet import agent, p90, per_window, window_of
from rate_limit_processes import Job, Run, run_workers
from results import machine, record

from tests.redis_server import RedisServer
from wemasy_async.budgets import Priority
from wemasy_async.resources.sendcloud import PUSH_PATH, STATUS_PATH

HERE = Path(__file__).parent
LIMIT = 10
WINDOW = 2.0
BATCH_IDS = 3000
CHUNK_SIZE = 50
BATCH_REQUESTS = math.ceil(BATCH_IDS / CHUNK_SIZE)
STATUS_EVERY = 0.5
#: The clients' timeout (one exchange): their Redis leases last max(10, timeout + 5) = 10 s.
TIMEOUT = 5.0
#: Targets.
P90_TARGET = 0.25
MEDIAN_TARGET = 0.25
MAX_TARGET = WINDOW
NO_STORE_MAX_TARGET = WINDOW + 0.5
MAKESPAN_TARGET = 1.05
ALONE_TARGET = 1.01

CASES = ("one process", "Redis fleet", "no store", "batch alone")
VARIANTS: dict[str, Priority | None] = {"sdk": None, "baseline": "interactive"}


def ideal_makespan(requests: int) -> float:
    return (math.ceil(requests / LIMIT) - 1) * WINDOW


@attrs.frozen
class Figures:
    """One run of one case and variant."""

    case: str
    variant: str
    #: Each single call's wait (seconds), in the order they began.
    waits: list[float]
    #: Failed calls: single calls, and the batch (1 if it raised or not every id was accepted).
    failed_singles: int
    failed_batch: int
    #: Push requests in the batch's result (answered 200), and the pushes and status calls the emulator
    #: answered 429.
    batch_requests: int
    batch_429s: int
    single_429s: int
    #: The most 429s one process got in one server window.
    most_per_window: int
    makespan: float
    complete: bool
    #: WaitEvents by (priority, reason), all processes.
    wait_events: Counter[tuple[str, str]]
    #: The single calls' client's interactive_waited_seconds, and the batch's client's waited_seconds.
    interactive_waited: float
    batch_waited: float
    #: 429s by server window: (its start, s after the release, count), all processes.
    throttled_windows: list[tuple[float, int]]
    #: The slowest single calls: (began, s after the release; wait).
    slowest: list[tuple[float, float]]
    #: When the batch's last push reached the emulator: s after the release, and s into its server window.
    last_push: tuple[float, float]
    #: Requests the emulator's throttle let through, and the windows it counted them in.
    allowed: int
    windows: int

    @property
    def singles(self) -> int:
        return len(self.waits)

    @property
    def ideal(self) -> float:
        return ideal_makespan(BATCH_REQUESTS + self.singles)


def jobs_for(case: str, priority: Priority | None, time_limit: float, redis_url: str | None) -> list[tuple[str, Job]]:
    """The workers of one case: index 0 has the batch (and in one process the single calls too)."""
    base = Job("", 0, LIMIT, WINDOW, 1, time_limit, timeout=TIMEOUT, batch_ids=BATCH_IDS, chunk_size=CHUNK_SIZE)
    batch = attrs.evolve(base, priority=priority, agent=agent(0))
    if case == "batch alone":
        return [("sdk-mixed", batch)]
    if case == "one process":
        return [("sdk-mixed", attrs.evolve(batch, status_every=STATUS_EVERY))]
    url = redis_url if case == "Redis fleet" else None
    singles = attrs.evolve(base, processes=2, batch_ids=0, status_every=STATUS_EVERY, redis_url=url, agent=agent(1))
    return [("sdk-mixed", attrs.evolve(batch, processes=2, redis_url=url)), ("sdk-mixed", singles)]


def figures_of(case: str, variant: str, run: Run) -> Figures:
    reports = [r for r in run.reports if r is not None]
    lost = len(run.reports) - len(reports)
    batch_report = run.reports[0]
    starts, log = run.server.window_starts, run.server.log
    agents = {seen.agent for seen in log}
    most = max((max(per_window(log, starts, {a}).values(), default=0) for a in agents), default=0)
    throttled = Counter(window_of(starts, seen.at) for seen in log if seen.status == 429)
    singles = sorted((call for r in reports for call in r.single_calls), key=lambda call: call[0])
    single_failures = sum(1 for r in reports for name in r.failures if not name.startswith("batch"))
    batch_failed = batch_report is None or not batch_report.batch_ok
    stopped = bool(lost) or any(r.stopped for r in reports)
    ended = batch_report.batch_ended if batch_report is not None and batch_report.batch_ended else run.ended
    waits = Counter[tuple[str, str]]()
    for r in reports:
        waits.update(r.waits)
    single_report = run.reports[-1] if case != "batch alone" else None
    pushes = [seen.at for seen in log if seen.path.endswith(PUSH_PATH) and seen.status == 200]
    last = max(pushes, default=run.started)
    last_window = window_of(starts, last)
    return Figures(
        case=case,
        variant=variant,
        waits=[wait for _, wait in singles],
        failed_singles=single_failures,
        failed_batch=int(batch_failed),
        batch_requests=batch_report.batch_requests if batch_report is not None else 0,
        batch_429s=sum(1 for seen in log if seen.status == 429 and seen.path.endswith(PUSH_PATH)),
        single_429s=sum(1 for seen in log if seen.status == 429 and seen.path.endswith(STATUS_PATH)),
        most_per_window=most,
        makespan=ended - run.started,
        complete=not stopped,
        wait_events=waits,
        interactive_waited=(
            single_report.rate_limit.get("interactive_waited_seconds", math.nan) if single_report else math.nan
        ),
        batch_waited=batch_report.rate_limit.get("waited_seconds", math.nan) if batch_report else math.nan,
        throttled_windows=[(starts[w - 1] - run.started, n) for w, n in sorted(throttled.items()) if w],
        slowest=sorted(singles, key=lambda call: -call[1])[:3],
        last_push=(last - run.started, last - starts[last_window - 1] if last_window else 0.0),
        allowed=run.server.allowed,
        windows=len(starts),
    )


# --- a case over rounds ----------------------------------------------------------------------------


@attrs.frozen
class Summary:
    """One case and variant over the rounds: medians of the timings, the worst round's counts."""

    case: str
    variant: str
    runs: tuple[Figures, ...]

    def _median(self, figure: Callable[[Figures], float]) -> float:
        values = [figure(f) for f in self.runs]
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else math.nan

    @property
    def singles(self) -> float:
        return self._median(lambda f: f.singles)

    @property
    def median_wait(self) -> float:
        return self._median(lambda f: statistics.median(f.waits) if f.waits else math.nan)

    @property
    def p90_wait(self) -> float:
        return self._median(lambda f: p90(f.waits) if len(f.waits) > 1 else math.nan)

    @property
    def max_wait(self) -> float:
        return self._median(lambda f: max(f.waits) if f.waits else math.nan)

    @property
    def makespan(self) -> float:
        return self._median(lambda f: f.makespan)

    @property
    def ideal(self) -> float:
        return self._median(lambda f: f.ideal)

    @property
    def failed(self) -> int:
        return max(f.failed_singles + f.failed_batch for f in self.runs)

    @property
    def batch_429s(self) -> int:
        return max(f.batch_429s for f in self.runs)

    @property
    def single_429s(self) -> int:
        return max(f.single_429s for f in self.runs)

    @property
    def most_per_window(self) -> int:
        return max(f.most_per_window for f in self.runs)

    @property
    def batch_requests(self) -> int:
        return min(f.batch_requests for f in self.runs)

    @property
    def complete(self) -> bool:
        return all(f.complete for f in self.runs)


def seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def row(summary: Summary) -> str:
    alone = summary.case == "batch alone"
    stopped = "" if summary.complete else " (stopped)"
    cells = [
        summary.case,
        f"{summary.variant} ({'bulk' if summary.variant == 'sdk' else 'interactive'})",
        "-" if alone else f"{summary.singles:g}",
        "-" if alone else seconds(summary.median_wait),
        "-" if alone else seconds(summary.p90_wait),
        "-" if alone else seconds(summary.max_wait),
        str(summary.failed),
        str(summary.batch_requests),
        str(summary.batch_429s),
        "-" if alone else str(summary.single_429s),
        str(summary.most_per_window),
        f"{summary.makespan:.3f}{stopped}",
        f"{summary.ideal:.2f}",
        f"{summary.makespan / summary.ideal:.3f}",
    ]
    return f"| {' | '.join(cells)} |"


COLUMNS = [
    "case",
    "batch priority",
    "single calls",
    "wait median s",
    "wait p90 s",
    "wait max s",
    "failed calls",
    "batch requests",
    "batch 429s",
    "single-call 429s",
    "most 429s in one window (one process)",
    "batch makespan s",
    "ideal s",
    "makespan / ideal",
]


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def targets(sdk: Summary, baseline: Summary) -> list[str]:
    """One line per target of the case: the sdk's figure, the target, met/MISSED, and the baseline's figure."""
    case = sdk.case
    lines = []

    def check(what: str, value: str, bound: str, met: bool, base: str) -> None:
        lines.append(f"{case}: {what} {value} {bound}: {verdict(met)} (baseline {base})")

    if case in ("one process", "Redis fleet"):
        check("single calls' p90 wait", f"{sdk.p90_wait:.3f} s", f"<= {P90_TARGET:g} s", sdk.p90_wait <= P90_TARGET,
              f"{baseline.p90_wait:.3f} s")  # fmt: skip
        check("single calls' max wait", f"{sdk.max_wait:.3f} s", f"<= one window, {MAX_TARGET:g} s",
              sdk.max_wait <= MAX_TARGET, f"{baseline.max_wait:.3f} s")  # fmt: skip
        check("failed calls", str(sdk.failed), "= 0", sdk.failed == 0 and sdk.complete, str(baseline.failed))
        check("the batch's 429s", str(sdk.batch_429s), "= 0", sdk.batch_429s == 0, str(baseline.batch_429s))
        bound = MAKESPAN_TARGET * sdk.ideal
        check("batch makespan", f"{sdk.makespan:.3f} s ({sdk.makespan / sdk.ideal:.3f} x ideal {sdk.ideal:.2f} s)",
              f"<= {MAKESPAN_TARGET} x ideal = {bound:.2f} s", sdk.makespan <= bound,
              f"{baseline.makespan:.3f} s, {baseline.makespan / baseline.ideal:.3f} x its ideal")  # fmt: skip
    elif case == "no store":
        check("single calls' median wait", f"{sdk.median_wait:.3f} s", f"<= {MEDIAN_TARGET:g} s",
              sdk.median_wait <= MEDIAN_TARGET, f"{baseline.median_wait:.3f} s")  # fmt: skip
        check("single calls' max wait", f"{sdk.max_wait:.3f} s", f"<= one window + 0.5 s, {NO_STORE_MAX_TARGET:g} s",
              sdk.max_wait <= NO_STORE_MAX_TARGET, f"{baseline.max_wait:.3f} s")  # fmt: skip
        check("most 429s one process got in one server window", str(sdk.most_per_window), "<= 1",
              sdk.most_per_window <= 1, str(baseline.most_per_window))  # fmt: skip
    else:
        bound = ALONE_TARGET * baseline.makespan
        check("makespan", f"{sdk.makespan:.3f} s ({sdk.makespan / baseline.makespan:.4f} x the baseline's)",
              f"<= {ALONE_TARGET} x the baseline's = {bound:.3f} s", sdk.makespan <= bound,
              f"{baseline.makespan:.3f} s")  # fmt: skip
    return lines


def details(summary: Summary) -> str:
    """What each run of a case showed besides the table's figures."""
    parts = []
    for i, f in enumerate(summary.runs, 1):
        events = ", ".join(f"{p} {r} x{n}" for (p, r), n in sorted(f.wait_events.items())) or "none"
        slowest = ", ".join(f"{wait:.3f} s (began {began:.1f} s)" for began, wait in f.slowest) or "-"
        windows = ", ".join(f"{start:.1f}: {n}" for start, n in f.throttled_windows) or "none"
        round_ = f" round {i}" if len(summary.runs) > 1 else ""
        text = f"{summary.case}, {summary.variant}{round_}: WaitEvents {events}; "
        if f.waits:
            text += (
                f"slowest single calls {slowest}; the single calls' client waited {f.interactive_waited:.2f} s for "
                "the budget (interactive_waited_seconds, added over calls); "
            )
        text += (
            f"the batch's client waited {f.batch_waited:.1f} s (added over its requests); its last push reached the "
            f"emulator {f.last_push[0]:.2f} s after the release, {f.last_push[1]:.2f} s into its server window; "
            f"the emulator let {f.allowed} requests through in {f.windows} windows; 429s by server window (its "
            f"start, s after the release: count): {windows}."
        )
        parts.append(text)
    return "\n".join(f"- {part}" for part in parts)


# --- the run ---------------------------------------------------------------------------------------


def run_one(case: str, variant: str, time_limit: float, store: RedisServer) -> Figures:
    if case == "Redis fleet":
        store.flush()
    jobs = jobs_for(case, VARIANTS[variant], time_limit, store.url)
    run = run_workers(jobs, limit=LIMIT, window=WINDOW, time_limit=time_limit, log_requests=True)
    figures = figures_of(case, variant, run)
    median = statistics.median(figures.waits) if figures.waits else math.nan
    print(
        f"  {case}, {variant}: makespan {figures.makespan:.2f} s, {figures.singles} single calls, median wait "
        f"{seconds(median)} s, max {seconds(max(figures.waits, default=math.nan))} s, "
        f"{figures.batch_429s + figures.single_429s} x 429",
        file=sys.stderr,
        flush=True,
    )
    return figures


def run_all(cases: Sequence[str], rounds: int, time_limit: float) -> list[tuple[Summary, Summary]]:
    store = RedisServer()
    store.start()
    runs: dict[tuple[str, str], list[Figures]] = {(c, v): [] for c in cases for v in VARIANTS}
    try:
        for r in range(rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for case in cases:
                for variant in order:
                    runs[(case, variant)].append(run_one(case, variant, time_limit, store))
    finally:
        store.stop()
        shutil.rmtree(store.directory, ignore_errors=True)
    return [
        (Summary(c, "sdk", tuple(runs[(c, "sdk")])), Summary(c, "baseline", tuple(runs[(c, "baseline")])))
        for c in cases
    ]


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case and variant (medians over them)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="a worker stops its calls after this many s")
    parser.add_argument(
        "--cases", type=_cases, default=list(CASES), help="some of " + ",".join(c.replace(" ", "-") for c in CASES)
    )
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    began, load_before = time.monotonic(), load()
    pairs = run_all(args.cases, args.rounds, args.time_limit)
    elapsed, load_after = time.monotonic() - began, load()

    rounds = (
        f"median of {args.rounds} rounds (failed calls and 429s: the worst round)" if args.rounds > 1 else "1 round"
    )
    header = (
        f"push_shipments of {BATCH_IDS} ids in chunks of {CHUNK_SIZE} ({BATCH_REQUESTS} requests) beside status() "
        f"calls begun every {STATUS_EVERY:g} s until the batch ends; limit {LIMIT} per {WINDOW:g} s window (the "
        "emulator's Laravel fixed window, in a process of its own, fresh for each row), clients with "
        f"`window_seconds={WINDOW:g}`, `timeout={TIMEOUT:g}`. one process: one client, the batch and the single calls "
        "two tasks; Redis fleet: a batch process and a single-call process sharing a private redis-server; no "
        "store: the same two processes, each with its own budget; batch alone: no single calls. sdk: traffic "
        'classes with their defaults (the batch bulk); baseline: the batch given `priority="interactive"` (first '
        "come, first served, as before classes). wait: a status() call from its start to its answer; makespan: "
        "release to push_shipments' return; ideal = (ceil(R/L)-1)*W with R = the batch's requests + the single "
        f"calls made in that run; 429s from the emulator's log, per process per server window. {rounds}."
    )
    table = [f"| {' | '.join(COLUMNS)} |", "|" + "---|" * len(COLUMNS)]
    checks: list[str] = []
    notes: list[str] = []
    for sdk, baseline in pairs:
        table += [row(sdk), row(baseline)]
        checks += targets(sdk, baseline)
        notes += [details(sdk), details(baseline)]
    body = "\n".join(
        [
            header,
            "",
            *table,
            "",
            "Targets (sdk rows; the baseline's figure beside each):",
            "",
            *(f"- {line}" for line in checks),
            "",
            "Runs:",
            "",
            *notes,
            "",
            f"Load average (1, 5, 15 min) before {load_before}, after {load_after}; total runtime {elapsed:.0f} s.",
        ]
    )
    print(body)
    if not args.no_record:
        command = f"python benchmarks/bench_mixed_traffic.py --rounds {args.rounds} --time-limit {args.time_limit:g}"
        if args.cases != list(CASES):
            command += f" --cases {','.join(c.replace(' ', '-') for c in args.cases)}"
        record("mixed-traffic", f"## Rate limit: a batch beside single calls\n\n`{command}` ({machine()})\n\n{body}\n")
        print(f"\nrecorded in {HERE / 'RESULTS.md'}")


def _cases(text: str) -> list[str]:
    names = {case.replace(" ", "-"): case for case in CASES}
    cases = [part for part in text.split(",") if part]
    unknown = sorted(set(cases) - set(names))
    if not cases or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(names)}, got {text!r}")
    return [names[part] for part in cases]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
