"""The sub-commands: ``status``, ``push``, ``journal``, ``serve`` and ``demo``, each an async function of the
parsed arguments that returns the exit code.

The push is a few named steps (open the stream, follow it, report it) so each can be read alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._batching import DEFAULT_CHUNK_CONCURRENCY, PushStream
from .._client import BASE_URL_ENV_VAR, WINDOW_SECONDS_ENV_VAR, WemasyClient
from .._errors import AuthenticationError, ConfigurationError, PermissionDeniedError, UsageError, WemasyError
from .._journal import read_journal
from .._models import PushResult
from .._protocol import TOKEN_ENV_VAR
from .._retry import RetryPolicy
from ..budgets import SchedulerEvent, WaitEvent
from ._exit_codes import EXIT_API, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._ids import IdCount, ids_from_lines, order_ids
from ._output import cli_message, print_journal_summary, print_push_result, push_result_json, redact_integration
from ._progress import PushProgress

if TYPE_CHECKING:
    from ..testing import RequestRecord

__all__ = ["check_output_file", "demo", "journal", "push", "push_and_report", "serve", "serve_banner", "status"]

logger = logging.getLogger("wemasy_async")


def client_from_args(args: argparse.Namespace, **options: Any) -> WemasyClient:
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


#: A wait for the window at least this long, with the window assumed, gets the hint below (once).
HINT_AFTER_SECONDS = 10.0


def client_window_hint(args: argparse.Namespace) -> str | None:
    """The line to write when a push against a server on this machine (the emulator) waits long for a window
    whose length was assumed (no --window-seconds, no WEMASY_WINDOW_SECONDS): the server's window cannot be
    read from its answers, and a client that assumes 60 s against a 2 s emulator waits 58 s a window."""
    if args.window_seconds is not None or os.environ.get(WINDOW_SECONDS_ENV_VAR, "").strip():
        return None
    host = urllib.parse.urlsplit(args.base_url or os.environ.get(BASE_URL_ENV_VAR) or "").hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return (
        "wemasy-async: waiting for the rate-limit window of 60 s, the window assumed: if the server's is "
        f"shorter (wemasy-async serve prints its own), give --window-seconds or set {WINDOW_SECONDS_ENV_VAR}"
    )


def _with_window_hint(hint: str | None, on_event: Callable[[SchedulerEvent], None]) -> Callable[[SchedulerEvent], None]:
    if hint is None:
        return on_event
    told = False

    def on_event_with_hint(event: SchedulerEvent) -> None:
        nonlocal told
        waiting = (
            isinstance(event, WaitEvent)
            and event.reason in ("window", "reserve")  # the window's end, or its last tenth
            and (event.seconds or 0) >= HINT_AFTER_SECONDS
        )
        if waiting and not told:
            told = True
            print(hint, file=sys.stderr, flush=True)
        on_event(event)

    return on_event_with_hint


async def status(args: argparse.Namespace) -> int:
    async with client_from_args(args) as client:
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


async def push(args: argparse.Namespace) -> int:
    code, _ = await push_and_report(args)
    return code


async def push_and_report(
    args: argparse.Namespace, client: WemasyClient | None = None, progress: PushProgress | None = None
) -> tuple[int, PushResult]:
    """Push the ids ``args`` names and print the outcome. ``client`` (with ``progress.on_event`` as its
    ``on_event``) is the caller's to close; without one, a client is made from ``args`` and closed here."""
    owned = client is None
    if progress is None:
        progress = PushProgress(
            sys.stderr, enabled=not args.json and not args.no_progress, line_seconds=args.progress_every
        )
    if client is None:
        client = client_from_args(args, on_event=_with_window_hint(client_window_hint(args), progress.on_event))
    try:
        stream = _open_push(args, client)
        interrupted = await _follow_push(stream, progress)
    finally:
        await progress.aclose()
        if owned:
            await client.close()
    result = stream.result()
    return await _report_push(args, stream, result, interrupted=interrupted), result


def _open_push(args: argparse.Namespace, client: WemasyClient) -> PushStream:
    """The push's stream, once every id is read and the output files are known to be writable."""
    if args.failed_out:  # (the journal is checked as it opens, also before anything is sent)
        check_output_file(args.failed_out, "--failed-out")
    if not args.ids and not args.file:
        raise UsageError("no order ids: give ids or ranges as arguments (12 1-5000 3,4,5), or --file FILE")
    stream = client.sendcloud.iter_push_shipments(
        order_ids(args, IdCount(allowed=args.yes)),
        create_label=args.create_label,
        chunk_size=args.chunk_size,
        max_concurrency=args.concurrency,
        journal=getattr(args, "journal", None),
        retry_rejected=getattr(args, "retry_rejected", False),
        priority=getattr(args, "priority", None),
    )
    if stream.total == 0:
        source = "standard input" if args.file == "-" else args.file or "the arguments"
        raise UsageError(f"no order ids in {source}: nothing to push")
    logger.debug("pushing %d ids in chunks of %s", stream.total, args.chunk_size or "a learned size")
    return stream


async def _follow_push(stream: PushStream, progress: PushProgress) -> bool:
    """Run the push to its end, moving the bar; True when it was interrupted (Ctrl-C)."""
    progress.start(stream.total, done=stream.done)  # done: what a journal shows as answered already
    try:
        async with stream:
            async for _ in stream:
                progress.update(stream.done)
    except asyncio.CancelledError:
        return True
    return False


async def _report_push(args: argparse.Namespace, stream: PushStream, result: PushResult, *, interrupted: bool) -> int:
    """Write --failed-out, print the result (text or JSON) and return the push's exit code."""
    stopped_by = stream.stopped_by
    written = await _write_failed_out(args.failed_out, result) if args.failed_out else False
    if args.json:
        reason = None if stopped_by is None else str(stopped_by)
        print(json.dumps(push_result_json(result, interrupted=interrupted, stopped_by=reason)))
    else:
        print_push_result(result, sys.stdout)
    if interrupted:
        print(f"interrupted: {stream.done} of {stream.total} ids had an outcome", file=sys.stderr)
        print(_carry_on(args, result, written=written), file=sys.stderr)
    return _push_exit_code(result, stopped_by, interrupted=interrupted)


def _carry_on(args: argparse.Namespace, result: PushResult, *, written: bool) -> str:
    """How to carry on after an interrupted push: the file that holds what is left, and the command."""
    left = len(result.retry_order_ids)
    journal_path = getattr(args, "journal", None)
    if journal_path:
        return f"to carry on, run the same command again: the journal {journal_path} sends only the {left} ids left"
    if written:
        path = args.failed_out
        return f"the {left} ids to push again are in {path}; to carry on: wemasy-async push --file {path}"
    where = " (the result's retry_order_ids)" if getattr(args, "json", False) else ""
    return (
        f"the {left} ids left{where} were not written to a file; to carry on, run the same command again (ids "
        "already queued come back as skipped, never as a second shipment), with --journal FILE to send only "
        "what is left if it is stopped again"
    )


def _push_exit_code(result: PushResult, stopped_by: WemasyError | None, *, interrupted: bool) -> int:
    """The exit code of a push that ended, with a line on stderr when the whole batch was stopped."""
    if interrupted:
        return EXIT_INTERRUPTED
    if isinstance(stopped_by, (AuthenticationError, PermissionDeniedError)):  # every request would fail alike
        print(f"wemasy-async: {stopped_by} (check the token: --token or ${TOKEN_ENV_VAR})", file=sys.stderr)
        return EXIT_USAGE
    if stopped_by is not None:  # the server could not be reached, or the client was closed
        print(f"wemasy-async: the push stopped: {cli_message(str(stopped_by))}", file=sys.stderr)
        return EXIT_API
    return EXIT_OK if result.ok else EXIT_INCOMPLETE


async def journal(args: argparse.Namespace) -> int:
    summary = read_journal(args.file)
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print_journal_summary(summary, sys.stdout)
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
        f"         or for both: export WEMASY_BASE_URL={base_url} WEMASY_WINDOW_SECONDS={window}",
        f"tokens: {accepted}{forbidden}",
    ]


async def serve(args: argparse.Namespace) -> int:
    from ..testing import WemasyEmulator

    unknown = IdCount(allowed=False, flag=None)
    emulator = WemasyEmulator(
        limit=args.limit,
        window_seconds=args.window,
        max_ids_per_request=args.max_ids,
        valid_tokens=args.tokens,
        forbidden_tokens=args.forbidden_tokens,
        unknown_order_ids=set(ids_from_lines(args.unknown_ids, lambda n: f"--unknown-ids, value {n}", unknown)),
    )
    emulator.faults.server_error_rate = args.error_rate
    emulator.faults.html_error_rate = args.html_error_rate
    emulator.faults.drop_rate = args.drop_rate
    emulator.faults.delay_seconds = args.delay
    emulator.faults.rate_limit_headers = not args.no_rate_limit_headers
    emulator.faults.retry_after = args.retry_after
    if args.verbose:
        began = time.monotonic()
        emulator.on_request = lambda record: print(request_line(record, began), flush=True)
    await emulator.start(args.host, args.port)
    try:
        print("\n".join(serve_banner(emulator.base_url, args)))
        sys.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    finally:
        await emulator.close()
        print(serve_summary(emulator.requests), flush=True)
    return EXIT_OK


def request_line(record: RequestRecord, began: float) -> str:
    """``serve -v``'s line for a request: when (s since start), method, path, status, ids, rate limit left."""
    status = "dropped" if record.status is None else str(record.status)
    ids = "" if record.order_ids is None else f" {len(record.order_ids)} ids"
    left = record.response_headers.get("X-RateLimit-Remaining")
    after = record.response_headers.get("Retry-After")
    tail = (f" remaining {left}" if left is not None else "") + (f" retry-after {after}" if after is not None else "")
    return f"{record.at - began:9.3f} {record.method} {record.path} {status}{ids}{tail}"


def serve_summary(requests: list[RequestRecord]) -> str:
    """What ``serve`` prints when stopped: the requests by status, and the order ids pushed."""
    by_status = Counter("dropped" if r.status is None else str(r.status) for r in requests)
    statuses = ", ".join(f"{count} x {status}" for status, count in sorted(by_status.items())) or "none"
    ids = sum(len(r.order_ids) for r in requests if r.order_ids is not None and r.status == 200)
    return f"served {len(requests)} requests ({statuses}); {ids} order ids in pushes answered 200"


async def demo(args: argparse.Namespace) -> int:
    from ..testing import WemasyEmulator

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
            code, result = await push_and_report(push, client, progress)
            if code == EXIT_INCOMPLETE and not result.failed:
                code = EXIT_OK  # the unknown ids were planted: rejecting them is the demo working
            elapsed = time.monotonic() - started
            view = client.rate_limit
    answered = [r for r in emulator.requests if r.status is not None]
    pushes = [r for r in answered if r.status != 429]
    windows = math.ceil(len(pushes) / args.limit)
    ideal = (windows - 1) * args.window
    print(
        f"scheduler: {view.sent} requests sent (422s and retries too), {view.throttled} answered 429, {elapsed:.2f} s "
        f"(ideal for {len(pushes)} requests at {args.limit} per {args.window:g} s: {ideal:.2f} s)"
    )
    return code
