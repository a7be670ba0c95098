"""The rate-limit budgets: the :class:`Budget` protocol, the pure state machine, one module per backend.

Shaped as ``limits.storage``: ``base`` (the protocol and its events), ``_window`` (the state machine, pure),
``_local`` (in-process), ``_redis`` with its Lua beside it (a fleet; needs the ``redis`` extra).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import attrs

from .._errors import ConfigurationError
from .._protocol import RateLimitHeaders
from ._local import RateLimitBudget, forget_shared_budgets, shared_budget
from ._window import RETRY_AFTER_ROUNDING, Priority, RateLimitStats, RateLimitView, Ticket, Wait, WindowState
from .base import Budget, BudgetEvent, RetryEvent, SchedulerEvent, WaitEvent, gate_closed_error

__all__ = [
    "RETRY_AFTER_ROUNDING",
    "Budget",
    "BudgetChoice",
    "BudgetEvent",
    "Priority",
    "RateLimitBudget",
    "RateLimitStats",
    "RateLimitView",
    "RetryEvent",
    "SchedulerEvent",
    "Ticket",
    "Wait",
    "WaitEvent",
    "WindowState",
    "budget_for",
    "checked_priority",
    "forget_shared_budgets",
    "gate_closed_error",
    "shared_budget",
]


def checked_priority(priority: object) -> Priority | None:
    """``priority`` if it names a class of calls (or is None: each call's own), else a ConfigurationError."""
    if priority is None or priority in ("interactive", "bulk"):
        return priority
    raise ConfigurationError(f"priority must be 'interactive', 'bulk' or None, got {priority!r}")


@attrs.frozen
class BudgetChoice:
    """The budget a client uses, and whether the client made it (and so closes it)."""

    budget: Budget[Any]
    owned: bool


def budget_for(
    base_url: str,
    token: str,
    *,
    budget: Budget[Any] | None = None,
    redis_url: str | None = None,
    window_seconds: float | None = None,
    lease_seconds: float = 35.0,
    on_event: Callable[[SchedulerEvent], None] | None = None,
) -> BudgetChoice:
    """The budget for a client of ``token`` at ``base_url``: ``budget`` if given, else one shared through
    Redis if ``redis_url`` names one (on the process's budget while Redis is away), else the process's.

    The process's budget is looked up (and given ``window_seconds``) in every case, as clients always did.
    """
    local = shared_budget(base_url, token, window_seconds=window_seconds)
    if budget is not None:
        return BudgetChoice(budget if _takes_priority(budget) else _OneClass(budget), owned=False)
    if redis_url is None:
        return BudgetChoice(local, owned=False)
    fleet = _redis_budget(
        redis_url,
        base_url,
        token,
        window_seconds=window_seconds or local.window_seconds,
        lease_seconds=lease_seconds,
        fallback=local,
        on_event=on_event,
    )
    return BudgetChoice(fleet, owned=True)


def _takes_priority(budget: Budget[Any]) -> bool:
    """Whether a caller's budget knows the classes of calls (one written before them takes no priority)."""
    try:
        return all(
            "priority" in inspect.signature(method).parameters for method in (budget.try_acquire, budget.acquire)
        )
    except (TypeError, ValueError):  # no signature to read: assume the protocol as it is
        return True


class _OneClass:
    """A caller's budget written before the classes of calls, used as it is: every call in one class."""

    def __init__(self, budget: Budget[Any]) -> None:
        self._budget = budget

    def try_acquire(self, priority: Priority = "interactive") -> Any:
        return self._budget.try_acquire()  # the protocol of before, without priority

    async def acquire(
        self,
        on_wait: Callable[[WaitEvent], None] | None = None,
        *,
        max_gate_wait: float = math.inf,
        deadline: float | None = None,
        priority: Priority = "interactive",
    ) -> Any:
        return await self._budget.acquire(on_wait, max_gate_wait=max_gate_wait, deadline=deadline)

    async def release(self, ticket: Any) -> None:
        await self._budget.release(ticket)

    async def no_answer(self, ticket: Any) -> None:
        await self._budget.no_answer(ticket)

    async def answered(self, ticket: Any, status: int, hints: RateLimitHeaders) -> float:
        return await self._budget.answered(ticket, status, hints)

    def count_retry(self) -> None:
        self._budget.count_retry()

    def view(self) -> RateLimitView:
        return self._budget.view()

    async def aclose(self) -> None:
        await self._budget.aclose()


def _redis_budget(redis_url: str, base_url: str, token: str, **options: Any) -> Budget[Any]:
    """A budget shared through Redis; the ``redis`` extra is imported only when one is asked for."""
    schemes = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
    if not isinstance(redis_url, str) or not redis_url.lower().startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigurationError(
            "redis_url must be a redis://, rediss:// or unix:// URL, or redis+cluster:// or redis+sentinel://"
            " (rediss+ for TLS)"
        )
    try:
        from ._redis import RedisBudget
    except ImportError:
        raise ConfigurationError(
            'a shared budget through Redis needs the redis extra: pip install "wemasy-async[redis]"'
        ) from None
    try:
        return RedisBudget(redis_url, base_url, token, **options)
    except ValueError:  # its text may repeat the URL, password and all
        raise ConfigurationError(
            "redis_url is not a usable Redis URL (redis://[:password@]host:port/db, redis+cluster://host:port,"
            " redis+sentinel://host:port/service)"
        ) from None
