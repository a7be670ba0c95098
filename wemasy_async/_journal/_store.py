"""Opening a journal for a run and reading one back: identity checks, the run's rows, the summary."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Union

import attrs
import cattrs

from .._errors import UsageError
from .._models import UNACCEPTED, OrderRejection, PushResult, PushSummary
from .._outcomes import OutcomeCounts
from .._version import __version__
from ._codec import (
    _SCHEMA,
    _TABLES,
    APPLICATION_ID,
    JOURNAL_FORMAT,
    ChunkRow,
    JournalError,
    OutcomeHeader,
    _accepted,
    _blob_ids,
    _details,
    _ids_blob,
)
from ._lock import _being_written, _Lock
from ._writer import DISK, BatchJournal, JournalDisk, _Writer

JournalPath = Union[str, "os.PathLike[str]"]

# --- the batch's state, as the journal holds it --------------------------------------------------


@attrs.frozen
class JournalSummary:
    """What a journal holds: its batch, how far it got, and its runs (see :func:`read_journal`).

    Counts are of distinct ids, each in one place: ``accepted`` by the server (``new``, ``retry`` and
    ``skipped`` as it reported them), ``rejected``, ``failed`` (a request failed after its retries),
    ``unreported`` (answered but not named), ``in_doubt`` (sent, no answer recorded: in flight when the
    process died or the batch was left) or ``not_sent``. A resumed push sends all but the accepted and
    the rejected ones (those too with ``retry_rejected``).
    """

    path: str
    ids: int
    accepted: int
    new: int
    retry: int
    skipped: int
    rejected: int
    failed: int
    unreported: int
    in_doubt: int
    not_sent: int
    requests: int
    runs: int
    #: Whether the last run closed its journal (False after a kill, or while it runs).
    last_run_finished: bool
    #: The process id of the last run.
    last_pid: int
    base_url: str
    create_label: bool
    sdk_version: str
    #: Unix times.
    created_at: float
    updated_at: float

    @property
    def to_send(self) -> int:
        """Ids a resumed push would send (without ``retry_rejected``)."""
        return sum(getattr(self, place.name) for place in UNACCEPTED if place.resent)

    @property
    def complete(self) -> bool:
        """Every id has an answer: accepted or rejected."""
        return self.to_send == 0

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (the token is not in the journal, so not in this either)."""
        data = attrs.asdict(self)
        data["to_send"] = self.to_send
        data["complete"] = self.complete
        return data


@attrs.define
class _State:
    """The journal's chunks read back: what is settled, and the stored results to merge."""

    #: Ids with an answer that stands: accepted, and rejected unless they are to be retried.
    settled: set[int] = attrs.field(factory=set)
    #: (position in the batch, result) of each stored chunk: its accepted part and its standing rejections.
    pieces: list[tuple[int, PushResult]] = attrs.field(factory=list)
    counts: OutcomeCounts = attrs.field(factory=OutcomeCounts)
    requests: int = 0
    sent: int = 0
    updated_at: float = 0.0


@attrs.define
class _LaterRuns:
    """The ids sent by runs later than the chunk being read (chunks are read newest run first; within a
    run they are disjoint): an id sent again belongs to the latest chunk that sent it."""

    ids: set[int] = attrs.field(factory=set)
    _run: int | None = None
    _this_run: list[list[int]] = attrs.field(factory=list)

    def enter(self, run: int, sent: list[int]) -> None:
        """The next chunk read, of ``run``: the chunks of the run read before become "later" when it changes."""
        if run != self._run:
            for earlier_sent in self._this_run:
                self.ids.update(earlier_sent)
            self._this_run.clear()
            self._run = run
        self._this_run.append(sent)

    def standing(self, values: Iterable[int]) -> list[int]:
        """Those of ``values`` no later run sent again."""
        return [i for i in values if i not in self.ids] if self.ids else list(values)


def _read_chunks(conn: sqlite3.Connection, *, for_resume: bool) -> list[ChunkRow]:
    """Every chunk's row, newest run first (the details only to resume), with a row for each chunk in flight
    at a kill."""
    details = "new, retry, skipped, queued" if for_resume else "NULL, NULL, NULL, NULL"
    columns = f"seq, run, position, count, ids, started_at, finished_at, header, {details}, in_flight"
    rows = [ChunkRow._make(row) for row in conn.execute(f"SELECT {columns} FROM chunks")]
    rows += _in_flight_at_a_kill(rows)
    rows.sort(key=lambda row: (row.run, row.seq), reverse=True)
    return rows


def _in_flight_at_a_kill(rows: list[ChunkRow]) -> list[ChunkRow]:
    """The chunks a row names as under way when it was written, that have no row of their own."""
    recorded = {(row.run, row.seq) for row in rows}
    found = []
    for row in rows:
        for entry in row.in_flight.split(",") if row.in_flight else ():
            seq, position, count = map(int, entry.split(":"))
            if (row.run, seq) not in recorded:
                recorded.add((row.run, seq))
                found.append(
                    # a chunk named in a later run's header: its start is when that outcome was written
                    ChunkRow(seq, row.run, position, length=count, ids=None, started_at=row.finished_at or 0.0)
                )
    return found


def _load(
    conn: sqlite3.Connection, *, retry_rejected: bool, for_resume: bool, batch: list[int] | None = None
) -> _State:
    """Read every chunk back. An id sent by several runs belongs to the latest chunk that sent it (a
    resumed run sends only what was not settled, so earlier records of such an id no longer stand).

    A rejection stands unless this run retries rejections, or a later run asked to and did not record a
    new answer for the id (it may have been sent, and queued, before that run died): such an id is sent
    again."""
    state = _State()
    if batch is None:
        row = conn.execute("SELECT ids FROM batch_ids").fetchone()
        batch = _blob_ids(row[0]) if row else []
    retrying_runs = [run for (run,) in conn.execute("SELECT run FROM runs WHERE retry_rejected")]
    later = _LaterRuns()
    for chunk in _read_chunks(conn, for_resume=for_resume):
        state.updated_at = max(state.updated_at, chunk.started_at, chunk.finished_at or 0.0)
        # A chunk that is a run of the batch's ids in a row keeps only where it begins and its length.
        sent = batch[chunk.position : chunk.position + chunk.length] if chunk.ids is None else _blob_ids(chunk.ids)
        later.enter(chunk.run, sent)
        state.sent += len(later.standing(sent))
        if chunk.header is None:  # started, no answer recorded: in flight when the process died
            state.counts.in_doubt += len(later.standing(sent))
            continue
        header = OutcomeHeader.load(chunk.header)
        retried = retry_rejected or any(run > chunk.run for run in retrying_runs)
        kept = _count_outcome(state, header, sent, later, retried=retried)
        if for_resume:
            _keep_piece(state, chunk, header, sent, kept)
    return state


def _count_outcome(
    state: _State, header: OutcomeHeader, sent: list[int], later: _LaterRuns, *, retried: bool
) -> list[OrderRejection]:
    """Count a chunk's outcome into ``state``; return its rejections that stand."""
    counts = state.counts
    for place in UNACCEPTED:
        if place.resent:  # those a later run sent again stand no more
            setattr(counts, place.name, getattr(counts, place.name) + len(later.standing(header.ids_in(place.name))))
    kept = [OrderRejection(r.order_id, r.message) for r in header.rejected if r.order_id not in later.ids]
    if retried:  # to be sent again: the answer a retry got, if any, was not recorded
        counts.in_doubt += len(kept)
        kept = []
    counts.rejected += len(kept)
    # Accepted ids are settled for good: no later run sends them, so nothing supersedes them.
    counts.accepted += len(sent) - len(header.unanswered()) - len(header.rejected)
    counts.new += header.new
    counts.retry += header.retry
    counts.skipped += header.skipped
    state.requests += header.requests
    return kept


def _keep_piece(
    state: _State, chunk: ChunkRow, header: OutcomeHeader, sent: list[int], kept: list[OrderRejection]
) -> None:
    """For a resume: settle the chunk's accepted ids and standing rejections, and keep its stored result."""
    accepted = _accepted(sent, header.unanswered() + [r.order_id for r in header.rejected])
    state.settled.update(accepted)
    state.settled.update(r.order_id for r in kept)
    if header.total or kept or header.requests:
        piece = PushResult(
            summary=PushSummary(header.total, header.new, header.retry, header.skipped, header.queued),
            details=_details(accepted, chunk),
            message=header.message,
            total_chunks=header.total_chunks,
            labels_will_be_created=header.labels,
            ambiguous_retry=header.ambiguous,
            rejected=tuple(kept),
            requests=header.requests,
        )
        state.pieces.append((chunk.position, piece))


def _check_path(path: object) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"journal must be a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise UsageError(f"journal must be a file path, got {path!r}")
    return text


#: What decoding a damaged file's values can raise (text where a number was, a cut JSON header, a blob of
#: the wrong length, a NULL where a value was): each becomes the same clear "damaged" JournalError. (A
#: JournalError, itself a ValueError, is let through first: it already says what is wrong.)
_DECODING_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    struct.error,
    cattrs.BaseValidationError,
)


def _damaged(path: str, error: BaseException) -> JournalError:
    return JournalError(
        f"{path} is not a usable push journal: it is damaged (torn or truncated) or is not an SQLite file "
        f"({error}). Keep it for inspection and give the push another journal file"
    )


def _identify(conn: sqlite3.Connection, path: str) -> bool:
    """True if the file is a journal, False if it is an empty database (a new file); else JournalError."""
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if application_id == APPLICATION_ID and tables >= _TABLES:
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise JournalError(f"{path} is a push journal but it is damaged ({check}); give the push another file")
        (format_,) = conn.execute("SELECT value FROM batch WHERE key = 'format'").fetchone() or (None,)
        if format_ != JOURNAL_FORMAT:
            raise JournalError(
                f"{path} is a push journal of format {format_}, which this wemasy-async ({__version__}, format "
                f"{JOURNAL_FORMAT}) does not read; finish that batch with the version that began it"
            )
        return True
    if application_id == APPLICATION_ID:
        raise JournalError(f"{path} is a push journal but its tables are missing: it is damaged")
    if application_id == 0 and not tables:
        return False
    raise JournalError(
        f"{path} is an SQLite database but not a wemasy-async push journal; it was left untouched. "
        "Give the push a new file name"
    )


def _meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return dict(conn.execute("SELECT key, value FROM batch").fetchall())


def _token_hash(salt: str, token: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + token.encode()).hexdigest()


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)


def open_journal(
    journal: JournalPath | None,
    ids: list[int],
    client: object,
    *,
    chunk_size: int,
    create_label: bool,
    retry_rejected: bool,
    _disk: JournalDisk = DISK,
) -> BatchJournal | None:
    """Open (or create) the journal of the batch ``ids`` for one run, or None when no journal is asked.

    Refuses, with a :class:`JournalError` and before any request: a file of another batch (other ids or
    order, another base URL, token or ``create_label``), one another process is writing, and a damaged or
    foreign file. Blocks for as long as reading the journal back and checking the ids take: once,
    before anything is sent.
    """
    if not isinstance(retry_rejected, bool):
        raise UsageError(f"retry_rejected must be True or False, got {retry_rejected!r}")
    if journal is None:
        if retry_rejected:
            raise UsageError("retry_rejected=True needs a journal: it retries the ids a journal shows as rejected")
        return None
    path = _check_path(journal)
    loop = asyncio.get_running_loop()
    # The client's identity: a WemasyClient has both; the token is hashed here and never stored.
    batch = _Batch(ids, str(getattr(client, "base_url", "")), str(getattr(client, "_token", "")), create_label)
    lock = _Lock(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(path)
        opened = _open_run(conn, path, batch, chunk_size=chunk_size, retry_rejected=retry_rejected)
    except sqlite3.DatabaseError as error:
        _abort(conn, lock)
        raise _damaged(path, error) from None
    except (sqlite3.Error, OSError) as error:
        _abort(conn, lock)
        raise JournalError(f"cannot use the journal {path}: {error}") from None
    except JournalError:
        _abort(conn, lock)
        raise
    except _DECODING_ERRORS as error:  # a value the file holds could not be read back: it is damaged
        _abort(conn, lock)
        raise _damaged(path, error) from None
    except BaseException:
        _abort(conn, lock)
        raise
    writer = _Writer(conn, lock, opened.run, loop, _disk)
    writer.start()
    return BatchJournal(
        path,
        writer,
        pending=opened.pending,
        positions=opened.positions,
        first_seq=opened.first_seq,
        total=len(ids),
        pieces=opened.pieces,
    )


def _abort(conn: sqlite3.Connection | None, lock: _Lock) -> None:
    if conn is not None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        conn.close()
    lock.release()


class _Batch(NamedTuple):
    """What a journal belongs to: the batch's distinct ids (in order), and the client and option it was
    pushed with (the token is only ever hashed)."""

    ids: list[int]
    base_url: str
    token: str
    create_label: bool


class _Run(NamedTuple):
    """A run opened on a journal: the ids it sends, where each stands in the batch, its first chunk's seq,
    the stored results to merge, and its row in ``runs``."""

    pending: list[int]
    positions: Sequence[int]
    first_seq: int
    pieces: list[tuple[int, PushResult]]
    run: int


def _open_run(conn: sqlite3.Connection, path: str, batch: _Batch, *, chunk_size: int, retry_rejected: bool) -> _Run:
    blob = _ids_blob(batch.ids)
    existing = _identify(conn, path)
    if existing:
        _check_identity(conn, path, batch, blob)
    else:
        _create(conn, batch, blob)
    _hold_alone(conn)
    state = _load(conn, retry_rejected=retry_rejected, for_resume=True, batch=batch.ids) if existing else _State()
    ids, settled = batch.ids, state.settled
    pending: list[int]
    positions: Sequence[int]
    if settled:
        positions = [position for position, order_id in enumerate(ids) if order_id not in settled]
        pending = [ids[position] for position in positions]
    else:
        pending, positions = ids, range(len(ids))
    (last_seq,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM chunks").fetchone()
    conn.execute("BEGIN IMMEDIATE")
    cursor = conn.execute(
        "INSERT INTO runs (pid, started_at, sdk_version, chunk_size, retry_rejected) VALUES (?, ?, ?, ?, ?)",
        (os.getpid(), time.time(), __version__, chunk_size, int(retry_rejected)),
    )
    conn.execute("COMMIT")
    run = cursor.lastrowid
    assert run is not None
    return _Run(pending, positions, last_seq + 1, state.pieces, run)


def _check_identity(conn: sqlite3.Connection, path: str, batch: _Batch, blob: bytes) -> None:
    """Refuse a journal of another batch: another base URL, token, ``create_label``, other ids or order."""
    meta = _meta(conn)
    base_url, create_label, ids = batch.base_url, batch.create_label, batch.ids
    if meta.get("base_url") != base_url:
        raise JournalError(
            f"the journal {path} is of a batch pushed to {meta.get('base_url')!r}, not {base_url!r}; give this "
            "push another journal file"
        )
    if meta.get("token_sha256") != _token_hash(str(meta.get("token_salt")), batch.token):
        raise JournalError(
            f"the journal {path} is of a batch pushed with another API token; resume it with the token that "
            "began it, or give this push another journal file"
        )
    if bool(meta.get("create_label")) != create_label:
        raise JournalError(
            f"the journal {path} is of a batch pushed with create_label={bool(meta.get('create_label'))}, "
            f"not {create_label}; resume it with the same create_label, or give this push another journal file"
        )
    stored = conn.execute("SELECT ids FROM batch_ids").fetchone()
    if stored is None or stored[0] != blob:  # the same distinct ids in the same order, byte for byte
        raise JournalError(
            f"the journal {path} is of another batch: {meta.get('ids')} distinct ids, this push has {len(ids)}"
            f"{' (the same count, other ids or another order)' if meta.get('ids') == len(ids) else ''}. Resume "
            "it with the same ids in the same order (the same file), or give this push another journal file"
        )


def _create(conn: sqlite3.Connection, batch: _Batch, blob: bytes) -> None:
    """Make the journal's tables and write what the batch is."""
    # Made in one transaction of SQLite's rollback journal, not synced (a process that dies meanwhile
    # leaves no journal: the transaction rolls back), so the batch's ids are written once, not twice.
    conn.execute("PRAGMA synchronous = OFF")
    salt = os.urandom(16).hex()
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.executemany(
        "INSERT INTO batch (key, value) VALUES (?, ?)",
        [
            ("format", JOURNAL_FORMAT),
            ("ids", len(batch.ids)),
            ("base_url", batch.base_url),
            ("token_salt", salt),
            ("token_sha256", _token_hash(salt, batch.token)),
            ("create_label", int(batch.create_label)),
            ("sdk_version", __version__),
            ("created_at", time.time()),
        ],
    )
    # The batch's ids, once: a chunk that is a run of them in a row is kept as where it begins and its length.
    conn.execute("INSERT INTO batch_ids (ids) VALUES (?)", (blob,))
    conn.execute("COMMIT")


def _hold_alone(conn: sqlite3.Connection) -> None:
    """Switch the connection to how a run writes: WAL, no sync a write, no checkpoint of its own, alone."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    # The WAL is checkpointed (and synced) once, when the journal's thread closes the file, never on the loop.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    # The run holds the file alone, from its first write on: no lock is taken or let go a transaction, and
    # nobody else reads or writes it meanwhile (read_journal says it is being written).
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")


def read_journal(journal: JournalPath) -> JournalSummary:
    """What the journal at ``journal`` holds (see :class:`JournalSummary`). A journal cannot be read while
    its push runs (that push holds it alone): a :class:`JournalError` says so.

    >>> summary = read_journal("push.sqlite")
    >>> summary.accepted, summary.rejected, summary.to_send
    (600000, 3, 399997)
    """
    path = _check_path(journal)
    if not os.path.isfile(path):
        raise JournalError(f"no journal at {path}")
    busy = _being_written(path)
    if busy is not None:  # its push holds it (SQLite's EXCLUSIVE locking mode) until it ends
        raise busy
    try:
        conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as error:
        raise JournalError(f"cannot read the journal {path}: {error}") from None
    try:
        return _summary(conn, path)
    except sqlite3.DatabaseError as error:
        raise _damaged(path, error) from None
    except sqlite3.Error as error:
        raise JournalError(f"cannot read the journal {path}: {error}") from None
    except JournalError:
        raise
    except _DECODING_ERRORS as error:  # a value the file holds could not be read back: it is damaged
        raise _damaged(path, error) from None
    finally:
        conn.close()


def _summary(conn: sqlite3.Connection, path: str) -> JournalSummary:
    if not _identify(conn, path):
        raise JournalError(f"{path} is an empty file, not a push journal (yet)")
    meta = _meta(conn)
    state = _load(conn, retry_rejected=False, for_resume=False)
    runs = conn.execute("SELECT COUNT(*), MAX(run) FROM runs").fetchone()
    last = conn.execute("SELECT pid, started_at, finished_at FROM runs ORDER BY run DESC LIMIT 1").fetchone() or (
        0,
        0.0,
        None,
    )
    ids = int(meta.get("ids", 0))
    created = float(meta.get("created_at", 0.0))
    return JournalSummary(
        path=path,
        ids=ids,
        **attrs.asdict(attrs.evolve(state.counts, not_sent=state.counts.not_sent + ids - state.sent)),
        requests=state.requests,
        runs=int(runs[0]),
        last_run_finished=last[2] is not None,
        last_pid=int(last[0]),
        base_url=str(meta.get("base_url", "")),
        create_label=bool(meta.get("create_label")),
        sdk_version=str(meta.get("sdk_version", "")),
        created_at=created,
        updated_at=max(created, state.updated_at, float(last[1] or 0.0), float(last[2] or 0.0)),
    )
