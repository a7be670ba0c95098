"""``client.sendcloud``: the SendCloud integration's status, and pushing orders to SendCloud shipments."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import attrs

from .._batching import (
    DEFAULT_CHUNK_CONCURRENCY,
    Progress,
    PushStream,
    check_create_label,
    prepare_order_ids,
)
from .._chunk_size import CHUNK_SECONDS, Sizing
from .._converter import structure_response
from .._errors import ConfigurationError, UsageError, WemasyError
from .._journal import JournalPath, open_journal
from .._models import UNACCEPTED, PushResult, SendcloudIntegration
from .._protocol import decipher_response
from .._sender import Deadline, Sender
from .._telemetry import batch_attributes
from .._types import NOT_GIVEN, Timeout, checked_timeout
from ..budgets import Priority, checked_priority

__all__ = ["PUSH_PATH", "STATUS_PATH", "SendcloudResource"]


STATUS_PATH = "/services/webshop/v1/integrations/sendcloud/status"
PUSH_PATH = "/services/webshop/v1/orders/sendcloud/shipments/push"


class SendcloudResource:
    """The SendCloud endpoints, reached as ``client.sendcloud``."""

    def __init__(self, client: Sender) -> None:
        self._client = client

    async def status(self, *, timeout: Timeout = NOT_GIVEN, deadline: Deadline = NOT_GIVEN) -> SendcloudIntegration:
        """The webshop's SendCloud integration: whether it is active and connected.

        >>> integration = await client.sendcloud.status()
        >>> integration.active, integration.connected
        (True, True)
        """
        exchange = await self._client._send(
            "GET",
            STATUS_PATH,
            timeout=timeout,
            deadline_at=self._client.deadline_at(deadline),
            operation="sendcloud.status",
        )
        data = decipher_response(exchange.response)
        return structure_response(exchange.response, data, SendcloudIntegration, key="integration")

    async def push_shipments(  # noqa: PLR0913 (the public call's options, every one keyword-only)
        self,
        order_ids: Iterable[int],
        *,
        create_label: bool = False,
        chunk_size: int | None = None,
        max_concurrency: int = DEFAULT_CHUNK_CONCURRENCY,
        progress: Progress | None = None,
        strict: bool = False,
        timeout: Timeout = NOT_GIVEN,
        deadline: Deadline = NOT_GIVEN,
        journal: JournalPath | None = None,
        retry_rejected: bool = False,
        priority: Priority | None = None,
    ) -> PushResult:
        """Validate the orders and queue them for SendCloud shipments (labels too if ``create_label``).

        ``order_ids`` may be any iterable (a list, a range, a generator of a million). Every id must be a
        positive int; a bad one raises :class:`InvalidOrderIdError` naming it and its position, before any
        request is sent. Repeated ids are pushed once and listed in ``result.duplicates``. The ids go in
        chunks, ``max_concurrency`` at a time, through the token's shared rate-limit
        budget; the merged result sums the chunks' summaries and concatenates their details in input
        order. Every distinct id ends in exactly one place: the server's details (new, retry or skipped),
        ``result.rejected`` (with the server's validation message), ``result.failed`` (with the ids and
        the error of a request that failed after its retries) or ``result.not_sent``. A 401 or 403 would
        fail every request alike: the batch sends nothing more after the first and raises that error
        (:class:`AuthenticationError`, :class:`PermissionDeniedError`) with the batch's result so far in
        its ``.result``, the ids it never sent in ``.result.not_sent``. ``progress(done, total)`` is called as
        chunks complete. With ``strict=True`` any rejected or failed id raises :class:`PushFailedError`,
        which carries the full result.

        If the call is cancelled (``task.cancel()``, ``asyncio.timeout``), nothing more is sent and the
        batch's result so far goes with the exception: ``wemasy_async.partial_result(error)`` finds it (ids of
        requests under way in ``in_doubt``, the rest in ``not_sent``). :meth:`iter_push_shipments` hands out
        each chunk as it completes instead.

        A push is safe to repeat: the server reports an already-queued order as skipped. If a request was
        re-sent after a failure that may have reached the server, ``result.ambiguous_retry`` is True.

        ``journal="push.sqlite"`` records each chunk's outcome as it arrives; after a crash the same call
        sends only what the journal does not show as answered (rejected ids too with ``retry_rejected``) and
        returns the whole batch's result. A journal of another batch, one another process is writing, or a
        damaged file raises :class:`JournalError` before any request; one that cannot be written while the
        batch runs stops neither it nor its result: ``result.journal_error`` says why (docs/design/journal.md).

        ``priority`` is the class of the push's requests for the token's budget: by default (None) the
        client's (see ``with_options``), else ``"bulk"`` for a push of more than one chunk and
        ``"interactive"`` for one that fits in one. Bulk requests wait behind interactive calls (a web
        request's ``status()``) and leave them the slots they have been using lately, borrowing those only
        near the window's end, so a batch never holds a web call up for most of a window. The batch's last
        chunk goes as interactive, so that a batch alone ends as early as it would without classes.

        >>> result = await client.sendcloud.push_shipments(range(1001, 3001), create_label=True)
        >>> result.summary.new_orders, len(result.rejected), result.failed_order_ids
        (1998, 2, ())
        """
        options: dict[str, Any] = {
            "create_label": create_label,
            "chunk_size": chunk_size,
            "max_concurrency": max_concurrency,
            "progress": progress,
            "timeout": timeout,
            "deadline": deadline,
            "journal": journal,
            "retry_rejected": retry_rejected,
            "priority": priority,
        }
        telemetry = self._client._telemetry
        if telemetry is None:
            return await self._push_all(order_ids, strict=strict, **options)
        # The batch's span is current as its chunks' workers start: their attempts' spans are its children.
        with telemetry.call_span("sendcloud.push_shipments") as span:
            try:
                result = await self._push_all(order_ids, strict=strict, **options)
            except BaseException as exc:
                if span is not None:
                    span.set_attributes(batch_attributes(_counts(getattr(exc, "result", None))))
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.set_status(telemetry._trace.Status(telemetry._trace.StatusCode.ERROR))
                raise
            if span is not None:
                span.set_attributes(batch_attributes(_counts(result)))
            return result

    async def _push_all(self, order_ids: Iterable[int], *, strict: bool, **options: Any) -> PushResult:
        """push_shipments' batch: every chunk streamed, the results merged."""
        stream = self.iter_push_shipments(order_ids, **options)
        try:
            async with stream:
                async for _ in stream:
                    pass
        except asyncio.CancelledError as cancelled:
            # Cancelled (task.cancel(), asyncio.timeout): the stream has stopped sending; what the batch did
            # goes with the CancelledError, so no id is lost (asyncio.timeout's TimeoutError has it as cause).
            cancelled.result = stream.result()  # type: ignore[attr-defined]
            raise
        result = stream.result()
        if not stream.total:
            result = attrs.evolve(result, message="no order ids given")
        if stream.stopped_by is not None:
            raise _stopped(stream.stopped_by, result)
        return result.raise_for_failures() if strict else result

    def iter_push_shipments(  # noqa: PLR0913 (the public call's options, every one keyword-only)
        self,
        order_ids: Iterable[int],
        *,
        create_label: bool = False,
        chunk_size: int | None = None,
        max_concurrency: int = DEFAULT_CHUNK_CONCURRENCY,
        progress: Progress | None = None,
        timeout: Timeout = NOT_GIVEN,
        deadline: Deadline = NOT_GIVEN,
        journal: JournalPath | None = None,
        retry_rejected: bool = False,
        priority: Priority | None = None,
    ) -> PushStream:
        """Like :meth:`push_shipments`, but yields each chunk's result as it completes, so a batch script
        can show progress and a web service can stop early. The ids are checked here, before any request.

        >>> async with client.sendcloud.iter_push_shipments(ids) as stream:
        ...     async for chunk in stream:
        ...         print(f"{stream.done}/{stream.total}", chunk.summary)
        ...     merged = stream.result()

        Leaving the ``async with`` (or calling ``aclose()``) after breaking out cancels the chunks not yet
        sent and waits until nothing is left running.
        """
        ids, duplicates = prepare_order_ids(order_ids)
        label = check_create_label(create_label)
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
        ):
            raise UsageError(f"chunk_size must be a positive int or None (learned), got {chunk_size!r}")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise UsageError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        try:
            chosen = checked_priority(priority) or self._client.priority
        except ConfigurationError as error:
            raise UsageError(str(error)) from None
        if timeout is not NOT_GIVEN:
            checked_timeout(timeout)  # a bad one is refused here, not by each chunk

        deadline_at = self._client.deadline_at(deadline)
        sizing = Sizing(
            self._client.chunk_sizer,
            chunk_size,
            _answer_bound(self._client.timeout, timeout),
            self._client.share_chunk_sizes,
        )
        # The last chunk of a batch whose class was left to the SDK goes as interactive (see push_once).
        promote_last = chosen is None
        if chosen is None:
            chosen = "bulk" if len(ids) > sizing.least() else "interactive"
        # A bisection probe (see _batching) is sent once: its answer is the point. A 429 is no answer about
        # the ids: the probe waits for the budget and goes again, as the client's other calls do.
        probe = attrs.evolve(self._client.retry, max_attempts=1)

        async def push_once(
            chunk: list[int], *, retry: bool = True, on_sent: Callable[[], None] | None = None, final: bool = False
        ) -> PushResult:
            exchange = await self._client._send(
                "POST",
                PUSH_PATH,
                json_body={"create_label": label, "order_ids": chunk},
                timeout=timeout,
                deadline_at=deadline_at,
                retry=None if retry else probe,
                on_sent=on_sent,
                # The last chunk takes a slot kept for interactive calls at once: no later bulk request of this
                # batch would use it, and waiting for the window's end would only make the batch later.
                priority="interactive" if final and promote_last else chosen,
                operation="sendcloud.push_shipments",
            )
            data = decipher_response(exchange.response)
            result = structure_response(exchange.response, data, PushResult)
            return attrs.evolve(result, ambiguous_retry=exchange.ambiguous_retry, requests=1)

        return PushStream(
            ids,
            duplicates,
            push_once,
            sizing=sizing,
            max_concurrency=max_concurrency,
            progress=progress,
            # A request that is not retried says little about the server when it fails once.
            stop_when_unreachable=self._client.retry.max_attempts > 1,
            # Opened last: every argument is checked before the file is touched.
            journal=open_journal(
                journal,
                ids,
                self._client,
                chunk_size=sizing.peek(),
                create_label=label,
                retry_rejected=retry_rejected,
            ),
        )


def _counts(result: PushResult | None) -> dict[str, int]:
    """A batch's ids by outcome (the server's counts, and each place but accepted), for its span."""
    if result is None:
        return {}
    summary = result.summary
    counts = {
        "total_orders": summary.total_orders,
        "new_orders": summary.new_orders,
        "retry_orders": summary.retry_orders,
        "skipped_orders": summary.skipped_orders,
        "duplicates": len(result.duplicates),
        "requests": result.requests,
    }
    counts.update((place.name, len(result.ids_in(place.name))) for place in UNACCEPTED)
    return counts


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _answer_bound(client_timeout: float | aiohttp.ClientTimeout | None, timeout: Timeout) -> float:
    """The longest answer a learned chunk size may grow on: a few seconds, and well inside the call's
    timeout (a quarter of it), so that a larger request never runs into it."""
    chosen = client_timeout if timeout is NOT_GIVEN else timeout
    total = chosen.total if isinstance(chosen, aiohttp.ClientTimeout) else chosen
    return CHUNK_SECONDS if total is None else min(CHUNK_SECONDS, total / 4)


def _stopped(error: WemasyError, result: PushResult) -> WemasyError:
    """The error that stopped a batch (a 401 or 403, a closed client, a server out of reach: each would fail
    every request alike), carrying what the batch did; raised as itself, so ``except AuthenticationError``
    works."""
    error.result = result
    if result.journal_error and sys.version_info >= (3, 11):  # beside the error, in its traceback
        error.add_note(f"and the journal: {result.journal_error}")
    return error
