"""Every check of the project: `nox` runs lint, typecheck, the docs site (built with --strict) and the tests on
each of Python 3.10 to 3.13 (and `nox -s dist` builds the distributions and checks them with twine check --strict).

Every session installs with constraints.txt, the versions pinned for all four Pythons (`nox -s lock` makes it
again from pyproject.toml's extras: CONTRIBUTING.md says when), so that every Python tests against the same
hypothesis, pytest and the rest.

Each Python is looked for on the machine (`python3.12` on PATH, pyenv's versions, ...), never downloaded
(`nox --download-python auto` lets uv fetch the missing ones). One that is not found is skipped with a
warning, and the summary nox prints last names every session with what became of it, e.g.
``* tests-3.12: skipped (Python interpreter 3.12 not found)``. On CI (the CI environment variable set,
as .ci/run does) a missing Python fails the run instead: CI must test all four.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

# 2025.2.9: `download_python`; older noxes stop here with a message that says which version is needed.
nox.needs_version = ">=2025.2.9"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

#: The pinned versions of everything the sessions install (made by `nox -s lock`).
CONSTRAINTS = ("-c", "constraints.txt")


#: The Python whose test run is measured by coverage.py (one run of the suite fewer than a session of its own).
COVERAGE_PYTHON = "3.11"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the emulator on loopback; on 3.11 under coverage.py, whose branch-coverage table
    of the package (subprocesses, the CLI and spawned fleets, included) it prints after the tests (the
    settings are in pyproject.toml's [tool.coverage])."""
    measured = session.python == COVERAGE_PYTHON
    session.install("-e", ".[test]", *(["coverage>=7.10.3"] if measured else []), *CONSTRAINTS)
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
    session.install("ruff>=0.5", *CONSTRAINTS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and its pytest plugin."""
    session.install("-e", ".[test]", "mypy>=1.10", *CONSTRAINTS)
    session.run("mypy", "--strict", "wemasy_async", "_wemasy_async_pytest.py")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The docs site (mkdocs.yml: mkdocs-material, the API reference by mkdocstrings) built with --strict into a
    temporary directory: a broken link or anchor, a page left out of the nav, or a docstring that griffe cannot
    read fails it. `mkdocs serve` (after installing `.[docs]`) shows it while you write."""
    session.install("-e", ".[docs]", *CONSTRAINTS)
    with tempfile.TemporaryDirectory(prefix="wemasy-site-") as site:
        session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python="3.11")
def lock(session: nox.Session) -> None:
    """Make constraints.txt again: every extra of pyproject.toml (the `dev` extra names them all) resolved once
    for Python 3.10 and later, one version of each package for all of them where one fits (`--fork-strategy
    fewest`), with markers where a package differs by Python or platform."""
    session.install("uv")
    command = ["uv", "pip", "compile", "pyproject.toml", "--extra", "dev", "--universal", "--python-version", "3.10"]
    command += ["--fork-strategy", "fewest", "--custom-compile-command", "nox -s lock", "-o", "constraints.txt"]
    session.run(*command, *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmarks: print the SDK's figures beside its baselines and record them in benchmarks/RESULTS.md."""
    session.install("-e", ".[bench,redis]", *CONSTRAINTS)
    session.run("python", "benchmarks/bench_rate_limit.py")
    session.run("python", "benchmarks/bench_wait_queue.py")
    session.run("python", "benchmarks/bench_fleet.py")
    session.run("python", "benchmarks/bench_overhead.py")
    session.run("python", "benchmarks/bench_batch.py")


@nox.session(python="3.11")
def dist(session: nox.Session) -> None:
    """Build the sdist and the wheel (into dist/) and check them as PyPI would: twine check --strict."""
    session.install("build>=1.2", "twine>=5", *CONSTRAINTS)
    shutil.rmtree("dist", ignore_errors=True)  # only this build's files are checked
    session.run("python", "-m", "build", "--outdir", "dist", ".")
    session.run("twine", "check", "--strict", *sorted(str(path) for path in Path("dist").glob("wemasy_async-*")))
