"""The recipes of examples/, run as a user runs them: the FastAPI app under a real uvicorn with two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.redis_server import free_port
from wemasy_async.resources.sendcloud import PUSH_PATH, STATUS_PATH
from wemasy_async.testing import WemasyEmulator

ROOT = Path(__file__).parent.parent
#: Run once in CI, on the coverage Python (noxfile.py): uvicorn and FastAPI in processes of their own.
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
