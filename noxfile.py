"""Every check of the project: `nox` runs lint, typecheck and the tests on each of Python 3.10 to 3.13 (and
`nox -s dist` builds the distributions and checks them with twine check --strict).

Each Python is looked for on the machine (`python3.12` on PATH, pyenv's versions, ...), never downloaded
(`nox --download-python auto` lets uv fetch the missing ones). One that is not found is skipped with a
warning, and the summary nox prints last names every session with what became of it, e.g.
``* tests-3.12: skipped (Python interpreter 3.12 not found)``. On CI (the CI environment variable set,
as .ci/run does) a missing Python fails the run instead: CI must test all four.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

# 2025.2.9: `download_python`; older noxes stop here with a message that says which version is needed.
nox.needs_version = ">=2025.2.9"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


#: The Python whose test run is measured by coverage.py (one run of the suite fewer than a session of its own).
COVERAGE_PYTHON = "3.11"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the emulator on loopback; on 3.11 under coverage.py, whose branch-coverage table
    of the package (subprocesses, the CLI and spawned fleets, included) it prints after the tests (the
    settings are in pyproject.toml's [tool.coverage])."""
    measured = session.python == COVERAGE_PYTHON
    session.install("-e", ".[test]", *(["coverage>=7.10.3"] if measured else []))
    session.run("python", "--version")  # which Python this session found, in the log above its tests
    if not measured:
        # The Redis tests start redis-server (.ci/run installs it). Tests marked `once` (managed Redis, the
        # FastAPI recipe under uvicorn, host-budget processes, packaging) test servers, other processes or the
        # build, not this Python: they run in the measured run only, which keeps CI under 15 minutes.
        session.run("pytest", "-m", "not once", *session.posargs)
        return
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and its pytest plugin."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", "wemasy_async", "_wemasy_async_pytest.py")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmarks: print the SDK's figures beside its baselines and record them in benchmarks/RESULTS.md."""
    session.install("-e", ".[bench,redis]")
    session.run("python", "benchmarks/bench_rate_limit.py")
    session.run("python", "benchmarks/bench_wait_queue.py")
    session.run("python", "benchmarks/bench_fleet.py")
    session.run("python", "benchmarks/bench_overhead.py")
    session.run("python", "benchmarks/bench_batch.py")


@nox.session(python="3.11")
def dist(session: nox.Session) -> None:
    """Build the sdist and the wheel (into dist/) and check them as PyPI would: twine check --strict."""
    session.install("build>=1.2", "twine>=5")
    shutil.rmtree("dist", ignore_errors=True)  # only this build's files are checked
    session.run("python", "-m", "build", "--outdir", "dist", ".")
    session.run("twine", "check", "--strict", *sorted(str(path) for path in Path("dist").glob("wemasy_async-*")))
