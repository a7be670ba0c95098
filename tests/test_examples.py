"""The recipes of examples/, run as a user runs them: the FastAPI app under a real uvicorn with two workers, and
the worker that resumes its journalled push, killed with SIGKILL half-way and started again."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.redis_server import free_port
from wemasy_async.resources.sendcloud import PUSH_PATH, STATUS_PATH
from wemasy_async.testing import WemasyEmulator

ROOT = Path(__file__).parent.parent
#: Run once in CI, on the coverage Python (noxfile.py): uvicorn, FastAPI and the worker in processes of their own.
pytestmark = pytest.mark.once


def _get(url: str, method: str = "GET") -> tuple[int, object]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _until_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert process.poll() is None, "uvicorn exited"
        try:
            _get(url)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # two worker processes starting up: nothing to wait on but the port
            continue
        return
    raise AssertionError("uvicorn did not answer within 30 s")


@pytest.mark.wemasy_emulator(limit=10, window_seconds=2.0)
def test_the_fastapi_app_answers_its_handlers_while_a_background_push_runs(wemasy_emulator: WemasyEmulator) -> None:
    """uvicorn --workers 2 with examples/fastapi_app.py against the emulator (10 per 2 s): a background
    push of 3000 ids (bulk) runs while the handlers call status() (interactive): every handler answers
    200, and the push's ids all reach the emulator."""
    port = free_port()
    env = {
        **os.environ,
        "WEMASY_API_TOKEN": TOKEN,
        "WEMASY_BASE_URL": wemasy_emulator.base_url,
        "WEMASY_WINDOW_SECONDS": "2",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--workers", "2", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as server:
        try:
            _until_listening(base + "/sendcloud", server)
            assert _get(base + "/push?first=1&last=3000", method="POST") == (200, {"accepted": 3000})
            answers = [_get(base + "/sendcloud") for _ in range(10)]
            assert answers == [(200, {"active": True, "connected": True})] * 10
            for _ in range(1200):  # the push, in the background, takes a few windows
                if len(wemasy_emulator.queued_order_ids) >= 3000:
                    break
                time.sleep(0.05)  # the background task's progress shows only at the emulator
            assert set(range(1, 3001)) <= set(wemasy_emulator.queued_order_ids)
        finally:
            server.terminate()
            server.communicate(timeout=30)
    paths = {r.path for r in wemasy_emulator.requests}
    assert any(p.endswith(PUSH_PATH) for p in paths)
    assert any(p.endswith(STATUS_PATH) for p in paths)


def _line_where(process: subprocess.Popen[str], wanted: Callable[[str], bool], seconds: float = 60.0) -> str:
    """The first line of the child's stdout that ``wanted`` takes, read as the child writes it (a line at a
    time, each read bounded by what is left of ``seconds``)."""
    assert process.stdout is not None
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], left)
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the worker exited ({process.wait()}) before the line; stderr: {process.stderr}")
        if wanted(line):
            return line
    raise AssertionError(f"no such line from the worker within {seconds} s")


@pytest.mark.wemasy_emulator(limit=5, window_seconds=0.5, unknown_order_ids={13})
def test_the_resume_worker_killed_mid_push_and_restarted_puts_every_id_in_one_place_once(
    wemasy_emulator: WemasyEmulator, tmp_path: Path
) -> None:
    """examples/resume_worker.py pushes 3000 ids in chunks of 100 (5 requests per 0.5 s window); killed with
    SIGKILL after its second chunk and started again with the same journal, it ends with every id in exactly
    one place, each queued once, and the second run sends again only ids of chunks that were in flight at the
    kill (the journal's promise)."""
    ids = range(1, 3001)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, ids)), encoding="utf-8")
    journal = tmp_path / "push.sqlite"
    env = {
        **os.environ,
        "WEMASY_API_TOKEN": TOKEN,
        "WEMASY_BASE_URL": wemasy_emulator.base_url,
        "WEMASY_WINDOW_SECONDS": "0.5",
    }
    command = [sys.executable, str(ROOT / "examples" / "resume_worker.py"), str(ids_file), str(journal)]
    command += ["--chunk-size", "100"]

    def run() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    with run() as first:
        for _ in range(2):
            _line_where(first, lambda line: line.startswith("chunk: "))
        first.kill()
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    first_pid = first.pid

    with run() as second:
        assert _line_where(second, lambda line: True).startswith("resuming: ")
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    places = json.loads(out.splitlines()[-1])

    # Every id in exactly one place, and the server queued each accepted id once.
    accepted, rejected, retry_later = places["accepted"], places["rejected"], places["retry_later"]
    assert rejected == [13]
    assert retry_later == []
    assert sorted(accepted + rejected) == list(ids)
    assert sorted(wemasy_emulator.queued) == sorted(set(accepted))

    def sent_by(pid: int) -> list[int]:
        agent = f"resume-worker/{pid}"
        return [
            order_id
            for record in wemasy_emulator.requests
            if record.path.endswith(PUSH_PATH) and agent in record.headers.get("User-Agent", "")
            for order_id in record.order_ids or ()
        ]

    first_ids, second_ids = set(sent_by(first_pid)), set(sent_by(second.pid))
    assert 0 < len(first_ids) < len(ids)  # the kill landed mid-push
    assert first_ids | second_ids == set(ids)
    # Sent by both runs: only ids of the requests in flight at the kill, at most one chunk per request of the
    # batch in flight (4 by default); those the server had queued come back skipped, and nothing else does.
    twice = first_ids & second_ids
    assert len(twice) <= 4 * 100
    assert set(places["skipped"]) <= twice
