"""A journal for batch pushes: one SQLite file that lets a killed batch carry on where it stopped.

``push_shipments(ids, journal="push.sqlite")`` records, as the batch runs, each chunk it starts (its ids)
and each chunk's outcome (what the server accepted, with its details; the ids it rejected, with their
messages; the ids that failed, were not sent or were left in doubt). Run the same push again after a
crash and only what the journal does not show as answered is sent: ids never sent, ids of chunks in
flight when the process died (the server may have queued them: they come back "skipped"), failed ids,
and rejected ids only when asked (``retry_rejected=True``). The merged result is the whole batch's.

Cost, for a million ids (benchmarks/bench_journal.py): about a sixth of the batch's client CPU and an 8 MB
file. Never a row per id: the batch's ids are stored once (8 bytes each); a chunk's row keeps where it
begins in them and its length, and its outcome a small JSON header (the rejected, failed, unsent ids) and
the server's details, of which the largest list (usually "new") is not stored but derived when the server
named exactly the ids it accepted.

Durability: a chunk's outcome is written as it arrives, before its worker takes another chunk, so after a
kill no more chunks are sent again than were in flight (one a worker); those may come back "skipped",
which is correct. The file is in WAL mode with ``synchronous=NORMAL``: a write hands a few kilobytes to the
OS and returns, and once it has, it survives the process being killed (SIGKILL, OOM, a crash); after a
power loss the last ones may be lost too, which only means their chunks are sent again. The run holds the
file alone (SQLite's EXCLUSIVE locking mode: no lock taken or let go a write), so each write is one
statement and two ``pwrite`` calls, made on the event loop once the file has shown it takes writes
quickly: a thread round trip a chunk would cost more than the write. Nothing on the loop waits for the
disk itself. The journal's thread makes the first writes (the loop's turn comes after
:data:`QUICK_WRITES_TO_HAND_BACK` quick ones), takes the writing back whenever a write on the loop takes
longer than :data:`SLOW_WRITE_SECONDS` (a saturated disk, a network file system), while each worker awaits
its outcome's commit, and checkpoints and syncs the WAL every :data:`CHECKPOINT_EVERY` outcomes (taking
the writing for it) and when it closes the file, so the WAL stays about 1 MB. Each outcome row also
names the run's other chunks under way: after a kill, those without a row were in flight.

A journal belongs to one batch: it keeps the distinct ids in order, the base URL, a salted hash of the
token (never the token) and ``create_label``, and resuming anything else is refused with a
:class:`JournalError`. The writing process holds an OS lock on the file (``flock``) for as long as the
batch runs, so a second process cannot write it at once, nor read it (:func:`read_journal` says a push is
writing it); the locks go with the process, however it ends. A damaged (torn, truncated) or foreign file
is refused with a JournalError, never written to.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

import attrs

from .._errors import UsageError
from .._models import OrderRejection, PushDetails, PushResult, PushSummary
from .._version import __version__

__all__ = ["BatchJournal", "JournalError", "JournalSummary", "open_journal", "read_journal"]

if sys.platform != "win32":
    import fcntl

#: The journal's layout; a file of another format is refused (an older SDK does not guess at a newer one).
JOURNAL_FORMAT = 2
#: Written into the SQLite header (``PRAGMA application_id``), so a journal is known as one: "WMJ1".
APPLICATION_ID = 0x574D4A31

JournalPath = Union[str, "os.PathLike[str]"]

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


def _encode(result: PushResult, sent: list[int]) -> tuple[str, str, str, str, bytes | None]:
    """A chunk's outcome as the row's columns: a JSON header, then the details.

    Most of a chunk's ids are usually in one of the server's lists (all new, or all skipped on a re-run).
    When the server named exactly the ids it accepted (none unreported, as many names as ids), the largest
    list is not stored: it is the accepted ids not in the other two, written back as decimal strings in the
    order sent. That halves what a chunk writes."""
    s, d = result.summary, result.details
    header = _COMPACT.encode(
        [
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
            [[r.order_id, r.message] for r in result.rejected],
            [[list(f.order_ids), _error_text(f.error)] for f in result.failed],
            list(result.unreported),
            list(result.not_sent),
            list(result.in_doubt),
        ]
    )
    accepted = sent
    if result.rejected or result.failed or result.unreported or result.not_sent or result.in_doubt:
        unanswered = [i for f in result.failed for i in f.order_ids]
        unanswered += [*result.unreported, *result.not_sent, *result.in_doubt, *(r.order_id for r in result.rejected)]
        accepted = _accepted(sent, unanswered)
    lists = (d.new_orders, d.retry_orders, d.skipped_orders)
    derived = -1
    if not result.unreported and sum(map(len, lists)) == len(accepted):
        derived = 0 if len(lists[0]) >= len(lists[2]) else 2
    new, retry, skipped = (_DERIVED if k == derived else _strings(values) for k, values in enumerate(lists))
    return header, new, retry, skipped, _mixed(d.queued_orders, accepted)


def _details(accepted: list[int], new: str, retry: str, skipped: str, queued: bytes | None) -> PushDetails:
    """The details a chunk's row holds (see :func:`_encode`)."""
    lists = [None if text == _DERIVED else _unstrings(text) for text in (new, retry, skipped)]
    if None in lists:
        named = {int(x) for named_list in lists if named_list is not None for x in named_list}
        lists[lists.index(None)] = tuple(str(i) for i in accepted if i not in named)
    new_orders, retry_orders, skipped_orders = (tuple(values or ()) for values in lists)
    return PushDetails(new_orders, retry_orders, skipped_orders, _unmixed(queued, accepted))


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
        return self.failed + self.unreported + self.in_doubt + self.not_sent

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
    accepted: int = 0
    new: int = 0
    retry: int = 0
    skipped: int = 0
    rejected: int = 0
    failed: int = 0
    unreported: int = 0
    in_doubt: int = 0
    not_sent: int = 0
    requests: int = 0
    sent: int = 0
    updated_at: float = 0.0


def _load(
    conn: sqlite3.Connection, *, retry_rejected: bool, for_resume: bool, batch: list[int] | None = None
) -> _State:
    """Read every chunk back. An id sent by several runs belongs to the latest chunk that sent it (a
    resumed run sends only what was not settled, so earlier records of such an id no longer stand).

    Chunks are read newest run first: ``later`` holds the ids sent by later runs (within one run chunks
    are disjoint), so it stays empty for the first run's chunks unless ids were sent again. A rejection
    stands unless this run retries rejections, or a later run asked to and did not record a new answer for
    the id (it may have been sent, and queued, before that run died): such an id is sent again."""
    state = _State()
    if batch is None:
        row = conn.execute("SELECT ids FROM batch_ids").fetchone()
        batch = _blob_ids(row[0]) if row else []
    columns = "position, count, ids, started_at, finished_at, header"
    if for_resume:
        columns += ", new, retry, skipped, queued"
    retrying_runs = [run for (run,) in conn.execute("SELECT run FROM runs WHERE retry_rejected")]
    rows = conn.execute(f"SELECT run, seq, in_flight, {columns} FROM chunks").fetchall()
    # The chunks under way when a row was written, that have no row of their own: in flight at a kill.
    recorded = {(run, seq) for run, seq, *_ in rows}
    chunks: list[tuple[int, int, Sequence[Any]]] = [(run, seq, row) for run, seq, _, *row in rows]
    unanswered_row = (None,) * (len(rows[0]) - 9) if rows else ()  # (new, retry, skipped, queued)
    for run, _, flying, *row in rows:
        for entry in flying.split(",") if flying else ():
            seq, position, count = map(int, entry.split(":"))
            if (run, seq) not in recorded:
                recorded.add((run, seq))
                chunks.append((run, seq, (position, count, None, row[4], None, None, *unanswered_row)))
    chunks.sort(key=lambda chunk: (chunk[0], chunk[1]), reverse=True)
    later: set[int] = set()
    this_run: list[list[int]] = []
    current_run = None
    for run, _, row in chunks:
        position, count, blob, started_at, finished_at, header_text = row[:6]
        if run != current_run:
            for earlier_sent in this_run:
                later.update(earlier_sent)
            this_run.clear()
            current_run = run
            retried = retry_rejected or any(r > run for r in retrying_runs)
        state.updated_at = max(state.updated_at, started_at, finished_at or 0.0)
        # A chunk that is a run of the batch's ids in a row keeps only where it begins and its length.
        sent = batch[position : position + count] if blob is None else _blob_ids(blob)
        this_run.append(sent)

        def standing(values: Iterable[int]) -> list[int]:
            return [i for i in values if i not in later] if later else list(values)

        state.sent += len(standing(sent))
        if header_text is None:  # started, no answer recorded: in flight when the process died
            state.in_doubt += len(standing(sent))
            continue
        header = json.loads(header_text)
        total, new, retry, skipped, queued, message, total_chunks, labels, ambiguous, requests = header[:10]
        rejected_pairs, failed_groups, unreported, not_sent, in_doubt = header[10:]
        failed_ids = [i for group in failed_groups for i in group[0]]
        unanswered = failed_ids + unreported + not_sent + in_doubt
        state.failed += len(standing(failed_ids))
        state.unreported += len(standing(unreported))
        state.not_sent += len(standing(not_sent))
        state.in_doubt += len(standing(in_doubt))
        kept = [(i, m) for i, m in rejected_pairs if i not in later]
        if retried:  # to be sent again: the answer a retry got, if any, was not recorded
            state.in_doubt += len(kept)
            kept = []
        state.rejected += len(kept)
        # Accepted ids are settled for good: no later run sends them, so nothing supersedes them.
        state.accepted += len(sent) - len(unanswered) - len(rejected_pairs)
        state.new += new
        state.retry += retry
        state.skipped += skipped
        state.requests += requests
        if not for_resume:
            continue
        accepted = _accepted(sent, unanswered + [i for i, _ in rejected_pairs])
        state.settled.update(accepted)
        standing_rejections = tuple(OrderRejection(i, m) for i, m in kept)
        state.settled.update(i for i, _ in kept)
        if total or standing_rejections or requests:
            piece = PushResult(
                summary=PushSummary(total, new, retry, skipped, queued),
                details=_details(accepted, *row[6:10]),
                message=message,
                total_chunks=total_chunks,
                labels_will_be_created=labels,
                ambiguous_retry=ambiguous,
                rejected=standing_rejections,
                requests=requests,
            )
            state.pieces.append((position, piece))
    return state


# --- opening a file ------------------------------------------------------------------------------

#: Files this process has open for writing, by (device, inode). Closing any descriptor of a file drops
#: every POSIX lock the process holds on it (SQLite's own among them), so a second journal on a file
#: already open here is refused before a descriptor of it is opened.
_OPEN: set[tuple[int, int]] = set()
_OPEN_LOCK = threading.Lock()
#: The locks this process holds, so that a forked child can let go of its copies (see _forget_in_child).
_HELD: set[_Lock] = set()


def _forget_in_child() -> None:
    """In a forked child: close the child's copies of the journals' locked descriptors. An ``flock`` belongs
    to the open file, which a child shares: if the child kept its copy, the lock would outlive the parent's
    push for as long as the child lives (a resume refused, ``read_journal`` saying a push runs). Closing a
    copy leaves the parent's lock as it is; the child writes no journal of its parent's (its threads are
    gone), and SQLite's POSIX locks are never inherited."""
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()  # (another thread may have held it at the fork; that thread is gone)
    for lock in _HELD:
        with contextlib.suppress(OSError):
            os.close(lock.fd)
        lock.fd, lock.key = -1, None
    _HELD.clear()
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


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
_DECODING_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error)


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


#: Where SQLite's unix VFS locks a database file: its shared-lock range, which a connection in EXCLUSIVE
#: locking mode (a run writing its journal) holds for writing (sqlite3.c: PENDING_BYTE + 2, 510 bytes).
_SQLITE_SHARED_FIRST, _SQLITE_SHARED_SIZE = 0x40000002, 510
#: ``struct flock`` on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK_LAYOUT = "hhqqi4x"


def _writer_pid(fd: int) -> str:
    """Best effort, for the message: the process that holds SQLite's lock on the file open at ``fd`` (64-bit
    Linux; elsewhere, or when none holds it, nothing). Called only where this process holds no lock on it."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return ""
    asked = struct.pack(_FLOCK_LAYOUT, fcntl.F_WRLCK, os.SEEK_SET, _SQLITE_SHARED_FIRST, _SQLITE_SHARED_SIZE, 0)
    try:
        kind, _, _, _, pid = struct.unpack(_FLOCK_LAYOUT, fcntl.fcntl(fd, fcntl.F_GETLK, asked))
    except (OSError, struct.error):
        return ""
    return f" (pid {pid})" if kind != fcntl.F_UNLCK and pid > 0 else ""


def _being_written(path: str) -> JournalError | None:
    """A JournalError if a push (in this process or another) is writing the journal now, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _OPEN_LOCK:
        if (st.st_dev, st.st_ino) in _OPEN:
            return JournalError(f"the journal {path} is being written by a push in this process; read it once it ends")
    if sys.platform == "win32":
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:  # (this process holds no lock on the file: closing this descriptor drops nobody's)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return JournalError(
                f"the journal {path} is being written by a push that is running{_writer_pid(fd)}; read it once "
                "that push has ended"
            )
        return None
    finally:
        os.close(fd)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


class _Lock:
    """The writer's hold on a journal file: an exclusive ``flock`` (released by the OS when the process
    ends, however it ends), and this process's registration of the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.key: tuple[int, int] | None = None
        with _OPEN_LOCK:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                pass
            else:
                if (st.st_dev, st.st_ino) in _OPEN:
                    raise JournalError(f"the journal {path} is already being written by a push in this process")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as error:
                raise JournalError(f"cannot open the journal {path}: {error.strerror or error}") from None
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    refusal = JournalError(
                        f"the journal {path} is being written by another process{_writer_pid(fd)}: two pushes "
                        "cannot write one journal at once"
                    )
                    os.close(fd)  # nothing of this process holds the file: closing drops no one's lock
                    raise refusal from None
            _OPEN.add(key)
            _HELD.add(self)
            self.fd, self.key = fd, key

    def release(self) -> None:
        """Call once the SQLite connection is closed."""
        with _OPEN_LOCK:
            if self.fd >= 0:
                os.close(self.fd)  # drops the flock
                self.fd = -1
            if self.key is not None:
                _OPEN.discard(self.key)
                self.key = None
            _HELD.discard(self)


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)


# --- writing ---------------------------------------------------------------------------------------

#: A write on the event loop that takes longer than this (a saturated disk, a network file system) hands
#: the journal's writing to its thread; the thread hands it back after this many quick writes in a row.
#: It writes first, too: the loop writes only to a file that has taken writes quickly.
SLOW_WRITE_SECONDS = 0.005
QUICK_WRITES_TO_HAND_BACK = 8
#: Outcomes written between two checkpoints of the WAL (about 1 MB of it): the loop then hands the writing
#: to the journal's thread, which checkpoints (and syncs) off the loop, so the WAL stays bounded in a run.
CHECKPOINT_EVERY = 256

#: Seconds, for timing the loop's writes (a test slows the disk down by moving it on).
_clock = time.perf_counter

_INSERT = "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_MORE = ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_NO_OUTCOME = (None,) * 7
#: Rows a statement writes at most (SQLite's oldest limit is 999 parameters; a row has 13).
_ROWS_A_STATEMENT = 75

_Start = tuple[int, int, list[int], bool, float]
_Finish = tuple[int, PushResult, float]


class _Writer(threading.Thread):
    """The journal's thread, and the one connection that writes.

    An outcome is written as it arrives (see :meth:`BatchJournal.finished`): one statement, which hands a
    few kilobytes to the OS (WAL mode with ``synchronous=NORMAL``: no fsync) and, once it returns, survives
    the process being killed. Whoever writes, ``threaded`` says: this thread at first, woken by ``nudge``
    (a worker then awaits, without blocking the loop, its outcome's commit before it sends again); after
    :data:`QUICK_WRITES_TO_HAND_BACK` quick writes in a row, the event loop, as each outcome arrives; and
    this thread again from a write on the loop that took longer than :data:`SLOW_WRITE_SECONDS`, and at
    close. The connection never checkpoints on its own (``wal_autocheckpoint=0``), nor on the loop: after
    :data:`CHECKPOINT_EVERY` outcomes the loop hands the writing to this thread, which checkpoints the WAL
    (``TRUNCATE``, with its fsync) before it hands it back, and it checkpoints a last time when it closes.

    Chunk starts go into ``starts`` and outcomes into ``finishes``; a chunk's start is always queued before
    its outcome, so whoever writes an outcome knows where its chunk began."""

    def __init__(self, conn: sqlite3.Connection, lock: _Lock, run: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"wemasy-journal-{os.path.basename(lock.path)}", daemon=True)
        self.conn = conn
        self.lock = lock
        self.run_id = run
        self.loop = loop
        self.starts: collections.deque[_Start] = collections.deque()
        self.finishes: collections.deque[_Finish] = collections.deque()
        #: Whether this thread writes (at first, after a slow write on the loop, and at close), else the loop;
        #: and how many quick writes it has made in a row. Changed under ``guard``.
        self.threaded = True
        self.quick_writes = 0
        #: Outcomes written since the WAL was last checkpointed (by whichever side writes).
        self.since_checkpoint = 0
        self.nudge = threading.Event()
        #: Set (before a last nudge) once the run is over: write what is queued, then close.
        self.closing = False
        self.closed: asyncio.Future[None] | None = None
        #: Chunks started and not yet finished, by seq: where each begins, its ids (and their blob when
        #: they are not a run of the batch's in a row), when it started.
        self.in_flight: dict[int, tuple[int, list[int], bytes | None, float]] = {}
        #: Futures of the event loop waiting for an outcome this thread writes, by seq; under ``guard``.
        self.guard = threading.RLock()  # (re-entrant: a stream collected under it may close the journal)
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.stopped = False
        #: The first error writing met; after it nothing more is written (the batch goes on).
        self.error: BaseException | None = None

    def write_queued(self) -> list[_Finish]:
        """Write what is queued in one transaction (by whichever side writes); return the outcomes written.
        After an error nothing more is written: the outcomes count as done, so nobody waits for them."""
        # Outcomes first, then starts: a chunk's start is queued before its outcome (by the event loop, in
        # that order), so every outcome taken here has its start taken by now too, even if the loop queues
        # more between the two takes (a start taken without its outcome waits under way, as it should).
        finishes = _drain(self.finishes)
        starts = _drain(self.starts)
        self._guarded(self._write, starts, finishes)
        return finishes

    def write_unfinished(self) -> None:
        """At close: a row for each chunk still under way (the batch was left: in doubt), so the journal
        says so without a kill's guesswork."""
        if self.in_flight:
            run = self.run_id
            rows = [(seq, run, p, len(c), blob, at, *_NO_OUTCOME) for seq, (p, c, blob, at) in self.in_flight.items()]
            self._guarded(self._insert, rows)

    def _guarded(self, write: Callable[..., object], *args: Any) -> None:
        """``write(*args)`` unless a write failed before; its error, if any, is kept and ends the writing."""
        if self.error is not None:
            return
        try:
            write(*args)
        except Exception as error:
            self.error = error
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")

    def _write(self, starts: list[_Start], finishes: list[_Finish]) -> None:
        """A row a finished chunk (usually one statement, which commits by itself). The run's other chunks
        under way go with it, in its ``in_flight`` column (``seq:position:count``, comma-separated): after a
        kill, those without a row of their own were in flight. A chunk whose ids are not a run of the
        batch's in a row (a resumed batch with gaps) gets a row of its own as it starts instead."""
        in_flight, run = self.in_flight, self.run_id
        done = {seq for seq, _, _ in finishes} if starts else ()
        rows: list[tuple[Any, ...]] = []
        for seq, position, chunk, in_a_row, at in starts:
            blob = None if in_a_row else _ids_blob(chunk)
            in_flight[seq] = (position, chunk, blob, at)
            if blob is not None and seq not in done:
                rows.append((seq, run, position, len(chunk), blob, at, *_NO_OUTCOME))
        for seq, result, finished_at in finishes:
            position, chunk, blob, at = in_flight.pop(seq)
            rows.append((seq, run, position, len(chunk), blob, at, finished_at, *_encode(result, chunk), None))
        if not rows:
            return
        if in_flight and finishes:
            flying = ",".join(f"{seq}:{p}:{len(c)}" for seq, (p, c, blob, _) in in_flight.items() if blob is None)
            rows[-1] = (*rows[-1][:-1], flying or None)
        self._insert(rows)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        conn, size = self.conn, _ROWS_A_STATEMENT
        if len(rows) <= size:  # one statement: it commits by itself
            conn.execute(_INSERT + _MORE * (len(rows) - 1), [value for row in rows for value in row])
            return
        conn.execute("BEGIN IMMEDIATE")
        for first in range(0, len(rows), size):
            group = rows[first : first + size]
            conn.execute(_INSERT + _MORE * (len(group) - 1), [value for row in group for value in row])
        conn.execute("COMMIT")

    def run(self) -> None:
        closing = False
        while not closing:
            self.nudge.wait()
            self.nudge.clear()
            with self.guard:  # what was queued before the close is written now
                closing, mine = self.closing, self.threaded or self.closing
            if not mine:
                continue
            began = _clock()
            finishes = self.write_queued()
            if closing:
                self.write_unfinished()
            self.quick_writes = self.quick_writes + 1 if _clock() - began <= SLOW_WRITE_SECONDS else 0
            self.since_checkpoint += len(finishes)
            if self.since_checkpoint >= CHECKPOINT_EVERY and not closing:  # (closing checkpoints anyway)
                self._guarded(self.conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
                self.since_checkpoint = 0
            with self.guard:
                waiting = [self.waiters.pop(seq) for seq, _, _ in finishes if seq in self.waiters]
                if self.quick_writes >= QUICK_WRITES_TO_HAND_BACK and not (self.closing or self.finishes):
                    self.threaded = False  # the disk takes writes quickly: the loop writes from its next outcome
                    self.quick_writes = 0
            self._tell(waiting)
        try:
            if self.error is None:
                self.conn.execute("UPDATE runs SET finished_at = ? WHERE run = ?", (time.time(), self.run_id))
        except Exception as error:
            self.error = error
        finally:
            with contextlib.suppress(sqlite3.Error):  # checkpoints the WAL into the file (synced), removes it
                self.conn.close()
            self.lock.release()
            with self.guard:
                self.stopped = True
                left = list(self.waiters.values())
                self.waiters.clear()
            self._tell(left + ([self.closed] if self.closed is not None else []))

    def _tell(self, futures: list[asyncio.Future[None]]) -> None:
        """Tell the event loop these outcomes are durable (or will never be: the writer failed)."""
        if not futures:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, futures)


def _drain(records: collections.deque[Any]) -> list[Any]:
    taken = []
    while True:
        try:
            taken.append(records.popleft())
        except IndexError:
            return taken


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


# --- the journal of one run of a batch -----------------------------------------------------------


class BatchJournal:
    """The journal of one run of a batch push, open for writing (made by :func:`open_journal`).

    ``pending`` are the ids this run sends (all of them in a new journal); ``settled`` how many the
    journal already holds an answer for. The stream tells it each chunk it starts and each outcome.
    """

    def __init__(
        self,
        path: str,
        writer: _Writer,
        pending: list[int],
        positions: Sequence[int],
        first_seq: int,
        total: int,
        pieces: list[tuple[int, PushResult]],
    ) -> None:
        self.path = path
        self.pending = pending
        self.total = total
        self.settled = total - len(pending)
        self._writer = writer
        #: Where each id this run sends stands in the batch (``range`` for a new batch).
        self._positions = positions
        self._first_seq = first_seq
        self._pieces = pieces
        self._closed: asyncio.Future[None] | None = None
        self._closing = False
        self._writing = False

    def __repr__(self) -> str:
        return f"BatchJournal({self.path!r}, {len(self.pending)} of {self.total} ids to send)"

    def started(self, index: int, start: int, chunk: list[int]) -> None:
        """Chunk ``index`` of this run, which begins at ``start`` in :attr:`pending`, is being sent (written
        with the next outcome)."""
        position = self._positions[start]
        in_a_row = self._positions[start + len(chunk) - 1] - position == len(chunk) - 1
        self._writer.starts.append((self._first_seq + index, position, chunk, in_a_row, time.time()))

    def finished(self, index: int, result: PushResult) -> asyncio.Future[None] | None:
        """Chunk ``index`` ended with ``result``: record it. While the event loop writes (the file has taken
        writes quickly), it is written here and now: one statement, which hands a few kilobytes to the OS and
        returns, and None is returned. While the journal's thread writes (at first, and after a slow write),
        a future is returned, done once the outcome is committed (or never will be: the writer failed or
        stopped). The chunk's worker awaits it before it takes another chunk, so after a kill no more chunks
        go again than were in flight."""
        if self._closing:
            return None
        self._writing = True  # an abandon() meanwhile (the stream collected) takes effect at the end
        try:
            return self._record(self._first_seq + index, result)
        finally:
            self._writing = False
            if self._closing:  # abandoned meanwhile: the thread writes what is left, then closes
                self._stop_writer()

    def _record(self, seq: int, result: PushResult) -> asyncio.Future[None] | None:
        writer = self._writer
        with writer.guard:  # (the thread hands the writing back only with no outcome queued)
            threaded = writer.threaded
            future: asyncio.Future[None] | None = None
            if threaded and writer.error is None and not writer.stopped:
                future = writer.waiters[seq] = writer.loop.create_future()
            writer.finishes.append((seq, result, time.time()))
        if threaded:
            writer.nudge.set()
            return future
        began = _clock()
        writer.write_queued()
        writer.since_checkpoint += 1
        if _clock() - began > SLOW_WRITE_SECONDS or writer.since_checkpoint >= CHECKPOINT_EVERY:
            # The disk is slow, or the WAL is due a checkpoint: the journal's thread writes (and checkpoints),
            # until the disk has shown it is quick again.
            with writer.guard:
                writer.threaded = True
            writer.nudge.set()
        return None

    def in_order(self, pieces: Iterable[tuple[int, PushResult]]) -> list[PushResult]:
        """This run's chunk results (each with where its chunk begins in :attr:`pending`) and the stored
        ones, in the batch's order (each by where its chunk begins in the batch)."""
        positions = self._positions
        placed = [(position, 0, result) for position, result in self._pieces]
        placed += [(positions[start], 1, result) for start, result in pieces]
        placed.sort(key=lambda item: (item[0], item[1]))
        return [result for _, _, result in placed]

    async def close(self) -> None:
        """Write what is queued, mark the run finished, close the file and release the lock (on the
        journal's thread). Raises :class:`JournalError` (once) if a write failed while the batch ran."""
        if not self._closing:
            self._closing = True
            self._closed = self._writer.closed = self._writer.loop.create_future()
            self._stop_writer()
            await asyncio.shield(self._closed)
            error = self._writer.error
            if error is not None:
                raise JournalError(
                    f"the journal {self.path} could not be written ({error}); the batch went on, but the journal "
                    "does not show its latest chunks: a resumed push sends them again (they come back skipped)"
                )
        elif self._closed is not None:
            await asyncio.shield(self._closed)

    def abandon(self) -> None:
        """Close without waiting (a stream dropped without being closed)."""
        if not self._closing:
            self._closing = True
            if not self._writing:  # else the write under way hands over when it returns
                self._stop_writer()

    def _stop_writer(self) -> None:
        writer = self._writer
        with writer.guard:
            writer.closing = True  # what is left is the thread's to write, then it closes
        writer.nudge.set()


def open_journal(
    journal: JournalPath | None,
    ids: list[int],
    client: object,
    *,
    chunk_size: int,
    create_label: bool,
    retry_rejected: bool,
) -> BatchJournal | None:
    """Open (or create) the journal of the batch ``ids`` for one run, or None when no journal is asked.

    Refuses, with a :class:`JournalError` and before any request: a file of another batch (other ids or
    order, another base URL, token or ``create_label``), one another process is writing, and a damaged or
    foreign file. Blocks for as long as reading the journal back takes (a million ids: well under a
    second), as checking the ids does: it happens once, before anything is sent.
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
    base_url = str(getattr(client, "base_url", ""))
    token = str(getattr(client, "_token", ""))
    lock = _Lock(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(path)
        pending, positions, first_seq, pieces, run = _open_run(
            conn, path, ids, base_url, token, chunk_size, create_label, retry_rejected
        )
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
    writer = _Writer(conn, lock, run, loop)
    writer.start()
    return BatchJournal(path, writer, pending, positions, first_seq, len(ids), pieces)


def _abort(conn: sqlite3.Connection | None, lock: _Lock) -> None:
    if conn is not None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        conn.close()
    lock.release()


def _open_run(
    conn: sqlite3.Connection,
    path: str,
    ids: list[int],
    base_url: str,
    token: str,
    chunk_size: int,
    create_label: bool,
    retry_rejected: bool,
) -> tuple[list[int], Sequence[int], int, list[tuple[int, PushResult]], int]:
    blob = _ids_blob(ids)
    existing = _identify(conn, path)
    if existing:
        meta = _meta(conn)
        if meta.get("base_url") != base_url:
            raise JournalError(
                f"the journal {path} is of a batch pushed to {meta.get('base_url')!r}, not {base_url!r}; give this "
                "push another journal file"
            )
        if meta.get("token_sha256") != _token_hash(str(meta.get("token_salt")), token):
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
    else:
        # Made in one transaction of SQLite's rollback journal, not synced (a process that dies meanwhile
        # leaves no journal: the transaction rolls back), so the batch's ids are written once, not twice.
        conn.execute("PRAGMA synchronous = OFF")
        salt = os.urandom(16).hex()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.executemany(
            "INSERT INTO batch (key, value) VALUES (?, ?)",
            [
                ("format", JOURNAL_FORMAT),
                ("ids", len(ids)),
                ("base_url", base_url),
                ("token_salt", salt),
                ("token_sha256", _token_hash(salt, token)),
                ("create_label", int(create_label)),
                ("sdk_version", __version__),
                ("created_at", now),
            ],
        )
        # The batch's ids, once: a chunk that is a run of them in a row is kept as where it begins and its length.
        conn.execute("INSERT INTO batch_ids (ids) VALUES (?)", (blob,))
        conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    # The WAL is checkpointed (and synced) once, when the journal's thread closes the file, never on the loop.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    # The run holds the file alone, from its first write on: no lock is taken or let go a transaction, and
    # nobody else reads or writes it meanwhile (read_journal says it is being written).
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    state = _load(conn, retry_rejected=retry_rejected, for_resume=True, batch=ids) if existing else _State()
    settled = state.settled
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
    return pending, positions, last_seq + 1, state.pieces, run


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
        accepted=state.accepted,
        new=state.new,
        retry=state.retry,
        skipped=state.skipped,
        rejected=state.rejected,
        failed=state.failed,
        unreported=state.unreported,
        in_doubt=state.in_doubt,
        not_sent=state.not_sent + ids - state.sent,
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
