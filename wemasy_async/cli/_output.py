"""What the command line prints: a push's result (as text or JSON), a journal's summary, the integration
with its secrets hidden, and client errors in the command line's words.

Kept apart from the commands so that each printed form is one function that a test or a caller can reuse.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

from .._client import BASE_URL_ENV_VAR, REDIS_URL_ENV_VAR
from .._journal import JournalSummary
from .._models import UNACCEPTED, PushResult
from .._outcomes import places_json
from .._protocol import TOKEN_ENV_VAR

__all__ = [
    "HIDDEN",
    "cli_message",
    "print_journal_summary",
    "print_push_result",
    "push_result_json",
    "redact_integration",
]

#: What ``status`` prints instead of a secret value.
HIDDEN: Final = "<hidden: use --show-secrets>"


def push_result_json(result: PushResult, *, interrupted: bool = False, stopped_by: str | None = None) -> dict[str, Any]:
    """The JSON document of `push --json`: built in this one place, so that its keys are read and changed here."""
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
        **places_json(result),
        "stopped_by": stopped_by,
        "duplicates": list(result.duplicates),
        "ambiguous_retry": result.ambiguous_retry,
        "journal_error": result.journal_error,
    }


def print_push_result(result: PushResult, out: TextIO) -> None:
    s = result.summary
    print(
        f"accepted {s.total_orders}: {s.new_orders} new, {s.retry_orders} retry, {s.skipped_orders} skipped "
        f"({s.queued_orders} queued) in {result.requests} requests answered 200",
        file=out,
    )
    if result.duplicates:
        print(f"duplicates pushed once: {len(result.duplicates)}", file=out)
    for rejection in result.rejected:
        print(f"rejected {rejection.order_id}: {rejection.message}", file=out)
    for failure in result.failed:
        print(f"failed {len(failure.order_ids)} ids: {cli_message(str(failure.error))}", file=out)
    for place in UNACCEPTED:
        ids = getattr(result, place.name)
        if place.name in _PUSH_NOTES and ids:
            print(f"{place.words}: {len(ids)} ids ({_PUSH_NOTES[place.name]})", file=out)


#: The places a push's result tells by their count (rejections and failures are told one by one), and why
#: their ids are there.
_PUSH_NOTES = {
    "unreported": "answered, but named by none of new, retry or skipped",
    "in_doubt": "under way when the push stopped",
    "not_sent": "the push stopped first",
}


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


#: What a journal summary's line of a place adds to its count.
_SUMMARY_NOTES = {"in_doubt": " (sent, no answer recorded: in flight when the push stopped)"}


def print_journal_summary(summary: JournalSummary, out: TextIO) -> None:
    def when(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))

    print(
        f"journal {summary.path}: a batch of {summary.ids} ids to {summary.base_url} "
        f"(create_label={'yes' if summary.create_label else 'no'})",
        file=out,
    )
    print(
        f"accepted {summary.accepted}: {summary.new} new, {summary.retry} retry, {summary.skipped} skipped "
        f"in {summary.requests} requests answered 200",
        file=out,
    )
    for place in UNACCEPTED:
        count = getattr(summary, place.name)
        if count or place.name != "unreported":  # rarely any: said only when there are
            print(f"{place.words} {count}{_SUMMARY_NOTES.get(place.name, '')}", file=out)
    last = "finished" if summary.last_run_finished else "did not finish (killed, or still running)"
    print(f"runs {summary.runs}; the last (pid {summary.last_pid}) {last}", file=out)
    print(f"created {when(summary.created_at)}, updated {when(summary.updated_at)}", file=out)
    if summary.complete:
        print("complete: every id has an answer", file=out)
    else:
        print(f"to send on resume: {summary.to_send} ids (run the same push with --journal again)", file=out)


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
