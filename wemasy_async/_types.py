"""Small shared types."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["NOT_GIVEN", "NotGiven", "Timeout"]


class NotGiven(enum.Enum):
    """Marks an argument left out, where ``None`` means something (``timeout=None``: no time limit)."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN

#: Seconds for one HTTP exchange; ``None`` for no limit; ``NOT_GIVEN`` for the client's default.
Timeout = float | None | NotGiven
