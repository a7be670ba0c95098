"""A journal for batch pushes: one SQLite file that lets a killed batch carry on where it stopped.

``push_shipments(ids, journal="push.sqlite")`` records, as the batch runs, each chunk it starts (its ids)
and each chunk's outcome (what the server accepted, with its details; the ids it rejected, with their
messages; the ids that failed, were not sent or were left in doubt). Run the same push again after a
crash and only what the journal does not show as answered is sent: ids never sent, ids of chunks in
flight when the process died (the server may have queued them: they come back "skipped"), failed ids,
and rejected ids only when asked (``retry_rejected=True``). The merged result is the whole batch's.

Cost, for a million ids: the batch's ids are hashed once (sha256 of their 8-byte form, ~20 ms); each chunk
is one row, never one row per id: its ids as an 8-byte array, its outcome as a small JSON header and the
server's details as joined strings. The rows are written by one thread of the journal's own, which owns
the connection and commits whatever has queued up in one transaction, so the event loop never waits on
the disk.

Durability: the file is in WAL mode with ``synchronous=NORMAL``. A chunk's outcome is committed before
the stream yields it to the caller and before its worker takes another chunk, so after a kill (SIGKILL,
OOM, a crash: the OS keeps what was committed) at most ``max_concurrency`` chunks are sent again. After
a power loss the last commits may be lost too; their chunks are then sent again, which is safe: an
order already queued comes back "skipped". A chunk's start is written without waiting: it only tells the
journal's summary that the chunk was in flight.

A journal belongs to one batch: it keeps a fingerprint (a hash of the distinct ids in order, the base
URL, a salted hash of the token, never the token, and ``create_label``), and resuming anything else is
refused with a :class:`JournalError`. The writing process holds an OS lock on the file (``flock``) for
as long as the batch runs, so a second process cannot write it at once; the lock goes with the process,
however it ends. A damaged (torn, truncated) or foreign file is refused with a JournalError, never
written to.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Union

import attrs

from ._errors import UsageError
from ._models import OrderRejection, PushDetails, PushResult, PushSummary
from ._version import __version__

__all__ = ["BatchJournal", "JournalError", "JournalSummary", "open_journal", "read_journal"]

if sys.platform != "win32":
    import fcntl

#: The journal's layout; a file of another format is refused (an older SDK does not guess at a newer one).
JOURNAL_FORMAT = 1
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
CREATE TABLE chunks (
    seq INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    position INTEGER NOT NULL,
    ids BLOB NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    new TEXT,
    retry TEXT,
    skipped TEXT,
    queued BLOB
);
"""
_TABLES = {"batch", "runs", "chunks"}


class JournalError(UsageError):
    """A push journal that cannot be used: it belongs to another batch (other ids, base URL, token or
    ``create_label``), another process is writing it, or the file is damaged or is not a journal. Raised
    before any request is sent. Also raised when the stream closes if the journal could not be written
    while the batch ran (the batch itself went on; ``.result`` holds its result)."""


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


def _mixed(values: Sequence[Any]) -> bytes | None:
    """``queued_orders`` (documented ``mixed[]``): 8-byte ints when they are all ints, else JSON."""
    if not values:
        return None
    if set(map(type, values)) == {int}:
        try:
            return b"q" + array.array("q", values).tobytes()
        except OverflowError:
            pass
    return b"j" + json.dumps(list(values)).encode()


def _unmixed(blob: bytes | None) -> tuple[Any, ...]:
    if not blob:
        return ()
    if blob[:1] == b"q":
        return tuple(_blob_ids(blob))
    return tuple(json.loads(blob[1:]))


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _encode(result: PushResult) -> tuple[str, str, str, str, bytes | None]:
    """A chunk's outcome as the row's columns: a JSON header, then the details."""
    s, d = result.summary, result.details
    header = json.dumps(
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
        ],
        separators=(",", ":"),
    )
    return header, _strings(d.new_orders), _strings(d.retry_orders), _strings(d.skipped_orders), _mixed(d.queued_orders)


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


def _load(conn: sqlite3.Connection, *, retry_rejected: bool, for_resume: bool) -> _State:
    """Read every chunk back. An id sent by several runs belongs to the latest chunk that sent it (a
    resumed run sends only what was not settled, so earlier records of such an id no longer stand).

    Chunks are read newest run first: ``later`` holds the ids sent by later runs (within one run chunks
    are disjoint), so it stays empty for the first run's chunks unless ids were sent again."""
    state = _State()
    columns = "run, position, ids, started_at, finished_at, outcome"
    if for_resume:
        columns += ", new, retry, skipped, queued"
    later: set[int] = set()
    this_run: list[list[int]] = []
    current_run = None
    for row in conn.execute(f"SELECT {columns} FROM chunks ORDER BY run DESC, seq DESC"):
        run, position, blob, started_at, finished_at, outcome = row[:6]
        if run != current_run:
            for earlier_sent in this_run:
                later.update(earlier_sent)
            this_run.clear()
            current_run = run
        state.updated_at = max(state.updated_at, started_at, finished_at or 0.0)
        sent = _blob_ids(blob)
        this_run.append(sent)

        def standing(values: Iterable[int]) -> list[int]:
            return [i for i in values if i not in later] if later else list(values)

        state.sent += len(standing(sent))
        if outcome is None:  # started, no answer recorded: in flight when the process died
            state.in_doubt += len(standing(sent))
            continue
        header = json.loads(outcome)
        total, new, retry, skipped, queued, message, total_chunks, labels, ambiguous, requests = header[:10]
        rejected_pairs, failed_groups, unreported, not_sent, in_doubt = header[10:]
        failed_ids = [i for group in failed_groups for i in group[0]]
        unanswered = failed_ids + unreported + not_sent + in_doubt
        state.failed += len(standing(failed_ids))
        state.unreported += len(standing(unreported))
        state.not_sent += len(standing(not_sent))
        state.in_doubt += len(standing(in_doubt))
        kept = [(i, m) for i, m in rejected_pairs if i not in later]
        state.rejected += len(kept)
        # Accepted ids are settled for good: no later run sends them, so nothing supersedes them.
        state.accepted += len(sent) - len(unanswered) - len(rejected_pairs)
        state.new += new
        state.retry += retry
        state.skipped += skipped
        state.requests += requests
        if not for_resume:
            continue
        if unanswered or rejected_pairs:
            skip = set(unanswered)
            skip.update(i for i, _ in rejected_pairs)
            state.settled.update(i for i in sent if i not in skip)
        else:
            state.settled.update(sent)
        standing_rejections = () if retry_rejected else tuple(OrderRejection(i, m) for i, m in kept)
        state.settled.update(r.order_id for r in standing_rejections)
        if total or standing_rejections or requests:
            new_ids, retry_ids, skipped_ids, queued_ids = row[6:10]
            details = PushDetails(
                new_orders=_unstrings(new_ids),
                retry_orders=_unstrings(retry_ids),
                skipped_orders=_unstrings(skipped_ids),
                queued_orders=_unmixed(queued_ids),
            )
            piece = PushResult(
                summary=PushSummary(total, new, retry, skipped, queued),
                details=details,
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


def _check_path(path: object) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"journal must be a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise UsageError(f"journal must be a file path, got {path!r}")
    return text


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


def _writer_pid(path: str) -> str:
    """Best effort, for the message: the process id of the journal's last run."""
    try:
        conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT pid, started_at FROM runs ORDER BY run DESC LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return ""
    if row is None:
        return ""
    return f" (pid {row[0]}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row[1]))})"


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
                    os.close(fd)  # nothing of this process holds the file: closing drops no one's lock
                    raise JournalError(
                        f"the journal {path} is being written by another process{_writer_pid(path)}: two pushes "
                        "cannot write one journal at once"
                    ) from None
            _OPEN.add(key)
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


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)


# --- writing, off the event loop -----------------------------------------------------------------

_START, _FINISH, _CLOSE = 0, 1, 2


class _Writer(threading.Thread):
    """The journal's one thread: it owns the connection from here on and writes whatever has queued up
    in one transaction, then tells the event loop which outcomes are durable."""

    def __init__(self, conn: sqlite3.Connection, lock: _Lock, run: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"wemasy-journal-{os.path.basename(lock.path)}", daemon=True)
        self.conn = conn
        self.lock = lock
        self.run_id = run
        self.loop = loop
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        #: The first error writing met; after it nothing more is written (the batch goes on).
        self.error: BaseException | None = None

    def run(self) -> None:
        closing: list[asyncio.Future[None] | None] = []
        while not closing:
            batch = [self.inbox.get()]
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            waiting = [record[-1] for record in batch if record[0] == _FINISH and record[-1] is not None]
            closing += [record[1] for record in batch if record[0] == _CLOSE]
            try:
                if self.error is None:
                    self._write(batch)
            except Exception as error:
                self.error = error
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
            finally:
                self._tell(waiting)
        try:
            if self.error is None:
                self.conn.execute("UPDATE runs SET finished_at = ? WHERE run = ?", (time.time(), self.run_id))
        except Exception as error:
            self.error = error
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.lock.release()
            self._tell([f for f in closing if f is not None])

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        """One transaction for every record that queued up while the last one was written."""
        starts = [
            (seq, self.run_id, position, _ids_blob(chunk), at)
            for kind, seq, position, chunk, at in (r for r in batch if r[0] == _START)
        ]
        finishes = [(at, *_encode(result), seq) for kind, seq, result, at, _ in (r for r in batch if r[0] == _FINISH)]
        if not (starts or finishes):
            return
        self.conn.execute("BEGIN IMMEDIATE")
        if starts:
            self.conn.executemany(
                "INSERT INTO chunks (seq, run, position, ids, started_at) VALUES (?, ?, ?, ?, ?)", starts
            )
        if finishes:
            self.conn.executemany(
                "UPDATE chunks SET finished_at = ?, outcome = ?, new = ?, retry = ?, skipped = ?, queued = ? "
                "WHERE seq = ?",
                finishes,
            )
        self.conn.execute("COMMIT")

    def _tell(self, futures: list[asyncio.Future[None]]) -> None:
        """Tell the event loop these outcomes are durable (or will never be: the writer failed)."""
        if not futures:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, futures)


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
        starts: Sequence[int],
        first_seq: int,
        total: int,
        pieces: list[tuple[int, PushResult]],
    ) -> None:
        self.path = path
        self.pending = pending
        self.total = total
        self.settled = total - len(pending)
        self._writer = writer
        self._starts = starts
        self._first_seq = first_seq
        self._pieces = pieces
        self._closed: asyncio.Future[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"BatchJournal({self.path!r}, {len(self.pending)} of {self.total} ids to send)"

    def started(self, index: int, chunk: list[int]) -> None:
        """Chunk ``index`` of this run is being sent (written without waiting: see the module's doc)."""
        self._writer.inbox.put((_START, self._first_seq + index, self._starts[index], chunk, time.time()))

    def finished(self, index: int, result: PushResult) -> asyncio.Future[None]:
        """Chunk ``index`` ended with ``result``; the future is done once that is committed."""
        future: asyncio.Future[None] = self._writer.loop.create_future()
        if self._closing or not self._writer.is_alive():
            future.set_result(None)
            return future
        self._writer.inbox.put((_FINISH, self._first_seq + index, result, time.time(), future))
        return future

    def record(self, index: int, result: PushResult) -> None:
        """Like :meth:`finished`, without waiting (for the chunks cancelled under way, as the stream closes)."""
        if not self._closing:
            self._writer.inbox.put((_FINISH, self._first_seq + index, result, time.time(), None))

    def in_order(self, pieces: Iterable[tuple[int, PushResult]]) -> list[PushResult]:
        """This run's chunk results (by chunk index) and the stored ones, in the batch's order (each
        by where its chunk begins)."""
        starts = self._starts
        placed = [(position, 0, result) for position, result in self._pieces]
        placed += [(starts[index], 1, result) for index, result in pieces]
        placed.sort(key=lambda item: (item[0], item[1]))
        return [result for _, _, result in placed]

    async def close(self) -> None:
        """Write what is queued, mark the run finished, close the file and release the lock. Raises
        :class:`JournalError` (once) if a write failed while the batch ran."""
        if not self._closing:
            self._closing = True
            self._closed = self._writer.loop.create_future()
            self._writer.inbox.put((_CLOSE, self._closed))
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
            self._writer.inbox.put((_CLOSE, None))


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
        pending, starts, first_seq, pieces, run = _open_run(
            conn, path, ids, base_url, token, chunk_size, create_label, retry_rejected
        )
    except sqlite3.DatabaseError as error:
        _abort(conn, lock)
        raise _damaged(path, error) from None
    except (sqlite3.Error, OSError) as error:
        _abort(conn, lock)
        raise JournalError(f"cannot use the journal {path}: {error}") from None
    except BaseException:
        _abort(conn, lock)
        raise
    writer = _Writer(conn, lock, run, loop)
    writer.start()
    return BatchJournal(path, writer, pending, starts, first_seq, len(ids), pieces)


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
    fingerprint = hashlib.sha256(_ids_blob(ids)).hexdigest()
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
        if meta.get("ids_sha256") != fingerprint:
            raise JournalError(
                f"the journal {path} is of another batch: {meta.get('ids')} distinct ids, this push has {len(ids)}"
                f"{' (the same count, other ids or another order)' if meta.get('ids') == len(ids) else ''}. Resume "
                "it with the same ids in the same order (the same file), or give this push another journal file"
            )
    else:
        conn.execute("PRAGMA journal_mode = WAL")
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
                ("ids_sha256", fingerprint),
                ("base_url", base_url),
                ("token_salt", salt),
                ("token_sha256", _token_hash(salt, token)),
                ("create_label", int(create_label)),
                ("sdk_version", __version__),
                ("created_at", now),
            ],
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    state = _load(conn, retry_rejected=retry_rejected, for_resume=True) if existing else _State()
    settled = state.settled
    pending: list[int]
    starts: Sequence[int]
    if settled:
        positions = [position for position, order_id in enumerate(ids) if order_id not in settled]
        pending = [ids[position] for position in positions]
        starts = positions[::chunk_size]
    else:
        pending, starts = ids, range(0, len(ids), chunk_size)
    (last_seq,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM chunks").fetchone()
    conn.execute("BEGIN IMMEDIATE")
    cursor = conn.execute(
        "INSERT INTO runs (pid, started_at, sdk_version, chunk_size, retry_rejected) VALUES (?, ?, ?, ?, ?)",
        (os.getpid(), time.time(), __version__, chunk_size, int(retry_rejected)),
    )
    conn.execute("COMMIT")
    run = cursor.lastrowid
    assert run is not None
    return pending, starts, last_seq + 1, state.pieces, run


def read_journal(journal: JournalPath) -> JournalSummary:
    """What the journal at ``journal`` holds (see :class:`JournalSummary`); it may be being written.

    >>> summary = read_journal("push.sqlite")
    >>> summary.accepted, summary.rejected, summary.to_send
    (600000, 3, 399997)
    """
    path = _check_path(journal)
    if not os.path.isfile(path):
        raise JournalError(f"no journal at {path}")
    try:
        conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as error:
        raise JournalError(f"cannot read the journal {path}: {error}") from None
    try:
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
    except sqlite3.DatabaseError as error:
        raise _damaged(path, error) from None
    except sqlite3.Error as error:
        raise JournalError(f"cannot read the journal {path}: {error}") from None
    finally:
        conn.close()
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
