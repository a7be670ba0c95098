"""Order-id input: validation before any request is sent."""

from __future__ import annotations

import operator
from collections.abc import Iterable

from ._errors import InvalidOrderIdError, UsageError

__all__ = ["check_create_label", "validated_order_ids"]


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def validated_order_ids(order_ids: Iterable[int]) -> list[int]:
    """The ids as a list of ints, or InvalidOrderIdError naming the first bad one and its position.

    Accepted: positive ints and integer-like objects (``numpy.int64``). Refused: bool (``True`` is not
    order 1), floats, strings, zero and negatives.
    """
    if isinstance(order_ids, (str, bytes)) or not isinstance(order_ids, Iterable):
        raise UsageError(f"order_ids must be an iterable of ints, got {type(order_ids).__name__}")
    ids: list[int] = []
    append = ids.append
    for position, value in enumerate(order_ids):
        if type(value) is int:  # the common case, kept cheap for a million ids
            if value > 0:
                append(value)
                continue
            raise InvalidOrderIdError(
                f"order id at position {position} is {value}: order ids must be positive",
                order_id=value,
                position=position,
            )
        if isinstance(value, bool):
            raise InvalidOrderIdError(
                f"order id at position {position} is {_describe(value)}: a bool is not an order id",
                order_id=value,
                position=position,
            )
        try:
            number = operator.index(value)
        except TypeError:
            raise InvalidOrderIdError(
                f"order id at position {position} is {_describe(value)}: order ids must be ints",
                order_id=value,
                position=position,
            ) from None
        if number <= 0:
            raise InvalidOrderIdError(
                f"order id at position {position} is {number}: order ids must be positive",
                order_id=value,
                position=position,
            )
        append(number)
    return ids


def check_create_label(create_label: object) -> bool:
    if not isinstance(create_label, bool):
        raise UsageError(f"create_label must be True or False, got {_describe(create_label)}")
    return create_label
