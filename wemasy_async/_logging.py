"""The library's log on stderr, switched on by ``WEMASY_LOG=debug`` or ``info`` (as ``OPENAI_LOG`` does).

Everything the SDK logs goes to the ``wemasy_async`` logger: one line per HTTP exchange and per retry at
debug level, budget waits, and warnings (Redis stopped answering, a server window far shorter than the
configured one). Nothing it logs holds the token. Without ``WEMASY_LOG`` the library adds no handler and
the logger follows the application's logging configuration, as a library should.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final, TextIO

__all__ = ["LOG_ENV_VAR", "enable_stderr_logging", "setup_logging_from_env"]

LOG_ENV_VAR: Final = "WEMASY_LOG"
#: The values of ``WEMASY_LOG`` and the levels they switch on; other values are ignored.
LOG_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO}

logger = logging.getLogger("wemasy_async")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is logged (as logging's own last-resort handler
    does), so a handler set up once keeps following a redirected or captured stderr."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr, as it is when a record is logged


def enable_stderr_logging(level: int) -> None:
    """Log the library's records at ``level`` and above to stderr.

    Idempotent: the handler is added once, however often this is called; a later call may lower the
    level (more detail), never raise it, so ``-v`` and ``WEMASY_LOG`` together give the more detailed of
    the two.
    """
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setLevel(level)
        logger.addHandler(handler)
    elif level < handler.level:
        handler.setLevel(level)
    if logger.level == logging.NOTSET or level < logger.level:
        logger.setLevel(level)


def setup_logging_from_env() -> None:
    """Switch the library's log on from ``WEMASY_LOG`` (``debug`` or ``info``); idempotent and cheap, so
    both the command line and every client constructor call it. Unset, empty or other values change
    nothing."""
    level = LOG_LEVELS.get(os.environ.get(LOG_ENV_VAR, "").strip().lower())
    if level is not None:
        enable_stderr_logging(level)
