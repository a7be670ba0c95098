"""The batch journal: a killed push resumes where it stopped, sending only what was not answered; a journal
of another batch, a second writer and a damaged or foreign file are refused."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN
from tests.helpers import FullDisk, assert_every_id_accounted_once, push_journals_on, run_in_terminal, terminal_lines
from wemasy_async import JournalError, PushResult, UsageError, WemasyClient, read_journal
from wemasy_async._journal._codec import _SCHEMA, _ids_blob
from wemasy_async._journal._store import _load
from wemasy_async._journal._writer import JournalDisk
from wemasy_async.cli import main as cli_main
from wemasy_async.testing import WemasyEmulator
from wemasy_async.testing._emulator import RequestRecord

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "journal_child.py"
PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"
FAST = {"limit": 1_000_000, "window_seconds": 60.0}


def pushes(emulator: WemasyEmulator, *agents: str) -> list[RequestRecord]:
    """The push requests the emulator logged; only those of the runs named (their User-Agent's first word)."""
    return [
        r
        for r in emulator.requests
        if r.path == PUSH and (not agents or r.headers.get("User-Agent", "").split(" ", 1)[0] in agents)
    ]


def sent_ids(requests: Iterable[RequestRecord]) -> list[int]:
    return [int(x) for r in requests for x in (r.order_ids or ())]


def child_env() -> dict[str, str]:
    return {**os.environ, "WEMASY_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}


def push_and_kill(
    base_url: str, journal: Path, first: int, last: int, kill_after: int, agent: str, *, ack: bool = True
) -> list[list[int]]:
    """Run the child's push; SIGKILL it once it has reported ``kill_after`` chunks (or let it finish).
    With ``ack`` the child stands still after each report until answered (see tests/journal_child.py).
    Returns the chunks it reported (each durable in the journal before it was reported)."""
    command = [sys.executable, str(CHILD), base_url, str(journal), str(first), str(last), "40", "4", agent]
    command.append("1" if ack else "0")
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    assert child.stdout is not None
    assert child.stdin is not None
    reported: list[list[int]] = []
    try:
        assert child.stdout.readline() == "ready\n"
        while len(reported) < kill_after:
            line = child.stdout.readline()
            if line in ("done\n", ""):
                break
            reported.append(json.loads(line))
            if ack and len(reported) < kill_after:
                child.stdin.write("\n")
                child.stdin.flush()
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
        child.stdin.close()
    return reported


def chunks_of(requests: Sequence[RequestRecord]) -> list[set[int]]:
    """A run's chunks, from its requests: a chunk's first request holds all its ids; a request re-sent after
    a 422 holds a part of them."""
    chunks: list[set[int]] = []
    for request in requests:
        ids = {int(x) for x in request.order_ids or ()}
        if not any(ids <= chunk for chunk in chunks):
            chunks.append(ids)
    return chunks


def assert_resent_at_most_the_chunks_in_flight(emulator: WemasyEmulator, runs: list[str], chunks: int) -> None:
    """Each id a run sends that an earlier run sent too lies in a chunk of the latest such run that had no
    outcome in the journal when it was killed: at most ``chunks`` such chunks a killed run."""
    for n in range(1, len(runs)):
        resent = set(sent_ids(pushes(emulator, runs[n])))
        for m in range(n - 1, -1, -1):
            earlier = pushes(emulator, runs[m])
            touched = [chunk for chunk in chunks_of(earlier) if chunk & resent]
            assert len(touched) <= chunks, (runs[n], runs[m], len(touched))
            resent -= set(sent_ids(earlier))


def settled_in(journal: Path, ids: list[int]) -> set[int]:
    """The ids the journal shows as answered (accepted or rejected), as a resume reads it."""
    conn = sqlite3.connect(journal)
    try:
        return _load(conn, retry_rejected=False, for_resume=True, batch=ids).settled
    finally:
        conn.close()


# --- kill -9 and resume ----------------------------------------------------------------------------


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.wemasy_emulator(unknown_order_ids={17, 555, 1203}, **FAST)
def test_a_batch_killed_twice_resumes_and_accounts_for_every_id_once(
    seed: int, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """SIGKILL at random points (after K reported chunks, K from a seeded random; the child standing still
    at the kill, or running freely), twice, then resume: no run sends again an id the journal showed as
    answered after the kill, every
    id is accounted for exactly once in the merged result, the server queued each id once, and each resumed
    run re-sent at most the chunks in flight at the kill: 4 workers, each of which sends a chunk only once
    the outcome of its last is committed, so at most 4 chunks."""
    rng = random.Random(seed)
    journal = tmp_path / "push.sqlite"
    first, last = 1, 2000  # 50 chunks of 40
    ids = list(range(first, last + 1))
    answered: dict[str, set[int]] = {}
    runs = []
    for run in ("run1", "run2"):
        ack, kill_after = rng.random() < 0.7, rng.randint(0, 40)
        chunks = push_and_kill(wemasy_emulator.base_url, journal, first, last, kill_after, run, ack=ack)
        runs.append(run)
        answered[run] = settled_in(journal, ids)
        summary = read_journal(journal)  # readable as the dead process left it
        assert summary.ids == len(ids)
        assert summary.in_doubt <= 4 * 40
        assert summary.accepted + summary.rejected + summary.in_doubt + summary.not_sent == len(ids)
        if ack and 0 < kill_after == len(chunks):  # killed while it stood still: its journal was not closed
            assert not summary.last_run_finished

    async def resume() -> PushResult:
        async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, user_agent="final") as client:
            return await client.sendcloud.push_shipments(ids, chunk_size=40, max_concurrency=4, journal=journal)

    result = asyncio.run(resume())
    runs.append("final")
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    assert {r.order_id for r in result.rejected} == {17, 555, 1203}
    assert sorted(wemasy_emulator.queued) == [i for i in ids if i not in (17, 555, 1203)]
    assert result.summary.total_orders == len(ids) - 3
    assert_resent_at_most_the_chunks_in_flight(wemasy_emulator, runs, chunks=4)
    for n, run in enumerate(runs[:-1]):  # what the journal showed as answered was never sent again
        later = {i for other in runs[n + 1 :] for i in sent_ids(pushes(wemasy_emulator, other))}
        assert not later & answered[run]
    resent = set(sent_ids(pushes(wemasy_emulator, "run2"))) & set(sent_ids(pushes(wemasy_emulator, "run1")))
    resent |= set(sent_ids(pushes(wemasy_emulator, "final"))) & set(sent_ids(pushes(wemasy_emulator, "run1", "run2")))
    # What was queued by a killed run and sent again comes back skipped; nothing else does.
    assert {int(x) for x in result.details.skipped_orders} <= resent
    summary = read_journal(journal)
    assert (summary.accepted, summary.rejected, summary.to_send, summary.runs) == (len(ids) - 3, 3, 0, 3)
    assert summary.last_run_finished


# --- resuming in one process -----------------------------------------------------------------------


@pytest.mark.wemasy_emulator(unknown_order_ids={5, 77}, **FAST)
async def test_a_completed_journal_sends_nothing_and_returns_the_same_result(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """The second run of a finished batch sends no request; its result is the first run's."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 1001))
    first = await client.sendcloud.push_shipments(ids, chunk_size=50, journal=journal)
    requests = len(wemasy_emulator.requests)
    again = await client.sendcloud.push_shipments(ids, chunk_size=50, journal=journal)
    assert len(wemasy_emulator.requests) == requests
    assert again.summary == first.summary
    assert again.details == first.details
    assert again.rejected == first.rejected
    assert (again.requests, again.total_chunks) == (first.requests, first.total_chunks)
    assert_every_id_accounted_once(again, ids, wemasy_emulator)


@pytest.mark.wemasy_emulator(**FAST)
async def test_a_stream_left_early_resumes_with_what_it_did_not_finish(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Break out after twelve chunks (as Ctrl-C does): the journal's summary then matches the stream's result
    (the chunks under way in doubt); the resume sends only the ids not yet answered, and the merged result
    holds every id once, in input order."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 1001))
    async with client.sendcloud.iter_push_shipments(ids, chunk_size=20, max_concurrency=2, journal=journal) as stream:
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 12:  # past the journal thread's first writes: the loop writes by now
                break
    left = stream.result()
    answered = {int(x) for x in left.details.new_orders}
    assert len(answered) >= 12 * 20
    summary = read_journal(journal)  # the journal tells it as the stream's result does
    assert (summary.accepted, summary.in_doubt) == (len(answered), len(left.in_doubt))
    assert summary.not_sent == len(left.not_sent)
    before = len(pushes(wemasy_emulator))
    result = await client.sendcloud.push_shipments(ids, chunk_size=50, max_concurrency=2, journal=journal)
    resent = set(sent_ids(pushes(wemasy_emulator)[before:]))
    assert not resent & answered
    assert resent == set(ids) - answered
    # In input order; ids in doubt at the break that the server had queued come back skipped.
    new = [int(x) for x in result.details.new_orders]
    assert new == sorted(new)
    assert sorted(new + [int(x) for x in result.details.skipped_orders]) == ids
    assert {int(x) for x in result.details.skipped_orders} <= set(left.in_doubt)
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


@pytest.mark.wemasy_emulator(poison_order_ids={123}, **FAST)
async def test_failed_ids_are_sent_again_and_only_they(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Ids whose request failed are retried by the next run; the ids accepted are not sent again."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 301))
    first = await client.sendcloud.push_shipments(ids, chunk_size=100, max_concurrency=1, journal=journal)
    assert 123 in first.failed_order_ids
    assert read_journal(journal).failed == len(first.failed_order_ids)
    wemasy_emulator.poison_order_ids = set()  # the server is fixed
    before = len(pushes(wemasy_emulator))
    result = await client.sendcloud.push_shipments(ids, chunk_size=100, max_concurrency=1, journal=journal)
    assert sorted(sent_ids(pushes(wemasy_emulator)[before:])) == sorted(first.failed_order_ids)
    assert result.ok
    assert sorted(int(x) for x in result.details.new_orders) == ids
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    assert read_journal(journal).failed == 0


@pytest.mark.wemasy_emulator(unknown_order_ids={20, 40}, **FAST)
async def test_rejected_ids_stay_rejected_unless_retried(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """A resume keeps the rejections; retry_rejected=True sends just those ids again; a rejection that a
    retry overturned does not come back in a later run."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 101))
    await client.sendcloud.push_shipments(ids, chunk_size=30, journal=journal)
    before = len(pushes(wemasy_emulator))
    kept = await client.sendcloud.push_shipments(ids, chunk_size=30, journal=journal)
    assert len(pushes(wemasy_emulator)) == before
    assert [r.order_id for r in kept.rejected] == [20, 40]

    wemasy_emulator.unknown_order_ids = {40}  # the shop now has order 20
    retried = await client.sendcloud.push_shipments(ids, chunk_size=30, journal=journal, retry_rejected=True)
    assert sorted(sent_ids(pushes(wemasy_emulator)[before:])) == [20, 20, 40]  # 422 for 40, then 20 alone
    assert [r.order_id for r in retried.rejected] == [40]
    assert_every_id_accounted_once(retried, ids, wemasy_emulator)

    later = await client.sendcloud.push_shipments(ids, chunk_size=30, journal=journal)
    assert [r.order_id for r in later.rejected] == [40]
    assert_every_id_accounted_once(later, ids, wemasy_emulator)
    assert read_journal(journal).rejected == 1


async def test_a_resume_may_use_another_chunk_size(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """The chunk size is not part of the batch: a resume with another one sends what is left."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 201))
    async with client.sendcloud.iter_push_shipments(ids, chunk_size=20, max_concurrency=1, journal=journal) as stream:
        async for _ in stream:
            break
    result = await client.sendcloud.push_shipments(ids, chunk_size=7, journal=journal)
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    assert sorted(int(x) for x in (*result.details.new_orders, *result.details.skipped_orders)) == ids


@pytest.mark.wemasy_emulator(max_ids_per_request=30, **FAST)
async def test_chunks_cut_at_the_learned_server_maximum_are_journaled_where_they_begin(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """A server taking 30 ids, chunks of 50: after the first 422 the batch cuts chunks of 30, so a chunk's
    index no longer says where it begins. Left after four chunks, the journal holds exactly the ids
    answered; the resume sends the rest and the merged result is the whole batch, in input order."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 301))
    async with client.sendcloud.iter_push_shipments(ids, chunk_size=50, max_concurrency=1, journal=journal) as stream:
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 4:
                break
    left = stream.result()
    answered = {int(x) for x in left.details.new_orders}
    assert len(answered) == 50 + 3 * 30  # the first chunk in two parts, then chunks of 30
    assert settled_in(journal, ids) == answered
    summary = read_journal(journal)
    assert (summary.accepted, summary.in_doubt + summary.not_sent) == (len(answered), 300 - len(answered))
    before = len(pushes(wemasy_emulator))
    result = await client.sendcloud.push_shipments(ids, chunk_size=50, max_concurrency=2, journal=journal)
    assert set(sent_ids(pushes(wemasy_emulator)[before:])) == set(ids) - answered
    new = [int(x) for x in result.details.new_orders]
    assert new == sorted(new)
    assert sorted(new + [int(x) for x in result.details.skipped_orders]) == ids
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    assert read_journal(journal).complete


# --- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": list(range(1, 100))}, "99"),
        ({"ids": list(range(100, 0, -1))}, "other ids or another order"),
        ({"token": "another-token"}, "another API token"),
        ({"create_label": True}, "create_label=False"),
        ({"base_url": "other"}, "is of a batch pushed to"),
    ],
)
async def test_a_journal_of_another_batch_is_refused_before_any_request(
    change: dict[str, object], message: str, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Other ids (or order), another token, create_label or base URL: a clear JournalError, nothing sent,
    and the journal left as it was."""
    journal = tmp_path / "push.sqlite"
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url) as client:
        await client.sendcloud.push_shipments(range(1, 101), chunk_size=30, journal=journal)
    before = (len(wemasy_emulator.requests), read_journal(journal))
    base_url = wemasy_emulator.base_url
    with WemasyEmulator().run_in_thread() as other:
        if change.get("base_url"):
            base_url = other.base_url
        token = str(change.get("token", TOKEN))
        async with WemasyClient(token=token, base_url=base_url) as client:
            with pytest.raises(JournalError, match=message) as info:
                client.sendcloud.iter_push_shipments(
                    change.get("ids", range(1, 101)),  # type: ignore[arg-type]
                    create_label=bool(change.get("create_label", False)),
                    journal=journal,
                )
        assert not other.requests
    assert TOKEN not in str(info.value)
    assert "another-token" not in str(info.value)
    assert (len(wemasy_emulator.requests), read_journal(journal)) == before


async def test_a_second_writer_in_this_process_is_refused(client: WemasyClient, tmp_path: Path) -> None:
    """While one stream writes the journal, another push on it is refused; the first one finishes intact."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 101))
    async with client.sendcloud.iter_push_shipments(ids, chunk_size=10, journal=journal) as stream:
        with pytest.raises(JournalError, match="already being written"):
            client.sendcloud.iter_push_shipments(ids, chunk_size=10, journal=journal)
        async for _ in stream:
            pass
    assert read_journal(journal).accepted == 100
    again = await client.sendcloud.push_shipments(ids, chunk_size=10, journal=journal)  # free again
    assert again.summary.total_orders == 100


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
@pytest.mark.wemasy_emulator(**FAST)
async def test_a_second_writer_process_is_refused(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Another process pushing with a journal this process is writing exits with a clear message (its pid
    named), without a traceback or a request; so does one reading it; the journal stays whole."""
    journal = tmp_path / "push.sqlite"
    async with client.sendcloud.iter_push_shipments(range(1, 101), chunk_size=10, journal=journal) as stream:
        command = [sys.executable, "-m", "wemasy_async", "push", "1-100", "--chunk-size", "10"]
        command += ["--base-url", wemasy_emulator.base_url, "--journal", str(journal), "--no-progress"]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=child_env())
        # Nor can it be read meanwhile: the push holds it alone until it ends (in this process, or another).
        with pytest.raises(JournalError, match="being written by a push in this process"):
            read_journal(journal)
        summary_command = [sys.executable, "-m", "wemasy_async", "journal", str(journal)]
        summary = await asyncio.to_thread(subprocess.run, summary_command, capture_output=True, text=True)
        async for _ in stream:
            pass
    assert len(pushes(wemasy_emulator)) == 10  # this process's chunks: none from the other
    assert done.returncode == 2
    assert f"being written by another process (pid {os.getpid()})" in done.stderr
    assert "Traceback" not in done.stderr
    assert summary.returncode == 2
    assert f"being written by a push that is running (pid {os.getpid()}); read it once" in summary.stderr
    assert "Traceback" not in summary.stderr
    summary = read_journal(journal)
    assert (summary.accepted, summary.runs, summary.to_send) == (100, 1, 0)


def finished_journal(base_url: str, path: Path, ids: Sequence[int]) -> None:
    async def push() -> None:
        async with WemasyClient(token=TOKEN, base_url=base_url) as client:
            await client.sendcloud.push_shipments(ids, chunk_size=100, journal=path)

    asyncio.run(push())


@pytest.mark.parametrize("keep", [0.5, 0.1, 1000 / 4096])
@pytest.mark.wemasy_emulator(**FAST)
def test_a_truncated_journal_is_refused_without_a_traceback(
    keep: float, wemasy_emulator: WemasyEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal cut short (a torn copy, a full disk) is refused by a push and by the summary, with a message
    naming the file, and is not written to."""
    journal = tmp_path / "push.sqlite"
    finished_journal(wemasy_emulator.base_url, journal, range(1, 5001))
    size = journal.stat().st_size
    with open(journal, "r+b") as handle:
        handle.truncate(int(size * keep) if keep < 1 else 1000)
    torn = journal.read_bytes()
    requests = len(wemasy_emulator.requests)
    push = ["push", "1-5000", "--token", TOKEN, "--base-url", wemasy_emulator.base_url, "--journal", str(journal)]
    code = cli_main(push)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{journal} is not a usable push journal" in err or "is a push journal but it is damaged" in err
    assert len(wemasy_emulator.requests) == requests
    with pytest.raises(JournalError, match=str(journal)):
        read_journal(journal)
    assert cli_main(["journal", str(journal)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert journal.read_bytes() == torn


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """Random bytes given as the journal: a JournalError, the file unchanged."""
    journal = tmp_path / "notes.bin"
    junk = random.Random(7).randbytes(10_000)
    journal.write_bytes(junk)

    async def push() -> None:
        async with WemasyClient(token=TOKEN, base_url="http://127.0.0.1:9") as client:
            client.sendcloud.iter_push_shipments([1, 2, 3], journal=journal)

    with pytest.raises(JournalError, match="not a usable push journal"):
        asyncio.run(push())
    with pytest.raises(JournalError, match="not a usable push journal"):
        read_journal(journal)
    assert journal.read_bytes() == junk


def test_another_sqlite_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """Someone's own SQLite database given as the journal is not written into."""
    journal = tmp_path / "orders.db"
    conn = sqlite3.connect(journal)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO orders VALUES (1)")
    conn.commit()
    conn.close()
    content = journal.read_bytes()

    async def push() -> None:
        async with WemasyClient(token=TOKEN, base_url="http://127.0.0.1:9") as client:
            client.sendcloud.iter_push_shipments([1, 2, 3], journal=journal)

    with pytest.raises(JournalError, match="not a wemasy-async push journal"):
        asyncio.run(push())
    with pytest.raises(JournalError, match="not a wemasy-async push journal"):
        read_journal(journal)
    assert journal.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.db"]


async def test_bad_journal_arguments_are_usage_errors(client: WemasyClient, tmp_path: Path) -> None:
    """A journal that is not a path, or retry_rejected without a journal: a UsageError naming it."""
    with pytest.raises(UsageError, match="journal must be a file path"):
        client.sendcloud.iter_push_shipments([1], journal=42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="retry_rejected=True needs a journal"):
        client.sendcloud.iter_push_shipments([1], retry_rejected=True)
    with pytest.raises(JournalError, match="cannot open the journal"):
        client.sendcloud.iter_push_shipments([1], journal=tmp_path / "missing-dir" / "push.sqlite")
    with pytest.raises(JournalError, match="no journal at"):
        read_journal(tmp_path / "none.sqlite")


# --- what the journal holds --------------------------------------------------------------------------


@pytest.mark.wemasy_emulator(unknown_order_ids={9}, **FAST)
async def test_the_token_is_never_written_into_the_journal(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """The journal keeps a salted hash of the token, never the token; its summary shows neither."""
    journal = tmp_path / "push.sqlite"
    await client.sendcloud.push_shipments(range(1, 51), journal=journal)
    for content in await asyncio.to_thread(lambda: [path.read_bytes() for path in tmp_path.iterdir()]):
        assert TOKEN.encode() not in content
    assert TOKEN not in json.dumps(read_journal(journal).as_json())


@pytest.mark.wemasy_emulator(**FAST)
async def test_huge_and_odd_values_survive_the_journal(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Ids beyond 8 bytes are kept as text; a resume still finds the batch and sends nothing more."""
    journal = tmp_path / "push.sqlite"
    ids = [2**70, 5, 2**63]
    first = await client.sendcloud.push_shipments(ids, journal=journal)
    requests = len(wemasy_emulator.requests)
    again = await client.sendcloud.push_shipments(ids, journal=journal)
    assert len(wemasy_emulator.requests) == requests
    assert again.details == first.details
    assert_every_id_accounted_once(again, ids, wemasy_emulator)


async def test_a_journal_that_cannot_be_written_is_reported_and_the_batch_goes_on(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk) does not stop the batch: its result is complete, and says in
    ``journal_error`` that the journal lags behind (tests/test_outputs.py has the rest of this story)."""
    push_journals_on(monkeypatch, FullDisk())
    ids = list(range(1, 101))
    result = await client.sendcloud.push_shipments(ids, chunk_size=10, journal=tmp_path / "push.sqlite")
    assert result.journal_error is not None
    assert "No space left on device" in result.journal_error
    assert result.summary.total_orders == 100
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


def test_an_id_sent_by_several_runs_belongs_to_the_latest() -> None:
    """Read back, a failure of run 1 that run 2 answered no longer counts, nor does a rejection retried;
    a rejection a later run was asked to retry, with no answer recorded, is to be sent again. A chunk
    named under way by another's row, with no row of its own, was in flight at a kill; so was a chunk
    with a row and no outcome (one whose ids are not a run of the batch's in a row)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)

    def outcome(new: list[int], rejected: Sequence[int] = (), failed: Sequence[int] = ()) -> str:
        header: list[object] = [len(new), len(new), 0, 0, len(new), "", 1, "no", False, 1]
        header += [[[i, "invalid"] for i in rejected], [[list(failed), "ServerError: 500"]] if failed else []]
        return json.dumps([*header, [], [], []])

    insert = "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, 0, ?, ?, '', '', '', NULL, ?)"
    # The batch is 1..5. Run 1's chunk 0 (ids 1-3) was answered while its chunk 1 (ids 4, 5) was under way;
    # run 2 sent ids 2-5 in one chunk (kept whole: not a run of the batch in a row) and had it answered.
    conn.execute(insert, (0, 1, 0, 3, None, 1, outcome([1], rejected=[2], failed=[3]), "1:3:2"))
    conn.execute(insert, (2, 2, 1, 4, _ids_blob([2, 3, 4, 5]), 1, outcome([2, 3, 4, 5]), None))
    state = _load(conn, retry_rejected=False, for_resume=True, batch=[1, 2, 3, 4, 5])
    assert (state.counts.accepted, state.counts.rejected, state.counts.failed, state.counts.in_doubt, state.sent) == (
        5,
        0,
        0,
        0,
        5,
    )
    assert state.settled == {1, 2, 3, 4, 5}
    assert not [r for _, piece in state.pieces for r in piece.rejected]

    conn.execute("DELETE FROM chunks WHERE seq = 2")  # run 2 never happened: run 1 died with chunk 1 in flight
    state = _load(conn, retry_rejected=False, for_resume=True, batch=[1, 2, 3, 4, 5])
    assert (state.counts.accepted, state.counts.rejected, state.counts.failed, state.counts.in_doubt) == (1, 1, 1, 2)
    assert state.settled == {1, 2}
    conn.execute(
        "INSERT INTO runs (run, pid, started_at, sdk_version, chunk_size, retry_rejected) VALUES (2, 1, 0, '', 3, 1)"
    )
    state = _load(
        conn, retry_rejected=False, for_resume=True, batch=[1, 2, 3, 4, 5]
    )  # run 2 retried rejections, then died before it recorded anything
    assert (state.counts.accepted, state.counts.rejected, state.counts.in_doubt) == (1, 0, 3)
    assert state.settled == {1}
    conn.execute(insert, (2, 2, 1, 4, _ids_blob([2, 3, 4, 5]), None, None, None))  # ... with ids 2-5 under way
    state = _load(conn, retry_rejected=False, for_resume=True, batch=[1, 2, 3, 4, 5])
    assert (state.counts.accepted, state.counts.rejected, state.counts.failed, state.counts.in_doubt, state.sent) == (
        1,
        0,
        0,
        4,
        5,
    )
    assert state.settled == {1}
    conn.close()


# --- the command line ------------------------------------------------------------------------------


@pytest.mark.wemasy_emulator(unknown_order_ids={5}, **FAST)
def test_cli_push_with_a_journal_then_its_summary(
    wemasy_emulator: WemasyEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """push --journal twice (the second sends nothing), then `journal FILE` and `journal FILE --json`."""
    monkeypatch.setenv("WEMASY_API_TOKEN", TOKEN)
    journal = str(tmp_path / "push.sqlite")
    push = ["push", "1-300", "--chunk-size", "100", "--base-url", wemasy_emulator.base_url, "--journal", journal]
    assert cli_main([*push, "--no-progress"]) == 1  # order 5 is rejected
    requests = len(wemasy_emulator.requests)
    assert cli_main([*push, "--no-progress", "--json"]) == 1
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(wemasy_emulator.requests) == requests
    assert document["summary"]["total_orders"] == 299
    assert document["rejected"] == [{"order_id": 5, "message": "The selected order_ids.4 is invalid."}]

    wemasy_emulator.unknown_order_ids = set()
    assert cli_main([*push, "--no-progress", "--retry-rejected"]) == 0
    assert sent_ids(wemasy_emulator.requests[requests:]) == [5]
    capsys.readouterr()

    assert cli_main(["journal", journal]) == 0
    text = capsys.readouterr().out
    assert "a batch of 300 ids" in text
    assert "accepted 300: 300 new" in text
    assert "runs 3" in text
    assert "complete" in text
    assert cli_main(["journal", journal, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ids"], summary["accepted"], summary["rejected"], summary["runs"]) == (300, 300, 0, 3)
    assert summary["complete"] is True
    assert TOKEN not in json.dumps(summary)


@pytest.mark.wemasy_emulator(**FAST)
def test_a_resumed_cli_push_starts_its_progress_bar_at_what_the_journal_holds(
    wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """On a terminal, a resumed `push --journal` shows the ids the journal already answered from its first
    redraw (not a bar from 0 that jumps, or ends short of the batch), and ends at the whole batch."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 201))

    async def first_chunks() -> None:
        async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url) as client:
            stream = client.sendcloud.iter_push_shipments(ids, chunk_size=10, max_concurrency=1, journal=journal)
            async with stream:
                async for _ in stream:
                    if stream.done >= 50:
                        break

    asyncio.run(first_chunks())
    settled = len(settled_in(journal, ids))
    assert 50 <= settled < 200
    argv = ["push", "1-200", "--chunk-size", "10", "--concurrency", "1", "--journal", str(journal)]
    code, out, written = run_in_terminal(argv, WEMASY_API_TOKEN=TOKEN, WEMASY_BASE_URL=wemasy_emulator.base_url)
    assert code == 0, out
    counts = [int(m.group(1)) for line in terminal_lines(written) if (m := re.search(r"(\d+)/200", line))]
    assert counts[0] == settled
    assert counts[-1] == 200


@pytest.mark.wemasy_emulator(queued_order_ids={3, 4, 12}, failed_order_ids={5, 13}, **FAST)
async def test_mixed_details_come_back_as_the_server_gave_them(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Chunks whose ids came back new, retry and skipped: a resume's details are the first run's, list by list."""
    journal = tmp_path / "push.sqlite"
    ids = list(range(1, 21))
    first = await client.sendcloud.push_shipments(ids, chunk_size=10, journal=journal)
    assert first.details.skipped_orders == ("3", "4", "12")
    assert first.details.retry_orders == ("5", "13")
    again = await client.sendcloud.push_shipments(ids, chunk_size=10, journal=journal)
    assert again.details == first.details
    assert again.summary == first.summary


class StallingDisk(JournalDisk):
    """The event loop's first write "takes" a second by the journal's clock; then the disk stalls for the
    journal's thread until ``disk_is_back`` is set. Records who wrote, write by write, and sets
    ``all_waiting`` once the 4 workers each wait for an outcome during the stall."""

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.disk_is_back, self.stalling = threading.Event(), threading.Event()
        self.writers: list[str] = []
        self.written = 0  # outcomes whose write has returned
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.now, self.step = 0.0, 0.0

    def clock(self) -> float:
        self.now += self.step
        return self.now

    def write(self, conn: Any, rows: list[Any]) -> None:
        if threading.get_ident() == self.loop_thread:
            self.writers.append("loop")
            if not self.stalling.is_set():
                self.step = 1.0
                self.stalling.set()
        else:
            self.writers.append("thread")
            if self.stalling.is_set():
                self.disk_is_back.wait()
        super().write(conn, rows)
        self.written += sum(row.header is not None for row in rows)

    def awaited(self, seq: int) -> None:
        if self.stalling.is_set():
            self.waiting += 1
            if self.waiting == 4:
                self.all_waiting.set()


@pytest.mark.wemasy_emulator(**FAST)
async def test_the_loop_writes_only_while_the_disk_is_quick_and_each_worker_waits_for_its_outcome(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's thread writes first; after QUICK_WRITES_TO_HAND_BACK quick writes the event loop writes
    each outcome itself. A write on the loop that takes longer than SLOW_WRITE_SECONDS (by the journal's
    clock) hands the writing back to the thread. While the disk then stalls, each of the 4 workers has one
    chunk whose outcome is not committed and sends nothing more (a kill would send again no more than the
    chunks in flight), and the loop is not held up. Once the disk is back, the batch completes."""
    from wemasy_async._journal._writer import QUICK_WRITES_TO_HAND_BACK

    disk = StallingDisk()
    push_journals_on(monkeypatch, disk)
    ids = list(range(1, 2001))
    async with client.sendcloud.iter_push_shipments(
        ids, chunk_size=10, max_concurrency=4, journal=tmp_path / "push.sqlite"
    ) as stream:
        ran_on = asyncio.Event()

        async def drain() -> None:
            async for _ in stream:
                # Half the batch: more than the thread's first quick writes (a few chunks each) and the
                # stall (one chunk a worker) let through.
                if stream.done > 1000:
                    ran_on.set()

        reader = asyncio.ensure_future(drain())
        stalled = asyncio.ensure_future(disk.all_waiting.wait())
        too_far = asyncio.ensure_future(ran_on.wait())
        try:
            await asyncio.wait([too_far, stalled], return_when=asyncio.FIRST_COMPLETED)
            writers = disk.writers
            assert stalled.done(), f"the batch ran on while what it did was not committed ({writers})"
            assert writers[:QUICK_WRITES_TO_HAND_BACK] == ["thread"] * QUICK_WRITES_TO_HAND_BACK
            assert writers.count("loop") == 1  # the slow one: then the thread took over
            # Every chunk sent has its outcome committed, but one a worker, each held in the stalled write.
            assert len(pushes(wemasy_emulator)) == disk.written + 4
        finally:
            disk.disk_is_back.set()  # before the stream closes: closing waits for the journal's writes
            stalled.cancel()
            too_far.cancel()
        await reader
    assert disk.writers.count("loop") == 1
    assert_every_id_accounted_once(stream.result(), ids, wemasy_emulator)
    assert read_journal(tmp_path / "push.sqlite").accepted == 2000
