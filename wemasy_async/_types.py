"""Small shared types."""

from __future__ import annotations

import enum
import math
from typing import Final

from aiohttp import ClientTimeout

from ._errors import ConfigurationError

__all__ = ["NOT_GIVEN", "NotGiven", "Timeout", "checked_timeout"]


class NotGiven(enum.Enum):
    """Marks an argument left out, where ``None`` means something (``timeout=None``: no time limit)."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN

#: Seconds for one HTTP exchange, or an ``aiohttp.ClientTimeout`` (its ``total``, ``connect``, ``sock_read``
#: limits); ``None`` for no limit; ``NOT_GIVEN`` for the client's default.
Timeout = float | ClientTimeout | None | NotGiven


def _is_seconds(value: object) -> bool:
    """A positive, finite number of seconds (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def checked_timeout(timeout: object) -> float | ClientTimeout | None:
    """``timeout`` if it is one: positive seconds, an ``aiohttp.ClientTimeout`` whose limits are positive
    seconds or None, or ``None`` (no limit); else a :class:`ConfigurationError` naming it."""
    if timeout is None or isinstance(timeout, ClientTimeout):
        for name in ("total", "connect", "sock_read", "sock_connect"):
            value = getattr(timeout, name, None)
            if value is not None and not _is_seconds(value):
                raise ConfigurationError(f"timeout's {name} must be positive seconds or None, got {value!r}")
        return timeout
    if _is_seconds(timeout):
        return timeout  # type: ignore[return-value]  # _is_seconds said it is an int or float
    raise ConfigurationError(
        f"timeout must be positive seconds, an aiohttp.ClientTimeout, or None for no limit; got {timeout!r}"
    )
