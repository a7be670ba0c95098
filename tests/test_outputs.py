"""What a batch writes beside its result (the journal, ``--failed-out``) never hides the result itself.

A journal that cannot be written (a full disk) leaves the batch going and its outcome whole: returned, or
raised as the error that stopped it, or carried by a cancel, with the failure in ``journal_error``. An
output file that cannot be written is refused before anything is sent; one that fails at the end is said
on stderr while the result is printed in full. The command line is run as the real command, in a child
process whose file-size limit (``RLIMIT_FSIZE``) stands in for a full disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN
from tests.helpers import FullDisk, assert_every_id_accounted_once, push_journals_on
from wemasy_async import PermissionDeniedError, WemasyClient, partial_result
from wemasy_async._journal import open_journal
from wemasy_async.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE
from wemasy_async.testing import WemasyEmulator

ROOT = Path(__file__).resolve().parents[1]
FAST = {"limit": 1_000_000, "window_seconds": 60.0}


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every outcome the journal writes fails as on a full disk (its rows are encoded just before)."""
    push_journals_on(monkeypatch, FullDisk())


@pytest.mark.usefixtures("full_disk")
async def test_a_journal_that_cannot_be_written_leaves_the_result_whole_and_says_so(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch goes on and its result is returned, every id in its place; the journal's failure is in
    ``journal_error`` and in the log, not raised in the result's stead."""
    ids = list(range(1, 101))
    with caplog.at_level(logging.WARNING, logger="wemasy_async"):
        result = await client.sendcloud.push_shipments(ids, chunk_size=10, journal=tmp_path / "push.sqlite")
    assert result.summary.new_orders == 100
    assert result.ok
    assert result.journal_error is not None
    assert "No space left on device" in result.journal_error
    assert any("No space left on device" in record.getMessage() for record in caplog.records)
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


@pytest.mark.usefixtures("full_disk")
async def test_a_journal_failure_does_not_hide_the_error_that_stopped_the_batch(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """A token revoked mid-batch stops it with a 403: that error is raised, as without a journal, and the
    result it carries names the journal's failure too."""
    ids = list(range(1, 201))

    def revoke_after_two_chunks(done: int, total: int) -> None:
        if done >= 20:
            wemasy_emulator.forbidden_tokens.add(TOKEN)

    with pytest.raises(PermissionDeniedError) as info:
        await client.sendcloud.push_shipments(
            ids, chunk_size=10, max_concurrency=2, progress=revoke_after_two_chunks, journal=tmp_path / "push.sqlite"
        )
    result = info.value.result
    assert result.journal_error is not None
    assert result.not_sent
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    if sys.version_info >= (3, 11):
        assert any("journal" in note for note in info.value.__notes__)


@pytest.mark.usefixtures("full_disk")
async def test_a_journal_failure_does_not_hide_a_cancel(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """A push cancelled after its first chunks ends in CancelledError, as without a journal; the result
    it carries has every id in its place and names the journal's failure."""
    ids = list(range(1, 201))
    task: asyncio.Task[Any] | None = None

    def cancel_after_two_chunks(done: int, total: int) -> None:
        if done >= 20 and task is not None:
            task.cancel()

    task = asyncio.ensure_future(
        client.sendcloud.push_shipments(
            ids, chunk_size=10, max_concurrency=2, progress=cancel_after_two_chunks, journal=tmp_path / "push.sqlite"
        )
    )
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    result = partial_result(info.value)
    assert result is not None
    assert result.journal_error is not None
    assert result.summary.total_orders >= 20
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


# --- the command line, as the real command in a child process ----------------------------------------


def run_cli(argv: list[str], *, max_file_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """``wemasy-async ARGV`` in a child process; with ``max_file_bytes``, no file it writes may grow past
    that (a full disk: a write past it fails with EFBIG, which Python's ignored SIGXFSZ turns into an
    OSError)."""
    limit = "" if max_file_bytes is None else f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes},) * 2); "
    code = f"import resource, sys; {limit}from wemasy_async.cli import main; sys.exit(main(sys.argv[1:]))"
    environment = {"WEMASY_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if max_file_bytes is None:  # (a full disk would fail coverage's own data file, not the command)
        # Under coverage (the 3.11 tests session) the child is measured too (coverage's subprocess patch reads these).
        environment.update({name: value for name, value in os.environ.items() if name.startswith("COVERAGE")})
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False, timeout=300, env=environment
    )


def accepted_ids(document: dict[str, Any]) -> list[int]:
    details = document["details"]
    return sorted(int(x) for x in details["new_orders"] + details["retry_orders"] + details["skipped_orders"])


async def size_of_a_new_journal(path: Path, ids: list[int], base_url: str) -> int:
    """The bytes a journal of ``ids`` takes before any chunk is recorded (as the push makes it)."""

    class Identity:  # what the journal reads of a client
        _token = TOKEN

    Identity.base_url = base_url  # type: ignore[attr-defined]
    journal = open_journal(path, ids, Identity(), chunk_size=50, create_label=False, retry_rejected=False)
    assert journal is not None
    await journal.close()
    return await asyncio.to_thread(os.path.getsize, path)


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
@pytest.mark.wemasy_emulator(**FAST)
async def test_a_full_disk_under_the_cli_journal_still_prints_the_whole_result(
    wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """``push --json --failed-out F --journal J`` on a disk that fills up once the journal is made: every id
    is pushed, the JSON says so and names the journal's failure, F is written (empty: nothing to push
    again), stderr warns, and the exit code is the batch's own (0), not a usage error's."""
    ids = list(range(1, 20_001))
    room = await size_of_a_new_journal(tmp_path / "sized.sqlite", ids, wemasy_emulator.base_url)
    failed_out = tmp_path / "retry.txt"
    argv = ["push", "1-20000", "--chunk-size", "50", "--json", "--journal", str(tmp_path / "push.sqlite")]
    argv += ["--failed-out", str(failed_out), "--base-url", wemasy_emulator.base_url]
    done = await asyncio.to_thread(run_cli, argv, max_file_bytes=room + 8192)
    assert done.returncode == EXIT_OK, done.stderr
    document = json.loads(done.stdout)
    assert document["complete"] is True
    assert accepted_ids(document) == ids
    assert sorted(wemasy_emulator.queued) == ids  # queued by the server, each once
    assert "could not be written" in (document["journal_error"] or "")
    assert "could not be written" in done.stderr
    assert "Traceback" not in done.stderr
    assert failed_out.read_text() == ""


@pytest.mark.parametrize("where", ["missing-folder/retry.txt", "a-folder"])
def test_an_unwritable_failed_out_is_refused_before_anything_is_sent(
    wemasy_emulator: WemasyEmulator, tmp_path: Path, where: str
) -> None:
    """A --failed-out in a folder that does not exist, or that is a folder, is a usage error naming it,
    before any request (not after the whole push)."""
    (tmp_path / "a-folder").mkdir()
    target = tmp_path / where
    argv = ["push", "1-100", "--failed-out", str(target), "--base-url", wemasy_emulator.base_url]
    done = run_cli([*argv])
    assert done.returncode == EXIT_USAGE
    assert f"--failed-out {target} cannot be written" in done.stderr
    assert "Traceback" not in done.stderr
    assert wemasy_emulator.requests == []


def test_a_failed_out_that_fails_at_the_end_still_prints_the_result(
    wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """Every request fails, so --failed-out gets 20,000 ids, more than the disk holds: stderr says the
    file could not be written, and the JSON, with those ids, is printed all the same; the exit code is the
    batch's (1: ids failed)."""
    wemasy_emulator.faults.server_error_rate = 1.0
    failed_out = tmp_path / "retry.txt"
    argv = ["push", "1-20000", "--chunk-size", "1000", "--max-attempts", "1", "--json", "--failed-out", str(failed_out)]
    done = run_cli([*argv, "--base-url", wemasy_emulator.base_url], max_file_bytes=16384)
    assert done.returncode == EXIT_INCOMPLETE, done.stderr
    assert f"--failed-out {failed_out} could not be written" in done.stderr
    document = json.loads(done.stdout)
    retry = sorted([i for f in document["failed"] for i in f["order_ids"]] + document["not_sent"])
    assert retry == list(range(1, 20_001))
    assert "Traceback" not in done.stderr


def test_failed_out_may_be_the_file_the_ids_are_read_from(wemasy_emulator: WemasyEmulator, tmp_path: Path) -> None:
    """The check before the push leaves an existing file as it is: ``--file F --failed-out F`` reads every id
    of F, then writes F anew with those to push again."""
    wemasy_emulator.unknown_order_ids = {3}
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n4\n")
    argv = ["push", "--file", str(ids), "--failed-out", str(ids), "--base-url", wemasy_emulator.base_url]
    done = run_cli([*argv])
    assert done.returncode == EXIT_INCOMPLETE, done.stderr  # 3 was rejected
    assert sorted(wemasy_emulator.queued) == [1, 2, 4]
    assert ids.read_text() == ""  # rejected ids are not pushed again by a retry file
