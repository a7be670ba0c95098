"""The ``wemasy-async`` command line: status, push, serve (the emulator) and demo.

Exit codes: 0 all ids accepted (or the command succeeded); 1 some ids were rejected or failed;
2 a usage, configuration or authentication problem; 3 the API could not be reached or failed;
130 interrupted (Ctrl-C), after printing what was done.

What it does for the user:

* ``status`` never prints the integration's secret ``credentials`` unless asked with ``--show-secrets``:
  the keys are shown, their values replaced by ``<hidden: use --show-secrets>``.
* ``push`` shows a progress bar (tqdm) on stderr when stderr is a terminal, and nothing otherwise: it fits
  the terminal's width, shows the rate and the time left, and counts down a wait for the rate-limit window.
* Order ids come as arguments (``12 1-5000 3,4,5``), from ``--file`` or from standard input (``--file -``):
  UTF-8 with or without a byte-order mark, or UTF-16/UTF-32 with one (as PowerShell writes). Bytes that
  are not text, or a token that is not an id, are a usage error naming the file and line. Ranges are
  read lazily, one id at a time; more than 1,000,000 ids (a range or in all) are refused unless
  ``--yes`` is given, before anything is sent. No ids at all is a usage error.
* ``-v``/``--verbose``, or ``WEMASY_LOG=debug`` (or ``info``), writes the library's log to stderr; it
  never holds the token.
* ``serve`` prints the client options that match its window, and takes the tokens it accepts
  (``--token``) and those it answers 403 (``--forbidden-token``).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, Final, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from . import __version__
from ._batching import DEFAULT_CHUNK_CONCURRENCY, DEFAULT_CHUNK_SIZE
from ._client import BASE_URL_ENV_VAR, REDIS_URL_ENV_VAR, WemasyClient
from ._errors import AuthenticationError, ConfigurationError, PermissionDeniedError, UsageError, WemasyError
from ._journal import JournalSummary, read_journal
from ._logging import LOG_ENV_VAR, enable_stderr_logging, setup_logging_from_env
from ._models import PushResult
from ._protocol import TOKEN_ENV_VAR
from ._retry import RetryPolicy
from .budgets import SchedulerEvent, WaitEvent

__all__ = ["main"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: More ids than this, in one range or in all, are pushed only with --yes (a typo such as 1-100000000
#: would otherwise queue a hundred million shipments).
MAX_IDS_WITHOUT_YES: Final = 1_000_000

_EXIT_CODES: Final = (
    "Exit codes: 0 done, 1 some ids rejected or failed, 2 usage, configuration or auth, 3 API unreachable or "
    "failing, 130 interrupted."
)

#: What ``status`` prints instead of a secret value.
HIDDEN: Final = "<hidden: use --show-secrets>"

logger = logging.getLogger("wemasy_async")


# --- reading order ids -------------------------------------------------------------------------------

_ID_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)
#: Byte-order marks and the codec that reads past each (UTF-32's first: its LE mark begins with UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class IdCount:
    """Counts the ids read so far and refuses more than ``maximum`` (in one range or in all) unless
    ``allowed``. It counts whole ranges at once, before reading them, so nothing is read or sent first."""

    def __init__(self, *, allowed: bool, maximum: int | None = None, flag: str | None = "--yes") -> None:
        self.allowed = allowed
        self.maximum = MAX_IDS_WITHOUT_YES if maximum is None else maximum
        self.flag = flag
        self.count = 0

    def add_range(self, size: int, what: str, where: str) -> None:
        if not self.allowed and size > self.maximum:
            raise UsageError(f"{what} ({where}) holds {size:,} ids, more than {self.maximum:,}{self._hint()}")
        self.count += size

    def too_many(self, where: str) -> UsageError:
        return UsageError(f"more than {self.maximum:,} ids in all (at {where}){self._hint()}")

    def _hint(self) -> str:
        return f": give {self.flag} to push them all" if self.flag else ""


def _ids_from_lines(lines: Iterable[str], where: Callable[[int], str], count: IdCount) -> Iterator[int]:
    """Ids from lines of tokens such as ``12``, ``1-5000`` or ``3,4,5``, lazily (a range is never a list).

    A token that is not a positive id or a range is a UsageError naming it and ``where(line_number)``.
    """
    for number, line in enumerate(lines, 1):
        if "\x00" in line:
            raise UsageError(
                f"{where(number)} holds NUL characters: is it UTF-16 without a byte-order mark? Save it as UTF-8"
            )
        for part in line.replace(",", " ").split() if "," in line else line.split():
            if part.isdigit() and part.isascii() and len(part) < 20 and part.strip("0"):
                # One id, the common case: kept cheap for a million-line file.
                count.count += 1
                yield int(part)
            else:
                match = _ID_OR_RANGE.fullmatch(part)
                try:
                    low = int(match[1]) if match else 0
                    high = int(match[2]) if match and match[2] else low
                except ValueError:  # more digits than int() reads: no order id is that long
                    low = high = 0
                if low < 1 or high < low:
                    raise UsageError(f"not an order id or a range like 1-5000: {part!r} ({where(number)})")
                if match and match[2]:
                    count.add_range(high - low + 1, f"the range {part}", where(number))
                    if count.count > count.maximum and not count.allowed:
                        raise count.too_many(where(number))
                    yield from range(low, high + 1)
                    continue
                count.count += 1
                yield low
            if count.count > count.maximum and not count.allowed:
                raise count.too_many(where(number))


def _decoded_lines(binary: IO[bytes], name: str) -> Iterator[str]:
    """The lines of a byte stream, read in pieces: UTF-8, or the encoding its byte-order mark names.

    Bytes that do not decode are a UsageError naming ``name`` and the line, never a traceback.
    """
    head = binary.read(4)
    encoding = next((codec for bom, codec in _BOMS if head.startswith(bom)), "utf-8")
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    pending, lines_done, chunk = "", 0, head
    while True:
        final = not chunk
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError as error:
            line = lines_done + 1 + pending.count("\n") + error.object[: error.start].count(b"\n")
            raise UsageError(
                f"{name}: cannot be read as {'UTF-8' if encoding.startswith('utf-8') else encoding.upper()} text "
                f"(line {line}: {error.reason}); save it as UTF-8"
            ) from None
        pieces = (pending + text).split("\n")
        pending = pieces.pop()
        lines_done += len(pieces)
        yield from pieces
        if final:
            break
        chunk = binary.read(1 << 16)
    if pending:
        yield pending


def _file_ids(path: str, count: IdCount) -> Iterator[int]:
    try:
        with open(path, "rb") as handle:
            yield from _ids_from_lines(_decoded_lines(handle, path), lambda n: f"{path}, line {n}", count)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _stdin_ids(count: IdCount) -> Iterator[int]:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        lines: Iterable[str] = _decoded_lines(buffer, "standard input")
    else:  # a text stream put in place of stdin (tests, embedding): only a leading BOM to drop
        lines = (line.lstrip("\ufeff") if n == 0 else line for n, line in enumerate(sys.stdin))
    yield from _ids_from_lines(lines, lambda n: f"standard input, line {n}", count)


def _order_ids(args: argparse.Namespace, count: IdCount) -> Iterator[int]:
    """Every id the command line names, in order, one at a time."""
    yield from _ids_from_lines(args.ids, lambda n: f"argument {n}", count)
    if args.file == "-":
        yield from _stdin_ids(count)
    elif args.file:
        yield from _file_ids(args.file, count)


# --- output ------------------------------------------------------------------------------------------


class _Bar(tqdm):  # type: ignore[misc]
    monitor_interval = 0  # no monitor thread: the bar is refreshed on each chunk and each second of a wait


class PushProgress:
    """A progress bar on ``stream`` (stderr) when it is a terminal; nothing at all otherwise.

    tqdm draws it: it fits the terminal's width (and follows a resize), and shows the ids done, the rate
    and the time left. The client reports each wait for the rate-limit budget (:meth:`on_event`); while
    one lasts the bar counts it down, second by second, in front of the bar.
    """

    def __init__(self, stream: TextIO, *, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = enabled and _is_terminal(stream)
        self.clock = clock
        self.bar: Any = None
        self._wait_until: float | None = None
        self._wait_text = ""
        self._waiting: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._log_through_bar = contextlib.ExitStack()

    def start(self, total: int, done: int = 0) -> None:
        """Show the bar for ``total`` ids, ``done`` of them already (in a running event loop, which counts
        waits down)."""
        if not self.enabled:
            return
        self.bar = _Bar(total=total, initial=done, unit="ids", file=self.stream, dynamic_ncols=True, leave=True)
        # With -v, log lines are written above the bar instead of through it.
        self._log_through_bar.enter_context(logging_redirect_tqdm(loggers=[logger], tqdm_class=_Bar))
        self._waiting = asyncio.Event()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        if self._wait_until is not None:
            self._waiting.set()
        self.refresh_wait()

    def update(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def on_event(self, event: SchedulerEvent) -> None:
        """The client's ``on_event``: a wait for the window (or after a 429) starts a countdown."""
        if not isinstance(event, WaitEvent) or event.seconds is None or event.reason not in ("window", "gate"):
            return
        until = self.clock() + event.seconds
        if self._wait_until is None or until > self._wait_until:
            self._wait_until = until
            self._wait_text = "for the rate-limit window" if event.reason == "window" else "after a 429 (rate limited)"
        if self._waiting is not None:
            self._waiting.set()
        self.refresh_wait()

    def wait_description(self) -> str:
        """``waiting 42 s for the rate-limit window`` while a wait lasts, else empty."""
        if self._wait_until is None:
            return ""
        left = self._wait_until - self.clock()
        if left <= 0:
            self._wait_until = None
            return ""
        return f"waiting {math.ceil(left)} s {self._wait_text}"

    def refresh_wait(self) -> None:
        if self.bar is None:
            return
        text = self.wait_description()
        if text != self.bar.desc:
            self.bar.set_description_str(text, refresh=True)

    async def _tick(self) -> None:
        """While a wait lasts, redraw the countdown each time its whole seconds change."""
        assert self._waiting is not None
        while True:
            await self._waiting.wait()
            self.refresh_wait()
            if self._wait_until is None:
                self._waiting.clear()
                continue
            left = self._wait_until - self.clock()
            await asyncio.sleep(max(0.05, left - math.floor(left)) if left > 1 else max(0.05, left))

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self.bar is not None:
            self._wait_until = None
            self.refresh_wait()
            self._log_through_bar.close()
            self.bar.close()
            self.bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _result_json(result: PushResult, *, interrupted: bool = False, stopped_by: str | None = None) -> dict[str, Any]:
    return {
        "complete": result.ok and not interrupted,
        "interrupted": interrupted,
        "summary": {
            "total_orders": result.summary.total_orders,
            "new_orders": result.summary.new_orders,
            "retry_orders": result.summary.retry_orders,
            "skipped_orders": result.summary.skipped_orders,
            "queued_orders": result.summary.queued_orders,
        },
        "requests": result.requests,
        "total_chunks": result.total_chunks,
        "labels_will_be_created": result.labels_will_be_created,
        "details": {
            "new_orders": list(result.details.new_orders),
            "retry_orders": list(result.details.retry_orders),
            "skipped_orders": list(result.details.skipped_orders),
        },
        "rejected": [{"order_id": r.order_id, "message": r.message} for r in result.rejected],
        "failed": [{"order_ids": list(f.order_ids), "error": str(f.error)} for f in result.failed],
        "not_sent": list(result.not_sent),
        "in_doubt": list(result.in_doubt),
        "unreported": list(result.unreported),
        "stopped_by": stopped_by,
        "duplicates": list(result.duplicates),
        "ambiguous_retry": result.ambiguous_retry,
        "journal_error": result.journal_error,
    }


def _print_result(result: PushResult, out: TextIO) -> None:
    s = result.summary
    print(
        f"accepted {s.total_orders}: {s.new_orders} new, {s.retry_orders} retry, {s.skipped_orders} skipped "
        f"({s.queued_orders} queued) in {result.requests} requests",
        file=out,
    )
    if result.duplicates:
        print(f"duplicates pushed once: {len(result.duplicates)}", file=out)
    for rejection in result.rejected:
        print(f"rejected {rejection.order_id}: {rejection.message}", file=out)
    for failure in result.failed:
        print(f"failed {len(failure.order_ids)} ids: {cli_message(str(failure.error))}", file=out)
    if result.in_doubt:
        print(f"in doubt: {len(result.in_doubt)} ids (under way when the push stopped)", file=out)
    if result.not_sent:
        print(f"not sent: {len(result.not_sent)} ids (the push stopped first)", file=out)


def _hidden(value: Any) -> Any:
    """``value`` with every leaf replaced by :data:`HIDDEN`; the keys of objects are kept."""
    if isinstance(value, Mapping):
        return {key: _hidden(item) for key, item in value.items()}
    return HIDDEN


def redact_integration(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The integration's JSON with the values of its ``credentials`` hidden (SendCloud's secret keys)."""
    redacted = dict(raw)
    credentials = redacted.get("credentials")
    if credentials not in (None, {}, []):
        redacted["credentials"] = _hidden(credentials)
    return redacted


# --- messages in the command line's words ------------------------------------------------------------

#: The client's words for its Python arguments, and the command line's for the same thing.
_CLI_WORDS = (
    (re.compile(r"pass token=\.\.\. to WemasyClient or set the (\w+) environment variable"), r"give --token or set \1"),
    (re.compile(r"pass the token as token=\.\.\."), f"give the token with --token or {TOKEN_ENV_VAR}"),
    (re.compile(r"pass allow_insecure_http=True"), "give --allow-insecure-http"),
    (re.compile(r"\bbase_url\b"), f"--base-url (or ${BASE_URL_ENV_VAR})"),
    (re.compile(r"\bredis_url\b"), f"--redis-url (or ${REDIS_URL_ENV_VAR})"),
    (re.compile(r"\bwindow_seconds\b"), "--window-seconds"),
    (re.compile(r"\bchunk_size\b"), "--chunk-size"),
    (re.compile(r"\bmax_concurrency\b"), "--concurrency"),
    (re.compile(r"\bmax_attempts\b"), "--max-attempts"),
    (re.compile(r"^timeout\b"), "--timeout"),
    (re.compile(r" or None\b"), ""),
    (re.compile(r"\(RetryPolicy\.max_wait=([\d.]+) s\)"), r"(at most \1 s)"),
    (re.compile(r"\bor pass trust_env=False"), "or unset it"),
)


def cli_message(message: str) -> str:
    """A client error's text in the command line's words: ``--token``, not ``token=...``."""
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


# --- commands ----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, **options: Any) -> WemasyClient:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV_VAR)
    if not token:
        raise ConfigurationError(f"no API token: give --token or set {TOKEN_ENV_VAR}")
    return WemasyClient(
        token=token,
        base_url=args.base_url,
        window_seconds=args.window_seconds,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        redis_url=args.redis_url,
        allow_insecure_http=args.allow_insecure_http,
        **options,
    )


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        integration = await client.sendcloud.status()
    raw = dict(integration.raw)
    if args.json:
        print(json.dumps(raw if args.show_secrets else redact_integration(raw)))
        return EXIT_OK
    print(f"SendCloud integration {integration.id}: active={integration.active} connected={integration.connected}")
    print(f"created {integration.created_at}, updated {integration.updated_at}")
    credentials = integration.credentials
    if credentials:
        if args.show_secrets:
            print("credentials: " + ", ".join(f"{key}={json.dumps(value)}" for key, value in credentials.items()))
        else:
            print(f"credentials: {', '.join(map(str, credentials))} (values hidden: use --show-secrets)")
    return EXIT_OK


def _write_ids(path: str, ids: Iterable[int]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{order_id}\n" for order_id in ids)


def check_output_file(path: str, option: str) -> None:
    """Refuse, before anything is read or sent, an output file that cannot be written (its folder missing,
    a folder in its place, no permission, a read-only file system), so that a push is never run only to lose
    its file at the end. An existing file is left as it is (it may be the push's own input): it is opened
    to append, and one this check made is removed again."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path} cannot be written: {error.strerror or error}") from None
    if not existed:
        with contextlib.suppress(OSError):
            os.remove(path)


async def _write_failed_out(path: str, result: PushResult) -> bool:
    """Write the ids to push again to ``path``; on failure say so on stderr (the result is printed all the
    same, and holds the same ids) and return False."""
    ids = result.retry_order_ids
    try:
        await asyncio.to_thread(_write_ids, path, ids)
    except OSError as error:
        print(
            f"wemasy-async: warning: --failed-out {path} could not be written ({error.strerror or error}): "
            f"its {len(ids)} ids to push again are in the result below",
            file=sys.stderr,
        )
        return False
    return True


async def _push(args: argparse.Namespace) -> int:
    code, _ = await _push_and_report(args)
    return code


async def _push_and_report(
    args: argparse.Namespace, client: WemasyClient | None = None, progress: PushProgress | None = None
) -> tuple[int, PushResult]:
    """Push the ids ``args`` names and print the outcome. ``client`` (with ``progress.on_event`` as its
    ``on_event``) is the caller's to close; without one, a client is made from ``args`` and closed here."""
    owned = client is None
    if progress is None:
        progress = PushProgress(sys.stderr, enabled=not args.json and not args.no_progress)
    if client is None:
        client = _client(args, on_event=progress.on_event)
    interrupted = False
    try:
        if args.failed_out:  # (the journal is checked as it opens, also before anything is sent)
            check_output_file(args.failed_out, "--failed-out")
        if not args.ids and not args.file:
            raise UsageError("no order ids: give ids or ranges as arguments (12 1-5000 3,4,5), or --file FILE")
        stream = client.sendcloud.iter_push_shipments(
            _order_ids(args, IdCount(allowed=args.yes)),
            create_label=args.create_label,
            chunk_size=args.chunk_size,
            max_concurrency=args.concurrency,
            journal=getattr(args, "journal", None),
            retry_rejected=getattr(args, "retry_rejected", False),
        )
        if stream.total == 0:
            source = "standard input" if args.file == "-" else args.file or "the arguments"
            raise UsageError(f"no order ids in {source}: nothing to push")
        logger.debug("pushing %d ids in chunks of %d", stream.total, args.chunk_size)
        progress.start(stream.total, done=stream.done)  # done: what a journal shows as answered already
        try:
            async with stream:
                async for _ in stream:
                    progress.update(stream.done)
        except asyncio.CancelledError:
            interrupted = True
    finally:
        await progress.aclose()
        if owned:
            await client.close()
    result = stream.result()
    stopped_by = stream.stopped_by
    if args.failed_out:
        await _write_failed_out(args.failed_out, result)
    if args.json:
        reason = None if stopped_by is None else str(stopped_by)
        print(json.dumps(_result_json(result, interrupted=interrupted, stopped_by=reason)))
    else:
        _print_result(result, sys.stdout)
        if interrupted:
            print(f"interrupted: {stream.done} of {stream.total} ids had an outcome", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED, result
    if isinstance(stopped_by, (AuthenticationError, PermissionDeniedError)):  # every request would fail alike
        print(f"wemasy-async: {stopped_by} (check the token: --token or ${TOKEN_ENV_VAR})", file=sys.stderr)
        return EXIT_USAGE, result
    if stopped_by is not None:  # the server could not be reached, or the client was closed
        print(f"wemasy-async: the push stopped: {cli_message(str(stopped_by))}", file=sys.stderr)
        return EXIT_API, result
    return (EXIT_OK if result.ok else EXIT_INCOMPLETE), result


def _print_journal(summary: JournalSummary, out: TextIO) -> None:
    def when(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))

    print(
        f"journal {summary.path}: a batch of {summary.ids} ids to {summary.base_url} "
        f"(create_label={'yes' if summary.create_label else 'no'})",
        file=out,
    )
    print(
        f"accepted {summary.accepted}: {summary.new} new, {summary.retry} retry, {summary.skipped} skipped "
        f"in {summary.requests} requests",
        file=out,
    )
    print(f"rejected {summary.rejected}", file=out)
    print(f"failed {summary.failed}" + (f", unreported {summary.unreported}" if summary.unreported else ""), file=out)
    print(f"in doubt {summary.in_doubt} (sent, no answer recorded: in flight when the push stopped)", file=out)
    print(f"not sent {summary.not_sent}", file=out)
    last = "finished" if summary.last_run_finished else "did not finish (killed, or still running)"
    print(f"runs {summary.runs}; the last (pid {summary.last_pid}) {last}", file=out)
    print(f"created {when(summary.created_at)}, updated {when(summary.updated_at)}", file=out)
    if summary.complete:
        print("complete: every id has an answer", file=out)
    else:
        print(f"to send on resume: {summary.to_send} ids (run the same push with --journal again)", file=out)


async def _journal(args: argparse.Namespace) -> int:
    summary = read_journal(args.file)
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        _print_journal(summary, sys.stdout)
    return EXIT_OK


def serve_banner(base_url: str, args: argparse.Namespace) -> list[str]:
    """What ``serve`` prints at start: where it listens, the client options that match its window, and
    which tokens it takes (never the tokens themselves)."""
    window = f"{args.window:g}"
    accepted = "any token" if args.tokens is None else f"the {len(set(args.tokens))} given with --token"
    forbidden = f"; {len(set(args.forbidden_tokens))} answered 403" if args.forbidden_tokens else ""
    return [
        f"Wemasy emulator at {base_url} ({args.limit} requests per {window} s window); Ctrl-C stops it",
        f"clients: wemasy-async push --base-url {base_url} --window-seconds {window} ...",
        f'         WemasyClient(token=..., base_url="{base_url}", window_seconds={window})',
        f"tokens: {accepted}{forbidden}",
    ]


async def _serve(args: argparse.Namespace) -> int:
    from .testing import WemasyEmulator

    unknown = IdCount(allowed=False, flag=None)
    emulator = WemasyEmulator(
        limit=args.limit,
        window_seconds=args.window,
        max_ids_per_request=args.max_ids,
        valid_tokens=args.tokens,
        forbidden_tokens=args.forbidden_tokens,
        unknown_order_ids=set(_ids_from_lines(args.unknown_ids, lambda n: f"--unknown-ids, value {n}", unknown)),
    )
    emulator.faults.server_error_rate = args.error_rate
    emulator.faults.html_error_rate = args.html_error_rate
    emulator.faults.drop_rate = args.drop_rate
    emulator.faults.delay_seconds = args.delay
    emulator.faults.rate_limit_headers = not args.no_rate_limit_headers
    emulator.faults.retry_after = args.retry_after
    await emulator.start(args.host, args.port)
    try:
        print("\n".join(serve_banner(emulator.base_url, args)))
        sys.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    finally:
        await emulator.close()
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from .testing import WemasyEmulator

    ids = list(range(1001, 1001 + args.ids))
    unknown = set(ids[7 :: max(1, len(ids) // 5)][:5])  # a few ids the shop does not have
    already = set(ids[: len(ids) // 10])  # a tenth pushed before
    emulator = WemasyEmulator(
        limit=args.limit,
        window_seconds=args.window,
        unknown_order_ids=unknown,
        queued_order_ids=already,
        failed_order_ids=set(ids[-3:]),
    )
    async with emulator:
        print(
            f"demo: an emulated Wemasy API allowing {args.limit} requests per {args.window:g} s window; pushing "
            f"{len(ids)} order ids in chunks of {args.chunk_size} ({len(unknown)} unknown to the shop, "
            f"{len(already)} pushed before)",
            file=sys.stderr,
        )
        progress = PushProgress(sys.stderr, enabled=not args.no_progress)
        async with WemasyClient(
            token="demo-token", base_url=emulator.base_url, window_seconds=args.window, on_event=progress.on_event
        ) as client:
            started = time.monotonic()
            push = argparse.Namespace(
                ids=[f"{ids[0]}-{ids[-1]}"],
                file=None,
                yes=True,
                create_label=False,
                chunk_size=args.chunk_size,
                concurrency=DEFAULT_CHUNK_CONCURRENCY,
                json=False,
                failed_out=None,
                no_progress=args.no_progress,
            )
            code, result = await _push_and_report(push, client, progress)
            if code == EXIT_INCOMPLETE and not result.failed:
                code = EXIT_OK  # the unknown ids were planted: rejecting them is the demo working
            elapsed = time.monotonic() - started
            view = client.rate_limit
    answered = [r for r in emulator.requests if r.status is not None]
    pushes = [r for r in answered if r.status != 429]
    windows = math.ceil(len(pushes) / args.limit)
    ideal = (windows - 1) * args.window
    print(
        f"scheduler: {view.sent} requests, {view.throttled} answered 429, {elapsed:.2f} s "
        f"(ideal for {len(pushes)} requests at {args.limit} per {args.window:g} s: {ideal:.2f} s)"
    )
    return code


# --- the parser --------------------------------------------------------------------------------------


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


def _parser() -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="wemasy-async",
        description="The Wemasy API from the command line: SendCloud status, shipment pushes, an emulator.",
        epilog=(f"{_EXIT_CODES} {LOG_ENV_VAR}=debug (or info) writes the library's log to stderr, as -v does."),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False, formatter_class=formatter)
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
        default=60.0,
        metavar="SECONDS",
        help="the server's rate-limit window, in seconds",
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser(
        "status", parents=[common], help="the SendCloud integration's state", formatter_class=formatter
    )
    status.add_argument("--json", action="store_true", help="print the integration as JSON")
    status.add_argument(
        "--show-secrets",
        action="store_true",
        help=f"show the values of the integration's credentials (SendCloud keys); otherwise {HIDDEN}",
    )

    push = commands.add_parser(
        "push",
        parents=[common],
        help="push orders to SendCloud shipments",
        formatter_class=formatter,
        description="Push order ids to SendCloud shipments. Ids come as arguments, from --file, or both; "
        "a file may be UTF-8 (with or without a BOM) or UTF-16 with a BOM (as PowerShell writes it). A bad id "
        f"is named with its file and line, and more than {MAX_IDS_WITHOUT_YES:,} ids need --yes; nothing is "
        "sent until every id has been read. On a terminal, a progress bar on stderr shows the rate, the time "
        "left and any wait for the rate-limit window.",
        epilog=_EXIT_CODES,
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
        help=f"push more than {MAX_IDS_WITHOUT_YES:,} ids (in a range or in all) without refusing",
    )
    push.add_argument("--create-label", action="store_true", help="also create shipping labels")
    push.add_argument("--chunk-size", type=_COUNT, metavar="N", default=DEFAULT_CHUNK_SIZE, help="ids per request")
    push.add_argument(
        "--concurrency", type=_COUNT, metavar="N", default=DEFAULT_CHUNK_CONCURRENCY, help="requests at once"
    )
    push.add_argument("--json", action="store_true", help="print one JSON document on stdout, and no progress bar")
    push.add_argument(
        "--failed-out", metavar="FILE", help="write the ids of failed requests here, to retry (default: none)"
    )
    push.add_argument(
        "--no-progress", action="store_true", help="no progress bar; there is none anyway when stderr is not a terminal"
    )
    push.add_argument(
        "--journal",
        metavar="FILE",
        help="record each chunk's outcome in this SQLite file; after a crash the same command sends only what is "
        "not answered (default: none)",
    )
    push.add_argument("--retry-rejected", action="store_true", help="with --journal: send its rejected ids again")

    journal = commands.add_parser(
        "journal", help="summarize a push journal (--journal FILE)", formatter_class=formatter
    )
    journal.add_argument("file", metavar="FILE", help="the journal file")
    journal.add_argument("--json", action="store_true", help="print the summary as JSON")

    serve = commands.add_parser(
        "serve",
        help="run the emulator of the Wemasy API",
        formatter_class=formatter,
        description="Run the emulator of the Wemasy API on this machine. It prints the client options that "
        "match its window.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
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

    demo = commands.add_parser(
        "demo",
        help="push a batch through an in-process emulator and show the figures",
        formatter_class=formatter,
    )
    demo.add_argument("--ids", type=_COUNT, default=3000, help="how many order ids")
    demo.add_argument("--chunk-size", type=_COUNT, default=50, help="ids per request")
    demo.add_argument("--limit", type=_COUNT, default=20, help="the emulator's requests per window")
    demo.add_argument("--window", type=_SECONDS, default=1.0, help="the emulator's window seconds")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


async def _run(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl-C: stop cleanly, print what was done
    try:
        command = {"status": _status, "push": _push, "serve": _serve, "demo": _demo, "journal": _journal}[args.command]
        return await command(args)
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
