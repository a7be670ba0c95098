"""Body-size benchmark: how far a huge answer raises a fresh client's peak memory over a normal call.

Four adversarial answers, each to a fresh client process (tests/body_client.py) from a server in another
process (tests/body_server.py): a 200 with 100 MB of HTML (with its length), a push of 2,000 ids (4
chunks at a time) whose every answer is a 500 with 20 MB of HTML (with its length, then chunked), and a
1 GiB gzip bomb (1 MB on the wire); and, for scale, a push whose 500s are 7 MiB, under the cap, which is
read whole. The body cap is 8 MiB; the target is under +50 MB for each answer past it.

Each run writes one row per case, labelled by what ran (the SDK's commit and the aiohttp version, or
``--label``), and keeps the rows of other labels already in the section: run it with ``--source`` (an
older checkout of the package) or ``--python`` (another venv) to record a before figure beside today's.

    python benchmarks/bench_bodies.py [--python PY] [--source DIR] [--label TEXT] [--no-record]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from results import RESULTS, machine, record  # noqa: E402

from tests.body_memory import body_server, measure  # noqa: E402

CASES = [
    ("html", "status", "200, 100 MB HTML (Content-Length)"),
    ("error-length", "push", "push: every answer 500, 20 MB (Content-Length)"),
    ("error", "push", "push: every answer 500, 20 MB (chunked)"),
    ("bomb", "status", "200, 1 GiB gzip bomb (1 MB on the wire)"),
    ("error-7", "push", "push: every answer 500, 7 MiB (chunked; under the cap, so read whole)"),
]
TARGET_MB = 50
ROW = re.compile(r"^\| (?P<label>[^|]+) \| (?P<case>[^|]+) \|.*\|$")


def describe(python: str, source: str | None) -> str:
    version = subprocess.run(
        [python, "-c", "import aiohttp; print(aiohttp.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    where = Path(source) if source is not None else ROOT
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "wemasy_async"], capture_output=True, text=True, check=False
    ).stdout.strip()
    sdk = f"{commit}{'+' if dirty else ''}" if source is None else where.name
    return f"sdk {sdk}, aiohttp {version}"


def kept_rows(label: str) -> list[str]:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = "<!-- bodies:start -->", "<!-- bodies:end -->"
    if start not in text or end not in text:
        return []
    section = text.split(start, 1)[1].split(end, 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line)
        if match and match["label"].strip() not in (label, "what ran", "---"):
            rows.append(line)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the client")
    parser.add_argument("--source", help="a directory whose wemasy_async the client imports instead")
    parser.add_argument("--label", help="the rows' label (default: the SDK's commit and aiohttp's version)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    label = args.label or describe(args.python, args.source)
    rows = []
    with body_server("normal") as normal_port:
        for mode, kind, what in CASES:
            result = measure(mode, kind, normal_port, python=args.python, source=args.source)
            rise = result.rise / 1e6
            rows.append(f"| {label} | {what} | {rise:+.1f} | {result.outcome} |")
            print(f"{label}: {what}: peak RSS {rise:+.1f} MB over a normal call ({result.outcome})", flush=True)
    if not args.no_record:
        table = "\n".join(
            [
                "| what ran | answer | peak RSS over a normal call, MB | outcome |",
                "|---|---|---|---|",
                *kept_rows(label),
                *rows,
            ]
        )
        record(
            "bodies",
            "## Bodies: huge answers and the 8 MiB cap\n\n"
            f"`python benchmarks/bench_bodies.py` ({machine()})\n\n"
            "Each answer goes to a fresh client process, from a server in another process; the figure is the "
            "client's peak resident memory (VmHWM) after the call minus its peak after two normal calls. "
            f"Target: under +{TARGET_MB} MB for each answer past the cap. A body past the cap with its length is "
            "refused before it is read; one without is read up to the cap, so a push's 4 concurrent chunks may "
            "hold 4 x 8 MiB; the 7 MiB row is a body the cap allows, read whole by each of the 4 (with the copies "
            "of joining and decoding it), for scale. Rows of other runs (an older SDK, another aiohttp) are kept.\n\n"
            f"{table}\n",
        )


if __name__ == "__main__":
    main()
