"""The rate-limit budgets: the :class:`Budget` protocol, the pure state machine, one module per backend.

Shaped as ``limits.storage``: ``base`` (the protocol and its events), ``_window`` (the state machine, pure),
``_local`` (in-process: the default), ``_host`` (this user's processes on one host, through a file),
``_redis`` with its Lua beside it (a fleet; needs the ``redis`` extra).
"""

from __future__ import annotations

import inspect
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import attrs

from .._errors import ConfigurationError
from .._protocol import RateLimitHeaders
from . import _local
from ._host import (
    BUDGET_DIR_ENV_VAR,
    HostBudget,
    HostBudgetUnavailable,
    forget_host_budgets,
    shared_host_budget,
    tell_once,
)
from ._local import RateLimitBudget, shared_budget
from ._window import RETRY_AFTER_ROUNDING, Priority, RateLimitStats, RateLimitView, Ticket, Wait, WindowState
from .base import Budget, BudgetEvent, RetryEvent, SchedulerEvent, WaitEvent, gate_closed_error

__all__ = [
    "BUDGET_DIR_ENV_VAR",
    "BUDGET_ENV_VAR",
    "RETRY_AFTER_ROUNDING",
    "Budget",
    "BudgetChoice",
    "BudgetEvent",
    "HostBudget",
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


#: ``process`` (the default) keeps each process on its own budget; ``host`` shares it through a file.
BUDGET_ENV_VAR = "WEMASY_BUDGET"
BUDGET_KINDS = ("host", "process")


def forget_shared_budgets(base_url: str | None = None) -> None:
    """Drop the shared budgets (of one base URL, or all), the process's and the host's (whose files are
    removed), e.g. when a test server at that address stops."""
    _local.forget_shared_budgets(base_url)
    forget_host_budgets(base_url)


def checked_priority(priority: object) -> Priority | None:
    """``priority`` if it names a class of calls (or is None: each call's own), else a ConfigurationError."""
    if priority is None or priority in ("interactive", "bulk"):
        return priority
    raise ConfigurationError(f"priority must be 'interactive', 'bulk' or None, got {priority!r}")


@attrs.frozen
class BudgetChoice:
    """The budget a client uses, and whether the client closes it with itself (a budget it made; the host's,
    whose close writes what it keeps for the process and leaves it open for the others)."""

    budget: Budget[Any]
    owned: bool


def budget_for(
    base_url: str,
    token: str,
    *,
    budget: Budget[Any] | str | None = None,
    redis_url: str | None = None,
    window_seconds: float | None = None,
    lease_seconds: float = 35.0,
    on_event: Callable[[SchedulerEvent], None] | None = None,
) -> BudgetChoice:
    """The budget for a client of ``token`` at ``base_url``: ``budget`` if it is one, else one shared through
    Redis if ``redis_url`` names one, else the process's own or, with ``budget="host"`` or
    ``WEMASY_BUDGET=host``, the host's (shared by this user's processes on this machine). While Redis is away
    that one stands in; where the host's cannot be used, the process's, with one log line.

    The host's is not the default yet: its cost per request is still over the instruction target
    (docs/design/host.md), and the default path must not get dearer.

    The process's budget is looked up (and given ``window_seconds``) in every case, as clients always did.
    """
    local = shared_budget(base_url, token, window_seconds=window_seconds)
    if budget is not None and not isinstance(budget, str):
        return BudgetChoice(budget if _takes_priority(budget) else _OneClass(budget), owned=False)
    kind = _budget_kind(budget)
    own = local if kind == "process" else _host_budget(base_url, token, window_seconds, lease_seconds, local)
    if redis_url is None:
        # A client's close lets the host's budget write what it keeps for the process (answers, tickets taken
        # for the turn's next callers); the budget itself stays, for the process's other clients of the token.
        return BudgetChoice(own, owned=own is not local)
    fleet = _redis_budget(
        redis_url,
        base_url,
        token,
        window_seconds=window_seconds or own.window_seconds,
        lease_seconds=lease_seconds,
        fallback=own,
        on_event=on_event,
    )
    return BudgetChoice(fleet, owned=True)


def _budget_kind(budget: str | None) -> str:
    """``host`` or ``process``: ``budget`` if given, else ``WEMASY_BUDGET``, else ``process``."""
    named, where = (budget, "budget") if budget is not None else (os.environ.get(BUDGET_ENV_VAR), BUDGET_ENV_VAR)
    if named is None or named == "":
        return "process"
    if named not in BUDGET_KINDS:
        raise ConfigurationError(f"{where} must be 'host' or 'process' (or a Budget object), got {named!r}")
    return named


def _host_budget(
    base_url: str, token: str, window_seconds: float | None, lease_seconds: float, local: RateLimitBudget
) -> RateLimitBudget:
    """The host's budget of the token, or ``local`` (with one log line saying why) where it cannot be used."""
    try:
        return shared_host_budget(
            base_url, token, window_seconds=window_seconds or local.window_seconds, lease_seconds=lease_seconds
        )
    except HostBudgetUnavailable as exc:
        tell_once(str(exc))
    except (OSError, ValueError, struct.error) as exc:  # anything else the file system says: never a failed call
        tell_once(f"{type(exc).__name__}: {exc}")
    return local


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
