"""Every check of the project: `nox` runs lint, typecheck and the tests on Python 3.10 to 3.13."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the emulator on loopback."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)  # the Redis tests start redis-server (.ci/run installs it)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", "wemasy_async")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmarks: print the SDK's figures beside its baselines and record them in benchmarks/RESULTS.md."""
    session.install("-e", ".[bench,redis]")
    session.run("python", "benchmarks/bench_rate_limit.py")
    session.run("python", "benchmarks/bench_wait_queue.py")
    session.run("python", "benchmarks/bench_fleet.py")
    session.run("python", "benchmarks/bench_overhead.py")
    session.run("python", "benchmarks/bench_batch.py")
