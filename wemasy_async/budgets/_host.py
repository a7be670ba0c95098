"""The host's budget: one token's budget shared by this user's processes on one machine, through a small file.

The in-process budget's queue and rules, around :class:`WindowState` kept in a memory-mapped file under an
``fcntl`` lock: each step loads the state (when another process changed it), decides, and commits it. No
server to run; the design, the file's layout and the measured costs: docs/design/host.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import mmap
import operator
import os
import struct
import tempfile
import threading
import time
import zlib
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from .._chunk_size import LearnedSizes
from .._protocol import RateLimitHeaders
from ._local import RateLimitBudget, _Line, _Pause, _Waiter
from ._window import Priority, RateLimitView, Ticket, Wait, WindowState

try:
    import fcntl
except ImportError:  # Windows: no fcntl, so no host budget (the process's own is used)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUDGET_DIR_ENV_VAR",
    "FORMAT_VERSION",
    "HostBudget",
    "HostBudgetUnavailable",
    "budget_directory",
    "budget_file",
    "forget_host_budgets",
    "shared_host_budget",
    "tell_once",
]

logger = logging.getLogger("wemasy_async")

#: Where the budget files are kept, instead of ``$XDG_RUNTIME_DIR/wemasy-async`` (tests point it elsewhere).
BUDGET_DIR_ENV_VAR = "WEMASY_BUDGET_DIR"
MAGIC = b"WMSYHOST"
#: The file's layout; a file of another version is left alone (the process uses its own budget). 2: a slot
#: holds a group of tickets (one step's), and the token's learned chunk sizes are kept.
FORMAT_VERSION = 2

# The header (never checksummed as a whole: each state copy has its own checksum). ``active`` is the version of
# the committed state copy (copy ``active % 2``); ``dirty`` is set while a step writes slots, cleared by its
# commit: a step killed half-way is undone by the next (see _recover).
_HEADER = struct.Struct("<8sI4x16sQQII")  # magic, format, boot id, active, dirty, next mark index, slots used
# One state copy: the WindowState fields (see _FIELDS), then its version, then a CRC-32 of the bytes before it.
_STATE = struct.Struct("<qddqqqqqqqqqqqdqdqqqqqq")
_CHECK = struct.Struct("<QI4x")  # the copy's version, and a CRC-32 of the state and the version
_MARK = struct.Struct("<i4xd")  # an interactive waiter's process and when its mark lapses
# A group of in-flight tickets granted by one step (of one epoch, answers before and class): id, the state
# version that settled the last of them (0: not yet), the version that last changed the count, the count
# of tickets not yet settled and the count before that change (so that a step killed half-way is undone),
# the version that made it, epoch, answers before, lease deadline, holder's pid, bulk.
_SLOT = struct.Struct("<QQQHH4xQqqdiB3x")
_SETTLE = struct.Struct("<QQQHH")  # the slot's first fields: what settling one ticket of the group changes
_SLOT_MADE_AT = 32  # offset of "made" inside a slot
_FREE = struct.Struct("<QQ")  # a slot's id and settled version: whether it is free
_USED, _USED_AT = struct.Struct("<I"), 52  # slots ever used (the header's last field)
MARKS, SLOTS = 64, 1024
_COMMIT, _COMMIT_AT = struct.Struct("<QQ"), 32  # active and dirty, inside the header
_ACTIVE = slice(_COMMIT_AT, _COMMIT_AT + 8)  # active alone (little-endian)
_STATE_AT = _HEADER.size
_COPY = _STATE.size + _CHECK.size
_MARKS_AT = _STATE_AT + 2 * _COPY
# The token's learned chunk sizes (issue 20): the most ids a request may carry (-1: none known) and when
# that was learned, the largest size taken whole and quickly and when; written under the lock, no version.
_SIZES = struct.Struct("<qdqd")
_SIZES_AT = _MARKS_AT + MARKS * _MARK.size
_SLOTS_AT = _SIZES_AT + 64
FILE_SIZE = _SLOTS_AT + SLOTS * _SLOT.size
#: A step of the fast path that grants a ticket may take up to this many more for the process's next
#: callers in the same turn of its event loop (handed out with no step; those left are given back at the
#: turn's end), while more than POOL_MARGIN slots beyond the reserve stay free.
POOL, POOL_MARGIN = 16, 32
#: A step that grants a ticket less than this after the last one finds the process busy: it may take more for
#: the pools than the last (see HostBudget._learn_want).
BUSY_SECONDS = 0.005
#: Answers kept while the process is busy wait at most this long (or until KEPT_MOST of them) for a step to
#: write them, unless one of them may change the pools (then the next caller's step writes it).
KEPT_SECONDS, KEPT_MOST = 0.01, 64

#: How long an interactive waiter's mark holds bulk calls back without being renewed (its first waiter renews
#: it at every poll).
MARK_SECONDS = 1.0
#: The first waiter of a process looks at the shared state this often at first, then less, up to POLL_MAX
#: while it waits for an answer (another process's), or POLL_MAX_TIMED while its wait has a known end (a
#: window, a gate: only another process's give-back or mark can change it sooner).
POLL_MIN, POLL_MAX, POLL_MAX_TIMED = 0.005, 0.1, 0.25
#: Waiters look for tickets of dead processes at most this often.
REAP_EVERY = 0.25
#: How long the host remembers learned chunk sizes after the last batch shared them, and how long a maximum
#: holds after it was learned (as the Redis budget's fleet does).
CHUNK_SIZES_KEPT_SECONDS = 24 * 3600.0
MAXIMUM_HOLDS_SECONDS = 24 * 3600.0
#: The first waiter of a process takes a step at least this often while it waits (between, it only looks at
#: the file's committed version, a read of 16 bytes).
STEP_EVERY = 0.5


class HostBudgetUnavailable(Exception):
    """The host budget cannot be used here (no fcntl, a directory that cannot be written, a file of another
    version or damaged): the process's own budget stands in. The message says why, never the token."""


@attrs.define(eq=False)
class HostTicket(Ticket):
    """A ticket whose slot in the file records the holder's pid, so that others can settle it if it dies."""

    slot: int = -1
    ident: int = 0


@attrs.define
class _Pool:
    """The tickets a step took for the process's next callers of one class: ``count`` more of its own ticket's
    group (one slot), each made only as it is handed out."""

    epoch: int = 0
    answers_before: int = 0
    slot: int = -1
    ident: int = 0
    count: int = 0


def budget_directory() -> Path:
    """``$WEMASY_BUDGET_DIR``, else ``$XDG_RUNTIME_DIR/wemasy-async``, else a per-user directory (mode 0700)
    under the temp directory. Made if missing; HostBudgetUnavailable if it is not this user's alone."""
    named = os.environ.get(BUDGET_DIR_ENV_VAR)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if named:
        directory = Path(named)
    elif runtime:
        directory = Path(runtime) / "wemasy-async"
    else:
        directory = Path(tempfile.gettempdir()) / f"wemasy-async-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        raise HostBudgetUnavailable(f"cannot make {directory}: {exc.strerror}") from None
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise HostBudgetUnavailable(f"{directory} is not this user's alone (owner or mode)")
    return directory


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def budget_file(directory: Path, base_url: str, token: str) -> Path:
    """The file of one token's budget: named from hashes (the base URL's first, so that one server's files
    can be found and removed), never the token."""
    base = base_url.rstrip("/")
    both = _digest(base + "\n" + token, 24)
    return directory / f"{_digest(base, 12)}-{both}.budget"


def _boot_id() -> bytes:
    # The monotonic clock starts again at each boot: a file from an earlier boot (a temp directory that
    # survived it) holds times of another clock, and is started afresh.
    try:
        return bytes.fromhex(Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", ""))[:16]
    except (OSError, ValueError):
        return bytes(16)


_BOOT_ID = _boot_id()


#: Forks of this process's ancestors so far: a child's first step opens the file anew (see _forked).
_forks = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process took the pid: alive, as far as we can tell (its lease ends)
        return True
    # A killed process its parent has not reaped yet (a zombie) still answers kill(pid, 0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3] != b"Z"


class _HostFile:
    """The open budget file of one process: the mapped bytes, the lock, and the committed version."""

    def __init__(self, path: Path) -> None:
        if fcntl is None:
            raise HostBudgetUnavailable("this platform has no fcntl")
        self.path = path
        self.pid = os.getpid()
        self.forks = _forks[0]
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise HostBudgetUnavailable(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                self.mm = self._map()
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self.fd)
            raise

    def _map(self) -> mmap.mmap:
        size = os.fstat(self.fd).st_size
        if size == 0:
            os.ftruncate(self.fd, FILE_SIZE)
            mm = mmap.mmap(self.fd, FILE_SIZE)
            self._start(mm)
            return mm
        if size < _HEADER.size:
            raise HostBudgetUnavailable(f"{self.path} is damaged (too short); remove it to share the budget again")
        magic, version, *_ = _HEADER.unpack(os.pread(self.fd, _HEADER.size, 0))
        if magic != MAGIC:
            raise HostBudgetUnavailable(f"{self.path} is damaged (not a budget file); remove it to share again")
        if version != FORMAT_VERSION or size != FILE_SIZE:
            raise HostBudgetUnavailable(
                f"{self.path} is of format {version}, not {FORMAT_VERSION} (another version of wemasy-async)"
            )
        mm = mmap.mmap(self.fd, FILE_SIZE)
        boot = _HEADER.unpack_from(mm, 0)[2]
        if boot != _BOOT_ID:
            self._start(mm)  # from an earlier boot: its times are of another clock
        elif _read_state(mm, _HEADER.unpack_from(mm, 0)[3]) is None:
            mm.close()
            raise HostBudgetUnavailable(f"{self.path} is damaged (checksum); remove it to share the budget again")
        return mm

    @staticmethod
    def _start(mm: mmap.mmap) -> None:
        mm[:] = bytes(FILE_SIZE)
        _write_state(mm, 1, _pack(WindowState()))
        _SIZES.pack_into(mm, _SIZES_AT, -1, 0.0, 0, 0.0)
        _HEADER.pack_into(mm, 0, MAGIC, FORMAT_VERSION, _BOOT_ID, 1, 0, 0, 0)

    def close(self) -> None:
        try:
            self.mm.close()
        finally:
            os.close(self.fd)


# The WindowState fields kept in the file, in _STATE's order (None is -1 for counts and NaN for times). The
# window's length, the assumed limit, the counters and the mismatch note stay each process's own.
_FIELDS = (
    "limit",
    "gate_until",
    "_window_end",
    "_epoch",
    "_granted",
    "_others",
    "_others_learned",
    "_others_before",
    "_others_expected",
    "_expected_from",
    "_answers",
    "_sent",
    "_settled",
    "_in_flight",
    "_last_settled",
    "_unclear_epoch",
    "_first_sent",
    "_carried_in",
    "_asked",
)


_GET_FIELDS = operator.attrgetter(*_FIELDS)


def _pack(state: WindowState) -> bytes:
    values = _GET_FIELDS(state)
    if values[0] is None or values[2] is None or values[7] is None:
        fixed = list(values)
        fixed[0] = -1 if values[0] is None else values[0]
        fixed[2] = math.nan if values[2] is None else values[2]
        fixed[7] = -1 if values[7] is None else values[7]
        values = tuple(fixed)
    recent: Any = state._asked_recent
    return _STATE.pack(*values, len(recent), *recent, *_PADS[len(recent)])


_PADS = ((0, 0, 0), (0, 0), (0,), ())


def _unpack_into(state: WindowState, data: bytes) -> None:
    s: Any = state
    values = _STATE.unpack(data)
    for name, value in zip(_FIELDS, values[: len(_FIELDS)], strict=True):
        setattr(s, name, value)
    if s.limit < 0:
        s.limit = None
    if math.isnan(s._window_end):
        s._window_end = None
    if s._others_before < 0:
        s._others_before = None
    count = values[19]
    s._asked_recent = deque(values[20 : 20 + count], maxlen=s._asked_recent.maxlen)


def _read_state(mm: mmap.mmap, version: int) -> bytes | None:
    """The state copy of ``version``, or None if it fails its checksum or is of another version."""
    at = _STATE_AT + (version % 2) * _COPY
    data = mm[at : at + _STATE.size]
    copy_version, check = _CHECK.unpack_from(mm, at + _STATE.size)
    if copy_version != version or zlib.crc32(data) ^ version != check:
        return None
    return data


def _write_state(mm: mmap.mmap, version: int, data: bytes) -> None:
    at = _STATE_AT + (version % 2) * _COPY
    mm[at : at + _STATE.size] = data
    _CHECK.pack_into(mm, at + _STATE.size, version, (zlib.crc32(data) ^ version) & 0xFFFFFFFF)


class DamagedFileError(OSError):
    """The committed state fails its checksum: the file was written by something else."""


class HostWindowState(WindowState):
    """A WindowState whose in-flight tickets are slots of the budget file, and whose bulk calls wait while
    another process has interactive callers waiting. Used only under :class:`_StepLock`."""

    def __init__(self, window_seconds: float, budget: HostBudget) -> None:
        super().__init__(window_seconds)
        self._budget = budget
        self._next_reap = -math.inf

    def peek(self, now: float, bulk: bool = False) -> Wait | None:
        decision = super().peek(now, bulk)
        file = self._budget._file
        if file is None:
            return decision
        if decision is not None and self._in_flight:
            # Only a caller that waits looks for tickets of dead processes, and not at every step.
            looked = time.monotonic()
            if looked >= self._next_reap:
                self._next_reap = looked + REAP_EVERY
                if self._budget._reap(now):
                    decision = super().peek(now, bulk)
        if decision is None and bulk and self._budget._others_waiting(now, file):
            return Wait(None, "queue")  # an interactive caller of another process waits: it goes first
        return decision

    def try_acquire(self, now: float, bulk: bool = False, *, asking: bool = False) -> Ticket | Wait:
        file = self._budget._file
        if file is None:
            return super().try_acquire(now, bulk, asking=asking)
        slot = self._budget._free_slot(file)
        if slot < 0:
            return Wait(None, "probe")  # every slot of the file is in flight: wait for an answer
        decision = super().try_acquire(now, bulk, asking=asking)
        if isinstance(decision, Wait):
            return decision
        return self._budget._hold(file, slot, decision, now)

    def release(self, ticket: Ticket) -> None:
        if self._budget._let_go(ticket):
            super().release(ticket)
        else:
            ticket.settled = True

    def no_answer(self, ticket: Ticket, now: float) -> None:
        if self._budget._let_go(ticket):
            super().no_answer(ticket, now)
        else:
            ticket.settled = True

    def answered(self, ticket: Ticket, now: float, status: int, hints: RateLimitHeaders) -> float:
        if self._budget._let_go(ticket):
            return super().answered(ticket, now, status, hints)
        ticket.settled = True
        return max(0.0, self.gate_until - now)

    def _throttled(self, now: float, retry_after: float | None, limit: int) -> None:
        super()._throttled(now, retry_after, limit)
        self._budget._drop = True  # the gate is closed: the pools go back, none is handed out


class _StepLock:
    """``with`` it, a step of the budget is one atomic step on the file: lock, load what others committed,
    decide, commit. Any OSError, or a file that stops making sense, ends the sharing (one log line): the
    process then goes on with the state it has, as its own budget."""

    def __init__(self, budget: HostBudget) -> None:
        self._budget = budget
        self._thread_lock = threading.Lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        budget = self._budget
        try:
            if budget._file is not None:
                try:
                    budget._begin()
                except (OSError, ValueError, struct.error, HostBudgetUnavailable) as exc:
                    budget._detach(exc)
            if budget._pending or budget._pending_asked or (budget._pooled and (budget._drop or budget._queue)):
                try:
                    budget._settle_local()
                except (OSError, ValueError, struct.error) as exc:
                    budget._detach(exc)
        except BaseException:
            self._thread_lock.release()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        budget = self._budget
        try:
            if budget._file is not None and budget._stepping:
                budget._commit()
        except (OSError, ValueError, struct.error) as error:
            budget._detach(error)
        finally:
            self._thread_lock.release()


class HostBudget(RateLimitBudget):
    """A token's budget shared by this user's processes on this host through a file (see the module docstring).

    Made by :class:`WemasyClient` with ``budget="host"`` (one per token in each process: :func:`shared_host_budget`);
    HostBudgetUnavailable when the file cannot be used. Thread-safe, as the in-process budget.

    Args:
        base_url, token: whose budget it is (the file's name is hashed from them).
        window_seconds: the server's window (60 s for Wemasy).
        lease_seconds: how long a ticket of a process that is gone, but whose pid was taken by another, holds
            its place (a dead holder's tickets are settled at once).
        directory: where the file is (default: :func:`budget_directory`).
        clock: the monotonic clock every process of the host shares.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        window_seconds: float = 60.0,
        lease_seconds: float = 35.0,
        directory: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(window_seconds, clock=clock)
        self.path = budget_file(directory if directory is not None else budget_directory(), base_url, token)
        self._file: _HostFile | None = _HostFile(self.path)
        self.state = HostWindowState(window_seconds, self)
        self._lock = _StepLock(self)  # type: ignore[assignment]
        self.lease_seconds = lease_seconds
        self._version = 0  # the state version this process last loaded or committed
        self._next = 0  # the version this step commits
        self._stepping = False
        self._touched = False  # slots or marks written in this step
        self._packed = b""
        self._slot_hint = 0
        self._next_id = (os.getpid() << 32) | 1
        self._mark = -1  # this process's interactive-waiting mark (index), or -1
        self._thread_lock = self._lock._thread_lock  # type: ignore[attr-defined]
        # Tickets a step took for this process's next callers of each class (interactive, bulk), handed out
        # with no step while nothing changed in the file; given back at the end of the event loop's turn.
        self._pools = (_Pool(), _Pool())  # interactive, bulk
        self._drop = False  # the pools go back at the next step (another process's step, a turn not using them)
        # Answers (ticket, status, hints) not yet written to the file, and interactive calls served from a
        # pool, not yet counted in the window's demand: the process's next step, or the turn's end, does.
        # Each answer is written as of when it came.
        self._pending: list[tuple[Ticket, float, int, RateLimitHeaders]] = []
        self._pending_asked = 0
        self._asked_at = 0.0
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where the end of the turn's flush is scheduled
        self._news = False  # a kept answer may leave less room than the pools were taken with
        self._want = 0  # how many tickets a step takes beyond its caller's (learned from the last turns)
        self._turn_steps = 0  # steps of this turn that granted a ticket
        self._filled = 0  # tickets the last such step took for the pools
        # Tickets handed out from the pools, ever, and as many as at the last granting step and the last turn's end.
        self._handed = self._handed_at_step = self._handed_at_turn = 0
        self._last_step_at = -math.inf
        self._poll = POLL_MIN
        self._polled_version = -1
        self._watch: asyncio.TimerHandle | None = None  # the first waiter's next look at the file
        self.detached: str | None = None  # why the file is no longer used, once it is not

    def __repr__(self) -> str:
        shared = "host" if self._file is not None else "in-process (host file unusable)"
        return f"HostBudget(file={self.path.name}, window_seconds={self.window_seconds:g}, now={shared})"

    # --- one step on the file --------------------------------------------------------------------

    def _begin(self) -> None:
        file = self._file
        assert file is not None
        assert fcntl is not None
        if _forks[0] != file.forks:
            self._forked(file)
            file = self._file
            assert file is not None
        fcntl.flock(file.fd, fcntl.LOCK_EX)
        self._stepping = True
        mm = file.mm
        active, dirty = _COMMIT.unpack_from(mm, _COMMIT_AT)
        if dirty:
            self._recover(file, active)
        if active != self._version:
            self._drop = True  # another process's step: what the pools were taken on has changed
            values = _read_state(mm, active)
            if values is None:
                raise DamagedFileError(f"{self.path} is damaged (checksum)")
            _unpack_into(self.state, values)
            self._packed = values
            self._version = active
        self._next = active + 1

    def _commit(self) -> None:
        file = self._file
        assert file is not None
        assert fcntl is not None
        self._stepping = False
        try:
            self._sync_mark(file)
            packed = _pack(self.state)
            if packed != self._packed or self._touched:
                mm = file.mm
                _write_state(mm, self._next, packed)
                _COMMIT.pack_into(mm, _COMMIT_AT, self._next, 0)  # the commit: active = next, dirty = 0
                self._version = self._next
                self._packed = packed
                self._touched = False
        finally:
            fcntl.flock(file.fd, fcntl.LOCK_UN)

    def _dirty(self, file: _HostFile) -> None:
        if not self._touched:
            self._touched = True
            struct.pack_into("<Q", file.mm, 40, 1)

    def _recover(self, file: _HostFile, active: int) -> None:
        """A step was killed between writing slots and committing: undo what it wrote."""
        mm = file.mm
        empty = bytes(_SLOT.size)
        for index in range(SLOTS):
            at = _SLOTS_AT + index * _SLOT.size
            ident, _, changed, _, before = _SETTLE.unpack_from(mm, at)
            if not ident:
                continue
            (made,) = struct.unpack_from("<Q", mm, at + _SLOT_MADE_AT)
            if made > active:
                mm[at : at + _SLOT.size] = empty
            elif changed > active:
                _SETTLE.pack_into(mm, at, ident, 0, 0, before, before)
        struct.pack_into("<Q", mm, 40, 0)

    def _forked(self, file: _HostFile) -> None:
        # A child of fork shares the parent's open file, and so its lock: it opens its own, and starts with
        # no waiters (the parent's are not its own) and holds no mark.
        self._file = _HostFile(self.path)
        self._queue = _Line()
        self._mark = -1
        self._next_id = (os.getpid() << 32) | 1
        self._pools = (_Pool(), _Pool())  # the parent's tickets: its own to settle
        self._pending_asked = 0
        self._pending = []
        self._flush_loop = None
        # What the parent learned of its turns is not the child's: the child's first turns learn their own.
        self._want = self._turn_steps = self._filled = 0
        self._handed = self._handed_at_step = self._handed_at_turn = 0
        self._news = self._drop = False
        self._version = 0  # load what the file holds
        with contextlib.suppress(OSError, BufferError):
            file.close()

    def _detach(self, error: BaseException) -> None:
        """Stop sharing: the process goes on with the state it has, as its own budget, expecting the others."""
        file, self._file = self._file, None
        self._stepping = False
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        reason = str(error) or type(error).__name__
        self.detached = reason
        logger.warning(
            "the host's rate-limit budget file cannot be used (%s): this process counts on its own budget now",
            reason,
        )
        self.state.expect_others()
        self._wake_first()

    def _let_file_go(self) -> None:
        with self._lock:
            file, self._file = self._file, None
            self.detached = "forgotten"
            if file is not None:
                file.close()

    # --- the fast path: a few tickets per step, answers written a turn later --------------------------

    def try_acquire(self, priority: Priority = "interactive") -> Ticket | None:
        """A ticket if one is free right now and nobody waits before us: from the tickets the process's last
        step took for this turn of the event loop if nothing changed in the file since, else by a step (which
        may take a few more for the turn's next callers)."""
        bulk = priority == "bulk"
        pool = self._pools[bulk]
        if pool.count:
            ticket = self._from_pool(pool, bulk)
            if ticket is not None:
                return ticket
        with self._lock:
            queue = self._queue
            if queue.interactive or (bulk and queue.bulk):
                return None  # acquire counts the call's demand as it begins to wait
            now = self._clock()
            decision = self.state.try_acquire(now, bulk, asking=True)
            if not isinstance(decision, HostTicket) or self._file is None:
                return decision if isinstance(decision, Ticket) else None
            if self._schedule_flush():
                self._turn_steps += 1
                self._learn_want(now)
                if self._want:  # the pools as they are now: a fork's first step (in _begin) made new ones
                    self._fill(self._pools[bulk], decision, now, bulk)
            return decision

    def _learn_want(self, now: float) -> None:
        """Before a step that grants a ticket takes more for the pools: twice as many (up to POOL - 1) when
        the last step's were all handed out and calls keep coming (its step was less than BUSY_SECONDS ago),
        as slow start grows; as many as were handed out when some went back unused."""
        if self._handed - self._handed_at_step >= self._filled and now - self._last_step_at < BUSY_SECONDS:
            self._want = min(POOL - 1, 2 * self._want + 1)
        self._last_step_at = now
        self._filled, self._handed_at_step = 0, self._handed

    def _from_pool(self, pool: _Pool, bulk: bool) -> HostTicket | None:
        with self._thread_lock:
            file = self._file
            # An answer kept and not yet written that may leave less room than the pool's tickets were taken
            # with (a limit, others' use, a new window): a step writes it first and decides.
            # A pool the next step gives back (a 429 of this process, a turn that used none) is not used either.
            if not pool.count or self._news or self._drop or file is None or file.forks != _forks[0]:
                return None
            queue = self._queue
            if queue.interactive or (bulk and queue.bulk):
                return None
            # Another process's step since (an answer, a 429, a mark): a step decides, with what it wrote.
            # (Read as bytes, not unpacked into a tuple: this path makes no object but the ticket.)
            if int.from_bytes(file.mm[_ACTIVE], "little") != self._version:
                return None
            now = self._clock()
            end = self.state._window_end
            if end is not None and now >= end:
                self._drop = True
                return None
            pool.count -= 1
            self._handed += 1
            if not bulk:
                self._pending_asked += 1
                self._asked_at = now
            return HostTicket(pool.epoch, pool.answers_before, bulk, slot=pool.slot, ident=pool.ident)

    def _fill(self, pool: _Pool, first: HostTicket, now: float, bulk: bool) -> None:
        """Take up to ``self._want`` more tickets like ``first`` (one slot holds them all) into an empty pool,
        while plenty are free."""
        state = self.state
        limit = state.limit
        file = self._file
        if limit is None or file is None or pool.count:
            return
        free = limit - state._granted - state._others - state.reserved(limit) - POOL_MARGIN
        taken = min(self._want, free, state.room(now, bulk))  # a bulk one's room asks the marks
        if taken <= 0:
            return
        state.grant_more(taken, bulk)
        slot = first.slot
        pool.epoch, pool.answers_before, pool.slot, pool.ident = first.epoch, first.answers_before, slot, first.ident
        pool.count = taken
        at = _SLOTS_AT + slot * _SLOT.size
        struct.pack_into("<H", file.mm, at + 24, 1 + taken)  # the group's count (made in this step)
        self._filled += taken

    async def answered(self, ticket: Ticket, status: int, hints: RateLimitHeaders) -> float:
        if status != 429 and type(ticket) is HostTicket:
            # Written by the process's next step, or at the end of this turn of the event loop (or a later
            # one, while the process is busy): as if it came then. A 429 closes the gate for everyone at once.
            with self._thread_lock:
                queue = self._queue
                loop = _get_running_loop()
                kept = self._file is not None and loop is not None and not ticket.settled
                if kept and not (queue.interactive or queue.bulk):
                    if self._flush_loop is not loop:
                        self._schedule_flush()
                    now = self._clock()
                    self._pending.append((ticket, now, status, hints))
                    if not self._news:
                        self._news = self._is_news(ticket, hints)
                    gate = self.state.gate_until - now
                    return gate if gate > 0.0 else 0.0
        return await super().answered(ticket, status, hints)

    def _is_news(self, ticket: Ticket, hints: RateLimitHeaders) -> bool:
        """Whether an answer may leave less room than the state shows (so than the pools were taken with):
        a limit that differs or is not known yet, no count, the window's first answer, a count showing a new
        window, or more use by others than known. One that only confirms the process's own use cannot."""
        state = self.state
        limit, remaining = state.limit, hints.remaining
        if limit is None or remaining is None or state._window_end is None or hints.limit not in (None, limit):
            return True
        if ticket.epoch != state._epoch:
            return False  # an earlier window's answer: the state reads only its limit
        count = limit - remaining
        before = ticket.answers_before
        return count - state._granted > state._others_learned or (before > 0 and count <= before)

    def _schedule_flush(self) -> bool:
        """Make sure the end of this turn of the running event loop writes what the process keeps; False
        with no running loop (nothing is kept then). A flush is scheduled on the loop that runs: one
        scheduled on a loop closed before it ran (``run_until_complete``, then ``close``) counts for nothing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._flush_loop is loop:
            return True
        loop.call_soon(self._flush, loop)
        self._flush_loop = loop
        return True

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """The end of a turn: the answers it kept are written, the tickets it took and did not use go back,
        and the number taken per step follows what the turn used."""
        with self._thread_lock:
            if self._flush_loop is loop:
                self._flush_loop = None
            steps, taken = self._turn_steps, self._handed - self._handed_at_turn
            self._turn_steps, self._handed_at_turn = 0, self._handed
            if steps:  # the next turn's first step takes at least as many as this turn's callers
                self._want = min(POOL - 1, max(self._want, steps + taken - 1))
            if not (steps or taken):
                if self._pooled:
                    self._drop = True  # a turn that used none: they go back
                    self._want = min(self._want, self._handed - self._handed_at_step)
            elif self._pooled or self._pending or self._pending_asked:
                # Busy: the pools are looked at again at the next turn's end; what is kept waits for a step
                # (the next caller's, or that turn's end once the callers stop) unless it may change the pools,
                # is many or has waited long.
                self._schedule_flush()
                if self._may_keep(self._pending):
                    return
            if not (self._pending or self._pending_asked or (self._pooled and self._drop)):
                return
        with self._lock:  # its start writes them
            if self._queue:
                self._hand_out()

    def _may_keep(self, pending: list[tuple[Ticket, float, int, RateLimitHeaders]]) -> bool:
        """Whether the answers kept may wait for a later step: none of them may change the pools, and they are
        few and new. (Another process's step is a step here too: it voids the pools, so the next caller steps.)"""
        if not pending:
            return True
        return (
            self._file is not None
            and not self._news
            and len(pending) < KEPT_MOST
            and self._clock() - pending[0][1] < KEPT_SECONDS
        )

    def _settle_local(self) -> None:
        """Write what the process kept (answers, interactive calls served from a pool) and give back the
        pooled tickets; done at the start of every step, under the lock."""
        state = self.state
        if self._pending_asked:
            state.asked(self._asked_at, self._pending_asked)
            self._pending_asked = 0
        pending, self._pending = self._pending, []
        self._news = False
        unused: list[tuple[bool, _Pool]] = []
        if self._pooled and (self._drop or self._queue):
            self._drop = False
            unused = self._take_pools(lambda _bulk: True)
        file = self._file
        # The tickets of one slot are let go of together: one read and one write of it.
        groups: dict[int, int] = {}
        self._write_kept(pending, file, groups)
        if pending and self._pooled:
            # The pools were taken before these answers: one stays only while the state, with them, has room
            # beyond it (its tickets are counted granted already); else it goes back.
            now = self._clock()
            unused += self._take_pools(lambda bulk: state.peek(now, bulk) is not None)
        for bulk, pool in unused:
            if file is None or self._counted(file, pool.slot, pool.ident, groups, pool.count):
                for _ in range(pool.count):
                    WindowState.release(state, Ticket(pool.epoch, pool.answers_before, bulk))
        if file is not None:
            for slot, count in groups.items():
                if count:
                    self._let_go_of(file, slot, count)
        if state.mismatch is not None and not self._mismatch_told:
            self._mismatch_told = True
            logger.warning("%s", state.mismatch)

    def _write_kept(
        self,
        pending: list[tuple[Ticket, float, int, RateLimitHeaders]],
        file: _HostFile | None,
        groups: dict[int, int],
    ) -> None:
        """Read the kept answers into the state, each as of when it came; their tickets are counted in
        ``groups`` (slot -> tickets) to be let go of. One whose group is no longer held is not read."""
        state = self.state
        answered = WindowState.answered
        for ticket, when, status, hints in pending:
            held: Any = ticket
            if file is not None and not self._counted(file, held.slot, held.ident, groups):
                ticket.settled = True  # settled by another already (its holder was thought gone)
                continue
            answered(state, ticket, when, status, hints)

    def _take_pools(self, which: Callable[[bool], bool]) -> list[tuple[bool, _Pool]]:
        """The pools of the classes ``which(bulk)`` names, emptied (a copy of each is returned, to be given back)."""
        taken: list[tuple[bool, _Pool]] = []
        for bulk, pool in enumerate(self._pools):
            if pool.count and which(bool(bulk)):
                taken.append((bool(bulk), attrs.evolve(pool)))
                pool.count = 0
        return taken

    def _counted(self, file: _HostFile, slot: int, ident: int, groups: dict[int, int], tickets: int = 1) -> bool:
        """Count ``tickets`` of the group ``ident`` in ``slot`` among those to let go of (``groups``: slot ->
        tickets); False if the group is no longer held (settled by another as its holder's gone, or its lease
        ran out: the state has them settled already)."""
        count = groups.get(slot)
        if count is None:
            held, settled = _FREE.unpack_from(file.mm, _SLOTS_AT + slot * _SLOT.size)
            count = 0 if held == ident and not settled else -1
        if count < 0:
            groups[slot] = count
            return False
        groups[slot] = count + tickets
        return True

    def _let_go_of(self, file: _HostFile, slot: int, settling: int) -> None:
        """Settle ``settling`` tickets of the group in ``slot`` (held by this process)."""
        mm = file.mm
        at = _SLOTS_AT + slot * _SLOT.size
        ident, _, changed, count, before = _SETTLE.unpack_from(mm, at)
        self._dirty(file)
        step = self._next
        if changed != step:
            before, changed = count, step
        count = max(0, count - settling)
        _SETTLE.pack_into(mm, at, ident, step if count <= 0 else 0, changed, count, before)

    @property
    def _pooled(self) -> int:
        """Tickets in the pools."""
        interactive, bulk = self._pools
        return interactive.count + bulk.count

    def view(self) -> RateLimitView:
        self._drop = True  # the pools go back first: what is in flight is what was sent
        return super().view()

    # --- slots and marks (under the step lock) -------------------------------------------------------

    def _free_slot(self, file: _HostFile) -> int:
        """A free slot among the first ``used`` (the header's count of slots ever used), else the next one
        (counted then): the slots stay packed at the start, so that a waiter's look for holders that are
        gone reads only those."""
        mm = file.mm
        active = self._version
        (used,) = _USED.unpack_from(mm, _USED_AT)
        hint = self._slot_hint if self._slot_hint < used else 0
        for step in range(used):
            index = (hint + step) % used
            ident, settled = _FREE.unpack_from(mm, _SLOTS_AT + index * _SLOT.size)
            if not ident or (settled and settled <= active):
                return int(index)
        if used >= SLOTS:
            return -1
        _USED.pack_into(mm, _USED_AT, used + 1)
        return int(used)

    def _hold(self, file: _HostFile, slot: int, ticket: Ticket, now: float) -> HostTicket:
        self._dirty(file)
        ident = self._next_id
        self._next_id += 1
        held = HostTicket(ticket.epoch, ticket.answers_before, ticket.bulk, slot=slot, ident=ident)
        lease = now + self.lease_seconds
        at = _SLOTS_AT + slot * _SLOT.size
        _SLOT.pack_into(
            file.mm, at, ident, 0, self._next, 1, 0, self._next, held.epoch, held.answers_before, lease, file.pid,
            held.bulk,
        )  # fmt: skip
        self._slot_hint = (slot + 1) % SLOTS
        return held

    def _let_go(self, ticket: Ticket) -> bool:
        """Free the ticket's slot; False if it is no longer held (settled by another as its holder's gone,
        or its lease ran out): the state then has it settled already."""
        if ticket.settled:
            return False
        file = self._file
        if not isinstance(ticket, HostTicket) or ticket.slot < 0:
            return True  # granted while the file was not used: the state here counts it
        if file is None:
            return True  # the file is gone: the state here counts what it last loaded, this one included
        at = _SLOTS_AT + ticket.slot * _SLOT.size
        mm = file.mm
        ident, settled, changed, count, before = _SETTLE.unpack_from(mm, at)
        if ident != ticket.ident or settled:
            return False
        self._dirty(file)
        step = self._next
        if changed != step:
            before, changed = count, step
        count -= 1
        _SETTLE.pack_into(mm, at, ident, step if count <= 0 else 0, changed, count, before)
        return True

    def _reap(self, now: float) -> bool:
        """Settle, as unanswered, the tickets of processes that are gone and those whose lease ran out;
        True if there were any."""
        file = self._file
        assert file is not None
        mm = file.mm
        me, reaped = os.getpid(), False
        verdicts: dict[int, bool] = {}
        state: WindowState = self.state
        (used,) = _USED.unpack_from(mm, _USED_AT)
        with memoryview(mm) as view:
            slots = list(_SLOT.iter_unpack(view[_SLOTS_AT : _SLOTS_AT + min(used, SLOTS) * _SLOT.size]))
        for index, (ident, settled, changed, count, before, _, epoch, answers_before, lease, pid, bulk) in enumerate(
            slots
        ):
            at = _SLOTS_AT + index * _SLOT.size
            if not ident or settled or count <= 0:
                continue
            if pid != me:
                alive = verdicts.get(pid)
                if alive is None:
                    alive = verdicts[pid] = _alive(pid)
            else:
                alive = True
            if (alive and lease > now) or state._in_flight <= 0:  # (none in flight: not a ticket of this state)
                continue
            self._dirty(file)
            step = self._next
            _SETTLE.pack_into(mm, at, ident, step, step, 0, before if changed == step else count)
            for _ in range(count):
                WindowState.no_answer(state, Ticket(epoch, answers_before, bool(bulk)), now)
            reaped = True
        return reaped

    def _others_waiting(self, now: float, file: _HostFile) -> bool:
        mm = file.mm
        used = _HEADER.unpack_from(mm, 0)[5]
        me = os.getpid()
        for index in range(min(used, MARKS)):
            pid, until = _MARK.unpack_from(mm, _MARKS_AT + index * _MARK.size)
            if pid and pid != me and until > now and _alive(pid):
                return True
        return False

    def _sync_mark(self, file: _HostFile) -> None:
        """Hold the host's bulk calls back while this process has interactive callers waiting."""
        mm = file.mm
        if self._queue.interactive:
            if self._mark < 0:
                self._mark = self._take_mark(file)
                if self._mark < 0:
                    return  # no room: this process's interactive calls only go first among its own
            _MARK.pack_into(mm, _MARKS_AT + self._mark * _MARK.size, os.getpid(), self._clock() + MARK_SECONDS)
        elif self._mark >= 0:
            _MARK.pack_into(mm, _MARKS_AT + self._mark * _MARK.size, 0, 0.0)
            self._mark = -1

    def _take_mark(self, file: _HostFile) -> int:
        mm = file.mm
        used = _HEADER.unpack_from(mm, 0)[5]
        now = self._clock()
        for index in range(MARKS):
            pid, until = _MARK.unpack_from(mm, _MARKS_AT + index * _MARK.size)
            if not pid or until <= now or not _alive(pid):
                if index >= used:
                    struct.pack_into("<I", mm, 48, index + 1)
                return int(index)
        return -1

    # --- waiting across processes --------------------------------------------------------------------

    def _pause(self, waiter: _Waiter, decision: Wait | None, first: bool, now: float, deadline: float | None) -> _Pause:
        pause = super()._pause(waiter, decision, first, now, deadline)
        if not first or self._file is None:
            return pause
        # Another process's answer or give-back reaches no future here: the first waiter's loop looks at the
        # file's committed version soon, then less often (up to POLL_MAX apart, or POLL_MAX_TIMED while the
        # wait has a known end), and wakes the waiter when another process has committed since. A look is a
        # read of 16 bytes, not a step; the waiter takes a step at least every STEP_EVERY all the same (its
        # mark is renewed, holders that are gone are looked for).
        longest = POLL_MAX if decision is None or decision.until is None else POLL_MAX_TIMED
        if self._version != self._polled_version:
            self._polled_version, self._poll = self._version, POLL_MIN
        else:
            self._poll = min(longest, self._poll * 2)
        if self._watch is not None:
            self._watch.cancel()
        self._watch = waiter.loop.call_later(self._poll, self._look, pause.future, self._poll, longest)
        timeout = STEP_EVERY if pause.timeout is None else min(pause.timeout, STEP_EVERY)
        return attrs.evolve(pause, timeout=timeout)

    def _look(self, future: asyncio.Future[None], interval: float, longest: float) -> None:
        """Wake the waiter of ``future`` if another process committed since this one's last step, else look
        again later (on the waiter's loop)."""
        self._watch = None
        if future.done():
            return
        file = self._file
        try:
            changed = file is None or _COMMIT.unpack_from(file.mm, _COMMIT_AT)[0] != self._version
        except (ValueError, OSError):  # the mapping was closed meanwhile: the waiter's step finds out why
            changed = True
        if changed:
            future.set_result(None)
            return
        interval = min(longest, interval * 2)
        self._watch = future.get_loop().call_later(interval, self._look, future, interval, longest)

    async def share_chunk_sizes(self, learned: LearnedSizes) -> LearnedSizes | None:
        """Merge what this process's batches learned of the token's chunk sizes with what the host's other
        processes did (the least maximum, the largest proven size within it), as the Redis budget does for
        a fleet, and return the host's (None once the file is not used: the batch goes on alone)."""
        with self._lock:
            file = self._file
            if file is None:
                return None
            try:
                return self._merge_sizes(file, learned)
            except (OSError, ValueError, struct.error) as exc:
                self._detach(exc)
                return None

    def _merge_sizes(self, file: _HostFile, learned: LearnedSizes) -> LearnedSizes:
        now = self._clock()
        mm = file.mm
        most, most_at, proven, shared_at = _SIZES.unpack_from(mm, _SIZES_AT)
        if proven < 0 or (shared_at and now - shared_at > CHUNK_SIZES_KEPT_SECONDS):
            most, proven = -1, 0  # nobody shared for a day (or nonsense): forgotten
        if most > 0 and now - most_at > MAXIMUM_HOLDS_SECONDS:
            most = -1  # a maximum holds its time, then the server is probed again
        if learned.most is not None and learned.most > 0 and (most <= 0 or learned.most < most):
            most, most_at = learned.most, now
        proven = max(proven, learned.proven)
        if most > 0:
            proven = min(proven, most)
        _SIZES.pack_into(mm, _SIZES_AT, most, most_at, proven, now)
        return LearnedSizes(most if most > 0 else None, proven)

    async def aclose(self) -> None:
        """Write what the process kept (the file stays open for the process's other clients of the token)."""
        self._drop = True
        if self._pending or self._pooled or self._pending_asked:
            with self._lock:
                if self._queue:
                    self._hand_out()


_registry_lock = threading.Lock()
_registry: dict[Path, HostBudget] = {}
_told: set[str] = set()


def shared_host_budget(
    base_url: str, token: str, *, window_seconds: float | None = None, lease_seconds: float = 35.0
) -> HostBudget:
    """The process's host budget for this token at this base URL, opened on first use; HostBudgetUnavailable
    (once logged by the caller) when the file cannot be used."""
    path = budget_file(budget_directory(), base_url, token)
    with _registry_lock:
        budget = _registry.get(path)
        if budget is None:
            budget = HostBudget(
                base_url,
                token,
                window_seconds=window_seconds or 60.0,
                lease_seconds=lease_seconds,
                directory=path.parent,
            )
            _registry[path] = budget
        elif window_seconds is not None and window_seconds != budget.window_seconds:
            budget.window_seconds = window_seconds
        return budget


def tell_once(reason: str) -> None:
    """Log, once per reason in this process, why the host budget is not used."""
    with _registry_lock:
        if reason in _told:
            return
        _told.add(reason)
    logger.warning("the host's rate-limit budget cannot be used (%s): this process counts on its own budget", reason)


def forget_host_budgets(base_url: str | None = None) -> None:
    """Drop this process's host budgets (of one base URL, or all) and remove their files, e.g. when a test
    server at that address stops (a later one on the same port is another server)."""
    with _registry_lock:
        paths = list(_registry) if base_url is None else []
        if base_url is not None:
            prefix = _digest(base_url.rstrip("/"), 12) + "-"
            paths = [path for path in _registry if path.name.startswith(prefix)]
            try:
                directory = budget_directory()
                paths += [p for p in directory.glob(f"{prefix}*.budget") if p not in paths]
            except HostBudgetUnavailable:
                pass
        for path in paths:
            budget = _registry.pop(path, None)
            if budget is not None:
                budget._let_file_go()
            with contextlib.suppress(OSError):
                path.unlink()
