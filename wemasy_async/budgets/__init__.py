"""The rate-limit budgets: the :class:`Budget` protocol, the pure state machine, one module per backend.

Shaped as ``limits.storage``: ``base`` (the protocol and its events), ``_window`` (the state machine, pure),
``_local`` (in-process), ``_redis`` with its Lua beside it (a fleet; needs the ``redis`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .._errors import ConfigurationError
from ._local import RateLimitBudget, forget_shared_budgets, shared_budget
from ._window import RETRY_AFTER_ROUNDING, RateLimitStats, RateLimitView, Ticket, Wait, WindowState
from .base import Budget, BudgetEvent, RetryEvent, SchedulerEvent, WaitEvent, gate_closed_error

__all__ = [
    "RETRY_AFTER_ROUNDING",
    "Budget",
    "BudgetChoice",
    "BudgetEvent",
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
    "forget_shared_budgets",
    "gate_closed_error",
    "shared_budget",
]


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
        return BudgetChoice(budget, owned=False)
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


def _redis_budget(redis_url: str, base_url: str, token: str, **options: Any) -> Budget[Any]:
    """A budget shared through Redis; the ``redis`` extra is imported only when one is asked for."""
    if not isinstance(redis_url, str) or not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError("redis_url must be a redis://, rediss:// or unix:// URL")
    try:
        from ._redis import RedisBudget
    except ImportError:
        raise ConfigurationError(
            'a shared budget through Redis needs the redis extra: pip install "wemasy-async[redis]"'
        ) from None
    try:
        return RedisBudget(redis_url, base_url, token, **options)
    except ValueError:  # its text may repeat the URL, password and all
        raise ConfigurationError("redis_url is not a usable Redis URL (redis://[:password@]host:port/db)") from None
