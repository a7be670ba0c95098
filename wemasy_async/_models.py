"""Typed results: frozen, slotted attrs classes built from the API's JSON by :mod:`._converter`.

Each model keeps the JSON object it was built from in ``raw``, so fields the SDK does not model yet are
still reachable. Unknown fields are ignored, never an error.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import attrs

from ._errors import WemasyError

__all__ = [
    "UNACCEPTED",
    "ChunkFailure",
    "OrderRejection",
    "Place",
    "PushDetails",
    "PushFailedError",
    "PushResult",
    "PushSummary",
    "SendcloudIntegration",
    "parse_flag",
]

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f", ""})


def parse_flag(value: object) -> bool | None:
    """Read a boolean the way PHP APIs send them: ``true``/``false``, ``1``/``0``, ``"1"``/``"0"``,
    ``"true"``/``"false"`` (and ``"yes"``/``"no"``). Anything else, ``None`` included, is ``None``.

    >>> parse_flag("1"), parse_flag("false"), parse_flag(True), parse_flag("pending")
    (True, False, True, None)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {1: True, 0: False}.get(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


@attrs.frozen
class SendcloudIntegration:
    """The SendCloud integration of the webshop, as ``GET .../integrations/sendcloud/status`` reports it.

    ``is_active`` and ``is_connected`` are kept exactly as sent (documented as strings); ``active`` and
    ``connected`` are their boolean readings (``None`` when the value is missing or unreadable).
    ``credentials`` is hidden from the repr: it may hold the shop's SendCloud keys.
    """

    id: str | None = None
    is_active: Any = None
    is_connected: Any = None
    credentials: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def active(self) -> bool | None:
        return parse_flag(self.is_active)

    @property
    def connected(self) -> bool | None:
        return parse_flag(self.is_connected)


@attrs.frozen
class PushSummary:
    """The counts of a push. ``total_orders`` is every id the server considered."""

    total_orders: int = 0
    new_orders: int = 0
    retry_orders: int = 0
    skipped_orders: int = 0
    queued_orders: int = 0


@attrs.frozen
class PushDetails:
    """Which orders fell in which outcome. Ids come back as strings (documented ``string[]``);
    ``queued_orders`` is documented as ``mixed[]`` and kept as sent."""

    new_orders: tuple[str, ...] = ()
    retry_orders: tuple[str, ...] = ()
    skipped_orders: tuple[str, ...] = ()
    queued_orders: tuple[Any, ...] = ()


@attrs.frozen
class OrderRejection:
    """An order id the server refused in validation, with its message (``The selected order_ids.5 is invalid.``)."""

    order_id: int
    message: str


@attrs.frozen
class ChunkFailure:
    """Order ids whose request failed after its retries, with the error that ended it. They may be pushed
    again later: the server reports an order it already queued as skipped."""

    order_ids: tuple[int, ...]
    error: BaseException = attrs.field(eq=False)


class Place(NamedTuple):
    """A place where an id of a batch may end other than accepted (see :data:`UNACCEPTED`)."""

    #: The attribute of :class:`PushResult` and of a journal's summary, and the key of the CLI's JSON.
    name: str
    #: How messages name it.
    words: str
    #: A resumed push sends its ids again (``rejected`` only with ``retry_rejected``).
    resent: bool


#: Every place an id may end in but accepted, listed once, in the order results and messages give them.
UNACCEPTED: Final = (
    Place("rejected", "rejected", resent=False),
    Place("failed", "failed", resent=True),
    Place("unreported", "unreported", resent=True),
    Place("in_doubt", "in doubt", resent=True),
    Place("not_sent", "not sent", resent=True),
)


@attrs.frozen
class PushResult:
    """The answer to ``POST .../orders/sendcloud/shipments/push``.

    The server only validates and queues the orders; SendCloud shipments are made later by its jobs.
    An order already queued is reported as skipped, so pushing it again cannot duplicate a shipment.
    """

    summary: PushSummary
    details: PushDetails
    message: str = ""
    total_chunks: int = 0
    labels_will_be_created: str = ""
    #: True when the push was re-sent after a failure that may have reached the server (a timeout, a
    #: dropped connection): orders reported as skipped may then have been queued by that earlier attempt.
    ambiguous_retry: bool = False
    #: Ids the server refused in validation (batch pushes), each with its message.
    rejected: tuple[OrderRejection, ...] = ()
    #: Requests that failed after their retries, each with the ids it held and its error.
    failed: tuple[ChunkFailure, ...] = ()
    #: Ids that stood more than once in the input; each was pushed once (the first occurrence).
    duplicates: tuple[int, ...] = ()
    #: Ids the server accepted (answered 200 for) but listed in none of new, retry or skipped.
    unreported: tuple[int, ...] = ()
    #: Ids never sent: the batch stopped first, on an error that would fail every request the same way
    #: (401, 403). They may be pushed again once that is fixed.
    not_sent: tuple[int, ...] = ()
    #: Ids of requests under way when the batch was left (cancelled, ``break``, Ctrl-C): the server may
    #: have queued them. Pushing them again is safe: an order already queued comes back skipped.
    in_doubt: tuple[int, ...] = ()
    #: Push requests answered 200 that make up this result.
    requests: int = 0
    #: Why the batch's journal stopped recording it (a full disk, a file that could not be written), or
    #: None. The batch went on regardless and this result is all of it; only the journal lags: a resumed
    #: push sends its latest chunks again (they come back skipped). Also logged as a warning.
    journal_error: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def creates_labels(self) -> bool | None:
        """``labels_will_be_created`` read as a boolean (``None`` if unreadable)."""
        return parse_flag(self.labels_will_be_created)

    @property
    def failed_order_ids(self) -> tuple[int, ...]:
        """Every id of every failed request: the ids to push again later."""
        return tuple(order_id for failure in self.failed for order_id in failure.order_ids)

    def ids_in(self, place: str) -> tuple[int, ...]:
        """The ids in one place of :data:`UNACCEPTED` (by its name: ``"rejected"``, ``"in_doubt"``...)."""
        if place == "rejected":
            return tuple(rejection.order_id for rejection in self.rejected)
        if place == "failed":
            return self.failed_order_ids
        ids: tuple[int, ...] = getattr(self, place)
        return ids

    @property
    def ok(self) -> bool:
        """True when every id was accepted: none rejected, failed, unreported, in doubt or unsent."""
        return not any(getattr(self, place.name) for place in UNACCEPTED)

    @property
    def retry_order_ids(self) -> tuple[int, ...]:
        """The ids to push again later: those of every place a resumed push sends again (failed requests,
        ids an answer did not name, in doubt, never sent); pushing an id the server queued already is safe:
        it comes back skipped."""
        return tuple(itertools.chain.from_iterable(self.ids_in(p.name) for p in UNACCEPTED if p.resent))

    def raise_for_failures(self) -> PushResult:
        """Raise :class:`PushFailedError` (which carries this result) unless every id was accepted;
        otherwise return the result, so a strict caller can write ``(await push(...)).raise_for_failures()``."""
        if not self.ok:
            raise PushFailedError(self)
        return self


class PushFailedError(WemasyError):
    """Some order ids of a push were rejected or failed. ``result`` is the full result: what was accepted,
    ``rejected`` (with the server's messages) and ``failed`` (with the ids and the errors)."""

    def __init__(self, result: PushResult) -> None:
        self.result = result
        counts = [(len(result.ids_in(place.name)), place.words) for place in UNACCEPTED]
        told = ", ".join(f"{count} {words}" for count, words in counts if count)
        super().__init__(f"order ids of a push: {told} ({result.summary.total_orders} accepted by the server)")
