"""Where the ids of a batch end: a chunk's accumulator, a journal's counts, results merged, the CLI's JSON.

Every distinct id ends in one place: accepted (new, retry or skipped, as the server reported it), or one of
:data:`UNACCEPTED` (``rejected``, ``failed``, ``unreported``, ``in_doubt``, ``not_sent``), which is the one
list of them; duplicates stand beside them.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs

from ._models import UNACCEPTED, ChunkFailure, OrderRejection, PushDetails, PushResult, PushSummary

__all__ = ["OutcomeCounts", "Outcomes", "merge_results", "places_json"]

T = TypeVar("T")


def _in_order(entries: Sequence[tuple[int, T]]) -> list[T]:
    return [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]


@attrs.define
class Outcomes:
    """The accumulator of one chunk's outcome as its pieces end, one list a place. Each entry keeps the
    offset in the chunk where its piece began, so the result keeps input order."""

    accepted: list[tuple[int, PushResult]] = attrs.field(factory=list)
    rejected: list[tuple[int, OrderRejection]] = attrs.field(factory=list)
    failed: list[tuple[int, ChunkFailure]] = attrs.field(factory=list)
    unreported: list[int] = attrs.field(factory=list)
    not_sent: list[tuple[int, list[int]]] = attrs.field(factory=list)
    in_doubt: list[int] = attrs.field(factory=list)

    def result(self) -> PushResult:
        """The chunk's result: the accepted pieces merged, then every other place, each in input order."""
        return attrs.evolve(
            merge_results(_in_order(self.accepted)),
            rejected=tuple(_in_order(self.rejected)),
            failed=tuple(_in_order(self.failed)),
            unreported=tuple(self.unreported),
            not_sent=tuple(itertools.chain.from_iterable(_in_order(self.not_sent))),
            in_doubt=tuple(self.in_doubt),
        )


@attrs.define
class OutcomeCounts:
    """How many distinct ids are in each place (a journal's summary counts them, not lists them): accepted
    (and its three kinds), then each of :data:`UNACCEPTED`."""

    accepted: int = 0
    new: int = 0
    retry: int = 0
    skipped: int = 0
    rejected: int = 0
    failed: int = 0
    unreported: int = 0
    in_doubt: int = 0
    not_sent: int = 0


def places_json(result: PushResult) -> dict[str, list[Any]]:
    """The places of a result's unaccepted ids as the CLI's JSON lists them (name -> entries), in the
    order of :data:`UNACCEPTED`."""
    return {place.name: [_json_entry(entry) for entry in getattr(result, place.name)] for place in UNACCEPTED}


def _json_entry(entry: object) -> object:
    """An entry of a place as the CLI's JSON gives it: an id as it is; a rejection or a failure as an object."""
    if isinstance(entry, OrderRejection):
        return {"order_id": entry.order_id, "message": entry.message}
    if isinstance(entry, ChunkFailure):
        return {"order_ids": list(entry.order_ids), "error": str(entry.error)}
    return entry


def _chained(results: Sequence[PushResult], place: str) -> tuple[Any, ...]:
    return tuple(itertools.chain.from_iterable(map(operator.attrgetter(place), results)))


def merge_results(results: Sequence[PushResult], *, duplicates: Sequence[int] = ()) -> PushResult:
    """One result from many: summary and total_chunks summed, details and outcomes concatenated in order."""
    summaries = [r.summary for r in results]
    details = [r.details for r in results]
    requests = sum(r.requests for r in results)
    accepted = sum(s.total_orders for s in summaries)
    places = {place.name: _chained(results, place.name) for place in UNACCEPTED}
    rejected, failed = places["rejected"], places["failed"]
    return PushResult(
        summary=PushSummary(
            total_orders=accepted,
            new_orders=sum(s.new_orders for s in summaries),
            retry_orders=sum(s.retry_orders for s in summaries),
            skipped_orders=sum(s.skipped_orders for s in summaries),
            queued_orders=sum(s.queued_orders for s in summaries),
        ),
        details=PushDetails(
            new_orders=tuple(itertools.chain.from_iterable(d.new_orders for d in details)),
            retry_orders=tuple(itertools.chain.from_iterable(d.retry_orders for d in details)),
            skipped_orders=tuple(itertools.chain.from_iterable(d.skipped_orders for d in details)),
            queued_orders=tuple(itertools.chain.from_iterable(d.queued_orders for d in details)),
        ),
        message=(
            f"{accepted} orders accepted in {requests} requests; "
            f"{len(rejected)} rejected; {sum(len(f.order_ids) for f in failed)} failed"
        ),
        total_chunks=sum(r.total_chunks for r in results),
        labels_will_be_created=next((r.labels_will_be_created for r in results if r.labels_will_be_created), ""),
        ambiguous_retry=any(r.ambiguous_retry for r in results),
        **places,
        duplicates=tuple(duplicates),
        requests=requests,
        journal_error=next((r.journal_error for r in results if r.journal_error), None),
        # A batch's result does not keep every response (a million ids: 2,000 of them); a single response's
        # JSON stays in its raw, and every chunk's in the chunk results a stream yields.
        raw=results[0].raw if len(results) == 1 else {},
    )
