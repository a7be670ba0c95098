"""The multi-process case of bench_rate_limit.py: P OS processes call with one token, each with its own client.

For every (approach, P) the emulator runs in a fresh process of its own, with its default (Laravel)
settings, and P worker processes are spawned. Each worker imports everything, opens its client or
session, says it is ready and waits; all are released by one event at the same moment. The makespan
runs from that release to the last answer of the last worker.

The emulator's request log is discarded in its process, so each worker counts from its own side; the
emulator keeps only when each of its windows began, so 429s are counted per server window. All
processes share ``time.monotonic()`` (one machine), so their times compare directly:
  sdk             the budget's counters (``client.rate_limit.sent`` and ``.throttled``), and the moment
                  each 429 was read (a ``RetryEvent`` with cause ``429``, or a call raising
                  ``RateLimitError``).
  bare loops      every request they send, and the send time of each that was answered 429.

A load test must stop by itself: a worker stops its calls ``time_limit`` seconds after the release and
reports what it has; one that has not reported a few seconds later is terminated.

:func:`run_workers` is the general form (used by bench_fleet.py): each worker gets its own approach and
:class:`Job` (an sdk job may name a Redis to share one budget through, start late, run with a shifted
wall clock, or hold its answers), something may act on the workers while they run, and the emulator
process can keep a log of every request (its time, status, path and the sender's User-Agent).

The ``sdk-mixed`` approach (used by bench_mixed_traffic.py) makes a worker's traffic of two kinds: a batch
(``push_shipments`` of ``batch_ids`` ids in chunks) and single ``status()`` calls begun every
``status_every`` seconds until the run's batch has ended, in this worker or another (the worker whose batch
it is sets an event every worker of the run shares).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.synchronize
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import aiohttp
import attrs
from aiolimiter import AsyncLimiter
from emulator_process import ServerStats, emulator_with_stats_in_subprocess

from wemasy_async import BudgetEvent, RateLimitError, RetryEvent, WaitEvent, WemasyClient
from wemasy_async.budgets import Priority

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
TOKEN = "bench-token"
#: The naive retry loop sleeps what Retry-After says, but at least this long, so "0" cannot spin a core.
RETRY_FLOOR = 0.01
#: Seconds a spawned worker may take to import everything and open its client.
READY_TIMEOUT = 120.0
#: Seconds after its time limit a worker has to report before it is terminated.
GRACE = 10.0


@attrs.frozen
class Job:
    """One worker's part of a case (picklable: it crosses to the spawned process)."""

    base_url: str
    calls: int
    limit: int
    window: float
    processes: int
    #: Seconds after the release at which the worker stops its calls.
    time_limit: float
    #: sdk: share the budget through this Redis (``redis://127.0.0.1:port/0``); None: the process's own.
    redis_url: str | None = None
    #: sdk: the client's ``budget=``: ``process`` (each worker on its own, as before the host budget) or
    #: ``host`` (the workers share one through a file).
    budget: str = "process"
    #: sdk: the client's ``timeout`` (its Redis leases last ``max(10, timeout + 5)`` seconds).
    timeout: float = 30.0
    #: Seconds after the release at which the worker begins its calls.
    start_delay: float = 0.0
    #: Seconds added to ``time.time()`` in the worker (a host whose wall clock is off).
    clock_skew: float = 0.0
    #: sdk: hold each answer this long before the client sees it (requests in flight, for a worker that is
    #: to be killed), except the first of a server window (``X-RateLimit-Remaining`` = limit - 1), which
    #: may be the probe the whole fleet waits on.
    hold_answers: float = 0.0
    #: The first word of the worker's User-Agent, so the emulator's log can tell the workers apart.
    agent: str | None = None
    #: sdk-mixed: push the order ids 1..``batch_ids`` with ``push_shipments`` (0: no batch).
    batch_ids: int = 0
    chunk_size: int = 50
    #: sdk-mixed: the batch's ``priority=`` (None: the SDK's default, bulk for more than one chunk).
    priority: Priority | None = None
    #: sdk-mixed: begin a ``status()`` call every this many seconds from the release (0: none), each in a
    #: task of its own, until the run's batch has ended (or the time limit).
    status_every: float = 0.0


@attrs.define
class WorkerReport:
    """What one worker process saw, from its own side."""

    calls: int
    #: Requests sent (sdk: ``client.rate_limit.sent``).
    sent: int = 0
    #: Calls that ended in a 200.
    answered: int = 0
    #: 429 answers (sdk: ``client.rate_limit.throttled``).
    throttled: int = 0
    #: When each 429 was sent (bare loops) or read (sdk); monotonic seconds.
    throttle_times: list[float] = attrs.field(factory=list)
    #: One entry per failed call: the exception's type name, ``HTTP <status>``, or ``unfinished``.
    failures: list[str] = attrs.field(factory=list)
    #: When the worker's last call ended; monotonic seconds.
    last_answer: float = 0.0
    #: The worker stopped its calls at its time limit.
    stopped: bool = False
    #: sdk with Redis: when (monotonic seconds) the budget left Redis ("local") and came back ("redis"), and why.
    budget_events: list[tuple[float, str, str]] = attrs.field(factory=list)
    #: sdk-mixed: each status() call as (seconds after the release it began, seconds until it ended).
    single_calls: list[tuple[float, float]] = attrs.field(factory=list)
    #: sdk-mixed: when the batch ended (monotonic seconds; 0: no batch), the push requests its result is
    #: made of, and whether every id was accepted.
    batch_ended: float = 0.0
    batch_requests: int = 0
    batch_ok: bool = False
    #: sdk-mixed: the client's WaitEvents, counted by (priority, reason).
    waits: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    #: sdk-mixed: the client's ``rate_limit`` view at the end (its counters and ``reserved``).
    rate_limit: dict[str, float] = attrs.field(factory=dict)

    def most_throttled_per_window(self, starts: list[float]) -> int:
        """The most 429s in one of the server's windows (``starts``: when each began, in order)."""
        per_window = Counter(bisect.bisect_right(starts, at) for at in self.throttle_times)
        return max(per_window.values(), default=0)


Release = Callable[[], float]
Approach = Callable[[Job, Release, WorkerReport], Coroutine[Any, Any, None]]


async def _run_calls(calls: Iterable[Coroutine[Any, Any, None]], deadline: float, report: WorkerReport) -> None:
    """Run the calls at once until they end or the deadline passes; cancel and count what is left."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    if pending:
        report.stopped = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        report.failures += ["unfinished"] * len(pending)


def _held_session(hold: float, limit: int) -> aiohttp.ClientSession:
    """A session that keeps each answer but a window's first from its caller for ``hold`` seconds."""

    async def on_request_end(_: object, __: object, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.headers.get("X-RateLimit-Remaining") != str(limit - 1):
            await asyncio.sleep(hold)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return aiohttp.ClientSession(trace_configs=[trace])


async def via_sdk(job: Job, release: Release, report: WorkerReport) -> None:
    def on_event(event: WaitEvent | RetryEvent | BudgetEvent) -> None:
        if isinstance(event, RetryEvent) and event.cause == "429":
            report.throttle_times.append(time.monotonic())
        elif isinstance(event, BudgetEvent):
            report.budget_events.append((time.monotonic(), event.backend, event.reason))

    async with contextlib.AsyncExitStack() as stack:
        session = (
            await stack.enter_async_context(_held_session(job.hold_answers, job.limit)) if job.hold_answers else None
        )
        client = WemasyClient(
            token=TOKEN,
            base_url=job.base_url,
            window_seconds=job.window,
            on_event=on_event,
            redis_url=job.redis_url,
            budget=job.budget,
            timeout=job.timeout,
            user_agent=job.agent,
            session=session,
        )
        await stack.enter_async_context(client)

        async def one() -> None:
            try:
                await client.sendcloud.status()
            except Exception as exc:
                if isinstance(exc, RateLimitError):  # a 429 the client gave up on: no RetryEvent for it
                    report.throttle_times.append(time.monotonic())
                report.failures.append(type(exc).__name__)
            else:
                report.answered += 1
            report.last_answer = time.monotonic()

        deadline = release()
        try:
            await _run_calls((one() for _ in range(job.calls)), deadline, report)
        finally:
            view = client.rate_limit
            report.sent, report.throttled = view.sent, view.throttled


def _session(agent: str | None = None) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    if agent is not None:
        headers["User-Agent"] = agent
    return aiohttp.ClientSession(headers=headers)


async def _get(session: aiohttp.ClientSession, url: str, report: WorkerReport) -> tuple[int, str | None]:
    """Send one request; count it; return its status and Retry-After."""
    sent_at = time.monotonic()
    report.sent += 1
    async with session.get(url) as response:
        await response.read()
    if response.status == 429:
        report.throttled += 1
        report.throttle_times.append(sent_at)
    return response.status, response.headers.get("Retry-After")


def _ended(report: WorkerReport, status: int) -> None:
    if status == 200:
        report.answered += 1
    else:
        report.failures.append(f"HTTP {status}")
    report.last_answer = time.monotonic()


async def via_static_limiter(job: Job, release: Release, report: WorkerReport) -> None:
    limiter = AsyncLimiter(job.limit / job.processes, job.window)  # this process's share of the limit
    async with _session(job.agent) as session:

        async def one() -> None:
            try:
                while True:
                    async with limiter:
                        status, _ = await _get(session, job.base_url + STATUS, report)
                    if status != 429:
                        break
            except Exception as exc:
                report.failures.append(type(exc).__name__)
                report.last_answer = time.monotonic()
            else:
                _ended(report, status)

        await _run_calls((one() for _ in range(job.calls)), release(), report)


async def via_retry_gather(job: Job, release: Release, report: WorkerReport) -> None:
    async with _session(job.agent) as session:

        async def one() -> None:
            try:
                while True:
                    status, retry_after = await _get(session, job.base_url + STATUS, report)
                    if status != 429:
                        break
                    await asyncio.sleep(max(RETRY_FLOOR, float(retry_after or "1")))
            except Exception as exc:
                report.failures.append(type(exc).__name__)
                report.last_answer = time.monotonic()
            else:
                _ended(report, status)

        await _run_calls((one() for _ in range(job.calls)), release(), report)


#: In a worker process: the run's event that its batch has ended (set by the worker whose batch it is).
_batch_done: multiprocessing.synchronize.Event | None = None


@attrs.define
class _Mixed:
    """One sdk-mixed worker's client and report while it runs."""

    job: Job
    client: WemasyClient
    report: WorkerReport
    started: float = 0.0
    deadline: float = math.inf
    batch_over: asyncio.Event = attrs.field(factory=asyncio.Event)

    def batch_ended(self) -> bool:
        return self.batch_over.is_set() or (_batch_done is not None and _batch_done.is_set())

    async def batch(self) -> None:
        report = self.report
        try:
            result = await self.client.sendcloud.push_shipments(
                range(1, self.job.batch_ids + 1),
                chunk_size=self.job.chunk_size,
                priority=self.job.priority,
            )
        except Exception as exc:
            report.failures.append(f"batch {type(exc).__name__}")
        else:
            report.batch_requests, report.batch_ok = result.requests, result.ok
            if result.ok:
                report.answered += 1
            else:
                report.failures.append("batch ids not accepted")
        finally:
            report.batch_ended = report.last_answer = time.monotonic()
            self.batch_over.set()
            if _batch_done is not None:
                _batch_done.set()

    async def single(self) -> None:
        report = self.report
        began = time.monotonic()
        try:
            await self.client.sendcloud.status()
        except Exception as exc:
            if isinstance(exc, RateLimitError):  # a 429 the client gave up on: no RetryEvent for it
                report.throttle_times.append(time.monotonic())
            report.failures.append(type(exc).__name__)
        else:
            report.answered += 1
        finally:
            report.last_answer = time.monotonic()
            report.single_calls.append((began - self.started, report.last_answer - began))

    async def singles(self) -> None:
        """A status() call begun every ``status_every`` s, each in a task of its own, until the batch ends."""
        calls: list[asyncio.Future[None]] = []
        for k in itertools.count():
            await asyncio.sleep(max(0.0, self.started + k * self.job.status_every - time.monotonic()))
            if self.batch_ended() or time.monotonic() >= self.deadline:
                break
            calls.append(asyncio.ensure_future(self.single()))
        await asyncio.gather(*calls)  # cancelled with this task: then so are they

    def note_view(self) -> None:
        view = self.client.rate_limit
        self.report.sent, self.report.throttled = view.sent, view.throttled
        self.report.rate_limit = {
            "sent": view.sent,
            "interactive_sent": view.interactive_sent,
            "throttled": view.throttled,
            "waited_seconds": view.waited_seconds,
            "interactive_waited_seconds": view.interactive_waited_seconds,
            "reserved": view.reserved,
        }


async def via_sdk_mixed(job: Job, release: Release, report: WorkerReport) -> None:
    """A batch (``job.batch_ids``), single calls begun every ``job.status_every`` s while it lasts, or both."""

    def on_event(event: WaitEvent | RetryEvent | BudgetEvent) -> None:
        if isinstance(event, WaitEvent):
            report.waits[(event.priority, event.reason)] += 1
        elif isinstance(event, RetryEvent) and event.cause == "429":
            report.throttle_times.append(time.monotonic())

    client = WemasyClient(
        token=TOKEN,
        base_url=job.base_url,
        window_seconds=job.window,
        on_event=on_event,
        redis_url=job.redis_url,
        budget=job.budget,
        timeout=job.timeout,
        user_agent=job.agent,
    )
    async with client:
        mixed = _Mixed(job, client, report)
        mixed.deadline = release()
        mixed.started = time.monotonic()
        work: list[Coroutine[Any, Any, None]] = []
        if job.batch_ids:
            work.append(mixed.batch())
        if job.status_every > 0:
            work.append(mixed.singles())
        try:
            await _run_calls(work, mixed.deadline, report)
        finally:
            mixed.note_view()


#: The approaches bench_rate_limit.py compares.
APPROACHES: dict[str, Approach] = {
    "sdk": via_sdk,
    "static-limiter": via_static_limiter,
    "retry-gather": via_retry_gather,
}
#: Every approach a worker can run: those, and a batch beside single calls (bench_mixed_traffic.py).
WORKER_APPROACHES: dict[str, Approach] = {**APPROACHES, "sdk-mixed": via_sdk_mixed}


def work(
    approach: str,
    job: Job,
    go: multiprocessing.synchronize.Event,
    conn: multiprocessing.connection.Connection,
    batch_done: multiprocessing.synchronize.Event | None = None,
) -> None:
    """A worker process: get ready, say so, wait for the release, make the calls, send the report."""
    global _batch_done  # one per worker process: the run's event, for sdk-mixed
    _batch_done = batch_done
    report = WorkerReport(calls=job.calls)
    if job.clock_skew:
        wall_clock = time.time
        time.time = lambda: wall_clock() + job.clock_skew  # before any client exists

    def release() -> float:
        conn.send("ready")
        go.wait()  # blocks the loop, on purpose: nothing runs on it before the release
        deadline = time.monotonic() + job.time_limit
        if job.start_delay > 0:
            time.sleep(job.start_delay)  # likewise: this worker begins late
        return deadline

    asyncio.run(WORKER_APPROACHES[approach](job, release, report))
    conn.send(report)
    conn.close()


@attrs.frozen
class Case:
    """One approach with P processes."""

    approach: str
    processes: int
    calls: int
    window: float
    #: From the release to the last answer of the last worker (or to when the case was given up).
    makespan: float
    reports: tuple[WorkerReport, ...]
    #: Per worker without a report: why ("terminated", or its exit code) and its calls, all counted as failed.
    lost: tuple[tuple[str, int], ...]
    #: When the server's windows began (monotonic seconds), as its throttle counted them.
    window_starts: list[float] = attrs.field(factory=list)

    @property
    def complete(self) -> bool:
        return not self.lost and not any(r.stopped for r in self.reports)

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.reports)

    @property
    def answered(self) -> int:
        return sum(r.answered for r in self.reports)

    @property
    def throttled(self) -> int:
        return sum(r.throttled for r in self.reports)

    @property
    def throttle_times_seen(self) -> int:
        return sum(len(r.throttle_times) for r in self.reports)

    @property
    def most_throttled_per_window(self) -> int:
        """The most 429s one process received in one of the server's windows."""
        return max((r.most_throttled_per_window(self.window_starts) for r in self.reports), default=0)

    @property
    def failures(self) -> Counter[str]:
        counts = Counter(name for r in self.reports for name in r.failures)
        for reason, calls in self.lost:
            counts[f"worker {reason}"] += calls
        return counts


def shares(calls: int, processes: int) -> list[int]:
    """``calls`` split as evenly as it goes over ``processes``."""
    return [calls // processes + (i < calls % processes) for i in range(processes)]


@attrs.frozen
class Released:
    """What acts on the workers while they run gets: the moment of the release, the workers' process ids
    (in the order of the jobs) and the emulator's base URL."""

    started: float
    pids: tuple[int, ...]
    base_url: str


@attrs.frozen
class Run:
    """What :func:`run_workers` saw."""

    started: float
    #: When the last worker reported (or was given up).
    ended: float
    #: By worker, in the order of the jobs; None for a worker that sent no report.
    reports: tuple[WorkerReport | None, ...]
    #: Per worker without a report: why ("terminated", or its exit code).
    exits: dict[int, str]
    #: The emulator's own count (and, with ``log_requests``, its log).
    server: ServerStats


def run_workers(
    workers: Sequence[tuple[str, Job]],
    *,
    limit: int,
    window: float,
    time_limit: float,
    during: Callable[[Released], None] | None = None,
    log_requests: bool = False,
) -> Run:
    """Run each (approach, job) in a spawned worker against a fresh emulator process; release them together.

    The jobs' ``base_url`` is replaced by the emulator's. ``during`` runs in a thread from the release on
    (it must end by itself, within ``time_limit``); the run waits for it before asking the emulator for
    its figures.
    """
    with emulator_with_stats_in_subprocess(limit=limit, window_seconds=window, log_requests=log_requests) as (
        base_url,
        server,
    ):
        if urllib.parse.urlsplit(base_url).hostname != "127.0.0.1":
            raise RuntimeError(f"the emulator is not on 127.0.0.1: {base_url}")
        context = multiprocessing.get_context("spawn")
        spawned = _Spawned(go=context.Event(), batch_done=context.Event())
        try:
            spawned.start(workers, base_url)
            started = time.monotonic()
            spawned.go.set()
            acting = _Acting.start(during, Released(started, spawned.pids(), base_url))
            reports, exits = spawned.collect(give_up=started + time_limit + GRACE)
            ended = time.monotonic()
            acting.finish(by=started + time_limit + GRACE)
            stats = server()
        finally:
            spawned.stop()
    return Run(
        started=started,
        ended=ended,
        reports=tuple(reports.get(i) for i in range(len(workers))),
        exits=exits,
        server=stats,
    )


@attrs.define
class _Spawned:
    """The worker processes of one run and the pipes they report on."""

    go: multiprocessing.synchronize.Event
    #: Set by a sdk-mixed worker when its batch ends (the others' single calls stop).
    batch_done: multiprocessing.synchronize.Event
    children: list[multiprocessing.context.SpawnProcess] = attrs.field(factory=list)
    pipes: list[multiprocessing.connection.Connection] = attrs.field(factory=list)

    def start(self, workers: Sequence[tuple[str, Job]], base_url: str) -> None:
        """Spawn every worker and wait until each says it is ready."""
        context = multiprocessing.get_context("spawn")
        for approach, job in workers:
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=work,
                args=(approach, attrs.evolve(job, base_url=base_url), self.go, sender, self.batch_done),
                daemon=True,
            )
            child.start()
            sender.close()  # the child holds the only sending end: its death reads as EOF
            self.children.append(child)
            self.pipes.append(receiver)
        ready_by = time.monotonic() + READY_TIMEOUT
        for (approach, _), child, pipe in zip(workers, self.children, self.pipes, strict=True):
            if not pipe.poll(max(0.0, ready_by - time.monotonic())):
                raise RuntimeError(f"a {approach} worker was not ready within {READY_TIMEOUT:g} s")
            try:
                pipe.recv()
            except EOFError:
                raise RuntimeError(f"a {approach} worker died before the release: {child.exitcode}") from None

    def pids(self) -> tuple[int, ...]:
        return tuple(child.pid or 0 for child in self.children)

    def collect(self, *, give_up: float) -> tuple[dict[int, WorkerReport], dict[int, str]]:
        """Each worker's report, by index, and why the others sent none (by ``give_up`` at the latest)."""
        reports: dict[int, WorkerReport] = {}
        exits: dict[int, str] = {}
        waiting = {pipe: i for i, pipe in enumerate(self.pipes)}
        while waiting and time.monotonic() < give_up:
            for ready in multiprocessing.connection.wait(list(waiting), max(0.0, give_up - time.monotonic())):
                assert isinstance(ready, multiprocessing.connection.Connection)
                i = waiting.pop(ready)
                try:
                    reports[i] = ready.recv()
                except EOFError:
                    self.children[i].join(5)
                    exits[i] = f"exit code {self.children[i].exitcode}"
        for i in waiting.values():
            exits[i] = "terminated"
        return reports, exits

    def stop(self) -> None:
        for child, pipe in zip(self.children, self.pipes, strict=True):
            if child.is_alive():
                child.terminate()
            child.join(10)
            pipe.close()


@attrs.define
class _Acting:
    """What acts on the workers while they run (``run_workers(during=...)``), in a thread of its own."""

    thread: threading.Thread | None = None
    problems: list[BaseException] = attrs.field(factory=list)

    @classmethod
    def start(cls, during: Callable[[Released], None] | None, released: Released) -> _Acting:
        acting = cls()
        if during is None:
            return acting

        def act() -> None:
            try:
                during(released)
            except BaseException as exc:  # raised again in the parent's thread, by finish()
                acting.problems.append(exc)

        acting.thread = threading.Thread(target=act, daemon=True)
        acting.thread.start()
        return acting

    def finish(self, *, by: float) -> None:
        if self.thread is not None:
            self.thread.join(max(0.0, by - time.monotonic()))
            if self.thread.is_alive():
                raise RuntimeError("what acted on the workers did not end within the time limit")
        if self.problems:
            raise self.problems[0]


def run_case(approach: str, calls: int, *, limit: int, window: float, processes: int, time_limit: float) -> Case:
    """Run one approach in ``processes`` spawned workers against a fresh emulator process."""
    split = shares(calls, processes)
    jobs = [(approach, Job("", share, limit, window, processes, time_limit)) for share in split]
    run = run_workers(jobs, limit=limit, window=window, time_limit=time_limit)
    done = [report for report in run.reports if report is not None]
    stopped = bool(run.exits) or any(r.stopped for r in done)
    # A stopped case ran until it was given up.
    last = run.ended if stopped else max((r.last_answer for r in done), default=run.started)
    return Case(
        approach=approach,
        processes=processes,
        calls=calls,
        window=window,
        makespan=last - run.started,
        window_starts=run.server.window_starts,
        reports=tuple(done),
        lost=tuple((reason, split[i]) for i, reason in run.exits.items()),
    )
