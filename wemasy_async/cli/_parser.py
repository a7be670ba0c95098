"""The command line's parser: one small function per sub-command adds that sub-command and its options.

Every option's help ends with its default (:class:`_HelpFormatter`), and numbers are checked against their
range as they are parsed, so a bad value is a usage error that names the range.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, TypeAlias

from .. import __version__
from .._batching import DEFAULT_CHUNK_CONCURRENCY, DEFAULT_CHUNK_SIZE
from .._client import BASE_URL_ENV_VAR, REDIS_URL_ENV_VAR
from .._logging import LOG_ENV_VAR
from .._protocol import TOKEN_ENV_VAR
from ._exit_codes import EXIT_CODES_HELP
from ._ids import max_ids_without_yes
from ._output import HIDDEN
from ._progress import LINE_SECONDS

__all__ = ["build_parser"]

#: What add_subparsers returns, to which each _add_* function adds one sub-command.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: the value argparse has, ``off`` for a flag, or the
    help's own words where it says ``default`` itself (a default read from the environment)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def _number(kind: Callable[[str], float], *, low: float, low_ok: bool, high: float | None = None) -> Any:
    """An argparse ``type`` for a number in a range, whose error says which range."""
    bound = f"at least {low:g}" if low_ok else f"more than {low:g}"
    if high is not None:
        bound = f"between {low:g} and {high:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if (
            not math.isfinite(value)
            or not (value >= low if low_ok else value > low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


_SECONDS = _number(float, low=0, low_ok=False)
_COUNT = _number(int, low=1, low_ok=True)
_FRACTION = _number(float, low=0, low_ok=True, high=1)


def build_parser() -> argparse.ArgumentParser:
    """The ``wemasy-async`` parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="wemasy-async",
        description="The Wemasy API from the command line: SendCloud status, shipment pushes, an emulator.",
        epilog=(f"{EXIT_CODES_HELP} {LOG_ENV_VAR}=debug (or info) writes the library's log to stderr, as -v does."),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _common_options()
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_status(commands, common)
    _add_push(commands, common)
    _add_journal(commands)
    _add_serve(commands)
    _add_demo(commands)
    return parser


def _common_options() -> argparse.ArgumentParser:
    """The options of every sub-command that talks to the API (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False, formatter_class=_HelpFormatter)
    common.add_argument("--token", metavar="TOKEN", help=f"API token (default: ${TOKEN_ENV_VAR})")
    common.add_argument(
        "--base-url", metavar="URL", help=f"API base URL (default: ${BASE_URL_ENV_VAR}, else the real API)"
    )
    common.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http:// base URL that is not loopback (the token then travels unencrypted; only "
        "behind a trusted proxy that terminates TLS)",
    )
    common.add_argument("--timeout", type=_SECONDS, metavar="SECONDS", default=30.0, help="seconds per HTTP exchange")
    common.add_argument(
        "--window-seconds",
        type=_SECONDS,
        default=None,
        metavar="SECONDS",
        help="the server's rate-limit window, in seconds (default: $WEMASY_WINDOW_SECONDS, else 60)",
    )
    common.add_argument(
        "--max-attempts", type=_COUNT, metavar="N", default=6, help="sends per request, retries included"
    )
    common.add_argument(
        "--redis-url",
        metavar="URL",
        help="share the token's rate-limit budget with every process on this Redis (default: "
        f'${REDIS_URL_ENV_VAR}, else none; needs "wemasy-async[redis]")',
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help=f"write the library's debug log to stderr; it never holds the token (default: off, or ${LOG_ENV_VAR})",
    )
    return common


def _add_status(commands: _Commands, common: argparse.ArgumentParser) -> None:
    """``status``: the SendCloud integration's state."""
    status = commands.add_parser(
        "status", parents=[common], help="the SendCloud integration's state", formatter_class=_HelpFormatter
    )
    status.add_argument("--json", action="store_true", help="print the integration as JSON")
    status.add_argument(
        "--show-secrets",
        action="store_true",
        help=f"show the values of the integration's credentials (SendCloud keys); otherwise {HIDDEN}",
    )


def _add_push(commands: _Commands, common: argparse.ArgumentParser) -> None:
    """``push``: order ids to SendCloud shipments."""
    push = commands.add_parser(
        "push",
        parents=[common],
        help="push orders to SendCloud shipments",
        formatter_class=_HelpFormatter,
        description="Push order ids to SendCloud shipments. Ids come as arguments, from --file, or both; "
        "a file may be UTF-8 (with or without a BOM) or UTF-16 with a BOM (as PowerShell writes it). A bad id "
        f"is named with its file and line, and more than {max_ids_without_yes():,} ids need --yes; nothing is "
        "sent until every id has been read. On a terminal, a progress bar on stderr shows the rate, the time "
        "left and any wait for the rate-limit window.",
        epilog=EXIT_CODES_HELP,
    )
    push.add_argument(
        "ids", nargs="*", metavar="ID", help="order ids and ranges: 12 1-5000 3,4,5 (default: none; see --file)"
    )
    push.add_argument(
        "--file",
        "-f",
        metavar="FILE",
        help="read ids from this file (one per line or comma-separated); - for standard input (default: none)",
    )
    push.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help=f"push more than {max_ids_without_yes():,} ids (in a range or in all) without refusing",
    )
    push.add_argument("--create-label", action="store_true", help="also create shipping labels")
    push.add_argument(
        "--chunk-size",
        type=_COUNT,
        metavar="N",
        help=f"ids per request, at most (default: learned, from {DEFAULT_CHUNK_SIZE} up to what the server takes "
        "quickly)",
    )
    push.add_argument(
        "--concurrency", type=_COUNT, metavar="N", default=DEFAULT_CHUNK_CONCURRENCY, help="requests at once"
    )
    push.add_argument("--json", action="store_true", help="print one JSON document on stdout, and no progress bar")
    push.add_argument(
        "--failed-out",
        metavar="FILE",
        help="write here, one per line, every id to push again: of failed requests, not reported, in doubt (under "
        "way when stopped) and never sent; push them again with --file FILE (default: none)",
    )
    push.add_argument(
        "--no-progress", action="store_true", help="no progress bar on a terminal, and no progress lines elsewhere"
    )
    push.add_argument(
        "--progress-every",
        type=_SECONDS,
        metavar="SECONDS",
        default=LINE_SECONDS,
        help="when stderr is not a terminal (cron, a container's log), a progress line this often",
    )
    push.add_argument(
        "--journal",
        metavar="FILE",
        help="record each chunk's outcome in this SQLite file; after a crash the same command sends only what is "
        "not answered (default: none)",
    )
    push.add_argument("--retry-rejected", action="store_true", help="with --journal: send its rejected ids again")
    push.add_argument(
        "--priority",
        choices=("interactive", "bulk"),
        help="the push's class for the token's budget: bulk waits behind interactive calls (a web service's) and "
        "leaves them the slots they use (default: bulk for more than one chunk, else interactive)",
    )


def _add_journal(commands: _Commands) -> None:
    """``journal``: a push journal's summary."""
    journal = commands.add_parser(
        "journal", help="summarize a push journal (--journal FILE)", formatter_class=_HelpFormatter
    )
    journal.add_argument("file", metavar="FILE", help="the journal file")
    journal.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_serve(commands: _Commands) -> None:
    """``serve``: the emulator of the Wemasy API, with its fault switches."""
    serve = commands.add_parser(
        "serve",
        help="run the emulator of the Wemasy API",
        formatter_class=_HelpFormatter,
        description="Run the emulator of the Wemasy API on this machine. It prints the client options that "
        "match its window.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "-v", "--verbose", action="count", default=0, help="a line on stdout for each request: status, ids, 429s"
    )
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port)")
    serve.add_argument("--limit", type=_COUNT, default=60, help="requests per window per token")
    serve.add_argument("--window", type=_SECONDS, default=60.0, help="window seconds")
    serve.add_argument("--max-ids", type=_COUNT, default=1000, help="ids per push request")
    serve.add_argument(
        "--token",
        action="append",
        dest="tokens",
        metavar="TOKEN",
        help="a token it accepts; repeat for more; others are answered 401 (default: any token)",
    )
    serve.add_argument(
        "--forbidden-token",
        action="append",
        dest="forbidden_tokens",
        default=[],
        metavar="TOKEN",
        help="a token it answers 403 (forbidden); repeat for more (default: none)",
    )
    serve.add_argument("--unknown-ids", nargs="*", default=[], help="ids the shop does not have (422) (default: none)")
    serve.add_argument("--error-rate", type=_FRACTION, default=0.0, help="fraction answered 500")
    serve.add_argument("--html-error-rate", type=_FRACTION, default=0.0, help="fraction answered by an HTML 502")
    serve.add_argument("--drop-rate", type=_FRACTION, default=0.0, help="fraction of connections dropped")
    serve.add_argument(
        "--delay", type=_number(float, low=0, low_ok=True), default=0.0, help="seconds each answer is held back"
    )
    serve.add_argument("--no-rate-limit-headers", action="store_true", help="strip X-RateLimit-* headers")
    serve.add_argument(
        "--retry-after",
        choices=["seconds", "rounded-up", "fractional", "http-date"],
        default="seconds",
        help="how a 429's Retry-After is written",
    )


def _add_demo(commands: _Commands) -> None:
    """``demo``: a batch through an in-process emulator."""
    demo = commands.add_parser(
        "demo",
        help="push a batch through an in-process emulator and show the figures",
        formatter_class=_HelpFormatter,
    )
    demo.add_argument("--ids", type=_COUNT, default=3000, help="how many order ids")
    demo.add_argument("--chunk-size", type=_COUNT, default=50, help="ids per request")
    demo.add_argument("--limit", type=_COUNT, default=20, help="the emulator's requests per window")
    demo.add_argument("--window", type=_SECONDS, default=1.0, help="the emulator's window seconds")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
