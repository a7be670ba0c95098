"""The rate-limit budgets: the :class:`Budget` protocol, the pure state machine, one module per backend.

Shaped as ``limits.storage``: ``base`` (the protocol and its events), ``_window`` (the state machine, pure),
``_local`` (in-process), ``_redis`` with its Lua beside it (a fleet; needs the ``redis`` extra).
"""

from __future__ import annotations

from ._local import RateLimitBudget, forget_shared_budgets, shared_budget
from ._window import RETRY_AFTER_ROUNDING, RateLimitStats, RateLimitView, Ticket, Wait, WindowState
from .base import Budget, BudgetEvent, RetryEvent, SchedulerEvent, WaitEvent, gate_closed_error

__all__ = [
    "RETRY_AFTER_ROUNDING",
    "Budget",
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
    "forget_shared_budgets",
    "gate_closed_error",
    "shared_budget",
]
