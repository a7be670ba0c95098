"""Write a benchmark's figures into its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\nEach section is rewritten by the benchmark named in it; run them all with `nox -s bench`.\n"
)


def machine() -> str:
    import os

    return f"Python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"


def record(name: str, body: str) -> None:
    """Replace the section ``name`` of RESULTS.md with ``body`` (markdown)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    section = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
