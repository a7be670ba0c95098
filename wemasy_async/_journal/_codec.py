"""The journal's on-disk format: its schema, and how ids and a chunk's outcome are encoded into a row.

Pure functions of values, no I/O: the store reads with them and the writer writes with them.
"""

import array
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import cattrs

from .._converter import record_converter
from .._errors import UsageError
from .._models import UNACCEPTED, PushDetails, PushResult

#: The journal's layout; a file of another format is refused (an older SDK does not guess at a newer one).
JOURNAL_FORMAT = 2
#: Written into the SQLite header (``PRAGMA application_id``), so a journal is known as one: "WMJ1".
APPLICATION_ID = 0x574D4A31

_SCHEMA = """
CREATE TABLE batch (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE runs (
    run INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    sdk_version TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    retry_rejected INTEGER NOT NULL
);
CREATE TABLE batch_ids (ids BLOB NOT NULL);
CREATE TABLE chunks (
    seq INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    position INTEGER NOT NULL,
    count INTEGER NOT NULL,
    ids BLOB,
    started_at REAL NOT NULL,
    finished_at REAL,
    header TEXT,
    new TEXT,
    retry TEXT,
    skipped TEXT,
    queued BLOB,
    in_flight TEXT
);
"""
_TABLES = {"batch", "batch_ids", "runs", "chunks"}


class JournalError(UsageError):
    """A push journal that cannot be used: it belongs to another batch (other ids, base URL, token or
    ``create_label``), another process is writing it, or the file is damaged or is not a journal. Raised
    before any request is sent. A journal that could not be written while the batch ran does not stop the
    batch, nor is it raised in the stead of its outcome: the batch's result says so in ``journal_error``
    (and the stream in :attr:`PushStream.journal_error`), and the SDK logs it as a warning."""


# --- encoding ------------------------------------------------------------------------------------


def _ids_blob(ids: Sequence[int]) -> bytes:
    """The ids as 8-byte ints (``q``), or as decimal text (``t``) when one does not fit in 8 bytes."""
    try:
        return b"q" + array.array("q", ids).tobytes()
    except OverflowError:
        return b"t" + ",".join(map(str, ids)).encode()


def _blob_ids(blob: bytes) -> list[int]:
    if blob[:1] == b"q":
        packed = array.array("q")
        packed.frombytes(blob[1:])
        return packed.tolist()
    if blob[:1] == b"t":
        return [int(x) for x in blob[1:].decode().split(",")] if len(blob) > 1 else []
    raise ValueError("unknown id encoding")


def _blob_count(blob: bytes) -> int:
    if blob[:1] == b"q":
        return (len(blob) - 1) // 8
    return len(_blob_ids(blob))


def _strings(values: Sequence[str]) -> str:
    """A tuple of the server's strings as one text: joined by commas when none holds one, else JSON."""
    if not values:
        return ""
    joined = ",".join(values)
    if joined.count(",") == len(values) - 1:
        return "s" + joined
    return "j" + json.dumps(list(values))


def _unstrings(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    if text[0] == "s":
        return tuple(text[1:].split(","))
    return tuple(json.loads(text[1:]))


def _mixed(values: Sequence[Any], accepted: list[int]) -> bytes | None:
    """``queued_orders`` (documented ``mixed[]``): ``=`` when they are the chunk's accepted ids (the server
    queued all it accepted: the common case), else 8-byte ints, else JSON."""
    if not values:
        return None
    listed = list(values)
    if listed == accepted:
        return b"="
    try:
        return b"q" + array.array("q", listed).tobytes()
    except (TypeError, OverflowError):
        return b"j" + json.dumps(listed).encode()


def _unmixed(blob: bytes | None, accepted: list[int]) -> tuple[Any, ...]:
    if not blob:
        return ()
    if blob == b"=":
        return tuple(accepted)
    if blob[:1] == b"q":
        return tuple(_blob_ids(blob))
    return tuple(json.loads(blob[1:]))


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


_COMPACT = json.JSONEncoder(separators=(",", ":"))

#: In a details column: "the chunk's accepted ids not named in the other two columns, in the order sent".
_DERIVED = "*"


def _accepted(sent: list[int], unanswered: Sequence[int]) -> list[int]:
    """The ids of a chunk the server accepted, in the order sent: all but those with another outcome."""
    if not unanswered:
        return sent
    skip = set(unanswered)
    return [i for i in sent if i not in skip]


class RejectedEntry(NamedTuple):
    """A rejected id in an outcome's header (a JSON pair)."""

    order_id: int
    message: str


class FailedEntry(NamedTuple):
    """A failed request in an outcome's header (a JSON pair): its ids and its error, as text."""

    order_ids: list[int]
    error: str


class OutcomeHeader(NamedTuple):
    """A chunk's outcome but its details: the row's ``header`` column, a JSON array in this order."""

    total: int
    new: int
    retry: int
    skipped: int
    queued: int
    message: str
    total_chunks: int
    labels: str
    ambiguous: bool
    requests: int
    rejected: list[RejectedEntry]
    failed: list[FailedEntry]
    unreported: list[int]
    not_sent: list[int]
    in_doubt: list[int]

    @classmethod
    def of(cls, result: PushResult) -> "OutcomeHeader":
        s = result.summary
        return cls(
            s.total_orders,
            s.new_orders,
            s.retry_orders,
            s.skipped_orders,
            s.queued_orders,
            result.message,
            result.total_chunks,
            result.labels_will_be_created,
            result.ambiguous_retry,
            result.requests,
            [RejectedEntry(r.order_id, r.message) for r in result.rejected],
            [FailedEntry(list(f.order_ids), _error_text(f.error)) for f in result.failed],
            list(result.unreported),
            list(result.not_sent),
            list(result.in_doubt),
        )

    @classmethod
    def load(cls, text: str) -> "OutcomeHeader":
        try:
            return record_converter.structure(json.loads(text), cls)
        except cattrs.BaseValidationError as error:  # said in a line, not as cattrs' tree of types
            raise ValueError(f"an outcome header of the wrong shape ({cattrs.transform_error(error)[0]})") from None

    def dump(self) -> str:
        return _COMPACT.encode(self)  # a NamedTuple is a JSON array

    def ids_in(self, place: str) -> list[int]:
        """The chunk's ids in one place of :data:`UNACCEPTED`, by its name."""
        if place == "rejected":
            return [rejection.order_id for rejection in self.rejected]
        if place == "failed":
            return [order_id for failure in self.failed for order_id in failure.order_ids]
        ids: list[int] = getattr(self, place)
        return ids

    def unanswered(self) -> list[int]:
        """The chunk's ids with no answer that stands for good: those of every place a resume sends again."""
        return [order_id for place in UNACCEPTED if place.resent for order_id in self.ids_in(place.name)]


class OutcomeColumns(NamedTuple):
    """A chunk's outcome as its row's columns: the header, then the details (see :func:`_encode`)."""

    header: str | None = None
    new: str | None = None
    retry: str | None = None
    skipped: str | None = None
    queued: bytes | None = None


class ChunkRow(NamedTuple):
    """A row of the ``chunks`` table, its columns in the table's order."""

    seq: int
    run: int
    position: int
    #: The ``count`` column: how many ids the chunk has.
    length: int
    #: The chunk's ids, when they are not a run of the batch's in a row (else None: position and count say).
    ids: bytes | None
    started_at: float
    finished_at: float | None = None
    header: str | None = None
    new: str | None = None
    retry: str | None = None
    skipped: str | None = None
    queued: bytes | None = None
    #: The run's other chunks under way when this row was written (``seq:position:count``, comma-separated).
    in_flight: str | None = None


def _encode(result: PushResult, sent: list[int]) -> OutcomeColumns:
    """A chunk's outcome as the row's columns: a JSON header, then the details.

    Most of a chunk's ids are usually in one of the server's lists (all new, or all skipped on a re-run).
    When the server named exactly the ids it accepted (none unreported, as many names as ids), the largest
    list is not stored: it is the accepted ids not in the other two, written back as decimal strings in the
    order sent. That halves what a chunk writes."""
    header = OutcomeHeader.of(result)
    d = result.details
    accepted = _accepted(sent, header.unanswered() + [r.order_id for r in result.rejected])
    new, retry, skipped = d.new_orders, d.retry_orders, d.skipped_orders
    derived = None
    if not result.unreported and len(new) + len(retry) + len(skipped) == len(accepted):
        derived = "new" if len(new) >= len(skipped) else "skipped"
    return OutcomeColumns(
        header.dump(),
        _DERIVED if derived == "new" else _strings(new),
        _strings(retry),
        _DERIVED if derived == "skipped" else _strings(skipped),
        _mixed(d.queued_orders, accepted),
    )


def _details(accepted: list[int], row: ChunkRow) -> PushDetails:
    """The details a chunk's row holds (see :func:`_encode`): at most one list derived from the others."""
    new, retry, skipped = (None if text == _DERIVED else _unstrings(text) for text in (row.new, row.retry, row.skipped))
    if new is None or skipped is None:
        named = {int(x) for listed in (new, retry, skipped) if listed is not None for x in listed}
        rest = tuple(str(i) for i in accepted if i not in named)
        new, skipped = (rest, skipped) if new is None else (new, rest)
    return PushDetails(new or (), retry or (), skipped or (), _unmixed(row.queued, accepted))
