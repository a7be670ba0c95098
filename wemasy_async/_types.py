"""Small shared types."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Union

if TYPE_CHECKING:  # aiohttp is imported where requests are sent, not to name a type
    from aiohttp import ClientTimeout

__all__ = ["NOT_GIVEN", "NotGiven", "Timeout"]


class NotGiven(enum.Enum):
    """Marks an argument left out, where ``None`` means something (``timeout=None``: no time limit)."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN

#: Seconds for one HTTP exchange, or an ``aiohttp.ClientTimeout`` (its ``total``, ``connect``, ``sock_read``
#: limits); ``None`` for no limit; ``NOT_GIVEN`` for the client's default.
Timeout = Union[float, "ClientTimeout", None, NotGiven]  # Union: a string cannot go in an X | Y union
