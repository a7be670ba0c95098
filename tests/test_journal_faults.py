"""The journal under faults of its own: a race in its writer, damaged files, a forked child, a long run.

Journals here are written through the journal's own interface (``open_journal``, ``started``, ``finished``),
as a push writes them, without a server, so that thousands of chunks or hundreds of damaged files take
moments; tests/test_journal.py has the pushes against the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import accepted, open_new, record
from wemasy_async import JournalError, read_journal
from wemasy_async._journal._writer import JournalDisk
from wemasy_async.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


# --- a start and its outcome are never parted ----------------------------------------------------------


async def test_an_outcome_queued_between_the_writers_two_takes_keeps_its_start(tmp_path: Path) -> None:
    """The writer takes what is queued in two steps (outcomes, starts). A chunk started and finished by the
    event loop in between (as on free-threaded Python, or with a tiny switch interval) must still find its
    start: the journal then records every chunk, instead of stopping on a KeyError."""
    path = tmp_path / "push.sqlite"
    ids = list(range(1, 31))
    takes = 0

    class LetTheLoopInBetweenTheTakes(JournalDisk):
        def take(self, records: Any) -> list[Any]:
            nonlocal takes
            taken = super().take(records)
            takes += 1
            if takes == 1:  # between the writer's first and second take: chunk 1 starts and ends
                journal.started(1, 10, ids[10:20])
                journal.finished(1, accepted(ids[10:20]))
            return taken

    journal = open_new(path, ids, disk=LetTheLoopInBetweenTheTakes())
    await record(journal, 0, 0, ids[:10], accepted(ids[:10]))
    await record(journal, 2, 20, ids[20:], accepted(ids[20:]))
    await journal.close()  # raises JournalError if a write failed
    assert takes >= 2
    summary = read_journal(path)
    assert (summary.accepted, summary.in_doubt, summary.to_send) == (30, 0, 0)


# --- a damaged file is a JournalError, whatever the damage -------------------------------------------


async def a_finished_journal(path: Path) -> bytes:
    """A journal of 600 ids in 60 chunks, some with a rejected id, closed as a push closes it; its bytes."""
    ids = list(range(1, 601))
    journal = open_new(path, ids)
    for index in range(60):
        chunk = ids[index * 10 : index * 10 + 10]
        await record(journal, index, index * 10, chunk, accepted(chunk, rejected=chunk[3] if index % 7 == 0 else None))
    await journal.close()
    return read_bytes(path)


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_bytes(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def damaged_copies(content: bytes) -> list[tuple[str, bytes]]:
    """The file cut short by 1 to 100 bytes and by whole pages' worth, and 150 seeded single-byte flips."""
    copies = [(f"cut {cut} bytes", content[:-cut]) for cut in [*range(1, 101), 511, 1024, 4095, 4096, 4097]]
    rng = random.Random(17)
    for _ in range(150):
        position = rng.randrange(len(content))
        flipped = bytearray(content)
        flipped[position] ^= 1 << rng.randrange(8)
        copies.append((f"bit flipped at byte {position}", bytes(flipped)))
    return copies


async def test_a_damaged_journal_is_a_journal_error_never_a_raw_one(tmp_path: Path) -> None:
    """A finished journal cut short at its tail (SQLite reads the missing bytes as zeros, and quick_check
    does not look inside records) or with a flipped bit: reading its summary and resuming it either work or
    raise JournalError naming the file, never a ValueError, TypeError or other raw error."""
    content = await a_finished_journal(tmp_path / "finished.sqlite")
    refused = 0
    messages: list[tuple[str, str]] = []
    for what, damaged in damaged_copies(content):
        path = tmp_path / "damaged.sqlite"
        write_bytes(path, damaged)
        try:
            read_journal(path)
        except JournalError as error:
            messages.append((what, str(error)))
            refused += 1
        except Exception as error:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{what}: read_journal raised {type(error).__name__}: {error}")
        write_bytes(path, damaged)
        try:
            journal = open_new(path, list(range(1, 601)))
        except JournalError as error:
            messages.append((what, str(error)))
        except Exception as error:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{what}: a resume raised {type(error).__name__}: {error}")
        else:
            await journal.close()
    assert [what for what, message in messages if str(tmp_path / "damaged.sqlite") not in message] == []
    assert refused >= 50  # most damage is found (the rest hit bytes nothing reads back)


def test_the_journal_command_on_a_damaged_journal_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wemasy-async journal FILE`` on a journal missing its last bytes: exit 2 and the clear message."""
    content = asyncio.run(a_finished_journal(tmp_path / "finished.sqlite"))
    for cut in (1, 7, 40, 100):
        path = tmp_path / f"cut-{cut}.sqlite"
        path.write_bytes(content[:-cut])
        code = cli_main(["journal", str(path)])
        err = capsys.readouterr().err
        if code != 0:
            assert code == 2
            assert str(path) in err
        assert "Traceback" not in err


# --- a forked child does not keep the journal locked -------------------------------------------------

FORKING_PUSH = """
import asyncio, os, sys
from tests.helpers import accepted, open_new, record
from pathlib import Path

async def main(path):
    journal = open_new(path, list(range(1, 11)))
    child = os.fork()  # a worker forked while the push runs (a pre-fork server, multiprocessing's fork)
    if child == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        sys.stdin.read()  # lives on until the test lets it go
        os._exit(0)
    await record(journal, 0, 0, list(range(1, 11)), accepted(list(range(1, 11))))
    await journal.close()
    print(child, flush=True)

asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_forked_child_does_not_keep_the_journal_locked_after_the_push(tmp_path: Path) -> None:
    """A process forks while its push holds the journal; the push ends, the child lives on. The journal is
    free at once: its summary can be read and the batch resumed, without waiting for the child to exit."""
    path = tmp_path / "push.sqlite"
    command = [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKING_PUSH, str(path)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment) as push:
        assert push.stdout is not None
        assert push.stdin is not None
        child = int(push.stdout.readline())
        try:
            assert push.wait(timeout=60) == 0
            os.kill(child, 0)  # the child is still alive, holding what it inherited
            summary = read_journal(path)
            assert (summary.accepted, summary.to_send, summary.last_run_finished) == (10, 0, True)
        finally:
            push.stdin.close()  # the child reads end of file and exits
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


# --- the WAL stays bounded through a long run --------------------------------------------------------


def wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_the_wal_stays_bounded_through_thousands_of_chunks(tmp_path: Path) -> None:
    """3,000 chunks of one id each (about 4.5 KB of WAL a chunk: 13.6 MB without checkpoints): the WAL is
    checkpointed during the run, off the event loop, and never grows past a few MB; nothing is lost."""
    path = tmp_path / "push.sqlite"
    ids = list(range(1, 3001))
    journal = open_new(path, ids, chunk_size=1)
    largest = 0
    for index, order_id in enumerate(ids):
        await record(journal, index, index, [order_id], accepted([order_id]))
        largest = max(largest, wal_bytes(path))
    await journal.close()
    assert largest < 4_000_000, f"the WAL reached {largest} bytes"
    summary = read_journal(path)
    assert (summary.accepted, summary.to_send) == (3000, 0)


# --- after a kill, in doubt is only what was written to the wire --------------------------------------

WAITING_PUSH = """
import asyncio, sys
from pathlib import Path
from tests.helpers import accepted, open_new
from wemasy_async._batching import PushStream
from wemasy_async._chunk_size import Sizing

async def main(path):
    ids = list(range(1, 51))
    chunk_one_sent = asyncio.Event()

    async def push_once(chunk, *, retry=True, on_sent=None, final=False):
        first = chunk[0]
        if first == 1:  # answered once chunk 11-20 is on the wire
            await chunk_one_sent.wait()
            return accepted(chunk)
        if first == 11:  # written to the wire, no answer yet
            if on_sent is not None:
                on_sent()
            chunk_one_sent.set()
        if first == 41:  # taken by the first worker after chunk 1-10's outcome was committed: kill now
            print("ready", flush=True)
            sys.stdin.readline()  # the loop stands still until the kill
        await asyncio.Event().wait()  # 21-30 and 31-40: still waiting for the budget

    journal = open_new(path, ids)
    sizing = Sizing(ceiling=10)
    stream = PushStream(ids, [], push_once, sizing=sizing, max_concurrency=4, progress=None, journal=journal)
    async for _ in stream:
        pass

asyncio.run(main(Path(sys.argv[1])))
"""


def test_after_a_kill_only_chunks_written_to_the_wire_are_in_doubt(tmp_path: Path) -> None:
    """Killed while one chunk's request is on the wire and two wait for the budget: the journal counts the
    first in doubt (the server may have it) and the waiting ones not sent."""
    path = tmp_path / "push.sqlite"
    command = [sys.executable, "-c", WAITING_PUSH, str(path)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment) as push:
        assert push.stdout is not None
        try:
            assert push.stdout.readline().strip() == "ready"
        finally:
            push.kill()
    summary = read_journal(path)
    assert (summary.accepted, summary.in_doubt, summary.not_sent) == (10, 10, 30)


# --- a journal written by an earlier SDK (format 2) resumes ---------------------------------------------


async def test_a_journal_written_by_the_format_2_writer_reads_and_resumes(tmp_path: Path) -> None:
    """tests/data/journal-format-2.sqlite was written by the SDK before the journal became a package (40 ids
    in chunks of 10: all new; one rejected and two skipped; a failed request; a chunk never sent). The same
    file reads and resumes the same: the on-disk format did not change."""
    path = tmp_path / "push.sqlite"
    shutil.copyfile(ROOT / "tests" / "data" / "journal-format-2.sqlite", path)
    summary = read_journal(path)
    counts = (summary.accepted, summary.new, summary.skipped, summary.rejected, summary.failed, summary.not_sent)
    assert counts == (19, 17, 2, 1, 10, 10)
    ids = list(range(1, 41))
    journal = open_new(path, ids)
    assert journal.pending == list(range(21, 41))  # the failed request's ids and the chunk never sent
    (stored,) = [journal.in_order([])]
    await record(journal, 0, 0, list(range(21, 31)), accepted(list(range(21, 31))))
    await record(journal, 1, 10, list(range(31, 41)), accepted(list(range(31, 41))))
    await journal.close()
    assert [r.details.new_orders for r in stored] == [
        tuple(map(str, range(1, 11))),
        tuple(str(i) for i in range(11, 21) if i not in (12, 15, 16)),
    ]
    assert [r.details.skipped_orders for r in stored] == [(), ("15", "16")]
    assert stored[1].details.queued_orders == (11, 13, 14, 17, 18, 19, 20)
    assert [r.order_id for r in stored[1].rejected] == [12]
    again = read_journal(path)
    assert (again.accepted, again.rejected, again.to_send, again.runs) == (39, 1, 0, 2)
