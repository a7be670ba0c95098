"""The journal under faults of its own: a race in its writer, damaged files, a forked child, a long run.

Journals here are written through the journal's own interface (``open_journal``, ``started``, ``finished``),
as a push writes them, without a server, so that thousands of chunks or hundreds of damaged files take
moments; tests/test_journal.py has the pushes against the emulator.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from wemasy_async import JournalError, PushResult, read_journal
from wemasy_async._journal import BatchJournal, open_journal
from wemasy_async._models import OrderRejection, PushDetails, PushSummary
from wemasy_async.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
BASE_URL = "http://127.0.0.1:9/api"
TOKEN = "wm-tok-journal-faults-SECRET"


class Identity:
    """What the journal reads of a client: its base URL and token."""

    base_url = BASE_URL
    _token = TOKEN


def open_new(path: Path, ids: list[int], chunk_size: int = 10) -> BatchJournal:
    journal = open_journal(path, ids, Identity(), chunk_size=chunk_size, create_label=False, retry_rejected=False)
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


# --- a start and its outcome are never parted ----------------------------------------------------------


async def test_an_outcome_queued_between_the_writers_two_takes_keeps_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer takes what is queued in two steps (outcomes, starts). A chunk started and finished by the
    event loop in between (as on free-threaded Python, or with a tiny switch interval) must still find its
    start: the journal then records every chunk, instead of stopping on a KeyError."""
    import wemasy_async._journal as journal_module

    path = tmp_path / "push.sqlite"
    ids = list(range(1, 31))
    journal = open_new(path, ids)
    writer = journal._writer
    real_drain = journal_module._drain
    takes = 0

    def drain_then_let_the_loop_in(records: object) -> list[object]:
        nonlocal takes
        taken = real_drain(records)  # type: ignore[arg-type]
        takes += 1
        if takes == 1:  # between the writer's first and second take: chunk 1 starts and ends
            journal.started(1, 10, ids[10:20])
            writer.finishes.append((journal._first_seq + 1, accepted(ids[10:20]), 0.0))
        return taken

    monkeypatch.setattr(journal_module, "_drain", drain_then_let_the_loop_in)
    await record(journal, 0, 0, ids[:10], accepted(ids[:10]))
    await record(journal, 2, 20, ids[20:], accepted(ids[20:]))
    await journal.close()  # raises JournalError if a write failed
    assert takes >= 2
    summary = read_journal(path)
    assert (summary.accepted, summary.in_doubt, summary.to_send) == (30, 0, 0)
