"""A discrete-event simulation of clients (each a pure :class:`WindowState`) against Laravel's throttle.

No sockets and no sleeps: time is a number. The server is the emulator's :class:`FixedWindowThrottle`
answering as SPEC section 1 says Laravel does: ``Retry-After`` is the whole seconds left in the window
rounded *down*, a rejected request is not counted. Requests travel with random latencies, so answers
arrive out of order; faults drop requests before or after the server counted them, or time them out;
the server's limit may change while requests are in flight. Each client re-sends a call until it gets
a non-429 answer, as the SDK does. A client's ``calls`` are interactive, or bulk (``bulk=``); interactive
calls may also arrive one at a time later (``arrivals=``), and go before its bulk ones, as in the SDK
(whose batch sends its last chunk as interactive: so does a bulk client here its last call).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from typing import cast

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
    #: The class of its ``calls``.
    bulk: bool = False
    #: Interactive calls that arrived and wait for a ticket, by arrival time (first come, first served).
    waiting: deque[float] = attrs.field(factory=deque)
    #: Every interactive call answered: (arrival, when it was granted, when it was answered).
    served: list[tuple[float, float, float]] = attrs.field(factory=list)
    #: Of ``in_flight``, the interactive calls of ``arrivals``.
    arrivals_in_flight: int = 0


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
    #: Interactive calls that arrived (``arrivals=``) but were never answered.
    unserved: int = 0


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
    bulk: list[bool] | None = None,
    arrivals: list[list[float]] | None = None,
) -> Outcome:
    """Run ``len(calls)`` clients on one token (client i makes ``calls[i]`` calls, bulk if ``bulk[i]``, and
    an interactive call at each time of ``arrivals[i]``) until all are answered."""
    world = _Simulation(
        limit=limit,
        window=window,
        calls=calls,
        concurrency=concurrency,
        latency=latency,
        jitter=jitter,
        seed=seed,
        faults=faults or Faults(),
    )
    for client, is_bulk in zip(world.clients, bulk or [], strict=False):
        client.bulk = is_bulk
    for name, times in enumerate(arrivals or []):
        for at in times:
            world.push(at, "call", name, None)
    return world.run(give_up_after)


def call_of(payload: object) -> object:
    """The interactive call (arrival, sent) a request's settling carries, or None for one of ``calls``."""
    return cast("tuple[object, object]", payload)[1]


#: (time, order, kind, client, ticket, payload): one event of the simulation, in time order.
_Event = tuple[float, int, str, int, Ticket | None, object]


class _Simulation:
    """The clients, the server and the events still to come; :meth:`run` plays them in time order."""

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        calls: list[int],
        concurrency: int,
        latency: float,
        jitter: float,
        seed: int,
        faults: Faults,
    ) -> None:
        self.faults = faults
        self.latency, self.jitter = latency, jitter
        self.rng = random.Random(seed)
        self.now = 0.0
        self.server = FixedWindowThrottle(limit, window, lambda: self.now)
        self.clients = [Client(i, WindowState(window), n, concurrency) for i, n in enumerate(calls)]
        self.order = itertools.count()
        self.events: list[_Event] = []
        self.throttled: Counter[tuple[int, float]] = Counter()
        self.endless: list[tuple[int, float, Wait]] = []
        self.requests = 0
        for at, new_limit in faults.limit_changes:
            self.push(at, "limit", -1, None, new_limit)

    def push(self, at: float, kind: str, name: int, ticket: Ticket | None, payload: object = None) -> None:
        heapq.heappush(self.events, (at, next(self.order), kind, name, ticket, payload))

    def trip(self) -> float:
        return self.latency * (1 + self.jitter * self.rng.random())

    def run(self, give_up_after: float) -> Outcome:
        for client in self.clients:
            self.pump(client)
        while self.events:
            when, _, kind, name, ticket, payload = heapq.heappop(self.events)
            self.now = when
            if self.now > give_up_after:
                break
            if kind == "limit":
                self.server.limit = int(payload)  # type: ignore[call-overload]
            elif kind == "wake":
                client = self.clients[name]
                if client.wake_at == when:
                    client.wake_at = None
                self.pump(client)
            elif kind == "call":
                client = self.clients[name]
                client.budget.asked(self.now)
                client.waiting.append(self.now)
                self.pump(client)
            elif kind.startswith("arrive"):
                assert ticket is not None
                self.arrive(kind, name, ticket, payload)
            else:
                assert ticket is not None
                self.settle(kind, self.clients[name], ticket, payload)
        clients = self.clients
        unserved = sum(len(c.waiting) + c.arrivals_in_flight for c in clients)
        stalled = any(c.done < c.calls for c in clients) or unserved > 0
        makespan = max(c.finished_at for c in clients)
        return Outcome(clients, makespan, self.throttled, self.endless, stalled, self.requests, unserved)

    def pump(self, client: Client) -> None:
        """Send what the client's budget lets it send now, interactive calls first; at a wait, set a wake-up
        for its end."""
        now = self.now
        while client.in_flight < client.concurrency:
            interactive = bool(client.waiting)
            left = client.calls - (client.done + client.in_flight - client.arrivals_in_flight)
            if not interactive and left <= 0:
                return  # nothing left to send
            # A batch's last call goes as interactive, as the SDK sends a batch's last chunk.
            bulk = not interactive and client.bulk and left > 1
            decision = client.budget.try_acquire(now, bulk, asking=not interactive and client.bulk and not bulk)
            if isinstance(decision, Wait):
                if decision.until is None and client.budget.view(now).in_flight == 0:
                    self.endless.append((client.name, now, decision))
                if decision.until is not None and (client.wake_at is None or decision.until < client.wake_at):
                    client.wake_at = decision.until
                    self.push(decision.until, "wake", client.name, None)
                return
            client.in_flight += 1
            self.requests += 1
            arrived = None
            if interactive:
                arrived = client.waiting.popleft()
                client.arrivals_in_flight += 1
            self.send(client.name, decision, arrived)

    def send(self, name: int, ticket: Ticket, arrived: float | None = None) -> None:
        """One request on its way: lost on the way, or arriving (to time out, be dropped, or be answered).
        ``arrived``: the arrival time of the interactive call it is (None: one of the client's ``calls``)."""
        faults, now = self.faults, self.now
        faulty = now < faults.until
        roll = self.rng.random()
        call = None if arrived is None else (arrived, now)
        if faulty and roll < faults.drop_before:
            self.push(now + self.trip(), "lost", name, ticket, (None, call))
        elif faulty and roll < faults.drop_before + faults.timeout:
            self.push(now + self.trip() / 2, "arrive-timeout", name, ticket, call)
        elif faulty and roll < faults.drop_before + faults.timeout + faults.drop_after:
            self.push(now + self.trip() / 2, "arrive-drop", name, ticket, call)
        else:
            self.push(now + self.trip() / 2, "arrive", name, ticket, call)

    def arrive(self, kind: str, name: int, ticket: Ticket, call: object) -> None:
        """The server counts the request; its answer (or the lack of one) travels back."""
        now = self.now
        decision = self.server.hit("token")
        if kind == "arrive-timeout":
            self.push(now + self.trip() / 2 + self.latency, "lost", name, ticket, (None, call))
        elif kind == "arrive-drop":
            self.push(now + self.trip() / 2, "lost", name, ticket, (None, call))
        else:
            status = 200 if decision.allowed else 429
            retry_after = None if decision.allowed else float(math.floor(decision.resets_in))
            if status == 429:
                self.throttled[(name, self.server.window_started("token"))] += 1
            answer = (status, RateLimitHeaders(decision.limit, decision.remaining, retry_after))
            self.push(now + self.trip() / 2, "answer", name, ticket, (answer, call))

    def settle(self, kind: str, client: Client, ticket: Ticket, payload: object) -> None:
        """The client hears back (or gives up on the request) and sends what it may next; an interactive call
        that got no answer, or a 429, asks again first in line (its arrival time kept)."""
        client.in_flight -= 1
        if call_of(payload) is not None:
            client.arrivals_in_flight -= 1
        answer, call = cast("tuple[tuple[int, RateLimitHeaders] | None, tuple[float, float] | None]", payload)
        if answer is None:
            client.budget.no_answer(ticket, self.now)
        else:
            status, hints = answer
            client.budget.answered(ticket, self.now, status, hints)
            if status != 429 and call is None:
                client.done += 1
                client.finished_at = self.now
            elif status != 429:
                client.served.append((call[0], call[1], self.now))
                call = None
        if call is not None:
            client.waiting.appendleft(call[0])
        self.pump(client)
