"""The fleet's budget: a token's rate-limit budget kept in Redis, shared by every process and host.

:class:`WindowState` ported to one Lua script (``_redis_window.lua``) so that each transition is atomic;
while Redis is away the process's own budget stands in. Needs the ``redis`` extra. The design:
docs/design/fleet.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import redis.exceptions

from .._chunk_size import LearnedSizes
from .._protocol import RateLimitHeaders
from ._local import RateLimitBudget
from ._redis_connect import RedisTarget, cluster_of, connect
from ._window import Priority, RateLimitView, Ticket
from .base import BudgetEvent, SchedulerEvent, WaitEvent, gate_closed_error, report_wait

__all__ = ["LUA_SOURCE", "RedisBudget", "redis_keys"]

logger = logging.getLogger("wemasy_async")

LUA_SOURCE = importlib.resources.files(__package__).joinpath("_redis_window.lua").read_text(encoding="utf-8")


#: What the fleet learned of a token's chunk sizes: merged (the least maximum, the largest proven size)
#: and returned in one step. KEYS[1] the hash; ARGV[1] this process's maximum ('' none), ARGV[2] its
#: proven size, ARGV[3] how long the fleet remembers them after the last share (ms), ARGV[4] how long a
#: maximum holds after it was learned (s): then it is forgotten, so a server's new maximum is found.
CHUNK_SIZES_LUA = """
local now = tonumber(redis.call('TIME')[1])
local most = tonumber(redis.call('HGET', KEYS[1], 'most'))
local most_at = tonumber(redis.call('HGET', KEYS[1], 'most_at')) or now
local proven = tonumber(redis.call('HGET', KEYS[1], 'proven')) or 0
if most and now - most_at > tonumber(ARGV[4]) then
  most = nil
  redis.call('HDEL', KEYS[1], 'most', 'most_at')
end
local ours = tonumber(ARGV[1])
if ours and ours > 0 and (not most or ours < most) then
  most = ours
  redis.call('HSET', KEYS[1], 'most_at', now)
end
proven = math.max(proven, tonumber(ARGV[2]) or 0)
if most then
  proven = math.min(proven, most)
  redis.call('HSET', KEYS[1], 'most', most)
end
redis.call('HSET', KEYS[1], 'proven', proven)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {most and tostring(most) or '', tostring(proven)}
"""
#: How long the fleet remembers learned chunk sizes after the last batch shared them (ms), and how long
#: a maximum holds after it was learned (s): a process that learned it keeps it while it lives.
CHUNK_SIZES_TTL_MS = 24 * 3600 * 1000
MAXIMUM_HOLDS_SECONDS = 24 * 3600


def _key_prefix(base_url: str, token: str) -> str:
    # The hash in braces keeps the keys in one Redis Cluster slot, as a script needs.
    digest = hashlib.sha256(f"{base_url}\n{token}".encode()).hexdigest()[:32]
    return f"wemasy-async:{{{digest}}}"


def redis_keys(base_url: str, token: str) -> list[str]:
    """The state hash, the leases, the wake channel, the abandoned names and the interactive callers
    waiting, of one token's budget; the token is only hashed."""
    prefix = _key_prefix(base_url, token)
    return [f"{prefix}:state", f"{prefix}:leases", f"{prefix}:wake", f"{prefix}:gone", f"{prefix}:waiting"]


class RedisUnavailableError(Exception):
    """Redis did not answer in time, or failed: the budget falls back to the in-process one."""


@attrs.define(eq=False)
class FleetTicket:
    """A ticket from Redis (its lease's name) or, while Redis is away, from the in-process budget."""

    lease: str | None = None
    local: Ticket | None = None
    bulk: bool = False


@attrs.frozen
class _Report:
    """A settle (or an abandon) Redis has not taken yet: sent again until it is."""

    operation: str
    args: tuple[str | int | float, ...]


@attrs.define
class _Counters:
    sent: int = 0
    throttled: int = 0
    retried: int = 0
    waited_seconds: float = 0.0
    interactive_sent: int = 0
    interactive_waited_seconds: float = 0.0


@attrs.define(eq=False)
class _Line:
    """This process's callers of one class waiting for their turn to ask Redis: one asks at a time (each
    class has its own, so an interactive call never waits behind a bulk one in its wait for the window)."""

    turn: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    #: Callers queued for the turn (behind the one asking).
    queued: int = 0
    #: The line's name in Redis while its interactive callers wait (the fleet's bulk calls wait behind it).
    name: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    #: The caller asking waits until this time (None: unknown, or for an answer); a change wakes the callers
    #: queued behind it, to check their deadline again.
    first_until: float | None = None
    changed: asyncio.Future[None] | None = None
    #: Interactive callers that began to ask since the line's last try in Redis: that try counts them in the
    #: window's demand, so a call queued here is counted in the window it arrived in, not the one it is
    #: served in (which would take that window's reserve from the calls that arrive in it).
    unasked: int = 0
    #: Set while the caller asking waits: a new interactive caller wakes it to bring its ask to Redis.
    asker_wait: asyncio.Future[None] | None = None

    def ask(self) -> None:
        """An interactive caller begins to ask: counted by the line's next try, which it wakes."""
        self.unasked += 1
        if self.asker_wait is not None and not self.asker_wait.done():
            self.asker_wait.set_result(None)

    def set_first_until(self, until: float | None) -> None:
        self.first_until = until
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)


def _retrieve(call: asyncio.Future[Any]) -> None:
    """Mark a Redis call's failure as seen: its caller, cancelled, may never read it."""
    if not call.cancelled():
        call.exception()


def _float(value: bytes | str) -> float | None:
    text = value.decode() if isinstance(value, bytes) else value
    return float(text) if text else None


class RedisBudget:
    """A token's budget shared through Redis by every process and host that names the same Redis and token.

    Made by :class:`WemasyClient` from ``redis_url=`` (or ``WEMASY_REDIS_URL``); it can also be made and
    passed as ``budget=``. Use it from one event loop.

    Args:
        redis_url: ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).
        base_url, token: whose budget it is (the token is only hashed, never sent to Redis).
        window_seconds: the server's window (60 s for Wemasy).
        lease_seconds: how long a request in flight holds its place if its process dies.
        redis_timeout: seconds Redis may take to answer before the in-process budget is used instead.
        retry_seconds: how long after a failure Redis is tried again (default: 5 s, or half a window if
            that is shorter, so the fleet is back on one budget within a window of Redis's return).
        poll_seconds: the longest a caller waiting for another process's answer goes without asking.
        fallback: the in-process budget to use while Redis is away (a private one by default).
        on_event: called with a :class:`BudgetEvent` when the budget leaves Redis and when it comes back.
    """

    def __init__(  # noqa: PLR0913 -- the options after the token are keyword-only, each with a default
        self,
        redis_url: str,
        base_url: str,
        token: str,
        *,
        window_seconds: float = 60.0,
        assumed_limit: int = 60,
        lease_seconds: float = 35.0,
        redis_timeout: float = 0.5,
        retry_seconds: float | None = None,
        poll_seconds: float = 0.25,
        fallback: RateLimitBudget | None = None,
        on_event: Callable[[SchedulerEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis_url = redis_url
        self._answered = False  # Redis has answered a call (connections are made)
        self._left_behind: list[RedisTarget] = []  # a cluster node's client, once the cluster's is used
        target = connect(redis_url, redis_timeout)
        self._use(target)
        self._keys = redis_keys(base_url, token)
        self._chunk_sizes_key = f"{_key_prefix(base_url, token)}:chunk-sizes"
        self.window_seconds = window_seconds
        self._assumed_limit = assumed_limit
        self.lease_seconds = lease_seconds
        self._redis_timeout = redis_timeout
        self._retry_seconds = retry_seconds if retry_seconds is not None else min(5.0, window_seconds / 2)
        self._poll_seconds = poll_seconds
        self._local = fallback if fallback is not None else RateLimitBudget(window_seconds)
        self._on_event = on_event
        self._clock = clock
        self._down_until = -math.inf
        self._on_redis = True
        #: The interactive and the bulk callers' lines (made in the event loop, on first use).
        self._lines: dict[bool, _Line] = {}
        #: Done when a process reports an answer: what each caller whose turn it is waits on.
        self._wakers: set[asyncio.Future[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._unsent: list[_Report] = []
        self._sender: asyncio.Task[None] | None = None
        # The first caller in line waits until this time (None: unknown, or for an answer); a change wakes
        # the callers queued behind it, to check their deadline again.
        self._first_until: float | None = None
        self._changed: asyncio.Future[None] | None = None
        self._counters = _Counters()
        #: What the last acquire in Redis that got no ticket said: (reason, seconds or None).
        self._last_wait: tuple[str, float | None] = ("", None)
        self._view: RateLimitView | None = None
        self._view_at = 0.0
        # Redis's time when it made the view kept, and how many views were kept: see run.
        self._view_made = -math.inf
        self._views_kept = 0
        #: Decide with this time instead of Redis's (tests of the state machine only).
        self.fixed_now: float | None = None

    def _patience(self) -> float:
        """How long a call waits for Redis: ``redis_timeout``, but until Redis has answered once, as long as
        the first contact may take (a TLS handshake, a cluster's topology: see RedisTarget)."""
        if self._answered:
            return self._redis_timeout
        return max(self._redis_timeout, self._target.first_contact_seconds)

    def _use(self, target: RedisTarget) -> None:
        """Run the scripts through ``target``'s client (one server, a cluster, a Sentinel's master)."""
        self._target = target
        self._redis = target.client
        self._cluster = target.cluster
        #: Where Redis is, for log lines: never the URL, which may hold a password.
        self.where = target.where
        self._script = self._redis.register_script(LUA_SOURCE)
        self._chunk_sizes_script = self._redis.register_script(CHUNK_SIZES_LUA)

    def _become_cluster(self) -> None:
        """The one server named is a node of a Redis Cluster (it answered MOVED): go through the cluster.
        The node's client is closed with the budget (calls of other callers may still be on it)."""
        logger.info("Redis at %s is a node of a cluster: the budget goes through the cluster", self.where)
        self._left_behind.append(self._target)
        listener = self._listener
        self._use(cluster_of(self._redis_url, self._redis_timeout))
        self._answered = False  # the cluster's connections are still to be made
        self._listener = None  # the next wait listens through the cluster
        if listener is not None:
            listener.cancel()

    def __repr__(self) -> str:
        backend = "redis" if self._on_redis else "in-process (Redis away)"
        return f"RedisBudget(redis={self.where}, window_seconds={self.window_seconds:g}, now={backend})"

    # --- talking to Redis ------------------------------------------------------------------------

    async def run(self, operation: str, *args: str | int | float) -> list[Any]:
        """Run one operation of the script; RedisUnavailableError when Redis does not answer in time."""
        now = "" if self.fixed_now is None else repr(self.fixed_now)
        argv: list[str | int | float] = [
            operation,
            now,
            repr(float(self.window_seconds)),
            self._assumed_limit,
            max(1, int(3 * max(self.window_seconds, self.lease_seconds) * 1000)),
            repr(float(self.lease_seconds)),
            *args,
        ]
        kept = self._views_kept
        target = self._target
        call = await self._in_time(self._script(keys=self._keys, args=argv))
        if call is None:
            raise RedisUnavailableError(f"TimeoutError: no answer within {self._patience():g} s")
        try:
            reply = call.result()
        except redis.exceptions.MovedError:
            if target is not self._target:
                return await self.run(operation, *args)  # sent before another call switched to the cluster
            if self._cluster:
                raise RedisUnavailableError("MovedError: the cluster's slots moved") from None
            self._become_cluster()
            return await self.run(operation, *args)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise RedisUnavailableError(f"{type(exc).__name__}: {exc}") from None
        self._answered = True
        result: list[Any] = reply
        made = float(result[-1])
        # Calls that overlap go on different connections, so a reply may come after one Redis made later
        # (this process's give-back, and its next caller's acquire): it replaces the view kept only if it
        # was asked after that view came, or Redis made it later.
        if self._views_kept == kept or made >= self._view_made:
            self._view = self._parse_view(result[3:-1])
            self._view_at = self._clock()
            self._view_made = made
            self._views_kept += 1
        return result

    async def _in_time(self, command: Awaitable[Any]) -> asyncio.Future[Any] | None:
        """Run a Redis command for as long as the budget waits for Redis (see _patience): its finished future,
        or None (then cancelled) when Redis did not answer in time."""
        call = asyncio.ensure_future(command)
        call.add_done_callback(_retrieve)
        try:
            # Not asyncio.wait_for: before Python 3.12 it returns the answer when the caller is cancelled as
            # Redis answers, and the cancel is lost (a cancelled acquire would go on and return a ticket).
            # A cancel raises here, always; a ticket Redis granted meanwhile is abandoned by its caller.
            done, _ = await asyncio.wait((call,), timeout=self._patience())
        finally:
            if not call.done():
                call.cancel()
        return call if done else None

    async def share_chunk_sizes(self, learned: LearnedSizes) -> LearnedSizes | None:
        """Merge what this process's batches learned of the token's chunk sizes with what the fleet's did,
        and return the fleet's (None when Redis does not answer in time: the batch goes on alone)."""
        if not self._usable():
            return None
        argv = ["" if learned.most is None else learned.most, learned.proven, CHUNK_SIZES_TTL_MS, MAXIMUM_HOLDS_SECONDS]
        call = await self._in_time(self._chunk_sizes_script(keys=[self._chunk_sizes_key], args=argv))
        if call is None or call.exception() is not None:
            return None
        most, proven = call.result()
        return LearnedSizes(int(most) if most else None, int(proven))

    def _parse_view(self, fields: list[Any]) -> RateLimitView:
        limit, remaining, ends_in, gate, in_flight, shared, _fleet_sent, _fleet_throttled, reserved = fields
        counters = self._counters
        return RateLimitView(
            limit=None if _float(limit) is None else int(float(limit)),
            remaining=None if _float(remaining) is None else int(float(remaining)),
            window_ends_in=_float(ends_in),
            gate_closed_for=_float(gate) or 0.0,
            in_flight=int(in_flight),
            shared=bool(int(shared)),
            reserved=int(reserved),
            window_seconds=self.window_seconds,
            sent=counters.sent,
            throttled=counters.throttled,
            retried=counters.retried,
            waited_seconds=counters.waited_seconds,
            interactive_sent=counters.interactive_sent,
            interactive_waited_seconds=counters.interactive_waited_seconds,
        )

    def _usable(self) -> bool:
        return self._clock() >= self._down_until

    def _went_away(self, error: RedisUnavailableError) -> None:
        self._down_until = self._clock() + self._retry_seconds
        if self._on_redis:
            self._on_redis = False
            # The fleet goes on sending, each process now on its own: expect the others to use the window,
            # so each sends one request at a time near its end (one 429 each at most), not a burst.
            self._local.expect_others()
            logger.warning(
                "Redis at %s did not answer (%s): using this process's own rate-limit budget until it does",
                self.where,
                error,
            )
            self._emit(BudgetEvent(backend="local", reason=str(error)))

    def _came_back(self) -> None:
        if not self._on_redis:
            self._on_redis = True
            logger.warning("Redis at %s answers again: the fleet's rate-limit budget is back", self.where)
            self._emit(BudgetEvent(backend="redis", reason="Redis answers again"))

    def _emit(self, event: SchedulerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # --- the Budget interface --------------------------------------------------------------------

    def try_acquire(self, priority: Priority = "interactive") -> FleetTicket | None:
        """Always None: a ticket from Redis takes a round trip (see :meth:`acquire`)."""
        return None

    async def acquire(
        self,
        on_wait: Callable[[WaitEvent], None] | None = None,
        *,
        max_gate_wait: float = math.inf,
        deadline: float | None = None,
        priority: Priority = "interactive",
    ) -> FleetTicket:
        """Wait for a ticket from the fleet's budget (in turn with this process's other callers of its class)."""
        bulk = priority == "bulk"
        line = self._lines.get(bulk)
        if line is None:
            line = self._lines[bulk] = _Line()
        if not bulk:
            line.ask()
        started = self._clock()
        await self._take_turn(line, on_wait, max_gate_wait, deadline, priority)
        try:
            try:
                ticket = await self._acquire_from_redis(line, on_wait, max_gate_wait, deadline, priority)
            except RedisUnavailableError as error:
                self._went_away(error)
                ticket = None
            if ticket is None:
                line.unasked = 0  # the process's own budget counts the calls' demand while Redis is away
                local = await self._local.acquire(
                    on_wait, max_gate_wait=max_gate_wait, deadline=deadline, priority=priority
                )
                ticket = FleetTicket(local=local)
        except BaseException:
            if not bulk and not line.queued:
                # The line's last caller gave up (a deadline, the gate, a cancel): its waiting mark goes now,
                # not a second after its wait would have ended, so the fleet's bulk calls need not wait for it.
                self._send_later(_Report("withdraw", (line.name,)))
                line.name = uuid.uuid4().hex  # a withdraw that reaches Redis late never removes a newer mark
            raise
        finally:
            line.set_first_until(None)
            line.turn.release()
        waited = self._clock() - started
        counters = self._counters
        counters.sent += 1
        counters.waited_seconds += waited
        if not bulk:
            counters.interactive_sent += 1
            counters.interactive_waited_seconds += waited
        ticket.bulk = bulk
        return ticket

    async def _take_turn(
        self,
        line: _Line,
        on_wait: Callable[[WaitEvent], None] | None,
        max_gate_wait: float,
        deadline: float | None,
        priority: Priority,
    ) -> None:
        """Wait for this process's turn to ask Redis, under the same rules as the in-process queue: fail at
        once while the gate is closed longer than ``max_gate_wait``, and when the deadline has passed or the
        first caller's wait is known to end after it."""
        turn = line.turn
        if not turn.locked():
            await turn.acquire()  # free: taken without a wait
            return
        taking = asyncio.ensure_future(turn.acquire())
        reported = False
        line.queued += 1
        try:
            while not taking.done():
                now = self._clock()
                gate = self.view().gate_closed_for
                if gate > max_gate_wait:
                    raise gate_closed_error(gate, max_gate_wait)
                until = line.first_until
                if deadline is not None and (now >= deadline or (until is not None and until > deadline)):
                    raise TimeoutError("no rate-limit budget before the deadline")
                if not reported:
                    reported = True
                    report_wait(WaitEvent(reason="queue", seconds=None, priority=priority), on_wait)
                if line.changed is None or line.changed.done():
                    line.changed = asyncio.get_running_loop().create_future()
                timeout = None if deadline is None else max(0.0, deadline - now)
                await asyncio.wait((taking, line.changed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if taking.done() and not taking.cancelled():
                turn.release()  # taken just as this caller gave up: the turn passes on
            else:
                taking.cancel()
            raise
        finally:
            line.queued -= 1

    async def _acquire_from_redis(
        self,
        line: _Line,
        on_wait: Callable[[WaitEvent], None] | None,
        max_gate_wait: float,
        deadline: float | None,
        priority: Priority,
    ) -> FleetTicket | None:
        loop = asyncio.get_running_loop()
        last_reason = ""
        bulk = "1" if priority == "bulk" else ""
        waiter = "" if bulk else line.name  # while its callers wait, the fleet's bulk calls wait behind them
        while self._usable():
            woken = loop.create_future()
            self._wakers.add(woken)
            try:
                asking, line.unasked = line.unasked, 0
                ticket = await self._try_redis(bulk, str(asking or ""), waiter, "1" if line.queued else "")
                if ticket is not None:
                    return ticket
                reason, wait = self._last_wait
                gate = self._view.gate_closed_for if self._view is not None else 0.0
                if gate > max_gate_wait:
                    raise gate_closed_error(gate, max_gate_wait)
                now = self._clock()
                if deadline is not None and (now >= deadline or (wait is not None and now + wait > deadline)):
                    raise TimeoutError("no rate-limit budget before the deadline")
                if reason != last_reason:
                    last_reason = reason
                    report_wait(WaitEvent(reason=reason, seconds=wait, priority=priority), on_wait)
                self._listen()
                timeout = self._poll_seconds if wait is None else wait
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
                line.set_first_until(None if wait is None else now + wait)
                if line.unasked:
                    continue  # callers that arrived during the round trip: their asks go to Redis now
                line.asker_wait = woken
                # Not asyncio.wait_for, which before Python 3.12 loses a cancel that comes as the wake does.
                await asyncio.wait((woken,), timeout=timeout)
            finally:
                line.asker_wait = None
                self._wakers.discard(woken)
        return None

    async def _try_redis(self, bulk: str, asking: str, waiter: str, more: str) -> FleetTicket | None:
        """One acquire in Redis: a ticket, or None with the wait in ``_last_wait`` (reason, seconds or None)."""
        while True:
            name = uuid.uuid4().hex
            try:
                kind, first, second, *_ = await self.run("acquire", name, bulk, asking, waiter, more)
            except BaseException:
                # No answer (Redis slow, or this caller cancelled): Redis may still grant it, later. Give the
                # ticket back by its name, now or when Redis answers again.
                self._send_later(_Report("abandon", (name,)))
                raise
            self._came_back()
            if kind == b"ticket":
                return FleetTicket(lease=first.decode())
            if kind == b"wait":
                self._last_wait = (first.decode(), _float(second))
                return None
            # b"gone": this name was abandoned before Redis ran it (a retry of the same call): ask again

    def _listen(self) -> None:
        """Be woken when any process reports an answer, or frees a slot: started on the first wait, whatever
        it waits for (a window's end, a gate, an answer)."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        # The subscription's confirmation wakes the caller waiting too, as a report would: a report made
        # between its failed try and the subscription reached no one (a lost wake-up), so it tries again once
        # Redis has subscribed it; from then on every report wakes it. The same after a reconnection.
        pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.subscribe(self._keys[2])
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    for woken in self._wakers:
                        if not woken.done():
                            woken.set_result(None)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError):
            return  # the poll goes on; the next wait listens again
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def release(self, ticket: FleetTicket) -> None:
        self._counters.sent -= 1
        if not ticket.bulk:
            self._counters.interactive_sent -= 1
        await self._settle(ticket, "release")

    async def no_answer(self, ticket: FleetTicket) -> None:
        await self._settle(ticket, "no_answer")

    async def answered(self, ticket: FleetTicket, status: int, hints: RateLimitHeaders) -> float:
        if status == 429:
            self._counters.throttled += 1
        return await self._settle(ticket, "answered", status, hints)

    async def _settle(
        self, ticket: FleetTicket, operation: str, status: int = 0, hints: RateLimitHeaders | None = None
    ) -> float:
        if ticket.local is not None:
            if operation == "answered":
                assert hints is not None
                return await self._local.answered(ticket.local, status, hints)
            await (self._local.release(ticket.local) if operation == "release" else self._local.no_answer(ticket.local))
            return 0.0
        if ticket.lease is None:
            return 0.0  # settled before
        limit, remaining, retry_after = hints if hints is not None else (None, None, None)
        args: list[str | int | float] = [ticket.lease, status]
        args += ["" if limit is None else limit, "" if remaining is None else remaining]
        args.append("" if retry_after is None else repr(float(retry_after)))
        ticket.lease = None
        report = _Report(operation, tuple(args))
        if not self._usable():
            self._send_later(report)  # Redis is away: sent when it answers again
            return 0.0
        try:
            _kind, gate, *_ = await self.run(operation, *args)
        except RedisUnavailableError as error:
            self._went_away(error)
            self._send_later(report)
            return 0.0
        except BaseException:
            self._send_later(report)  # cancelled: Redis may or may not have taken it (a second one is a no-op)
            raise
        return _float(gate) or 0.0

    def _send_later(self, report: _Report) -> None:
        """Keep a report Redis has not taken, and send it (with the others kept) until Redis takes it."""
        self._unsent.append(report)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_unsent())

    async def _send_unsent(self) -> None:
        # Each is idempotent (a lease settled twice, a name abandoned twice: nothing changes), so one sent
        # again after an answer that was lost does no harm.
        while self._unsent:
            report = self._unsent[0]
            try:
                await self.run(report.operation, *report.args)
            except RedisUnavailableError:
                await asyncio.sleep(self._poll_seconds)
                continue
            self._unsent.pop(0)

    def count_retry(self) -> None:
        self._counters.retried += 1

    def view(self) -> RateLimitView:
        """The fleet's budget as last read from Redis (limit, remaining, window end, gate, in flight) and
        this process's counters; while Redis is away, the in-process budget's."""
        if not self._on_redis or self._view is None:
            view = self._local.view()
        else:
            elapsed = self._clock() - self._view_at
            view = attrs.evolve(
                self._view,
                window_ends_in=None
                if self._view.window_ends_in is None
                else max(0.0, self._view.window_ends_in - elapsed),
                gate_closed_for=max(0.0, self._view.gate_closed_for - elapsed),
            )
        counters = self._counters  # this process's, on Redis or not
        return attrs.evolve(
            view,
            sent=counters.sent,
            throttled=counters.throttled,
            retried=counters.retried,
            waited_seconds=counters.waited_seconds,
            interactive_sent=counters.interactive_sent,
            interactive_waited_seconds=counters.interactive_waited_seconds,
        )

    async def aclose(self) -> None:
        """Send what Redis has not taken yet (once each: a lease left runs out), stop listening and close
        the connections to Redis."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender
        unsent, self._unsent = self._unsent, []
        for report in unsent:
            with contextlib.suppress(RedisUnavailableError):
                await self.run(report.operation, *report.args)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for target in (*self._left_behind, self._target):
            with contextlib.suppress(Exception):  # Redis away, or a cluster that never answered: nothing to keep
                await target.aclose()
