"""Helpers the test modules share (no test module imports another): the account of every id, the CLI
under a pseudo-terminal, journals written through their own interface, on a real or a faulty disk, and
the clients of a Redis fleet."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN
from wemasy_async import OrderRejection, PushDetails, PushResult, PushSummary, RetryPolicy, WemasyClient
from wemasy_async._journal import BatchJournal, open_journal
from wemasy_async._journal._writer import JournalDisk
from wemasy_async.testing import WemasyEmulator

# --- the account of every id -------------------------------------------------------------------------


def assert_every_id_accounted_once(result: PushResult, ids: Iterable[int], emulator: WemasyEmulator) -> None:
    """Each distinct input id is in exactly one of: the server's details, rejected, failed, not sent, in
    doubt; and what the result calls accepted is what the emulator queued or skipped."""
    distinct = list(dict.fromkeys(ids))
    details = result.details
    accepted = [int(x) for x in (*details.new_orders, *details.retry_orders, *details.skipped_orders)]
    rejected = [r.order_id for r in result.rejected]
    failed = list(result.failed_order_ids)
    places = Counter(accepted + rejected + failed + list(result.not_sent) + list(result.in_doubt))
    assert sorted(places) == sorted(distinct)
    assert set(places.values()) <= {1}
    assert not result.unreported
    assert set(emulator.queued) >= {int(x) for x in (*details.new_orders, *details.retry_orders)}
    assert not set(emulator.queued) & set(rejected)
    assert len(emulator.queued) == len(set(emulator.queued))  # nothing queued twice


# --- the command line under a pseudo-terminal ----------------------------------------------------------


def run_in_terminal(argv: list[str], *, columns: int = 60, **env: str) -> tuple[int, str, str]:
    """Run the command line in a subprocess whose stderr is a pseudo-terminal ``columns`` wide.

    Returns the exit code, stdout, and everything written to the terminal."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    command = [sys.executable, "-m", "wemasy_async", *argv]
    try:
        with subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env={**os.environ, **env}
        ) as process:
            os.close(terminal)
            written = bytearray()
            while True:
                # A guard against a hung child, not a timing assumption: it fails only after 120 s of silence.
                ready, _, _ = select.select([master], [], [], 120)
                assert ready, f"{command} wrote nothing for 120 s"
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child's side of the terminal is closed
                    break
                if not data:
                    break
                written += data
            assert process.stdout is not None
            out = process.stdout.read()
            code = process.wait()
    finally:
        os.close(master)
    return code, out.decode(), written.decode()


def terminal_lines(written: str) -> list[str]:
    """What a terminal showed, one entry per redraw (tqdm redraws its line after a carriage return)."""
    return [line for line in written.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line]


# --- journals written through their own interface --------------------------------------------------------

JOURNAL_BASE_URL = "http://127.0.0.1:9/api"
JOURNAL_TOKEN = "wm-tok-journal-faults-SECRET"


class Identity:
    """What the journal reads of a client: its base URL and token."""

    base_url = JOURNAL_BASE_URL
    _token = JOURNAL_TOKEN


def open_new(path: Path, ids: list[int], chunk_size: int = 10, disk: JournalDisk | None = None) -> BatchJournal:
    extra: dict[str, Any] = {} if disk is None else {"_disk": disk}
    journal = open_journal(
        path, ids, Identity(), chunk_size=chunk_size, create_label=False, retry_rejected=False, **extra
    )
    assert journal is not None
    return journal


def accepted(chunk: list[int], rejected: int | None = None) -> PushResult:
    """The server's answer to a chunk: every id new, but ``rejected`` (refused in validation)."""
    taken = [i for i in chunk if i != rejected]
    return PushResult(
        summary=PushSummary(len(taken), len(taken), 0, 0, len(taken)),
        details=PushDetails(new_orders=tuple(map(str, taken))),
        rejected=() if rejected is None else (OrderRejection(rejected, "The selected order_ids.0 is invalid."),),
        requests=1,
    )


async def record(journal: BatchJournal, index: int, start: int, chunk: list[int], result: PushResult) -> None:
    """One chunk as a push's worker records it: started, then its outcome (awaited while the thread writes)."""
    journal.started(index, start, chunk)
    committed = journal.finished(index, result)
    if committed is not None:
        await committed


# --- a journal's disk, replaced -------------------------------------------------------------------------


class FullDisk(JournalDisk):
    """Every write fails as on a full disk."""

    def write(self, conn: object, rows: object) -> None:  # type: ignore[override]
        raise OSError(28, "No space left on device")


def push_journals_on(monkeypatch: pytest.MonkeyPatch, disk: JournalDisk) -> list[BatchJournal]:
    """The client's pushes open their journals on ``disk``; returns the journals as they are opened."""
    import wemasy_async.resources.sendcloud as sendcloud_module

    opened: list[BatchJournal] = []

    def open_on_disk(*args: Any, **kwargs: Any) -> BatchJournal | None:
        journal = open_journal(*args, **kwargs, _disk=disk)
        if journal is not None:
            opened.append(journal)
        return journal

    monkeypatch.setattr(sendcloud_module, "open_journal", open_on_disk)
    return opened


# --- the clients of a Redis fleet ----------------------------------------------------------------------

#: The fleet tests' server: 5 requests per 0.5 s.
FLEET_LIMIT, FLEET_WINDOW = 5, 0.5


def at_fleet_pace(emulator: WemasyEmulator) -> WemasyEmulator:
    """The emulator at the fleet tests' limit and window."""
    emulator.limit, emulator.window_seconds = FLEET_LIMIT, FLEET_WINDOW
    return emulator


def fleet_client(emulator: WemasyEmulator, redis_url: str, name: str, **options: object) -> WemasyClient:
    """A "process" of the fleet: a client with a budget of its own, shared with the others only through
    ``redis_url``; ``name`` is its User-Agent, which the emulator's log shows."""
    return WemasyClient(
        token=TOKEN,
        base_url=emulator.base_url,
        redis_url=redis_url,
        window_seconds=FLEET_WINDOW,
        user_agent=name,
        retry=RetryPolicy(backoff_base=0.001),
        **options,  # type: ignore[arg-type]
    )
