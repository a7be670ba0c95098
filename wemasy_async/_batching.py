"""Batch pushes: validate and de-duplicate the ids, send chunks concurrently, account for every id, merge.

Every distinct id ends in one place (see :mod:`._outcomes`). A 422 naming indices rejects those ids and
re-sends the rest; a 422 about the list, or a 413, teaches the token's chunk sizer the server's maximum ids
per request, and each answer's time teaches it whether a larger request would still be quick (see
:mod:`._chunk_size`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import operator
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Protocol

import attrs

from ._chunk_size import FIRST_CHUNK_SIZE, Sizing
from ._errors import (
    APIConnectionError,
    APIResponseError,
    AuthenticationError,
    ClientClosedError,
    InvalidOrderIdError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServerError,
    UsageError,
    ValidationError,
    WemasyError,
)
from ._models import ChunkFailure, OrderRejection, PushDetails, PushResult, PushSummary
from ._outcomes import Outcomes, merge_results

if TYPE_CHECKING:
    from ._journal import BatchJournal

__all__ = [
    "DEFAULT_CHUNK_CONCURRENCY",
    "DEFAULT_CHUNK_SIZE",
    "PushStream",
    "check_create_label",
    "merge_results",
    "partial_result",
    "prepare_order_ids",
]

logger = logging.getLogger("wemasy_async")

#: Where the learned size of a push request starts (the fixed default of before). 500 ids make a ~4 KB body,
#: and a 422 for one unknown id costs one re-sent request of at most 499.
DEFAULT_CHUNK_SIZE = FIRST_CHUNK_SIZE
#: Push requests of one batch in flight at once (the token's budget paces them anyway).
DEFAULT_CHUNK_CONCURRENCY = 4

#: Python (3.11+) refuses to write an int of more than 4,300 digits as text, and so into JSON.
_TOO_MANY_DIGITS = 10**4300

Progress = Callable[[int, int], None]


class PushOnce(Protocol):
    """Push these ids in one request (with the client's retries, or once when ``retry`` is False), calling
    ``on_sent()`` as each attempt is written to the wire. ``final``: the ids are of the batch's last chunk
    (no later chunk of the batch will want the window's slots)."""

    def __call__(
        self,
        ids: list[int],
        /,
        *,
        retry: bool = True,
        on_sent: Callable[[], None] | None = None,
        final: bool = False,
    ) -> Awaitable[PushResult]: ...


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _checked(value: object, position: int) -> int:
    """The order id an input value stands for, or InvalidOrderIdError naming it and its position."""
    if isinstance(value, bool):
        raise InvalidOrderIdError(
            f"order id at position {position} is {_describe(value)}: a bool is not an order id",
            order_id=value,
            position=position,
        )
    try:
        number = operator.index(value)  # type: ignore[arg-type]
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
    if number >= _TOO_MANY_DIGITS:
        raise InvalidOrderIdError(
            f"order id at position {position} has {number.bit_length()} bits, more than the 4,300 digits "
            "Python writes into JSON: it cannot be sent",
            order_id=value,
            position=position,
        )
    return number


def prepare_order_ids(order_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """Check every id and drop repeats (keeping first occurrences), in one pass with one list and one set.

    Returns the distinct ids in input order and the repeated ones. Accepted: positive ints and
    integer-like objects (``numpy.int64``). Refused, with an InvalidOrderIdError naming the first bad
    id and its position: bool (``True`` is not order 1), floats, strings, zero and negatives.
    """
    if isinstance(order_ids, (str, bytes)) or not isinstance(order_ids, Iterable):
        raise UsageError(f"order_ids must be an iterable of ints, got {type(order_ids).__name__}")
    seen: set[int] = set()
    distinct: list[int] = []
    duplicates: list[int] = []
    add, keep, repeat = seen.add, distinct.append, duplicates.append
    for position, value in enumerate(order_ids):
        # A positive int is the common case, kept cheap for a million ids.
        order_id = value if type(value) is int and 0 < value < _TOO_MANY_DIGITS else _checked(value, position)
        if order_id in seen:
            repeat(order_id)
        else:
            add(order_id)
            keep(order_id)
    return distinct, duplicates


def check_create_label(create_label: object) -> bool:
    if not isinstance(create_label, bool):
        raise UsageError(f"create_label must be True or False, got {_describe(create_label)}")
    return create_label


def _unreported(sent: Sequence[int], result: PushResult) -> list[int]:
    details = result.details
    listed = itertools.chain(details.new_orders, details.retry_orders, details.skipped_orders)
    try:
        reported = set(map(int, listed))
    except ValueError:  # an id the server spelled otherwise ("²", 5,000 digits) cannot match one we sent
        listed = itertools.chain(details.new_orders, details.retry_orders, details.skipped_orders)
        reported = {int(x) for x in map(str.strip, listed) if x.isascii() and x.isdigit() and len(x) <= 4300}
    return [order_id for order_id in sent if order_id not in reported]


_MOST_ITEMS = re.compile(r"(?:more than|at most|maximum of)\s+(\d+)\s+items", re.IGNORECASE)


def server_maximum(error: ValidationError | PayloadTooLargeError, size: int) -> int:
    """The most ids the server takes, after a request of ``size`` ids was refused as too large: its own
    number if its message names one (Laravel's ``max`` rule: "must not have more than 300 items"), else
    half of what failed; never as many as failed, whatever the message says (0: it takes none)."""
    found = (
        [int(n) for m in error.errors.get("order_ids", ()) for n in _MOST_ITEMS.findall(m)]
        if isinstance(error, ValidationError)
        else []
    )
    return max(0, min(min(found) if found else size // 2, size - 1))


#: Errors that would fail every request of a batch alike: the batch sends nothing more after the first (a
#: UsageError is a mistake in the call, such as an option the client refuses, raised before sending).
BATCH_WIDE_ERRORS = (AuthenticationError, PermissionDeniedError, ClientClosedError, UsageError)


@attrs.define
class BatchState:
    """What the chunks of one batch share: the token's chunk sizer (the size to cut at, the server's learned
    maximum), and the error that stopped the batch."""

    sizing: Sizing = attrs.field(factory=Sizing)
    #: The batch-wide error after which nothing more is sent: a 401 or 403, a closed client, or a server
    #: that could not be reached through a request's retries while no other request got an answer.
    stopped_by: WemasyError | None = None
    #: Requests of the batch that got an HTTP answer (any status): the server was reachable then.
    answers: int = 0
    #: Stop when a request got no answer through its retries (False when requests are not retried: one
    #: failure then says little about the server).
    stop_when_unreachable: bool = True
    #: Requests answered 200, and whether the last chunk the batch finished went through.
    successes: int = 0
    last_chunk_ok: bool = False
    #: Requests the batch may still spend isolating ids that make the server fail (see push_chunk): a tenth
    #: of its chunks' requests, at least 64 (a poison id in a chunk of 500 costs about 18).
    bisect_budget: int = 64

    def stop(self, error: WemasyError) -> None:
        if self.stopped_by is None:
            self.stopped_by = error


#: A failed request keeps this much of the page it was answered with (a proxy's HTML can be megabytes).
_EXCERPT_CHARS = 4096


def _failure(piece: list[int], error: WemasyError) -> ChunkFailure:
    if isinstance(error, APIResponseError) and len(error.raw_text) > _EXCERPT_CHARS:
        error.raw_text = error.raw_text[:_EXCERPT_CHARS] + f"... ({len(error.raw_text)} characters in all)"
    return ChunkFailure(tuple(piece), error)


def _too_large(error: ValidationError | PayloadTooLargeError) -> bool:
    # A 413, or a 422 about the list as a whole (too many ids): smaller requests may go through. A 422
    # without field errors (a business rule, the documented {"error": true, "message"}) or about another
    # field (create_label) would fail the same way for any part: splitting would only spend requests.
    return isinstance(error, PayloadTooLargeError) or "order_ids" in error.errors


class _Piece(NamedTuple):
    """A part of a chunk to send: where its first id stands in the chunk (so the result keeps input order),
    its ids, and whether it is a probe of a bisection (sent once, without retries)."""

    offset: int
    ids: list[int]
    probe: bool = False


async def push_chunk(
    ids: list[int],
    push_once: PushOnce,
    batch: BatchState | None = None,
    *,
    partial: dict[int, PushResult] | None = None,
    index: int = 0,
    on_sent: Callable[[], None] | None = None,
    final: bool = False,
) -> PushResult:
    """Push one chunk, re-sending around rejected ids and splitting on size errors; never raises a
    WemasyError: whatever fails ends in the result's ``failed``, with its ids. ``final``: the batch's last
    chunk (each of its requests is pushed with ``final=True``).

    ``batch`` is what the chunks of a batch share: the server's maximum ids per request as learned
    (requests larger than it are split before they are sent; a size error teaches it), and the batch-wide
    error after which nothing more is sent (the ids left go to ``not_sent``). If it is cancelled, what it
    did so far is put in ``partial[index]``: the piece under way in doubt if it was sent (if it was still
    waiting for the budget, unsent), the pieces not begun unsent. ``on_sent()`` is called as each request
    of the chunk is written to the wire."""
    batch = batch if batch is not None else BatchState()
    outcomes = Outcomes()
    if final:
        push_once = functools.partial(push_once, final=True)
    try:
        return await _push_pieces([_Piece(0, ids)], push_once, batch, outcomes, on_sent)
    except asyncio.CancelledError:
        if partial is not None:
            partial[index] = outcomes.result()
        raise


async def _push_pieces(
    pieces: list[_Piece],
    push_once: PushOnce,
    batch: BatchState,
    outcomes: Outcomes,
    on_sent: Callable[[], None] | None = None,
) -> PushResult:
    """Send the pieces, last first (a piece split or re-sent goes back onto the stack), until none is left."""
    while pieces:
        piece = pieces.pop()
        if batch.stopped_by is not None:
            outcomes.not_sent.append((piece.offset, piece.ids))
            continue
        most = batch.sizing.sizer.most
        if most is not None and len(piece.ids) > most:
            # Later parts go first onto the stack, so they are sent in input order.
            pieces += [
                _Piece(piece.offset + i, piece.ids[i : i + most], piece.probe)
                for i in reversed(range(0, len(piece.ids), most))
            ]
            continue
        await _push_piece(piece, pieces, push_once, batch, outcomes, on_sent=on_sent)
    batch.last_chunk_ok = bool(outcomes.accepted)
    return outcomes.result()


async def _push_piece(
    piece: _Piece,
    pieces: list[_Piece],
    push_once: PushOnce,
    batch: BatchState,
    outcomes: Outcomes,
    *,
    on_sent: Callable[[], None] | None,
) -> None:
    """Send one piece and put its ids where its answer says: accepted, or rejected, failed, re-sent in parts."""
    answers_before, successes_before = batch.answers, batch.successes
    try:
        result = await _send(piece, pieces, push_once, outcomes, on_sent=on_sent, batch=batch)
    except ServerError as error:
        batch.answers += 1
        _after_server_error(piece, error, pieces, batch, outcomes, healthy=batch.successes > successes_before)
    except (ValidationError, PayloadTooLargeError) as error:
        batch.answers += 1
        _after_refusal(piece, error, pieces, batch, outcomes)
    except APIConnectionError as error:
        # No answer through all its retries, and none to any other request of the batch meanwhile: the
        # server cannot be reached, and every other chunk would spend its retries learning that again.
        # (A probe is sent once: one that gets no answer says too little to stop the batch.)
        if not piece.probe and batch.stop_when_unreachable and batch.answers == answers_before:
            batch.stop(error)
        outcomes.failed.append((piece.offset, _failure(piece.ids, error)))
    except WemasyError as error:
        if isinstance(error, APIResponseError):
            batch.answers += 1
        if isinstance(error, BATCH_WIDE_ERRORS):
            batch.stop(error)
        outcomes.failed.append((piece.offset, _failure(piece.ids, error)))
    else:
        batch.answers += 1
        batch.successes += 1
        outcomes.accepted.append((piece.offset, result))
        outcomes.unreported += _unreported(piece.ids, result)


async def _send(
    piece: _Piece,
    pieces: list[_Piece],
    push_once: PushOnce,
    outcomes: Outcomes,
    *,
    on_sent: Callable[[], None] | None,
    batch: BatchState,
) -> PushResult:
    """One request for the piece. Left while it was under way: in doubt if it was written to the wire (the
    server may have queued it), else not sent (it was still waiting for the budget); nor the pieces not begun.
    The time its answer took, from its (last) sending, is told to the chunk sizer when the server took its
    size: answered, or refusing only some of its ids."""
    sent = False
    sent_at = 0.0

    def written() -> None:
        nonlocal sent, sent_at
        sent, sent_at = True, time.monotonic()
        if on_sent is not None:
            on_sent()

    try:
        result = await push_once(piece.ids, retry=not piece.probe, on_sent=written)
    except ValidationError as error:
        if error.index_errors():  # only ids refused: the request's size was taken
            _answered(batch, piece, sent_at)
        raise
    except asyncio.CancelledError:
        outcomes.not_sent.extend((p.offset, p.ids) for p in pieces)
        pieces.clear()
        if sent:
            outcomes.in_doubt.extend(piece.ids)
        else:
            outcomes.not_sent.append((piece.offset, piece.ids))
        raise
    _answered(batch, piece, sent_at)
    return result


def _answered(batch: BatchState, piece: _Piece, sent_at: float) -> None:
    """The server took a request of the piece's size, answering ``sent_at`` seconds ago: the sizer learns."""
    sizing = batch.sizing
    sizing.sizer.answered(len(piece.ids), time.monotonic() - sent_at, bound=sizing.answer_bound)


def _after_server_error(
    piece: _Piece, error: ServerError, pieces: list[_Piece], batch: BatchState, outcomes: Outcomes, *, healthy: bool
) -> None:
    # A poison order (one whose processing makes the server fail) fails its whole request. While the server
    # is otherwise healthy (other requests went through meanwhile, or the last chunk did), halve the request
    # to isolate the ids that fail, each half sent once: about 2 log2(n) requests a poison id, and never
    # more than the batch's budget for it.
    healthy = piece.probe or healthy or batch.last_chunk_ok
    if len(piece.ids) > 1 and healthy and batch.bisect_budget >= 2:
        batch.bisect_budget -= 2
        half = len(piece.ids) // 2
        pieces += [_Piece(piece.offset + half, piece.ids[half:], True), _Piece(piece.offset, piece.ids[:half], True)]
    else:
        outcomes.failed.append((piece.offset, _failure(piece.ids, error)))


def _after_refusal(
    piece: _Piece,
    error: ValidationError | PayloadTooLargeError,
    pieces: list[_Piece],
    batch: BatchState,
    outcomes: Outcomes,
) -> None:
    """A 422 naming ids rejects them and re-sends the rest; one about the list's size (or a 413) re-sends the
    piece in parts the size the server takes; any other fails the piece."""
    named = error.index_errors() if isinstance(error, ValidationError) else {}
    named = {i: m for i, m in named.items() if 0 <= i < len(piece.ids)}
    if named:
        for i in sorted(named):
            outcomes.rejected.append((piece.offset + i, OrderRejection(piece.ids[i], " ".join(named[i]))))
        rest = [order_id for i, order_id in enumerate(piece.ids) if i not in named]
        if rest:
            pieces.append(_Piece(piece.offset, rest, piece.probe))
    elif len(piece.ids) > 1 and _too_large(error) and (most := server_maximum(error, len(piece.ids))) > 0:
        batch.sizing.sizer.too_large(most)
        pieces.append(piece)  # sent again in parts the size the server takes
    else:
        outcomes.failed.append((piece.offset, _failure(piece.ids, error)))


def partial_result(error: BaseException) -> PushResult | None:
    """The batch result an exception carries, or None: on the exception itself (a batch stopped by a 401,
    403, closed client or dead server; ``PushFailedError``), or on one it was raised from or during (a
    cancelled ``push_shipments()``: its ``CancelledError``, which Python 3.10 hands the awaiting caller
    as the ``__context__`` of a new one, and which is the ``__cause__`` of ``asyncio.timeout``'s and
    ``asyncio.wait_for``'s ``TimeoutError``).

    >>> try:
    ...     async with asyncio.timeout(60):
    ...         result = await client.sendcloud.push_shipments(ids)
    ... except TimeoutError as error:
    ...     result = partial_result(error)  # in_doubt: under way; not_sent: never sent
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < 64:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found = getattr(current, "result", None)
        if isinstance(found, PushResult):
            return found
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


_EMPTY = PushResult(summary=PushSummary(0, 0, 0, 0, 0), details=PushDetails())


class _Feed:
    """What the workers share. They hold this, not the stream, so a stream the caller drops (a bare
    ``async for`` left with ``break``) is collected at once and cancels them."""

    def __init__(
        self,
        ids: list[int],
        push_once: PushOnce,
        batch: BatchState,
        journal: BatchJournal | None = None,
    ) -> None:
        self.journal = journal
        #: With a journal: where each chunk handed out begins in ``ids``, by index (chunk sizes vary once
        #: the batch learns the server's maximum, so an index alone does not say).
        self.starts: list[int] = []
        self.batch = batch
        #: Chunks handed out so far, and whether the last of them has been: the stream is over when it has
        #: been and each of them has been read.
        self.produced = 0
        self.exhausted = not ids
        self.chunks = self._chunks(ids)
        self.index = itertools.count()
        #: The batch's first exchange of learned sizes with the fleet (see Sizing.exchange): no chunk is
        #: cut before it ends, so the first starts where the fleet's batches got.
        if batch.sizing.shares:
            self.joined: asyncio.Future[None] = asyncio.ensure_future(batch.sizing.exchange())
        else:
            self.joined = asyncio.get_running_loop().create_future()
            self.joined.set_result(None)
        self.push_once = push_once
        self.queue: asyncio.Queue[tuple[int, PushResult | BaseException]] = asyncio.Queue()
        #: The index of the chunk cut as a probe of a larger size, until it has ended (see ChunkSizer.cut);
        #: the workers wait for it to end before they cut another chunk.
        self.probe: int | None = None
        #: The stream is closing: what is left is cut only to be accounted for, never sent.
        self.draining = False
        self.probe_ended = asyncio.Event()
        self.probe_ended.set()
        #: Chunks being pushed now, by index: if the batch is left, their ids are in doubt.
        self.in_flight: dict[int, list[int]] = {}
        #: What chunks cancelled under way had done (see push_chunk), by index.
        self.partial: dict[int, PushResult] = {}
        #: With a journal: the chunks it has been told of, each as its first request was written to the wire
        #: (a chunk still waiting for the budget at a kill was never sent: the journal does not call it in
        #: flight), or as its outcome came without a request sent.
        self.journaled: set[int] = set()

    def sending(self, index: int) -> None:
        """A request of chunk ``index`` is being written to the wire: the journal records the chunk as under
        way (once), so that after a kill it counts in doubt."""
        if index not in self.journaled and self.journal is not None:
            self.journaled.add(index)
            self.journal.started(index, self.starts[index], self.in_flight[index])

    def finished(self, index: int, chunk: list[int], result: PushResult) -> asyncio.Future[None] | None:
        """Chunk ``index`` ended with ``result``: recorded in the journal (see BatchJournal.finished)."""
        assert self.journal is not None
        if index not in self.journaled:  # never sent (the batch stopped, or was left, first)
            self.journaled.add(index)
            self.journal.started(index, self.starts[index], chunk)
        return self.journal.finished(index, result)

    def _chunks(self, ids: list[int]) -> Iterator[list[int]]:
        # Each chunk is cut at the size the token's sizer says as it is cut, so what it learns from earlier
        # answers (a larger size the server takes quickly; its maximum, so a server taking 300 gets chunks
        # of 300, not 300 + 200 for each 500) applies to the rest.
        batch, start, end = self.batch, 0, len(ids)
        while start < end:
            size, probe = (batch.sizing.least(), False) if self.draining else batch.sizing.cut()
            if probe:
                self.probe = self.produced  # the index this chunk gets (see _work)
                self.probe_ended.clear()
            chunk = ids[start : start + size]
            if self.journal is not None:
                self.starts.append(start)
            start += size
            self.produced += 1
            self.exhausted = start >= end
            yield chunk


async def _work(feed: _Feed) -> None:
    journal = feed.journal
    if not feed.joined.done():
        await asyncio.wait((feed.joined,))  # not awaited itself: a worker's cancel must not cancel it
    while True:
        while feed.probe is not None:  # a larger size is being tried: its answer says what to cut next
            await feed.probe_ended.wait()
        # The chunks are shared by the workers: next() never awaits, so each chunk goes once.
        chunk = next(feed.chunks, None)
        if chunk is None:
            return
        final = feed.exhausted  # read before any await: this chunk is the batch's last
        index = next(feed.index)
        probe = feed.probe == index
        feed.in_flight[index] = chunk
        try:
            outcome: PushResult | BaseException = await _push_cut(feed, index, chunk, final)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug, not an API failure: hand it to the reader
            outcome = exc  # the chunk stays in flight: its ids end in doubt when the stream closes
        else:
            del feed.in_flight[index]
        feed.queue.put_nowait((index, outcome))
        if journal is not None and isinstance(outcome, PushResult):
            committed = feed.finished(index, chunk, outcome)
            if committed is not None:
                # The outcome is committed before this worker takes another chunk: after a kill, no more
                # chunks go again than were in flight, one a worker.
                await committed
        if probe and isinstance(outcome, PushResult):
            # What the probe taught, for the fleet's batches: after its outcome is the reader's, so a cancel
            # while Redis answers loses nothing.
            await feed.batch.sizing.exchange()


async def _push_cut(feed: _Feed, index: int, chunk: list[int], final: bool) -> PushResult:
    """Push the chunk ``index`` of the feed; when it was a probe of a larger size, another may go after it."""
    journal = feed.journal
    try:
        return await push_chunk(
            chunk,
            feed.push_once,
            feed.batch,
            partial=feed.partial,
            index=index,
            on_sent=None if journal is None else functools.partial(feed.sending, index),
            final=final,
        )
    finally:
        if feed.probe == index:
            feed.probe = None
            feed.batch.sizing.sizer.probe_done(len(chunk))
            feed.probe_ended.set()


class PushStream:
    """The chunk results of a batch push, as each completes (an async iterator).

    Leaving it (``async with``, or breaking out of ``async for``) cancels the chunks not yet sent; nothing
    is left running. ``duplicates``, ``total`` and ``done`` are known from the start and kept current;
    :meth:`result` merges what has arrived so far.

    >>> async with client.sendcloud.iter_push_shipments(ids) as stream:
    ...     async for chunk in stream:
    ...         print(stream.done, "/", stream.total)
    """

    def __init__(
        self,
        ids: list[int],
        duplicates: list[int],
        push_once: PushOnce,
        *,
        sizing: Sizing,
        max_concurrency: int,
        progress: Progress | None,
        stop_when_unreachable: bool = True,
        journal: BatchJournal | None = None,
    ) -> None:
        self.duplicates = duplicates
        #: Distinct ids in the batch, and how many have an outcome so far.
        self.total = len(ids)
        self.done = 0
        #: With a journal, only what it does not show as answered is sent (see _journal).
        self._journal = journal
        if journal is not None:
            ids = journal.pending
            self.done = self.total - len(ids)
        # Chunks the batch starts with (fewer once its size grows, more once it learns a lower maximum).
        count = -(-len(ids) // sizing.least())
        #: A batch of one chunk keeps its response's JSON in the result's ``raw``.
        self._single = count == 1
        self._progress = progress
        batch = BatchState(
            sizing=sizing,
            stop_when_unreachable=stop_when_unreachable,
            bisect_budget=max(64, count // 10),
        )
        self._feed = _Feed(ids, push_once, batch, journal)
        self._results: list[tuple[int, PushResult]] = []
        self._left: list[tuple[int, PushResult]] = []  # chunks in doubt or unsent when the stream closed
        self._closed = False
        self._received = 0
        #: Why the journal stopped recording the batch (see :attr:`journal_error`).
        self._journal_error: WemasyError | None = None
        self._workers = [asyncio.ensure_future(_work(self._feed)) for _ in range(min(max_concurrency, count))]

    def __del__(self) -> None:
        # Dropped without aclose(), as after a bare `async for ... break`: stop sending.
        self._feed.joined.cancel()
        for worker in self._workers:
            worker.cancel()
        if self._journal is not None:
            self._journal.abandon()

    def __aiter__(self) -> PushStream:
        return self

    async def __anext__(self) -> PushResult:
        feed = self._feed
        if self._closed:
            raise StopAsyncIteration  # as a closed async generator does
        if feed.exhausted and self._received >= feed.produced:
            await self.aclose()
            raise StopAsyncIteration
        index, outcome = await self._feed.queue.get()
        self._received += 1
        if isinstance(outcome, BaseException):
            await self.aclose()
            raise outcome
        # Kept for result(): the chunk's raw JSON goes with the chunk the caller gets, not into the batch.
        self._results.append((index, outcome if self._single else attrs.evolve(outcome, raw={})))
        self.done += (
            outcome.summary.total_orders
            + len(outcome.rejected)
            + sum(len(f.order_ids) for f in outcome.failed)
            + len(outcome.not_sent)
        )
        if self._progress is not None:
            self._progress(self.done, self.total)
        return outcome

    @property
    def stopped_by(self) -> WemasyError | None:
        """The error that stopped the batch (a 401 or 403: every request would fail alike), or None. The
        chunks after it come as results whose ids are all ``not_sent``."""
        return self._feed.batch.stopped_by

    @property
    def journal_error(self) -> WemasyError | None:
        """Why the journal stopped recording the batch (a :class:`JournalError`: a full disk, a file that
        could not be written), known once the stream is closed; else None. The batch itself went on, and
        :meth:`result` is all of it (with the error's message in its ``journal_error``); only the journal
        lags, so a resumed push sends its latest chunks again (they come back skipped)."""
        return self._journal_error

    def result(self) -> PushResult:
        """The chunk results received so far, merged in input order, with the batch's duplicates; once the
        stream is closed, also the ids it left in doubt or unsent."""
        if self._journal is not None:  # with what earlier runs of the batch did, each piece where it begins
            starts = self._feed.starts
            pieces = [(starts[index], result) for index, result in self._results + self._left]
            merged = merge_results(self._journal.in_order(pieces), duplicates=self.duplicates)
            if self._journal_error is not None:
                merged = attrs.evolve(merged, journal_error=str(self._journal_error))
            return merged
        ordered = [r for _, r in sorted(self._results + self._left, key=lambda pair: pair[0])]
        return merge_results(ordered, duplicates=self.duplicates)

    async def aclose(self) -> None:
        """Cancel the chunks still running or not yet sent, and wait until they have stopped.

        Nothing is lost: chunks already answered but not yet read join :meth:`result`, the ids of chunks
        that were under way go to its ``in_doubt`` (the server may have queued them), and those of chunks
        never begun to its ``not_sent``. With a journal, the journal is closed too; if it could not be
        written, that is kept in :attr:`journal_error` (and logged), not raised: the batch's result stands."""
        if self._closed:
            return
        self._closed = True
        self._feed.joined.cancel()
        for worker in self._workers:
            worker.cancel()
        try:
            await asyncio.gather(*self._workers, self._feed.joined, return_exceptions=True)
        except BaseException:
            # Cancelled again while waiting (a second Ctrl-C): the account is made all the same, a chunk
            # whose worker has not stopped yet counting as in doubt; a journal closes behind the stream, its
            # chunks under way left in doubt there too.
            self._account_for_the_rest()
            if self._journal is not None:
                self._journal.abandon()
            raise
        self._account_for_the_rest()
        if self._journal is not None:
            try:
                await self._journal.close()
            except WemasyError as error:
                # A write failed: the batch went on and its result is whole; only the journal lags behind it.
                # That is said beside the result (journal_error, and the log), never instead of it: raising
                # here would hide the batch's own outcome (its result, the 401 that stopped it, a cancel).
                self._journal_error = error
                logger.warning("%s", error)

    def _account_for_the_rest(self) -> None:
        feed = self._feed
        while not feed.queue.empty():
            index, outcome = feed.queue.get_nowait()
            if isinstance(outcome, PushResult):
                self._results.append((index, outcome if self._single else attrs.evolve(outcome, raw={})))
        for index, chunk in sorted(feed.in_flight.items()):
            done = feed.partial.get(index)
            if done is None:
                done = attrs.evolve(_EMPTY, in_doubt=tuple(chunk))
            elif feed.journal is not None:
                feed.finished(index, chunk, done)
            self._left.append((index, done if self._single else attrs.evolve(done, raw={})))
        feed.in_flight.clear()
        feed.draining = True  # the chunks never sent are cut without trying a size (no probe is left open)
        for chunk in feed.chunks:
            self._left.append((next(feed.index), attrs.evolve(_EMPTY, not_sent=tuple(chunk))))

    async def __aenter__(self) -> PushStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
