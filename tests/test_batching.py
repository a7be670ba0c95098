"""Batch pushes: validation, de-duplication, chunking, splitting, merging, and an account of every id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOKEN
from tests.helpers import assert_every_id_accounted_once, push_journals_on
from wemasy_async import (
    NO_RETRIES,
    APIConnectionError,
    AuthenticationError,
    ChunkFailure,
    ClientClosedError,
    ConfigurationError,
    InvalidOrderIdError,
    OrderRejection,
    PermissionDeniedError,
    PushDetails,
    PushFailedError,
    PushResult,
    PushSummary,
    RetryPolicy,
    ServerError,
    ValidationError,
    WemasyClient,
    partial_result,
    read_journal,
)
from wemasy_async._batching import BatchState, PushStream, merge_results, prepare_order_ids, push_chunk
from wemasy_async._chunk_size import Sizing
from wemasy_async._journal._writer import DISK
from wemasy_async._outcomes import places_json
from wemasy_async.testing import CannedResponse, Fault, WemasyEmulator

#: The ``on_sent`` of a fake ``push_once``.
Sent = Callable[[], None] | None


# --- pure parts ----------------------------------------------------------------------------------


def test_repeated_ids_are_pushed_once_and_reported() -> None:
    """The first occurrence stays in place; each later one is listed as a duplicate."""
    assert prepare_order_ids(iter([5, 1, 5, 2, 1, 5])) == ([5, 1, 2], [5, 1, 5])


def test_merge_sums_summaries_and_concatenates_details_in_order() -> None:
    """The merged result is the sum of the chunks' counts and their details one after the other."""

    def chunk(new: tuple[str, ...], skipped: tuple[str, ...]) -> PushResult:
        return PushResult(
            summary=PushSummary(len(new) + len(skipped), len(new), 0, len(skipped), len(new)),
            details=PushDetails(new_orders=new, skipped_orders=skipped),
            total_chunks=1,
            labels_will_be_created="no",
            requests=1,
        )

    merged = merge_results([chunk(("1", "2"), ("3",)), chunk(("4",), ())], duplicates=[2])
    assert merged.summary == PushSummary(4, 3, 0, 1, 3)
    assert merged.details.new_orders == ("1", "2", "4")
    assert (merged.total_chunks, merged.requests, merged.duplicates) == (2, 2, (2,))
    assert merged.labels_will_be_created == "no"


# --- against the emulator ------------------------------------------------------------------------


async def test_large_input_goes_in_chunks_and_merges_in_input_order(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """2,345 ids from a generator, in chunks of 500: five requests, details in input order."""
    wemasy_emulator.failed_order_ids = {7, 1999}
    ids = list(range(1, 2346))
    result = await client.sendcloud.push_shipments((i for i in ids), chunk_size=500, max_concurrency=3)
    assert result.requests == 5
    assert wemasy_emulator.requests[0].order_ids == tuple(range(1, 501))
    assert [int(x) for x in result.details.new_orders] == [i for i in ids if i not in (7, 1999)]
    assert result.details.retry_orders == ("7", "1999")
    assert result.summary.total_orders == 2345
    assert result.ok
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_duplicates_are_pushed_once(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """Repeated ids reach the server once and are listed on the result."""
    result = await client.sendcloud.push_shipments([3, 1, 3, 2, 1])
    assert result.duplicates == (3, 1)
    assert wemasy_emulator.queued == [3, 1, 2]
    assert_every_id_accounted_once(result, [3, 1, 2], wemasy_emulator)


@pytest.mark.wemasy_emulator(unknown_order_ids={20, 40})
async def test_ids_named_by_a_422_are_rejected_and_the_rest_re_sent(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """order_ids.N errors move those ids to rejected with the server's message; the others go through."""
    ids = [10, 20, 30, 40, 50]
    result = await client.sendcloud.push_shipments(ids)
    assert [(r.order_id, r.message) for r in result.rejected] == [
        (20, "The selected order_ids.1 is invalid."),
        (40, "The selected order_ids.3 is invalid."),
    ]
    assert wemasy_emulator.queued == [10, 30, 50]
    assert [r.status for r in wemasy_emulator.requests] == [422, 200]
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


@pytest.mark.wemasy_emulator(max_ids_per_request=3)
async def test_a_whole_request_422_splits_the_chunk(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """Too many ids for the server: the chunk is halved until every piece goes through."""
    ids = list(range(1, 26))
    result = await client.sendcloud.push_shipments(ids, chunk_size=10)
    assert result.ok
    assert [int(x) for x in result.details.new_orders] == ids
    assert all(len(r.order_ids or ()) <= 3 for r in wemasy_emulator.requests if r.status == 200)
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


@pytest.mark.wemasy_emulator(max_ids_per_request=300)
async def test_the_servers_maximum_is_learned_once_for_the_whole_batch(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A server taking at most 300 ids, chunks of 500: one 422 teaches the batch the server's number (from
    its message), and every later chunk is cut at 300, without another 422 (not 300 + 200 per 500)."""
    ids = list(range(1, 3001))
    result = await client.sendcloud.push_shipments(ids, chunk_size=500, max_concurrency=1)
    assert result.ok
    statuses = [r.status for r in wemasy_emulator.requests]
    assert statuses.count(422) == 1
    sizes = [len(r.order_ids or ()) for r in wemasy_emulator.requests if r.status == 200]
    assert sizes == [300, 200] + [300] * 8 + [100]  # the first chunk in two parts, then chunks of 300
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_a_422_without_field_errors_fails_its_chunk_without_splitting(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """The documented {"error": true, "message"} 422 is a business rule, not a size problem: one request,
    the chunk's ids failed with the server's message (not 2n-1 requests of halving)."""
    wemasy_emulator.inject(CannedResponse(422, {"error": True, "message": "The webshop has no SendCloud account."}))
    ids = list(range(1, 501))
    result = await client.sendcloud.push_shipments(ids)
    assert len(wemasy_emulator.requests) == 1
    assert result.failed_order_ids == tuple(ids)
    assert "no SendCloud account" in str(result.failed[0].error)


@pytest.mark.wemasy_emulator(max_body_bytes=60)
async def test_a_413_splits_the_chunk(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A body too large for the server is halved, as a whole-request 422 is."""
    ids = list(range(100, 120))
    result = await client.sendcloud.push_shipments(ids)
    assert result.ok
    assert 413 in [r.status for r in wemasy_emulator.requests]
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_a_chunk_that_keeps_failing_keeps_its_ids_and_cause(wemasy_emulator: WemasyEmulator) -> None:
    """A chunk whose request fails after its retries lands in failed with its ids and the error."""
    wemasy_emulator.inject(Fault.SERVER_ERROR, Fault.SERVER_ERROR)  # both attempts of the first chunk
    async with WemasyClient(
        token=TOKEN, base_url=wemasy_emulator.base_url, retry=RetryPolicy(max_attempts=2, backoff_base=0)
    ) as client:
        result = await client.sendcloud.push_shipments(range(1, 8), chunk_size=3, max_concurrency=1)
    (failure,) = result.failed
    assert failure.order_ids == (1, 2, 3)
    assert isinstance(failure.error, ServerError)
    assert wemasy_emulator.queued == [4, 5, 6, 7]
    assert not result.ok
    assert_every_id_accounted_once(result, range(1, 8), wemasy_emulator)


async def test_strict_raises_one_error_carrying_the_whole_result(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """strict=True turns failures into PushFailedError; its result still names every id and cause."""
    wemasy_emulator.faults.server_error_rate = 1.0
    with pytest.raises(PushFailedError) as info:
        await client.sendcloud.push_shipments([1, 2, 3], chunk_size=2, strict=True)
    result = info.value.result
    assert result.failed_order_ids == (1, 2, 3)
    assert all(isinstance(f.error, ServerError) for f in result.failed)
    assert "3 failed" in str(info.value)


@pytest.mark.wemasy_emulator(valid_tokens={"another-token"})
async def test_a_refused_token_stops_the_batch_after_the_first_answer(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A 401 would fail every request alike: nothing more is sent, and the error itself reaches the
    caller, carrying the batch's result: the refused ids failed, the rest not sent."""
    ids = list(range(1, 21))
    with pytest.raises(AuthenticationError) as info:
        await client.sendcloud.push_shipments(ids, chunk_size=2, max_concurrency=1)
    assert [r.status for r in wemasy_emulator.requests] == [401]
    result = info.value.result
    assert result.failed_order_ids == (1, 2)
    assert result.not_sent == tuple(range(3, 21))
    assert result.retry_order_ids == tuple(ids)
    assert not result.ok
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_a_token_revoked_mid_batch_stops_it_and_loses_no_id(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """The token is revoked after the first chunks: what was queued stays queued, the requests that met
    the 403 failed, and the rest were never sent; each id in one place, and few requests spent."""
    ids = list(range(1, 201))

    def revoke_after_two_chunks(done: int, total: int) -> None:
        if done >= 20:
            wemasy_emulator.forbidden_tokens.add(TOKEN)

    with pytest.raises(PermissionDeniedError) as info:
        await client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=2, progress=revoke_after_two_chunks)
    result = info.value.result
    statuses = [r.status for r in wemasy_emulator.requests]
    assert statuses.count(403) <= 2  # the requests in flight when the first 403 came, no more
    assert len(statuses) <= 6
    assert result.summary.total_orders >= 20
    assert result.not_sent
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_progress_reports_ids_done_of_total(client: WemasyClient) -> None:
    """progress(done, total) is called per chunk, rising to the total."""
    seen: list[tuple[int, int]] = []
    await client.sendcloud.push_shipments(range(1, 11), chunk_size=3, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 4
    assert [t for _, t in seen] == [10] * 4
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (10, 10)


async def test_leaving_the_stream_early_cancels_the_rest_and_keeps_what_arrived(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A caller that stops after the first chunk leaves nothing running; the partial result is there."""
    wemasy_emulator.faults.delay_seconds = 0.05
    async with client.sendcloud.iter_push_shipments(range(1, 101), chunk_size=10, max_concurrency=2) as stream:
        first = await anext(stream)
    assert all(worker.done() for worker in stream._workers)  # no task of the stream can send any more
    partial = stream.result()
    assert partial.summary.total_orders >= first.summary.total_orders == 10
    assert stream.done == 10
    assert 0 < len(wemasy_emulator.queued) <= 30  # the first chunk and at most the two then in flight
    # Nothing lost: chunks answered but not read are in the result, those under way in doubt, the rest
    # not sent; and the server queued nothing the result does not account for.
    accepted = [int(x) for x in partial.details.new_orders]
    assert sorted(accepted + list(partial.in_doubt) + list(partial.not_sent)) == list(range(1, 101))
    assert set(wemasy_emulator.queued) <= set(accepted) | set(partial.in_doubt)
    assert not partial.ok


async def test_breaking_out_of_a_bare_async_for_cancels_the_rest(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """Without async with, breaking out and dropping the stream still stops the chunks not yet sent."""
    wemasy_emulator.faults.delay_seconds = 0.05

    async def first_chunk_only() -> tuple[PushResult, list[asyncio.Future[None]]]:
        stream = client.sendcloud.iter_push_shipments(range(1, 101), chunk_size=10, max_concurrency=2)
        workers = list(stream._workers)
        async for chunk in stream:
            return chunk, workers  # breaks out; the stream is dropped here
        raise AssertionError("the stream yielded nothing")

    chunk, workers = await first_chunk_only()
    await asyncio.gather(*workers, return_exceptions=True)  # they end: cancelled, not run to the last chunk
    assert all(w.cancelled() for w in workers)
    assert chunk.summary.total_orders == 10
    assert len(wemasy_emulator.queued) <= 30


async def test_cancelling_a_push_leaves_nothing_running(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A caller that cancels push_shipments mid-batch leaves no task of it behind."""
    wemasy_emulator.faults.delay_seconds = 0.05
    before = asyncio.all_tasks()
    push = asyncio.create_task(client.sendcloud.push_shipments(range(1, 201), chunk_size=10, max_concurrency=3))
    assert await asyncio.to_thread(wemasy_emulator.wait_for_active)
    push.cancel()
    with pytest.raises(asyncio.CancelledError):
        await push
    assert asyncio.all_tasks() - before == set()
    assert len(wemasy_emulator.requests) < 20


async def test_a_cancelled_push_hands_its_result_to_the_caller(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """push_shipments cancelled mid-batch raises CancelledError carrying what the batch did: the chunks
    answered, the ids under way in doubt, the rest not sent; every id in one place."""
    ids = list(range(1, 201))
    pushed = asyncio.Event()

    def hold_after_the_first_chunk(done: int, total: int) -> None:
        wemasy_emulator.faults.delay_seconds = 30  # the next requests stay in flight
        pushed.set()

    push = asyncio.create_task(
        client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=2, progress=hold_after_the_first_chunk)
    )
    await pushed.wait()
    assert await asyncio.to_thread(wemasy_emulator.wait_for_active)
    push.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await push
    result = partial_result(info.value)  # Python 3.10 hands over a new CancelledError, the one with it inside
    assert result is not None
    assert result.summary.total_orders >= 10
    assert len(result.in_doubt) in (10, 20)  # the requests held by the server (the budget may allow one)
    assert len(result.not_sent) >= 100
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_a_push_timed_out_by_wait_for_keeps_its_result_on_the_cause(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """Under asyncio.wait_for (or asyncio.timeout) the TimeoutError's cause is the CancelledError with the
    result: whenever the timeout strikes, every id is in one place."""
    wemasy_emulator.faults.delay_seconds = 30
    ids = list(range(1, 101))
    with pytest.raises(asyncio.TimeoutError) as info:
        await asyncio.wait_for(client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=2), 0.2)
    result = partial_result(info.value)
    assert result is not None
    assert len(result.in_doubt) + len(result.not_sent) == 100
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


@pytest.mark.parametrize("journaled", [False, True], ids=["no journal", "journal"])
@pytest.mark.parametrize("steps", [1, 2, 3])
async def test_a_second_cancel_while_the_push_closes_loses_no_id(
    client: WemasyClient,
    wemasy_emulator: WemasyEmulator,
    steps: int,
    journaled: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled again while it is stopping its requests (a second Ctrl-C), the push still accounts for
    every id: those under way in doubt, the others not sent. A journal closes behind it (lock released, run
    marked finished) with those ids unanswered, and a resume sends them and completes the batch."""
    opened = push_journals_on(monkeypatch, DISK)
    journal = tmp_path / "push.sqlite" if journaled else None
    wemasy_emulator.faults.delay_seconds = 30
    ids = list(range(1, 101))
    push = asyncio.create_task(client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=2, journal=journal))
    assert await asyncio.to_thread(wemasy_emulator.wait_for_active)
    push.cancel()
    for _ in range(steps):
        await asyncio.sleep(0)
    push.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await push
    result = partial_result(info.value)
    assert result is not None
    assert len(result.in_doubt) + len(result.not_sent) == 100
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    if journal is None:
        assert not opened
        return
    # The stream asked its journal to close without waiting for it; its thread ends once it has.
    assert [j._closing for j in opened] == [True]
    await asyncio.to_thread(opened[0]._writer.join)
    summary = read_journal(journal)
    assert summary.last_run_finished
    assert (summary.accepted, summary.to_send) == (0, 100)
    wemasy_emulator.faults.delay_seconds = 0
    again = await client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=2, journal=journal)
    assert_every_id_accounted_once(again, ids, wemasy_emulator)
    assert not again.in_doubt
    assert not again.not_sent
    assert read_journal(journal).complete


async def test_a_closed_stream_ends_instead_of_waiting(client: WemasyClient) -> None:
    """Iterating a stream after aclose() ends at once, as a closed async generator does (no endless wait)."""
    stream = client.sendcloud.iter_push_shipments(range(1, 101), chunk_size=10)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    await stream.aclose()  # twice is harmless
    assert len(stream.result().not_sent) + len(stream.result().in_doubt) == 100


def test_partial_result_follows_the_chain_of_errors() -> None:
    """The result is found on the error, its cause or its context, or not at all."""
    result = PushResult(summary=PushSummary(0, 0, 0, 0, 0), details=PushDetails(), not_sent=(1,))
    inner = asyncio.CancelledError()
    inner.result = result  # type: ignore[attr-defined]
    outer = TimeoutError()
    outer.__cause__ = inner
    context = asyncio.CancelledError()
    context.__context__ = inner
    assert partial_result(outer) is result
    assert partial_result(context) is result
    assert partial_result(ValueError()) is None


async def test_a_restart_inside_a_batch_is_ridden_out(wemasy_emulator: WemasyEmulator) -> None:
    """The server goes down between chunks and comes back within the retries' span: nothing fails, nothing
    is queued twice, the batch carries on."""
    policy = RetryPolicy(max_attempts=4, backoff_base=0.1, ride_out=0.5)  # the ceilings add up to 0.7 s
    assert policy.span() == 0.5
    ids = list(range(1, 201))
    emulator = WemasyEmulator()
    restarts: list[asyncio.Task[None]] = []

    def restart_once(done: int, total: int) -> None:
        if not restarts:
            restarts.append(asyncio.create_task(emulator.restart(down_for=0.2)))

    async with emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, retry=policy) as client:
            result = await client.sendcloud.push_shipments(ids, chunk_size=20, max_concurrency=2, progress=restart_once)
        await restarts[0]
    assert emulator.restarts == 1
    assert result.ok
    assert result.summary.total_orders == 200
    assert_every_id_accounted_once(result, ids, emulator)


async def test_a_bad_timeout_is_refused_once_before_any_request(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A per-call option the client refuses is the caller's mistake: raised at the call, not recorded as a
    failure of every chunk."""
    with pytest.raises(ConfigurationError, match="timeout"):
        await client.sendcloud.push_shipments(range(1, 1001), timeout="30")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        client.sendcloud.iter_push_shipments([1, 2], timeout=-1)
    assert wemasy_emulator.requests == []


async def test_bad_ids_are_refused_before_the_stream_starts(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """iter_push_shipments checks every id when called, before any request."""
    with pytest.raises(InvalidOrderIdError, match="position 3"):
        client.sendcloud.iter_push_shipments([1, 2, 3, 0])
    assert wemasy_emulator.requests == []


async def test_an_id_too_long_for_json_is_refused_before_any_request(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """An id of more than 4,300 digits cannot be written as JSON: refused up front like any bad id, not
    after the chunks before it were queued."""
    ids = [*range(1, 1001), 10**4300]
    with pytest.raises(InvalidOrderIdError, match=r"position 1000.*4,300 digits"):
        await client.sendcloud.push_shipments(ids)
    assert wemasy_emulator.requests == []
    assert prepare_order_ids([10**4300 - 1]) == ([10**4300 - 1], [])  # 4,300 digits still go


async def test_a_send_once_client_still_accounts_for_everything(wemasy_emulator: WemasyEmulator) -> None:
    """With no retries, a dropped request's ids end in failed, and the rest are accepted."""
    wemasy_emulator.inject(Fault.DROP)
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES) as client:
        result = await client.sendcloud.push_shipments(range(1, 7), chunk_size=2, max_concurrency=1)
    assert result.failed_order_ids == (1, 2)
    assert_every_id_accounted_once(result, range(1, 7), wemasy_emulator)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.integers(1, 60), max_size=80),
    chunk_size=st.integers(1, 25),
    max_ids=st.integers(1, 30),
    unknown=st.sets(st.integers(1, 60), max_size=8),
    failed_before=st.sets(st.integers(1, 60), max_size=8),
    error_rate=st.sampled_from([0.0, 0.1, 0.3]),
    drop_rate=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 1000),
)
def test_every_id_ends_in_exactly_one_place(
    ids: list[int],
    chunk_size: int,
    max_ids: int,
    unknown: set[int],
    failed_before: set[int],
    error_rate: float,
    drop_rate: float,
    seed: int,
) -> None:
    """Whatever the ids, chunking, server limits, validation failures and faults: each distinct id is
    accepted, rejected or failed, once; the emulator queued each accepted new or retry id exactly once,
    and no rejected id."""

    async def scenario() -> tuple[PushResult, WemasyEmulator]:
        emulator = WemasyEmulator(
            limit=100_000,
            max_ids_per_request=max_ids,
            unknown_order_ids=unknown,
            failed_order_ids=failed_before,
            seed=seed,
        )
        emulator.faults.server_error_rate = error_rate
        emulator.faults.drop_rate = drop_rate
        async with (
            emulator,
            WemasyClient(
                token=TOKEN, base_url=emulator.base_url, retry=RetryPolicy(max_attempts=2, backoff_base=0)
            ) as client,
        ):
            try:
                result = await client.sendcloud.push_shipments(ids, chunk_size=chunk_size, max_concurrency=3)
            except APIConnectionError as stopped:
                # A request dropped through its retries while nothing else was answered stops the batch;
                # the accounting must hold for what it carries all the same.
                result = stopped.result  # a PushResult; None would fail the accounting below
        return result, emulator

    result, emulator = asyncio.run(scenario())
    assert_every_id_accounted_once(result, ids, emulator)
    assert {r.order_id for r in result.rejected} <= unknown
    assert result.duplicates == tuple(x for i, x in enumerate(ids) if x in ids[:i])
    for order_id in result.details.retry_orders:
        assert int(order_id) in failed_before
    # No fault here acts after the server did its work, so what it queued is exactly what it reported.
    assert sorted(emulator.queued) == sorted(int(x) for x in (*result.details.new_orders, *result.details.retry_orders))


async def test_a_batch_keeps_each_responses_json_with_its_chunk_not_in_the_result(client: WemasyClient) -> None:
    """A million ids are 2,000 responses: the merged result does not hold them all; each chunk result
    the stream yields has its own response's JSON, and a one-chunk push keeps it in its result."""
    async with client.sendcloud.iter_push_shipments(range(1, 11), chunk_size=5) as stream:
        chunks = [chunk async for chunk in stream]
    assert all(chunk.raw["summary"]["total_orders"] == 5 for chunk in chunks)
    assert stream.result().raw == {}
    single = await client.sendcloud.push_shipments(range(11, 14))
    assert single.raw["summary"]["total_orders"] == 3


@pytest.mark.parametrize("spelled", ["\u00b2", "9" * 5000, "\u0663"])
async def test_an_id_the_server_spells_oddly_is_unreported_not_an_exception(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, spelled: str
) -> None:
    """A 200 whose details hold "²" or 5,000 digits: the batch goes on, and the id sent that the answer
    does not name is reported as such, not lost and not a raw ValueError."""
    wemasy_emulator.inject(
        CannedResponse(
            200,
            {
                "error": False,
                "message": "queued",
                "summary": {
                    "total_orders": 1,
                    "new_orders": 1,
                    "retry_orders": 0,
                    "skipped_orders": 0,
                    "queued_orders": 1,
                },
                "details": {"new_orders": [spelled], "retry_orders": [], "skipped_orders": [], "queued_orders": []},
                "total_chunks": 1,
                "labels_will_be_created": "no",
            },
        )
    )
    result = await client.sendcloud.push_shipments([7, 8], chunk_size=1)
    assert result.unreported == (7,)
    assert result.details.new_orders[-1] == "8"
    assert not result.ok  # an id the answer did not name is not known to be accepted
    assert result.retry_order_ids == (7,)
    with pytest.raises(PushFailedError, match="1 unreported"):
        result.raise_for_failures()


async def test_a_422_keyed_by_an_odd_index_fails_its_chunk_with_the_message(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A 422 naming "order_ids.²" is no index the batch can act on: the chunk fails with the message."""
    wemasy_emulator.inject(CannedResponse(422, {"message": "odd", "errors": {"order_ids.\u00b2": ["odd"]}}))
    result = await client.sendcloud.push_shipments([1, 2])
    assert result.failed_order_ids == (1, 2)
    assert len(wemasy_emulator.requests) == 1


async def test_closing_the_client_mid_batch_stops_it_and_loses_no_id(wemasy_emulator: WemasyEmulator) -> None:
    """close() while a push is under way: no raw "Session is closed"; the batch stops with
    ClientClosedError carrying its result, and every id is in one place."""
    wemasy_emulator.faults.delay_seconds = 0.3
    ids = list(range(1, 41))
    client = WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES)
    task = asyncio.create_task(client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=1))
    assert await asyncio.to_thread(wemasy_emulator.wait_for_active)
    await client.close()
    with pytest.raises(ClientClosedError) as info:
        await task
    result = info.value.result
    assert result.not_sent
    assert set(result.retry_order_ids) | {int(x) for x in result.details.new_orders} == set(ids)


async def test_a_server_that_cannot_be_reached_stops_the_batch(wemasy_emulator: WemasyEmulator) -> None:
    """Every connection dropped: once one request's retries got no answer, and no other request got one
    meanwhile, nothing more is sent (not every chunk's retries), and the error carries the result."""
    wemasy_emulator.faults.drop_rate = 1.0
    policy = RetryPolicy(max_attempts=3, backoff_base=0.001)
    ids = list(range(1, 101))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=policy) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.sendcloud.push_shipments(ids, chunk_size=10, max_concurrency=1)
    assert len(wemasy_emulator.requests) == 3  # one request and its retries
    result = info.value.result
    assert result.failed_order_ids == tuple(range(1, 11))
    assert result.not_sent == tuple(range(11, 101))


async def test_a_poison_order_is_isolated_and_the_good_ones_are_queued(wemasy_emulator: WemasyEmulator) -> None:
    """One order makes the server answer 500 for any request holding it: its chunk is halved (each half
    sent once) until that id alone fails; the other 499 are queued, for about 2 log2(500) requests."""
    wemasy_emulator.poison_order_ids = {777}
    policy = RetryPolicy(max_attempts=2, backoff_base=0.001)
    ids = list(range(1, 1001))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=policy) as client:
        result = await client.sendcloud.push_shipments(ids, chunk_size=500, max_concurrency=1)
    assert result.failed_order_ids == (777,)
    assert sorted(wemasy_emulator.queued) == [i for i in ids if i != 777]
    statuses = [r.status for r in wemasy_emulator.requests]
    assert statuses.count(500) <= 2 + 9  # the chunk and its retry, then one half per level
    assert len(statuses) <= 1 + 2 + 2 * 9  # the good chunk, the poisoned one, two probes per level
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_a_probe_that_meets_a_429_waits_for_the_window_like_any_call(wemasy_emulator: WemasyEmulator) -> None:
    """A bisection probe is sent once, but a 429 is not a failure: it waits for the budget and goes again,
    so only the poison id fails, not the half the 429 met."""
    wemasy_emulator.poison_order_ids = {11}
    throttled = CannedResponse(429, {"error": True, "message": "Too Many Attempts."}, {"Retry-After": "0"})

    def after_the_good_chunk(done: int, total: int) -> None:
        # The poisoned chunk and its retry (500), then a 429 for the first probe.
        if done == 8:
            wemasy_emulator.inject(Fault.SERVER_ERROR, Fault.SERVER_ERROR, throttled)

    policy = RetryPolicy(max_attempts=2, backoff_base=0.001)
    ids = list(range(1, 17))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=policy) as client:
        result = await client.sendcloud.push_shipments(
            ids, chunk_size=8, max_concurrency=1, progress=after_the_good_chunk
        )
    assert 429 in [r.status for r in wemasy_emulator.requests]
    assert result.failed_order_ids == (11,)
    assert sorted(wemasy_emulator.queued) == [i for i in ids if i != 11]


@pytest.mark.wemasy_emulator(limit=100_000)
async def test_the_bisection_budget_grows_with_the_batch(wemasy_emulator: WemasyEmulator) -> None:
    """A batch may spend a tenth of its chunks' requests isolating poison ids (at least 64): 1,000 chunks
    of 8 with 14 poison ids need 84 probes, and every poison id, and only they, fail."""
    poison = {8 * k + 5 for k in range(10, 1000, 70)}
    assert len(poison) == 15
    poison.discard(max(poison))
    wemasy_emulator.poison_order_ids = poison
    policy = RetryPolicy(max_attempts=2, backoff_base=0.001)
    ids = list(range(1, 8001))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=policy) as client:
        result = await client.sendcloud.push_shipments(ids, chunk_size=8, max_concurrency=4)
    assert set(result.failed_order_ids) == poison
    probes = len(wemasy_emulator.requests) - 1000 - len(poison)  # each chunk once, a poisoned one twice
    assert 64 < probes <= 100
    assert_every_id_accounted_once(result, ids, wemasy_emulator)


async def test_no_bisection_while_the_server_fails_everything(wemasy_emulator: WemasyEmulator) -> None:
    """A server answering 500 to every push is not hiding a poison order: nothing is halved, each chunk
    fails once its retries are spent."""
    wemasy_emulator.faults.server_error_rate = 1.0
    policy = RetryPolicy(max_attempts=2, backoff_base=0.001)
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=policy) as client:
        result = await client.sendcloud.push_shipments(range(1, 301), chunk_size=100, max_concurrency=1)
    assert len(wemasy_emulator.requests) == 3 * 2
    assert result.failed_order_ids == tuple(range(1, 301))


async def test_a_failed_chunk_keeps_an_excerpt_of_the_error_page(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A proxy's 2 MB error page is not kept whole for every failed chunk: an excerpt and its length."""
    wemasy_emulator.inject(CannedResponse(500, {"message": "x" * 2_000_000}))
    result = await client.sendcloud.push_shipments([1, 2])
    (failure,) = result.failed
    assert isinstance(failure.error, ServerError)
    assert len(failure.error.raw_text) < 5000
    assert "characters in all" in failure.error.raw_text


def _fake_422(message: str) -> ValidationError:
    return ValidationError(
        "too many", errors={"order_ids": (message,)}, status_code=422, body=None, raw_text="", headers=None
    )


async def test_a_server_maximum_of_0_fails_the_piece_instead_of_looping() -> None:
    """ "must not have more than 0 items": no size goes through, so the ids fail, after one request."""
    sent: list[list[int]] = []

    async def push_once(
        ids: list[int], /, *, retry: bool = True, on_sent: Sent = None, final: bool = False
    ) -> PushResult:
        sent.append(ids)
        raise _fake_422("The order_ids field must not have more than 0 items.")

    result = await push_chunk([1, 2, 3], push_once)
    assert len(sent) == 1
    assert result.failed_order_ids == (1, 2, 3)


async def test_a_probe_without_an_answer_does_not_stop_the_batch() -> None:
    """A bisection probe is sent once: a dropped one fails its half, not the whole batch."""
    batch = BatchState(last_chunk_ok=True)

    async def push_once(
        ids: list[int], /, *, retry: bool = True, on_sent: Sent = None, final: bool = False
    ) -> PushResult:
        if retry:
            raise ServerError("boom", status_code=500, body=None, raw_text="", headers=None)
        raise APIConnectionError("reset", method="POST", url="u")

    result = await push_chunk([1, 2, 3, 4], push_once, batch)
    assert batch.stopped_by is None
    assert result.failed_order_ids == (1, 2, 3, 4)


async def test_a_stream_left_mid_chunk_keeps_what_the_chunk_already_learned() -> None:
    """Rejected before the stream was left: still rejected, with the message; only the piece under way
    is in doubt."""
    started = asyncio.Event()

    async def push_once(
        ids: list[int], /, *, retry: bool = True, on_sent: Sent = None, final: bool = False
    ) -> PushResult:
        if 1 in ids:
            raise ValidationError(
                "bad", errors={"order_ids.0": ("gone",)}, status_code=422, body=None, raw_text="", headers=None
            )
        if on_sent is not None:
            on_sent()  # written to the wire
        started.set()
        await asyncio.Event().wait()  # under way until the stream is left
        raise AssertionError("unreachable")

    stream = PushStream([1, 2, 3, 4], [], push_once, sizing=Sizing(ceiling=4), max_concurrency=1, progress=None)
    await started.wait()
    await stream.aclose()
    result = stream.result()
    assert [r.order_id for r in result.rejected] == [1]
    assert result.in_doubt == (2, 3, 4)


async def test_a_stream_left_counts_in_doubt_only_what_was_written_to_the_wire() -> None:
    """Left while one chunk's request is on the wire and another's still waits for the budget: the first
    is in doubt (the server may have it), the second was never sent, as the chunks never begun."""
    both_waiting = asyncio.Event()
    waiting = 0

    async def push_once(
        ids: list[int], /, *, retry: bool = True, on_sent: Sent = None, final: bool = False
    ) -> PushResult:
        nonlocal waiting
        if ids[0] == 1 and on_sent is not None:
            on_sent()  # chunk [1, 2] is written; chunk [3, 4] waits for the budget
        waiting += 1
        if waiting == 2:
            both_waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stream = PushStream([1, 2, 3, 4, 5, 6], [], push_once, sizing=Sizing(ceiling=2), max_concurrency=2, progress=None)
    await both_waiting.wait()
    await stream.aclose()
    result = stream.result()
    assert result.in_doubt == (1, 2)
    assert result.not_sent == (3, 4, 5, 6)


async def test_a_bug_in_a_chunk_loses_none_of_its_ids() -> None:
    """An unexpected exception is raised to the reader, and the chunk's ids end in doubt, not nowhere."""

    async def push_once(
        ids: list[int], /, *, retry: bool = True, on_sent: Sent = None, final: bool = False
    ) -> PushResult:
        raise KeyError("bug")

    stream = PushStream([1, 2], [], push_once, sizing=Sizing(ceiling=1), max_concurrency=1, progress=None)
    with pytest.raises(KeyError):
        async for _ in stream:
            pass
    result = stream.result()
    assert sorted(result.in_doubt + result.not_sent) == [1, 2]


def test_the_places_of_a_result_as_the_cli_lists_them() -> None:
    """``places_json`` gives the CLI's JSON its places of unaccepted ids, in its order, each entry as it
    prints it."""
    result = PushResult(
        summary=PushSummary(1, 1, 0, 0, 1),
        details=PushDetails(new_orders=("1",)),
        rejected=(OrderRejection(2, "The selected order_ids.1 is invalid."),),
        failed=(ChunkFailure((3, 4), ServerError("boom", status_code=500, body=None, raw_text="", headers=None)),),
        unreported=(5,),
        not_sent=(6,),
        in_doubt=(7,),
    )
    places = places_json(result)
    assert list(places) == ["rejected", "failed", "unreported", "in_doubt", "not_sent"]
    assert places["rejected"] == [{"order_id": 2, "message": "The selected order_ids.1 is invalid."}]
    assert places["failed"] == [{"order_ids": [3, 4], "error": str(result.failed[0].error)}]
    assert (places["not_sent"], places["in_doubt"], places["unreported"]) == ([6], [7], [5])
