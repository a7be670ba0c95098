"""Writing a run's journal: the writer thread (which hands the writing to the event loop while the disk
is quick) and :class:`BatchJournal`, the run's interface the batch calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from .._models import PushResult
from ._codec import ChunkRow, JournalError, _encode, _ids_blob
from ._lock import _Lock

T = TypeVar("T")

#: A write on the event loop that takes longer than this (a saturated disk, a network file system) hands
#: the journal's writing to its thread; the thread hands it back after this many quick writes in a row.
#: It writes first, too: the loop writes only to a file that has taken writes quickly.
SLOW_WRITE_SECONDS = 0.005
QUICK_WRITES_TO_HAND_BACK = 8
#: Outcomes written between two checkpoints of the WAL (about 1 MB of it): the loop then hands the writing
#: to the journal's thread, which checkpoints (and syncs) off the loop, so the WAL stays bounded in a run.
CHECKPOINT_EVERY = 256

_PLACES = "(" + ", ".join("?" * len(ChunkRow._fields)) + ")"
_INSERT = "INSERT OR REPLACE INTO chunks VALUES " + _PLACES
_MORE = ", " + _PLACES
#: Rows a statement writes at most (SQLite's oldest limit is 999 parameters; a row has 13).
_ROWS_A_STATEMENT = 75


class _Start(NamedTuple):
    """A chunk being sent, as queued for the writer: where it begins in the batch, and whether its ids are a
    run of the batch's in a row (then its row needs no ids of its own)."""

    seq: int
    position: int
    chunk: list[int]
    in_a_row: bool
    at: float


class _Finish(NamedTuple):
    """A chunk's outcome, as queued for the writer."""

    seq: int
    result: PushResult
    at: float


class _UnderWay(NamedTuple):
    """A chunk started and not yet finished, as the writer keeps it (``ids`` only when not in a row)."""

    position: int
    chunk: list[int]
    ids: bytes | None
    at: float

    def row(self, seq: int, run: int) -> ChunkRow:
        return ChunkRow(seq, run, self.position, length=len(self.chunk), ids=self.ids, started_at=self.at)


class JournalDisk:
    """What the journal does to its file, and the clock that times it: the seam a test replaces with a slow
    or failing disk (``open_journal(..., _disk=...)``), as it does not patch the writer's insides."""

    def clock(self) -> float:
        """Seconds, for timing writes (a write slower than :data:`SLOW_WRITE_SECONDS` goes to the thread)."""
        return time.perf_counter()

    def take(self, records: collections.deque[T]) -> list[T]:
        """Everything queued in ``records`` now (the writer takes outcomes first, then starts)."""
        taken = []
        while True:
            try:
                taken.append(records.popleft())
            except IndexError:
                return taken

    def write(self, conn: sqlite3.Connection, rows: list[ChunkRow]) -> None:
        """Write ``rows``: one statement, which commits by itself, or a transaction of several."""
        size = _ROWS_A_STATEMENT
        if len(rows) <= size:
            conn.execute(_INSERT + _MORE * (len(rows) - 1), [value for row in rows for value in row])
            return
        conn.execute("BEGIN IMMEDIATE")
        for first in range(0, len(rows), size):
            group = rows[first : first + size]
            conn.execute(_INSERT + _MORE * (len(group) - 1), [value for row in group for value in row])
        conn.execute("COMMIT")

    def awaited(self, seq: int) -> None:
        """A worker now waits for the thread to commit the outcome of chunk ``seq`` (a test counts them)."""


#: The real disk.
DISK = JournalDisk()


class _Writer(threading.Thread):
    """The journal's thread, and the one connection that writes. ``threaded`` says who writes: this thread at
    first, after a slow write on the loop, for a checkpoint and at close; else the event loop, as each
    outcome arrives. Starts go into ``starts`` and outcomes into ``finishes`` (docs/design/journal.md)."""

    def __init__(
        self, conn: sqlite3.Connection, lock: _Lock, run: int, loop: asyncio.AbstractEventLoop, disk: JournalDisk
    ) -> None:
        super().__init__(name=f"wemasy-journal-{os.path.basename(lock.path)}", daemon=True)
        self.conn = conn
        self.lock = lock
        self.run_id = run
        self.loop = loop
        self.disk = disk
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
        self.in_flight: dict[int, _UnderWay] = {}
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
        finishes = self.disk.take(self.finishes)
        starts = self.disk.take(self.starts)
        self._guarded(self._write, starts, finishes)
        return finishes

    def write_unfinished(self) -> None:
        """At close: a row for each chunk still under way (the batch was left: in doubt), so the journal
        says so without a kill's guesswork."""
        if self.in_flight:
            rows = [chunk.row(seq, self.run_id) for seq, chunk in self.in_flight.items()]
            self._guarded(self.disk.write, self.conn, rows)

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
        done = {finish.seq for finish in finishes} if starts else ()
        rows: list[ChunkRow] = []
        for start in starts:
            under_way = _UnderWay(
                start.position, start.chunk, None if start.in_a_row else _ids_blob(start.chunk), start.at
            )
            in_flight[start.seq] = under_way
            if under_way.ids is not None and start.seq not in done:
                rows.append(under_way.row(start.seq, run))
        for finish in finishes:
            under_way = in_flight.pop(finish.seq)
            outcome = _encode(finish.result, under_way.chunk)
            rows.append(under_way.row(finish.seq, run)._replace(finished_at=finish.at, **outcome._asdict()))
        if not rows:
            return
        if in_flight and finishes:
            flying = ",".join(f"{seq}:{c.position}:{len(c.chunk)}" for seq, c in in_flight.items() if c.ids is None)
            rows[-1] = rows[-1]._replace(in_flight=flying or None)
        self.disk.write(self.conn, rows)

    def run(self) -> None:
        closing = False
        while not closing:
            self.nudge.wait()
            self.nudge.clear()
            with self.guard:  # what was queued before the close is written now
                closing, mine = self.closing, self.threaded or self.closing
            if mine:
                self._write_turn(closing)
        self._finish_run()

    def _write_turn(self, closing: bool) -> None:
        """Write what is queued (and at close the chunks still under way), checkpoint when due, tell the
        waiting workers, and hand the writing back to the loop after enough quick writes."""
        clock = self.disk.clock
        began = clock()
        finishes = self.write_queued()
        if closing:
            self.write_unfinished()
        self.quick_writes = self.quick_writes + 1 if clock() - began <= SLOW_WRITE_SECONDS else 0
        self.since_checkpoint += len(finishes)
        if self.since_checkpoint >= CHECKPOINT_EVERY and not closing:  # (closing checkpoints anyway)
            self._guarded(self.conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
            self.since_checkpoint = 0
        with self.guard:
            waiting = [self.waiters.pop(f.seq) for f in finishes if f.seq in self.waiters]
            if self.quick_writes >= QUICK_WRITES_TO_HAND_BACK and not (self.closing or self.finishes):
                self.threaded = False  # the disk takes writes quickly: the loop writes from its next outcome
                self.quick_writes = 0
        self._tell(waiting)

    def _finish_run(self) -> None:
        """Mark the run finished, close the file (which checkpoints the WAL), let go of the lock, and tell
        everyone still waiting."""
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
        *,
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
        self._writer.starts.append(_Start(self._first_seq + index, position, chunk, in_a_row, time.time()))

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
            writer.finishes.append(_Finish(seq, result, time.time()))
        if threaded:
            if future is not None:
                writer.disk.awaited(seq)
            writer.nudge.set()
            return future
        clock = writer.disk.clock
        began = clock()
        writer.write_queued()
        writer.since_checkpoint += 1
        if clock() - began > SLOW_WRITE_SECONDS or writer.since_checkpoint >= CHECKPOINT_EVERY:
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
