"""The ``wemasy-async`` command line: status, push, journal, serve (the emulator) and demo.

A package split by concern: reading ids (``_ids``), the progress bar (``_progress``), what is printed
(``_output``), the sub-commands (``_commands``) and the parser (``_parser``); ``main`` runs one command and
turns errors into exit codes. What the command line promises its user: docs/design/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from .._errors import AuthenticationError, ConfigurationError, PermissionDeniedError, UsageError, WemasyError
from .._logging import enable_stderr_logging, setup_logging_from_env
from .._protocol import TOKEN_ENV_VAR
from ._commands import check_output_file as check_output_file
from ._commands import demo, journal, push, serve, status
from ._commands import serve_banner as serve_banner
from ._exit_codes import EXIT_API, EXIT_INTERRUPTED, EXIT_USAGE
from ._exit_codes import EXIT_INCOMPLETE as EXIT_INCOMPLETE
from ._exit_codes import EXIT_OK as EXIT_OK
from ._ids import IdCount as IdCount
from ._ids import order_ids as _order_ids  # noqa: F401  (the name tests have used)
from ._output import HIDDEN as HIDDEN
from ._output import cli_message
from ._output import redact_integration as redact_integration
from ._parser import build_parser
from ._progress import PushProgress as PushProgress

#: More ids than this, in one range or in all, are pushed only with --yes (a typo such as 1-100000000
#: would otherwise queue a hundred million shipments). Read at each use (``_ids.max_ids_without_yes``).
MAX_IDS_WITHOUT_YES: Final = 1_000_000

__all__ = ["main"]

_COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace], Awaitable[int]]]] = {
    "status": status,
    "push": push,
    "serve": serve,
    "demo": demo,
    "journal": journal,
}


async def _run(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl-C: stop cleanly, print what was done
    try:
        command = _COMMANDS[args.command]
        return await command(args)
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging_from_env()
    if getattr(args, "verbose", 0):
        enable_stderr_logging(logging.DEBUG)
    try:
        return asyncio.run(_run(args))
    except (ConfigurationError, UsageError) as error:
        print(f"wemasy-async: {cli_message(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except (AuthenticationError, PermissionDeniedError) as error:
        print(f"wemasy-async: {error} (check the token: --token or ${TOKEN_ENV_VAR})", file=sys.stderr)
        return EXIT_USAGE
    except WemasyError as error:
        print(f"wemasy-async: {cli_message(str(error))}", file=sys.stderr)
        return EXIT_API
    except OSError as error:  # a port in use, a --failed-out that cannot be written
        print(f"wemasy-async: {error}", file=sys.stderr)
        return EXIT_USAGE
