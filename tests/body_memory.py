"""Runs one adversarial answer against a fresh client process and reads how far its peak memory rose.

The server (tests/body_server.py) and the measured client (tests/body_client.py) are separate processes,
so nothing the server holds counts; the rise is the client's peak resident memory (VmHWM) after the
adversarial call minus its peak after two normal calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).parent


class BodyMemory(NamedTuple):
    rise: int  # bytes of peak resident memory over the normal calls'
    outcome: str  # what the adversarial call gave (an error class name, or a push result's summary)


@contextmanager
def body_server(mode: str) -> Iterator[int]:
    """A tests/body_server.py process answering as ``mode``; yields its port."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "body_server.py"), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        process.stdout.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    mode: str, kind: str, normal_port: int, *, python: str = sys.executable, source: str | None = None
) -> BodyMemory:
    """The peak memory rise of a fresh client whose call (``status`` or ``push``) is answered as ``mode``.

    ``python`` runs the client (another venv: another aiohttp); ``source`` is a directory whose
    ``wemasy_async`` it imports instead of the installed one (an older checkout, for a before figure).
    """
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source
    with body_server(mode) as port:
        done = subprocess.run(
            [python, str(HERE / "body_client.py"), str(normal_port), str(port), kind],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            env=env,
        )
    figures = json.loads(done.stdout)
    return BodyMemory(rise=figures["peak"] - figures["baseline"], outcome=figures["outcome"])
