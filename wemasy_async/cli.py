"""The ``wemasy-async`` command line: status, push, serve (the emulator) and demo.

Exit codes: 0 all ids accepted (or the command succeeded); 1 some ids were rejected or failed;
2 a usage, configuration or authentication problem; 3 the API could not be reached or failed;
130 interrupted (Ctrl-C), after printing what was done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from . import __version__
from ._batching import DEFAULT_CHUNK_CONCURRENCY, DEFAULT_CHUNK_SIZE
from ._client import BASE_URL_ENV_VAR, WemasyClient
from ._errors import AuthenticationError, ConfigurationError, PermissionDeniedError, UsageError, WemasyError
from ._journal import JournalSummary, read_journal
from ._models import PushResult
from ._protocol import TOKEN_ENV_VAR
from ._retry import RetryPolicy

__all__ = ["main"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# --- reading order ids -------------------------------------------------------------------------------


def _ids_from_text(tokens: Iterable[str], where: str) -> Iterator[int]:
    """Ids from tokens such as ``12``, ``1-5000`` or ``3,4,5``; a bad token is a UsageError naming it."""
    for token in tokens:
        for part in token.replace(",", " ").split():
            first, dash, last = part.partition("-")
            try:
                if dash:
                    low, high = int(first), int(last)
                    if high < low:
                        raise ValueError
                    yield from range(low, high + 1)
                else:
                    yield int(part)
            except ValueError:
                raise UsageError(f"not an order id or a range like 1-5000: {part!r} ({where})") from None


def _order_ids(args: argparse.Namespace) -> Iterator[int]:
    yield from _ids_from_text(args.ids, "arguments")
    if args.file == "-":
        yield from _ids_from_text(sys.stdin, "standard input")
    elif args.file:
        with open(args.file, encoding="utf-8") as handle:
            yield from _ids_from_text(handle, args.file)


# --- output ------------------------------------------------------------------------------------------


class ProgressLine:
    """A one-line progress bar on a terminal (stderr); silent when stderr is not a terminal."""

    def __init__(self, client: WemasyClient, stream: TextIO, *, enabled: bool) -> None:
        self.client = client
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / total) if total else width
        rate = done / max(time.monotonic() - self.started, 1e-9)
        view = self.client.rate_limit
        budget = f"budget {view.remaining}/{view.limit}" if view.limit is not None else "budget ?"
        if view.gate_closed_for:
            wait = f"  waiting {view.gate_closed_for:.1f} s (429)"
        elif view.remaining == 0 and view.window_ends_in:
            wait = f"  waiting {view.window_ends_in:.1f} s for the window"
        else:
            wait = ""
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ids  {rate:,.0f} ids/s  {budget}{wait}"
        self.stream.write(line.ljust(100)[:120])
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


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
        print(f"failed {len(failure.order_ids)} ids: {failure.error}", file=out)
    if result.in_doubt:
        print(f"in doubt: {len(result.in_doubt)} ids (under way when the push stopped)", file=out)
    if result.not_sent:
        print(f"not sent: {len(result.not_sent)} ids (the push stopped first)", file=out)


# --- commands ----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, **options: Any) -> WemasyClient:
    return WemasyClient(
        token=args.token,
        base_url=args.base_url,
        window_seconds=args.window_seconds,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        redis_url=args.redis_url,
        **options,
    )


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        integration = await client.sendcloud.status()
    if args.json:
        print(json.dumps(dict(integration.raw)))
    else:
        print(f"SendCloud integration {integration.id}: active={integration.active} connected={integration.connected}")
        print(f"created {integration.created_at}, updated {integration.updated_at}")
    return EXIT_OK


def _write_ids(path: str, ids: Iterable[int]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{order_id}\n" for order_id in ids)


async def _push(args: argparse.Namespace) -> int:
    code, _ = await _push_and_report(args)
    return code


async def _push_and_report(args: argparse.Namespace, client: WemasyClient | None = None) -> tuple[int, PushResult]:
    owned = client is None
    client = client or _client(args)
    progress = ProgressLine(client, sys.stderr, enabled=not args.json and not args.no_progress)
    stream = client.sendcloud.iter_push_shipments(
        _order_ids(args),
        create_label=args.create_label,
        chunk_size=args.chunk_size,
        max_concurrency=args.concurrency,
        progress=progress,
        journal=getattr(args, "journal", None),
        retry_rejected=getattr(args, "retry_rejected", False),
    )
    interrupted = False
    try:
        async with stream:
            async for _ in stream:
                pass
    except asyncio.CancelledError:
        interrupted = True
    finally:
        progress.close()
        if owned:
            await client.close()
    result = stream.result()
    stopped_by = stream.stopped_by
    if args.failed_out:
        await asyncio.to_thread(_write_ids, args.failed_out, result.retry_order_ids)
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
        print(f"wemasy-async: the push stopped: {stopped_by}", file=sys.stderr)
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


async def _serve(args: argparse.Namespace) -> int:
    from .testing import WemasyEmulator

    emulator = WemasyEmulator(
        limit=args.limit,
        window_seconds=args.window,
        max_ids_per_request=args.max_ids,
        unknown_order_ids=set(_ids_from_text(args.unknown_ids, "--unknown-ids")),
    )
    emulator.faults.server_error_rate = args.error_rate
    emulator.faults.html_error_rate = args.html_error_rate
    emulator.faults.drop_rate = args.drop_rate
    emulator.faults.delay_seconds = args.delay
    emulator.faults.rate_limit_headers = not args.no_rate_limit_headers
    emulator.faults.retry_after = args.retry_after
    await emulator.start(args.host, args.port)
    try:
        print(f"Wemasy emulator at {emulator.base_url} ({args.limit} per {args.window:g} s); Ctrl-C stops it")
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
        async with WemasyClient(token="demo-token", base_url=emulator.base_url, window_seconds=args.window) as client:
            started = time.monotonic()
            push = argparse.Namespace(
                ids=[f"{ids[0]}-{ids[-1]}"],
                file=None,
                create_label=False,
                chunk_size=args.chunk_size,
                concurrency=DEFAULT_CHUNK_CONCURRENCY,
                json=False,
                failed_out=None,
                no_progress=args.no_progress,
            )
            code, result = await _push_and_report(push, client)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wemasy-async",
        description="The Wemasy API from the command line: SendCloud status, shipment pushes, an emulator.",
        epilog="Exit codes: 0 done, 1 some ids rejected or failed, 2 usage or auth, 3 API failure, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--token", help=f"API token (default: ${TOKEN_ENV_VAR})")
    common.add_argument("--base-url", help=f"API base URL (default: ${BASE_URL_ENV_VAR} or the real API)")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP exchange (default 30)")
    common.add_argument("--window-seconds", type=float, default=60.0, help="rate-limit window (default 60)")
    common.add_argument("--max-attempts", type=int, default=6, help="sends per request, retries included (default 6)")
    common.add_argument(
        "--redis-url",
        help="share the token's rate-limit budget with every process on this Redis (default: $WEMASY_REDIS_URL; "
        'needs "wemasy-async[redis]")',
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", parents=[common], help="the SendCloud integration's state")
    status.add_argument("--json", action="store_true", help="print the integration as JSON")

    push = commands.add_parser("push", parents=[common], help="push orders to SendCloud shipments")
    push.add_argument("ids", nargs="*", help="order ids and ranges: 12 1-5000 3,4,5")
    push.add_argument("--file", "-f", help="read ids from a file (one per line or comma-separated); - for stdin")
    push.add_argument("--create-label", action="store_true", help="also create shipping labels")
    push.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="ids per request (default 500)")
    push.add_argument("--concurrency", type=int, default=DEFAULT_CHUNK_CONCURRENCY, help="requests at once")
    push.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    push.add_argument("--failed-out", metavar="FILE", help="write the ids of failed requests here, to retry")
    push.add_argument("--no-progress", action="store_true", help="no progress bar")
    push.add_argument(
        "--journal",
        metavar="FILE",
        help="record each chunk's outcome in this SQLite file; after a crash the same command sends only what is "
        "not answered",
    )
    push.add_argument("--retry-rejected", action="store_true", help="with --journal: send its rejected ids again")

    journal = commands.add_parser("journal", help="summarize a push journal (--journal FILE)")
    journal.add_argument("file", metavar="FILE", help="the journal file")
    journal.add_argument("--json", action="store_true", help="print the summary as JSON")

    serve = commands.add_parser("serve", help="run the emulator of the Wemasy API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--limit", type=int, default=60, help="requests per window per token (default 60)")
    serve.add_argument("--window", type=float, default=60.0, help="window seconds (default 60)")
    serve.add_argument("--max-ids", type=int, default=1000, help="ids per push request (default 1000)")
    serve.add_argument("--unknown-ids", nargs="*", default=[], help="ids the shop does not have (422)")
    serve.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500")
    serve.add_argument("--html-error-rate", type=float, default=0.0, help="fraction answered by an HTML 502")
    serve.add_argument("--drop-rate", type=float, default=0.0, help="fraction of connections dropped")
    serve.add_argument("--delay", type=float, default=0.0, help="seconds each answer is held back")
    serve.add_argument("--no-rate-limit-headers", action="store_true", help="strip X-RateLimit-* headers")
    serve.add_argument("--retry-after", choices=["seconds", "rounded-up", "fractional", "http-date"], default="seconds")

    demo = commands.add_parser("demo", help="push a batch through an in-process emulator and show the figures")
    demo.add_argument("--ids", type=int, default=3000, help="how many order ids (default 3000)")
    demo.add_argument("--chunk-size", type=int, default=50, help="ids per request (default 50)")
    demo.add_argument("--limit", type=int, default=20, help="the emulator's requests per window (default 20)")
    demo.add_argument("--window", type=float, default=1.0, help="the emulator's window seconds (default 1)")
    demo.add_argument("--no-progress", action="store_true")
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
    try:
        return asyncio.run(_run(args))
    except (ConfigurationError, UsageError) as error:
        print(f"wemasy-async: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (AuthenticationError, PermissionDeniedError) as error:
        print(f"wemasy-async: {error} (check the token: --token or ${TOKEN_ENV_VAR})", file=sys.stderr)
        return EXIT_USAGE
    except WemasyError as error:
        print(f"wemasy-async: {error}", file=sys.stderr)
        return EXIT_API
    except OSError as error:  # a --file that cannot be read, a port in use
        print(f"wemasy-async: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
