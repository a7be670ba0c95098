"""Fleet benchmark: P OS processes share one token's rate-limit budget through Redis (``redis_url=``).

Each case runs against a fresh emulator in a process of its own with its default (Laravel) settings,
L requests per W-second window (10 per 2 s), N = 120 ``sendcloud.status()`` calls split over P spawned
worker processes released at one moment (see rate_limit_processes.py). The fleet's clients name a
private redis-server on 127.0.0.1 that this benchmark starts (no persistence) and pass ``timeout=5`` (so
their Redis leases last 10 s). The emulator logs every request's arrival, status and sender (each worker
has its own User-Agent word), so requests and 429s are counted on the server's side per process per
server window, and cross-checked with the clients' own counters (``client.rate_limit.sent`` and
``.throttled``).

  fleet                 P = 2, 4, 8 with ``redis_url``; beside it, from the same run, the host budget (no
                        Redis: ``budget="host"``, one budget for the host's processes through a file; started
                        together, and 0.5 s apart; same target), and the baselines per-process (the SDK
                        with ``budget="process"``: a budget per process) and static-limiter
                        (``AsyncLimiter(L/P, W)`` per process). Target: every call succeeds, exactly N
                        requests, no 429, makespan <= 1.03 x ideal, ideal = (ceil(N/L)-1)*W.
  fleet, staggered      P = 4, worker i begins its calls 0.5*i s after the release (same target).
  fleet, skewed clocks  P = 4, half the workers with ``time.time`` 5 s ahead, half 5 s behind (same target).
  fleet, one killed     P = 4, one worker given 40 more calls holds its answers (requests in flight) and is
                        SIGKILLed about 1 s after the release; the others make the N calls. Target: the
                        survivors' calls all succeed with no 429, and the fleet's ``in_flight`` stops
                        counting the dead worker's leases within the lease time.
  fleet, Redis restart  P = 4, redis-server stopped 4 s after the release and started again on the same
                        port 2 s later. Target: no call fails, no 429 in windows that begin more than one
                        window after Redis came back.
  fleet + outside       P = 4 fleet with 100 calls and one more process without Redis making 20. Target:
                        at most one 429 per window summed over the fleet.
  cluster               P = 4 through a three-master Redis Cluster (``redis+cluster://``, no replicas) that
                        the benchmark starts on 127.0.0.1 (same target as fleet).
  latency               one process, emulator limit 100000: 500 sequential calls with the Redis budget and
                        500 with the in-process one (interleaved in blocks of 50); median and p90 per call,
                        and Redis EVAL/EVALSHA commands per request (``INFO commandstats``). Target: <= 2.

    python benchmarks/bench_fleet.py [--processes 2,4,8] [--stop-after 4] [--latency-calls 500] [--no-record]

A worker still calling --stop-after x ideal after the release is stopped; one that does not report
is terminated. Prints one table and the extra lines; records them in benchmarks/RESULTS.md (fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # tests.redis_server
from emulator_process import Seen, emulator_in_subprocess
from rate_limit_processes import TOKEN, Case, Job, Released, Run, run_case, run_workers, shares
from results import machine, record

from tests.redis_server import RedisClusterServers, RedisServer
from wemasy_async import WemasyClient
from wemasy_async._protocol import normalize_base_url
from wemasy_async.budgets._redis import RedisBudget, redis_keys

HERE = Path(__file__).parent
CALLS = 120
LIMIT = 10
WINDOW = 2.0
#: The fleet's clients' timeout: their leases last max(10, timeout + 5) = 10 s.
TIMEOUT = 5.0
LEASE = max(10.0, TIMEOUT + 5.0)
#: Fleet target: makespan within this factor of the ideal.
MAKESPAN_TARGET = 1.03
STAGGER = 0.5
SKEW = 5.0
KILL_AFTER = 1.0
#: Extra calls of the worker that is killed (it never finishes them).
VICTIM_CALLS = 40
#: The worker to be killed holds its answers (but a window's first) this long (less than TIMEOUT).
HOLD = 4.0
#: A lease older than this is held (the emulator answers in milliseconds).
HELD_AFTER = 0.3
REDIS_DOWN_AT, REDIS_UP_AT = 4.0, 6.0
OUTSIDE_CALLS = 20


def ideal_makespan(calls: int = CALLS) -> float:
    return (math.ceil(calls / LIMIT) - 1) * WINDOW


@attrs.define
class Row:
    """One line of the table."""

    case: str
    processes: int
    #: The calls the row's figures are about (for "one killed": the survivors').
    calls: int
    answered: int
    sent: int
    #: Requests the emulator saw from the row's processes (None: not logged, the baselines).
    server_sent: int | None
    throttled: int
    most_per_window: int
    failures: Counter[str]
    makespan: float
    complete: bool
    verdict: str = "baseline"

    def cells(self, ideal: float) -> list[str]:
        failed = sum(self.failures.values())
        failed_text = "0" if not failed else f"{failed}: " + ", ".join(f"{k} x{v}" for k, v in self.failures.items())
        stopped = "" if self.complete else " (stopped)"
        return [
            self.case,
            str(self.processes),
            str(self.calls),
            str(self.answered),
            str(self.sent),
            "-" if self.server_sent is None else str(self.server_sent),
            str(self.throttled),
            str(self.most_per_window),
            failed_text,
            f"{self.makespan:.3f}{stopped}",
            f"{self.makespan / ideal:.3f}",
            self.verdict,
        ]


def baseline_row(name: str, case: Case) -> Row:
    return Row(
        case=name,
        processes=case.processes,
        calls=case.calls,
        answered=case.answered,
        sent=case.sent,
        server_sent=None,
        throttled=case.throttled,
        most_per_window=case.most_throttled_per_window,
        failures=case.failures,
        makespan=case.makespan,
        complete=case.complete,
    )


def window_of(starts: list[float], at: float) -> int:
    """The index of the server window ``at`` fell in (0 before the first began)."""
    return bisect.bisect_right(starts, at)


def per_window(log: Iterable[Seen], starts: list[float], agents: set[str]) -> Counter[int]:
    """429s the emulator sent ``agents`` in each of its windows."""
    return Counter(window_of(starts, seen.at) for seen in log if seen.agent in agents and seen.status == 429)


def fleet_row(name: str, run: Run, workers: Sequence[int], split: Sequence[int]) -> Row:
    """The figures of the workers ``workers`` (indices into the run's jobs, whose calls ``split`` lists)."""
    reports = [run.reports[i] for i in workers]
    done = [r for r in reports if r is not None]
    lost = [i for i in workers if run.reports[i] is None]
    failures = Counter(name for r in done for name in r.failures)
    for i in lost:
        failures[f"worker {run.exits.get(i, 'lost')}"] += split[i]
    starts, log = run.server.window_starts, run.server.log
    agents = {agent(i) for i in workers}
    most = max((max(per_window(log, starts, {a}).values(), default=0) for a in agents), default=0)
    stopped = bool(lost) or any(r.stopped for r in done)
    last = run.ended if stopped else max((r.last_answer for r in done), default=run.started)
    return Row(
        case=name,
        processes=len(workers),
        calls=sum(split[i] for i in workers),
        answered=sum(r.answered for r in done),
        sent=sum(r.sent for r in done),
        server_sent=sum(1 for seen in log if seen.agent in agents),
        throttled=sum(r.throttled for r in done),
        most_per_window=most,
        failures=failures,
        makespan=last - run.started,
        complete=not stopped,
    )


def agent(i: int) -> str:
    return f"bench-worker-{i}"


def fleet_verdict(row: Row, ideal: float) -> str:
    """The fleet target: every call succeeds, exactly N requests, no 429, makespan <= 1.03 x ideal."""
    missed = []
    if row.answered != row.calls or row.failures.total() or not row.complete:
        missed.append("failed calls")
    if row.sent != row.calls or row.server_sent != row.calls:
        missed.append("requests != N")
    if row.throttled or row.most_per_window:
        missed.append("429s")
    if row.makespan > MAKESPAN_TARGET * ideal:
        missed.append("makespan")
    return "met" if not missed else "MISSED (" + ", ".join(missed) + ")"


def fleet_jobs(
    redis_url: str, calls: Sequence[int], time_limit: float, **per_worker: Callable[[int], Any]
) -> list[tuple[str, Job]]:
    """sdk jobs sharing the budget through ``redis_url``; ``per_worker`` sets further Job fields by index."""
    jobs = []
    for i, share in enumerate(calls):
        extra = {name: value(i) for name, value in per_worker.items()}
        job = Job("", share, LIMIT, WINDOW, len(calls), time_limit, redis_url=redis_url, timeout=TIMEOUT, **extra)
        jobs.append(("sdk", attrs.evolve(job, agent=agent(i))))
    return jobs


def run_host(calls: Sequence[int], time_limit: float, **per_worker: Callable[[int], Any]) -> Run:
    """sdk jobs without Redis sharing the budget through the host's file (a fresh directory for each run, so
    no file of an earlier run's server on the same port is met)."""
    os.environ["WEMASY_BUDGET_DIR"] = tempfile.mkdtemp(prefix="bench-fleet-host-")  # the spawned workers' too
    jobs = []
    for i, share in enumerate(calls):
        extra = {name: value(i) for name, value in per_worker.items()}
        job = Job("", share, LIMIT, WINDOW, len(calls), time_limit, timeout=TIMEOUT, budget="host", **extra)
        jobs.append(("sdk", attrs.evolve(job, agent=agent(i))))
    try:
        return run_workers(jobs, limit=LIMIT, window=WINDOW, time_limit=time_limit, log_requests=True)
    finally:
        shutil.rmtree(os.environ.pop("WEMASY_BUDGET_DIR"), ignore_errors=True)


def run_fleet(
    store: RedisServer | RedisClusterServers,
    calls: Sequence[int],
    time_limit: float,
    during: Callable[[Released], None] | None = None,
    extra: Sequence[tuple[str, Job]] = (),
    **per_worker: Callable[[int], Any],
) -> Run:
    store.flush()
    jobs = fleet_jobs(store.url, calls, time_limit, **per_worker) + list(extra)
    return run_workers(jobs, limit=LIMIT, window=WINDOW, time_limit=time_limit, during=during, log_requests=True)


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# --- one killed ------------------------------------------------------------------------------------


@attrs.define
class KillFigures:
    killed_after: float = math.nan
    #: Leases the dead worker held (granted more than HELD_AFTER s before the kill, still there after it).
    dead_leases: int = 0
    in_flight_after_kill: int = 0
    #: From the kill until no dead lease is counted in the fleet's in_flight (nan: not within the watch).
    cleared_after: float = math.nan
    in_flight_when_cleared: int = 0


def kill_one(redis_url: str, victim: int, figures: KillFigures) -> Callable[[Released], None]:
    """SIGKILL worker ``victim`` once it holds a lease, at least KILL_AFTER s after the release; then watch
    the fleet's in_flight (a RedisBudget view, which settles run-out leases as any call does) until
    the dead worker's leases are no longer counted."""

    async def watch(released: Released) -> None:
        base_url = normalize_base_url(released.base_url)
        leases_key = redis_keys(base_url, TOKEN)[1]
        budget = RedisBudget(redis_url, base_url, TOKEN, window_seconds=WINDOW, lease_seconds=LEASE)
        client = aioredis.Redis.from_url(redis_url)

        async def now() -> float:
            seconds, micros = await client.time()
            return seconds + micros / 1e6

        async def granted_before(moment: float) -> list[str]:
            """The leases granted before ``moment`` (Redis time) that are still there."""
            leases = cast(list[tuple[bytes, float]], await client.zrange(leases_key, 0, -1, withscores=True))
            return [member.decode() for member, deadline in leases if deadline - LEASE < moment]

        try:
            await asyncio.sleep(max(0.0, released.started + KILL_AFTER - time.monotonic()))
            give_up = time.monotonic() + 3 * WINDOW + HOLD
            while time.monotonic() < give_up:
                if await granted_before(await now() - HELD_AFTER):
                    break
                await asyncio.sleep(0.02)
            os.kill(released.pids[victim], signal.SIGKILL)
            killed_at = time.monotonic()
            figures.killed_after = killed_at - released.started
            at_kill = await now()
            await asyncio.sleep(HELD_AFTER)  # the survivors' requests of that moment are answered by now
            dead = await granted_before(at_kill)
            figures.dead_leases = len(dead)
            await budget.run("view")
            figures.in_flight_after_kill = budget.view().in_flight
            while time.monotonic() < killed_at + LEASE + 5:
                await budget.run("view")
                scores = await client.zmscore(leases_key, dead) if dead else []
                if all(score is None for score in scores):
                    figures.cleared_after = time.monotonic() - killed_at
                    figures.in_flight_when_cleared = budget.view().in_flight
                    return
                await asyncio.sleep(0.05)
        finally:
            await budget.aclose()
            await client.aclose()

    return lambda released: asyncio.run(watch(released))


# --- Redis restarted -------------------------------------------------------------------------------


@attrs.define
class RestartFigures:
    down_at: float = math.nan
    up_at: float = math.nan


def restart_redis(store: RedisServer, figures: RestartFigures) -> Callable[[Released], None]:
    def act(released: Released) -> None:
        sleep_until(released.started + REDIS_DOWN_AT)
        store.stop()
        figures.down_at = time.monotonic() - released.started
        sleep_until(released.started + REDIS_UP_AT)
        store.start()
        figures.up_at = time.monotonic() - released.started

    return act


# --- latency ---------------------------------------------------------------------------------------


@attrs.frozen
class Latency:
    local_ms: list[float]
    fleet_ms: list[float]
    requests: int
    scripts: int
    other_commands: int


def _command_calls(client: redis.Redis) -> Counter[str]:
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})


async def measure_latency(redis_url: str, calls: int) -> Latency:
    block = 50
    with emulator_in_subprocess(limit=100_000, window_seconds=WINDOW) as base_url:
        if urllib.parse.urlsplit(base_url).hostname != "127.0.0.1":
            raise RuntimeError(f"the emulator is not on 127.0.0.1: {base_url}")
        options: dict[str, Any] = {"token": TOKEN, "base_url": base_url, "window_seconds": WINDOW, "timeout": TIMEOUT}
        local_client = WemasyClient(**options, budget="process")
        async with local_client as local, WemasyClient(**options, redis_url=redis_url) as fleet:
            for client in (local, fleet):
                for _ in range(20):  # connections open, script loaded
                    await client.sendcloud.status()
            times: dict[str, list[float]] = {"local": [], "fleet": []}
            with redis.Redis.from_url(redis_url) as admin:
                before, sent_before = _command_calls(admin), fleet.rate_limit.sent
                for _ in range(math.ceil(calls / block)):
                    for name, client in (("local", local), ("fleet", fleet)):
                        for _ in range(min(block, calls - len(times[name]))):
                            began = time.perf_counter()
                            await client.sendcloud.status()
                            times[name].append((time.perf_counter() - began) * 1000)
                after, requests = _command_calls(admin), fleet.rate_limit.sent - sent_before
    used = after - before
    used.pop("info", None)
    scripts = used.pop("evalsha", 0) + used.pop("eval", 0)
    # Commands a script runs (TIME, HGETALL, ZADD, PUBLISH...) are counted too; the rest are the client's own.
    inside = {"time", "hgetall", "hset", "hdel", "pexpire", "exists", "zadd", "zrem", "zcard", "zrangebyscore"}
    inside.add("publish")
    other = sum(count for name, count in used.items() if name not in inside)
    return Latency(times["local"], times["fleet"], requests, scripts, other)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


# --- the run ---------------------------------------------------------------------------------------

CASES = ("fleet", "staggered", "skewed", "killed", "restart", "outside", "cluster", "latency")


class Bench:
    """The cases, in order; each adds its rows to the table and its extra lines."""

    def __init__(self, store: RedisServer, time_limit: float) -> None:
        self.store = store
        self.time_limit = time_limit
        self.ideal = ideal_makespan()
        self.rows: list[Row] = []
        self.lines: list[str] = []

    def add(self, row: Row, verdict: str | None = None) -> Row:
        if verdict is not None:
            row.verdict = verdict
        self.rows.append(row)
        if row.server_sent is not None and row.sent != row.server_sent:
            self.lines.append(
                f"{row.case} x{row.processes}: the clients' `rate_limit.sent` adds up to {row.sent}, the emulator saw "
                f"{row.server_sent} requests from them."
            )
        print(f"  {row.case} x{row.processes}: {row.makespan:.1f} s, {row.verdict}", file=sys.stderr, flush=True)
        return row

    def fleet(self, processes: Sequence[int]) -> None:
        """1, 2: the fleet beside the host budget (no Redis; started together and STAGGER s apart) and the
        baselines, for each P."""
        for count in processes:
            split = shares(CALLS, count)
            row = fleet_row("fleet", run_fleet(self.store, split, self.time_limit), range(count), split)
            self.add(row, fleet_verdict(row, self.ideal))
            row = fleet_row("host (no Redis)", run_host(split, self.time_limit), range(count), split)
            self.add(row, fleet_verdict(row, self.ideal))
            run = run_host(split, self.time_limit, start_delay=lambda i: STAGGER * i)
            row = fleet_row(f"host, staggered (+{STAGGER:g} s each)", run, range(count), split)
            self.add(row, fleet_verdict(row, self.ideal))
            for approach, name in (("sdk", "per-process"), ("static-limiter", "static-limiter")):
                case = run_case(
                    approach, CALLS, limit=LIMIT, window=WINDOW, processes=count, time_limit=self.time_limit
                )
                self.add(baseline_row(name, case))

    def cluster(self) -> None:
        """P = 4 through a three-master Redis Cluster (``redis+cluster://``) the benchmark starts."""
        servers = RedisClusterServers()
        servers.start()
        try:
            split = shares(CALLS, 4)
            run = run_fleet(servers, split, self.time_limit)
            row = fleet_row("fleet on a Redis Cluster (3 masters)", run, range(4), split)
            self.add(row, fleet_verdict(row, self.ideal))
        finally:
            servers.stop()
            shutil.rmtree(servers.directory, ignore_errors=True)

    def staggered(self) -> None:
        split = shares(CALLS, 4)
        run = run_fleet(self.store, split, self.time_limit, start_delay=lambda i: STAGGER * i)
        row = fleet_row(f"fleet, staggered (+{STAGGER:g} s each)", run, range(4), split)
        self.add(row, fleet_verdict(row, self.ideal))

    def skewed(self) -> None:
        split = shares(CALLS, 4)
        run = run_fleet(self.store, split, self.time_limit, clock_skew=lambda i: SKEW if i < 2 else -SKEW)
        row = fleet_row(f"fleet, skewed clocks (+/-{SKEW:g} s)", run, range(4), split)
        self.add(row, fleet_verdict(row, self.ideal))

    def killed(self) -> None:
        """5: the last worker is killed; the survivors make the N calls."""
        kill = KillFigures()
        victim = 3
        split = [*shares(CALLS, 3), VICTIM_CALLS]
        run = run_fleet(
            self.store,
            split,
            self.time_limit,
            during=kill_one(self.store.url, victim, kill),
            hold_answers=lambda i: HOLD if i == victim else 0.0,
        )
        row = fleet_row("fleet, one killed (3 survivors)", run, range(3), split)
        cleared = kill.cleared_after <= LEASE
        met = row.answered == CALLS and not row.failures and row.complete and not row.throttled and cleared
        self.add(row, "met" if met else "MISSED")
        victim_seen = sum(1 for seen in run.server.log if seen.agent == agent(victim))
        self.lines.append(
            f"fleet, one killed: worker {victim} ({VICTIM_CALLS} calls of its own, answers but a window's first held "
            f"{HOLD:g} s) SIGKILLed {kill.killed_after:.2f} s after the release holding {kill.dead_leases} "
            f"lease(s); {victim_seen} of its requests reached the emulator; its calls are left out of the row "
            f"({run.exits.get(victim, 'it was not killed')}). Fleet in_flight right after the kill: "
            f"{kill.in_flight_after_kill}; the dead leases left it {kill.cleared_after:.2f} s after the kill "
            f"(target <= lease {LEASE:g} s: {'met' if cleared else 'MISSED'}). Survivors: {row.answered}/{CALLS} "
            f"calls answered, {row.throttled} x 429, makespan {row.makespan:.2f} s "
            f"({row.makespan / self.ideal:.3f} x ideal)."
        )

    def restart(self) -> None:
        """6: redis-server stopped and started again (empty) while the fleet runs."""
        restart = RestartFigures()
        split = shares(CALLS, 4)
        run = run_fleet(self.store, split, self.time_limit, during=restart_redis(self.store, restart))
        row = fleet_row("fleet, Redis restarted", run, range(4), split)
        starts = run.server.window_starts
        up = run.started + restart.up_at
        late = [
            seen
            for seen in run.server.log
            if seen.status == 429
            and window_of(starts, seen.at)
            and starts[window_of(starts, seen.at) - 1] > up + WINDOW
        ]
        failed = sum(row.failures.values())
        self.add(row, "met" if not failed and not late and row.complete else "MISSED")
        events = [
            (at - run.started, backend, reason)
            for report in run.reports
            if report is not None
            for at, backend, reason in report.budget_events
        ]
        left = sorted(at for at, backend, _ in events if backend == "local")
        back = sorted(at for at, backend, _ in events if backend == "redis")
        reasons = Counter(reason[:80] for _, backend, reason in events if backend == "local")
        self.lines.append(
            f"fleet, Redis restarted: redis-server stopped {restart.down_at:.2f} s after the release and started "
            f"again (same port, empty) at {restart.up_at:.2f} s; the workers left Redis at "
            f"{', '.join(f'{t:.2f}' for t in left) or '-'} s and came back at "
            f"{', '.join(f'{t:.2f}' for t in back) or '-'} s (why they left: "
            f"{'; '.join(f'{reason!r} x{n}' for reason, n in reasons.items()) or '-'}). "
            f"Failed calls {failed} (target 0); "
            f"{row.throttled} x 429 in all, at most {row.most_per_window} per process per window; {len(late)} x 429 "
            f"in windows that began more than one window after Redis came back (target 0: "
            f"{'met' if not late else 'MISSED'}). 429s by server window (its start, s after the release: count): "
            f"{_by_window(run, set(map(agent, range(4))))}."
        )

    def outside(self) -> None:
        """7: the fleet and one more process with its own budget."""
        outsider = ("sdk", Job("", OUTSIDE_CALLS, LIMIT, WINDOW, 1, self.time_limit, timeout=TIMEOUT, agent=agent(4)))
        split = [*shares(CALLS - OUTSIDE_CALLS, 4), OUTSIDE_CALLS]
        run = run_fleet(self.store, split[:4], self.time_limit, extra=[outsider])
        starts, log = run.server.window_starts, run.server.log
        fleet_windows = per_window(log, starts, set(map(agent, range(4))))
        outside_windows = per_window(log, starts, {agent(4)})
        worst = max(fleet_windows.values(), default=0)
        self.add(fleet_row("fleet + outside client: fleet", run, range(4), split), "met" if worst <= 1 else "MISSED")
        self.add(fleet_row("fleet + outside client: outside", run, [4], split), "-")
        self.lines.append(
            f"fleet + outside client: the fleet got {sum(fleet_windows.values())} x 429, at most {worst} in one "
            f"window fleet-wide (target <= 1: {'met' if worst <= 1 else 'MISSED'}), in {len(fleet_windows)} of "
            f"{len(starts)} windows; the outside client (no Redis, {OUTSIDE_CALLS} calls): "
            f"{sum(outside_windows.values())} x 429, at most {max(outside_windows.values(), default=0)} in one "
            f"window. 429s by server window, fleet: {_by_window(run, set(map(agent, range(4))))}; outside: "
            f"{_by_window(run, {agent(4)})}."
        )

    def latency(self, calls: int) -> None:
        """8: added latency per call with no rate-limit pressure, and Redis commands per request."""
        self.store.flush()
        figures = asyncio.run(measure_latency(self.store.url, calls))
        local, fleet = figures.local_ms, figures.fleet_ms
        added = statistics.median(fleet) - statistics.median(local)
        per_request = figures.scripts / max(1, figures.requests)
        self.lines.append(
            f"latency ({calls} sequential calls each way in one process, emulator limit 100000): in-process budget "
            f"median {statistics.median(local):.3f} ms, p90 {p90(local):.3f} ms; Redis budget median "
            f"{statistics.median(fleet):.3f} ms, p90 {p90(fleet):.3f} ms; added {added:.3f} ms per call (median). "
            f"Redis EVALSHA/EVAL per request: {per_request:.2f} ({figures.scripts} for {figures.requests}; target "
            f"<= 2: {'met' if per_request <= 2 else 'MISSED'}); other commands sent by the client: "
            f"{figures.other_commands}."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=_counts, default=[2, 4, 8], help="fleet sizes, comma-separated")
    parser.add_argument("--stop-after", type=float, default=4.0, help="stop a case after this many x ideal")
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--cases", type=_cases, default=list(CASES), help=f"some of {','.join(CASES)}")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    began = time.monotonic()
    store = RedisServer()
    store.start()
    bench = Bench(store, args.stop_after * ideal_makespan())
    try:
        for case in args.cases:
            if case == "fleet":
                bench.fleet(args.processes)
            elif case == "latency":
                bench.latency(args.latency_calls)
            else:
                getattr(bench, case)()
    finally:
        store.stop()
        shutil.rmtree(store.directory, ignore_errors=True)

    ideal = bench.ideal
    header = (
        f"{CALLS} calls of `sendcloud.status()`, one token, split over P spawned processes released together; "
        f"limit {LIMIT} per {WINDOW:g} s window; the emulator in a process of its own with its default settings, "
        f"fresh for each row; ideal makespan (ceil(N/L)-1)*W = {ideal:.2f} s. fleet: the SDK with `redis_url` (a "
        f"private redis-server) and `timeout={TIMEOUT:g}` (leases {LEASE:g} s); host: the SDK without Redis and "
        '`budget="host"`, shared by the host\'s processes through a file; per-process: the SDK without Redis and '
        '`budget="process"` (the default); '
        "static-limiter: AsyncLimiter(L/P, W) per process. Fleet rows: requests and 429s per process per server "
        "window from the emulator's log (each worker has its own User-Agent), 429s also from the clients' "
        "counters (they agree); baselines: from the workers' side. Fleet target: every call succeeds, exactly N "
        f"requests, 0 x 429, makespan <= {MAKESPAN_TARGET} x ideal = {MAKESPAN_TARGET * ideal:.2f} s."
    )
    columns = [
        "case",
        "P",
        "calls",
        "answered",
        "requests (clients)",
        "requests (emulator)",
        "429s",
        "most 429s in one window (one process)",
        "failed calls",
        "makespan s",
        "/ ideal",
        "target",
    ]
    table = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    table += [f"| {' | '.join(row.cells(ideal))} |" for row in bench.rows]
    elapsed = time.monotonic() - began
    extra = [f"- {line}" for line in bench.lines]
    body = "\n".join([header, "", *table, "", *extra, "", f"Total runtime {elapsed:.0f} s."])
    print(body)
    if not args.no_record:
        command = (
            f"python benchmarks/bench_fleet.py --processes {','.join(map(str, args.processes))} "
            f"--stop-after {args.stop_after:g} --latency-calls {args.latency_calls}"
        )
        section, title = "fleet", "one budget for a fleet (Redis)"
        if args.cases != list(CASES):
            command += f" --cases {','.join(args.cases)}"
            # Some cases only: a section of their own, so the whole run's table stays as it was recorded.
            section, title = f"fleet-{'-'.join(args.cases)}", f"a fleet, {', '.join(args.cases)} only"
        record(section, f"## Rate limit: {title}\n\n`{command}` ({machine()})\n\n{body}\n")
        print(f"\nrecorded in {HERE / 'RESULTS.md'}")


def _by_window(run: Run, agents: set[str]) -> str:
    starts = run.server.window_starts
    counts = per_window(run.server.log, starts, agents)
    return ", ".join(f"{starts[w - 1] - run.started:.1f}: {n}" for w, n in sorted(counts.items()) if w) or "none"


def _cases(text: str) -> list[str]:
    cases = [part for part in text.split(",") if part]
    unknown = sorted(set(cases) - set(CASES))
    if not cases or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(CASES)}, got {text!r}")
    return cases


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive process counts such as 2,4,8, got {text!r}")
    return counts


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
