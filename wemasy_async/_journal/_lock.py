"""The OS locks of a journal file: the writer's ``flock``, this process's registry of open files, and the
fork handler that lets a child drop its copies.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading

from ._codec import JournalError

if sys.platform != "win32":
    import fcntl

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
