"""A discrete-event simulation of clients (each a pure :class:`WindowState`) against Laravel's throttle.

No sockets and no sleeps: time is a number. The server is the emulator's :class:`FixedWindowThrottle`
answering as SPEC section 1 says Laravel does: ``Retry-After`` is the whole seconds left in the window
rounded *down*, a rejected request is not counted. Requests travel with random latencies, so answers
arrive out of order; faults drop requests before or after the server counted them, or time them out;
the server's limit may change while requests are in flight. Each client re-sends a call until it gets
a non-429 answer, as the SDK does.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter

import attrs

from wemasy_async._protocol import RateLimitHeaders
from wemasy_async.budgets import Ticket, Wait, WindowState
from wemasy_async.testing import FixedWindowThrottle


@attrs.define
class Client:
    """One process: its own budget, its calls, and how many it may have in flight."""

    name: int
    budget: WindowState
    calls: int
    concurrency: int
    in_flight: int = 0
    done: int = 0
    wake_at: float | None = None
    finished_at: float = 0.0


@attrs.define
class Outcome:
    clients: list[Client]
    #: When every call had its answer.
    makespan: float
    #: 429s per (client, server window), the server window named by the time it started.
    throttled: Counter[tuple[int, float]]
    #: Waits with no end handed out while nothing of that client was in flight (must stay empty).
    endless_waits: list[tuple[int, float, Wait]]
    stalled: bool
    requests: int


@attrs.define
class Faults:
    """Per request: dropped before the server saw it, dropped after it counted it, or timed out."""

    drop_before: float = 0.0
    drop_after: float = 0.0
    timeout: float = 0.0
    #: Faults apply to requests sent before this time; after it the server is healthy.
    until: float = math.inf
    #: (time, new limit) changes of the server's limit.
    limit_changes: tuple[tuple[float, int], ...] = ()


def simulate(
    *,
    limit: int,
    window: float,
    calls: list[int],
    concurrency: int,
    latency: float,
    jitter: float,
    seed: int,
    faults: Faults | None = None,
    give_up_after: float = 10_000.0,
) -> Outcome:
    """Run ``len(calls)`` clients on one token (client i makes ``calls[i]`` calls) until all are answered."""
    faults = faults or Faults()
    rng = random.Random(seed)
    now = 0.0
    server = FixedWindowThrottle(limit, window, lambda: now)
    clients = [Client(i, WindowState(window), n, concurrency) for i, n in enumerate(calls)]
    order = itertools.count()
    # (time, order, kind, client, ticket, payload)
    events: list[tuple[float, int, str, int, Ticket | None, object]] = []
    throttled: Counter[tuple[int, float]] = Counter()
    endless: list[tuple[int, float, Wait]] = []
    requests = 0
    for at, new_limit in faults.limit_changes:
        heapq.heappush(events, (at, next(order), "limit", -1, None, new_limit))

    def trip() -> float:
        return latency * (1 + jitter * rng.random())

    def pump(client: Client) -> None:
        nonlocal requests
        while client.in_flight < client.concurrency and client.done + client.in_flight < client.calls:
            decision = client.budget.try_acquire(now)
            if isinstance(decision, Wait):
                if decision.until is None and client.budget.view(now).in_flight == 0:
                    endless.append((client.name, now, decision))
                if decision.until is not None and (client.wake_at is None or decision.until < client.wake_at):
                    client.wake_at = decision.until
                    heapq.heappush(events, (decision.until, next(order), "wake", client.name, None, None))
                return
            client.in_flight += 1
            requests += 1
            faulty = now < faults.until
            roll = rng.random()
            if faulty and roll < faults.drop_before:
                heapq.heappush(events, (now + trip(), next(order), "lost", client.name, decision, None))
            elif faulty and roll < faults.drop_before + faults.timeout:
                heapq.heappush(events, (now + trip() / 2, next(order), "arrive-timeout", client.name, decision, None))
            elif faulty and roll < faults.drop_before + faults.timeout + faults.drop_after:
                heapq.heappush(events, (now + trip() / 2, next(order), "arrive-drop", client.name, decision, None))
            else:
                heapq.heappush(events, (now + trip() / 2, next(order), "arrive", client.name, decision, None))

    for client in clients:
        pump(client)
    while events:
        when, _, kind, name, ticket, payload = heapq.heappop(events)
        now = when
        if now > give_up_after:
            break
        if kind == "limit":
            server.limit = int(payload)  # type: ignore[call-overload]
            continue
        client = clients[name]
        if kind == "wake":
            if client.wake_at == when:
                client.wake_at = None
            pump(client)
            continue
        assert ticket is not None
        if kind.startswith("arrive"):
            decision = server.hit("token")
            if kind == "arrive-timeout":
                heapq.heappush(events, (now + trip() / 2 + latency, next(order), "lost", name, ticket, None))
            elif kind == "arrive-drop":
                heapq.heappush(events, (now + trip() / 2, next(order), "lost", name, ticket, None))
            else:
                status = 200 if decision.allowed else 429
                retry_after = None if decision.allowed else float(math.floor(decision.resets_in))
                if status == 429:
                    throttled[(name, server.window_started("token"))] += 1
                answer = (status, RateLimitHeaders(decision.limit, decision.remaining, retry_after))
                heapq.heappush(events, (now + trip() / 2, next(order), "answer", name, ticket, answer))
            continue
        client.in_flight -= 1
        if kind == "lost":
            client.budget.no_answer(ticket, now)
        else:
            status, hints = payload  # type: ignore[misc]
            client.budget.answered(ticket, now, status, hints)
            if status != 429:
                client.done += 1
                client.finished_at = now
        pump(client)
    stalled = any(c.done < c.calls for c in clients)
    makespan = max(c.finished_at for c in clients)
    return Outcome(clients, makespan, throttled, endless, stalled, requests)
