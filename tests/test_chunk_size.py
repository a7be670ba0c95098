"""A push's chunk size, learned per token: it grows while the server takes whole chunks quickly, stops at the
maximum the server names and never probes past it again, and shrinks when answers slow down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import TOKEN
from tests.helpers import assert_every_id_accounted_once
from wemasy_async import WemasyClient
from wemasy_async._chunk_size import FIRST_CHUNK_SIZE, LARGEST_CHUNK_SIZE, ChunkSizer, LearnedSizes
from wemasy_async.testing import WemasyEmulator

# --- the sizer, step by step -------------------------------------------------------------------------------


def test_a_quick_whole_answer_of_the_current_size_doubles_it() -> None:
    sizer = ChunkSizer()
    assert sizer.peek(None) == FIRST_CHUNK_SIZE
    sizer.answered(FIRST_CHUNK_SIZE, 0.05)
    assert sizer.peek(None) == 2 * FIRST_CHUNK_SIZE
    sizer.answered(FIRST_CHUNK_SIZE, 0.05)  # an answer of a chunk cut before the growth: no second step
    assert sizer.peek(None) == 2 * FIRST_CHUNK_SIZE


def test_growth_stops_where_a_doubled_request_could_pass_the_bound() -> None:
    """Validation may be quadratic in the ids: a doubled request may take four times as long, so the size
    grows only while four times the last answer's time is within the bound; past the bound it halves."""
    sizer = ChunkSizer(size=1000)
    sizer.answered(1000, 1.3, bound=5.0)  # 5.2 s expected for 2000: stays
    assert sizer.peek(None) == 1000
    sizer.answered(1000, 6.0, bound=5.0)
    assert sizer.peek(None) == 500


def test_the_slowdown_a_doubling_showed_predicts_the_next() -> None:
    """Validation linear in the ids (1,000 ids in 1 s, 2,000 in 2 s): a doubled request is expected to take
    twice as long, not four times, so 2,000 ids grow to 4,000 within a 5 s bound."""
    sizer = ChunkSizer(size=1000)
    sizer.answered(1000, 1.0, bound=5.0)
    assert sizer.peek(None) == 2000
    sizer.answered(2000, 2.0, bound=5.0)  # 4 x 2 s would pass 5 s; 2 x 2 s does not
    assert sizer.peek(None) == 4000
    sizer.answered(4000, 4.0, bound=5.0)
    assert sizer.peek(None) == 4000


def test_a_maximum_the_server_named_is_never_passed() -> None:
    sizer = ChunkSizer(size=2000)
    sizer.too_large(1500)
    assert sizer.peek(None) == 1500
    sizer.answered(1500, 0.01)
    assert sizer.peek(None) == 1500  # quick, but the server takes no more
    sizer.too_large(3000)  # a larger number said later does not raise it
    assert sizer.most == 1500


def test_a_fixed_chunk_size_is_a_ceiling_within_the_learned_maximum() -> None:
    sizer = ChunkSizer()
    assert sizer.peek(50) == 50
    sizer.too_large(30)
    assert sizer.peek(50) == 30


def test_the_size_grows_no_larger_than_the_largest_chunk() -> None:
    sizer = ChunkSizer(size=LARGEST_CHUNK_SIZE)
    sizer.answered(LARGEST_CHUNK_SIZE, 0.01)
    assert sizer.peek(None) == LARGEST_CHUNK_SIZE


# --- against the emulator ----------------------------------------------------------------------------------


def pushes(emulator: WemasyEmulator) -> list[int]:
    """The number of ids of each push request the emulator received, in order."""
    return [len(r.order_ids) for r in emulator.requests if r.order_ids]


def refused_for_size(emulator: WemasyEmulator, maximum: int) -> int:
    return sum(1 for r in emulator.requests if r.order_ids and r.status == 422 and len(r.order_ids) > maximum)


@pytest.mark.parametrize("maximum", [1000, 4000])
async def test_a_batch_spends_about_as_few_requests_as_the_servers_maximum_allows(maximum: int) -> None:
    """40,000 ids with the defaults, to a server taking at most ``maximum`` a request (quickly): at most
    1.15 x the fewest requests + 4, every id in one place, and a second batch of the same token never
    sends a request past the maximum it learned."""
    ids = list(range(1, 40_001))
    async with WemasyEmulator(limit=10_000, max_ids_per_request=maximum) as emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
            result = await client.sendcloud.push_shipments(ids)
            assert_every_id_accounted_once(result, ids, emulator)
            assert result.ok
            fewest = -(-len(ids) // maximum)
            assert len(pushes(emulator)) <= 1.15 * fewest + 4
            refused = refused_for_size(emulator, maximum)
            assert refused <= 1  # one probe past the maximum taught it
            await client.sendcloud.push_shipments(range(50_001, 60_001))
            assert refused_for_size(emulator, maximum) == refused
            assert max(pushes(emulator)[-3:]) <= maximum


async def test_a_server_that_slows_down_stops_the_growth() -> None:
    """No maximum, but validation takes 0.2 ms an id: with a 2 s timeout (an answer bound of 0.5 s) the
    size stops growing before a request could take longer than the bound; every id is accounted for."""
    ids = list(range(1, 30_001))
    async with WemasyEmulator(limit=10_000, max_ids_per_request=None, seconds_per_id=0.0002) as emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, timeout=2.0) as client:
            result = await client.sendcloud.push_shipments(ids)
    assert_every_id_accounted_once(result, ids, emulator)
    assert result.ok
    # 0.2 ms an id: 2,000 ids take 0.4 s, four times that passes 0.5 s, so 4,000 is the most ever sent.
    assert max(pushes(emulator)) <= 4000
    assert len(pushes(emulator)) < -(-len(ids) // FIRST_CHUNK_SIZE)  # and it did grow past the start


def test_one_probe_of_a_larger_size_at_a_time() -> None:
    """A size the server has not taken yet is cut once (a probe); until it has ended, chunks go at the
    largest size the server took; a fixed chunk size is never a probe."""
    sizer = ChunkSizer()
    assert sizer.cut(None) == (FIRST_CHUNK_SIZE, True)
    # Another batch of the token meanwhile (this one waits for the probe's answer: see _work): nothing has
    # been taken yet, so the first size.
    assert sizer.cut(None) == (FIRST_CHUNK_SIZE, False)
    sizer.answered(FIRST_CHUNK_SIZE, 0.01)
    sizer.probe_done(FIRST_CHUNK_SIZE)
    assert sizer.cut(None) == (2 * FIRST_CHUNK_SIZE, True)
    assert sizer.cut(None) == (FIRST_CHUNK_SIZE, False)
    assert sizer.cut(50) == (50, False)


def test_a_probe_that_taught_nothing_is_not_tried_again_at_once() -> None:
    """A probe with no answer (a timeout, a 5xx) neither took nor refused its size: the size goes back to
    the largest taken, so the next chunks are not each the same failing probe."""
    sizer = ChunkSizer(size=1000, proven=500)
    assert sizer.cut(None) == (1000, True)
    sizer.probe_done(1000)
    assert sizer.cut(None) == (500, False)


def test_a_slow_answer_of_a_small_piece_does_not_shrink_the_size() -> None:
    """A one-id push that answers slowly says little about a 4,000-id request: the size stays."""
    sizer = ChunkSizer(size=4000, proven=4000)
    sizer.answered(1, 30.0)
    assert sizer.peek(None) == 4000
    sizer.answered(4000, 30.0)
    assert sizer.peek(None) == 2000


async def test_a_batch_left_early_leaves_no_probe_open_for_the_tokens_next_batches() -> None:
    """A batch whose stream is closed before its chunks are all cut: the rest is accounted for as not sent,
    and the next batch of the token still probes larger sizes (nothing holds the probe)."""
    async with WemasyEmulator(limit=10_000, max_ids_per_request=None) as emulator:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url) as client:
            async with client.sendcloud.iter_push_shipments(range(1, 20_001)) as stream:
                async for _chunk in stream:
                    break
            result = stream.result()
            assert len(result.not_sent) + len(result.in_doubt) + result.summary.total_orders == 20_000
            before = len(pushes(emulator))
            grown = client.chunk_sizer.peek(None)
            await client.sendcloud.push_shipments(range(30_001, 50_001))
            assert max(pushes(emulator)[before:]) >= grown  # it tried the size the first batch had reached


# --- shared by a fleet through Redis ------------------------------------------------------------------------


def test_learned_sizes_are_adopted_within_the_least_maximum() -> None:
    """A fleet's maximum is taken if lower, its proven size if larger (within the maximum), and a sizer
    that adopts a proven size cuts at it at once, with no probe."""
    sizer = ChunkSizer()
    sizer.adopt(LearnedSizes(most=None, proven=4000))
    assert sizer.cut(None) == (4000, False)
    sizer.adopt(LearnedSizes(most=3000, proven=0))
    assert (sizer.most, sizer.proven, sizer.cut(None)) == (3000, 3000, (3000, False))
    sizer.adopt(LearnedSizes(most=5000, proven=5000))  # a higher maximum is not taken: never probed past
    assert sizer.learned() == LearnedSizes(3000, 3000)


def _a_new_process_starts_at_what_another_learned(
    emulator: WemasyEmulator, cli: list[str], env: dict[str, str], **client_options: Any
) -> None:
    """A batch in another process (the CLI with ``cli`` options, ``env`` added to its environment) learns the
    server's maximum; a batch of a client made with ``client_options`` in this new process, on the same
    token, then starts at it: the fewest requests, no probe, no refusal."""
    command = [sys.executable, "-m", "wemasy_async", "push", "1-40000", "--json", *cli]
    command += ["--base-url", emulator.base_url, "--token", TOKEN]
    environment = {**os.environ, **env}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=environment)
    assert done.returncode == 0, done.stderr
    assert refused_for_size(emulator, 4000) == 1  # it probed past the maximum once, and learned it
    before = len(pushes(emulator))

    async def second_batch() -> None:
        async with WemasyClient(token=TOKEN, base_url=emulator.base_url, **client_options) as client:
            assert client.chunk_sizer.learned() == LearnedSizes(None, 0)  # this process has learned nothing
            result = await client.sendcloud.push_shipments(range(50_001, 90_001))
            assert result.ok

    asyncio.run(second_batch())
    assert pushes(emulator)[before:] == [4000] * 10
    assert refused_for_size(emulator, 4000) == 1


@pytest.mark.wemasy_emulator(limit=10_000, max_ids_per_request=4000)
def test_a_fleet_through_redis_shares_what_its_batches_learned(wemasy_emulator: WemasyEmulator, redis_url: str) -> None:
    """A batch in another process (the CLI, with --redis-url) learns the server's maximum; a batch of a new
    process on the same Redis and token then starts at it: the fewest requests, no probe, no refusal."""
    _a_new_process_starts_at_what_another_learned(wemasy_emulator, ["--redis-url", redis_url], {}, redis_url=redis_url)


@pytest.mark.once  # another process on the host: run once in CI (the coverage run), as the host budget's
@pytest.mark.wemasy_emulator(limit=10_000, max_ids_per_request=4000)
def test_the_hosts_processes_share_what_their_batches_learned(wemasy_emulator: WemasyEmulator) -> None:
    """A batch in another process (the CLI) on the host's budget learns the server's maximum; a batch of a
    new process on the same host and token then starts at it: the fewest requests, no probe, no refusal."""
    _a_new_process_starts_at_what_another_learned(wemasy_emulator, [], {"WEMASY_BUDGET": "host"}, budget="host")


@pytest.mark.wemasy_emulator(limit=10_000, window_seconds=60.0)
async def test_a_batch_left_while_the_fleet_hears_of_a_probe_keeps_the_probes_answer(
    wemasy_emulator: WemasyEmulator,
) -> None:
    """The batch is left (break, Ctrl-C) while its share of what a probe taught waits for Redis: the
    probe's answer is in the result (accepted, not in doubt), every id in one place."""
    sharing = asyncio.Event()
    never = asyncio.Event()

    async def share(learned: LearnedSizes) -> LearnedSizes | None:
        if learned.proven:  # the share after the first answered chunk: Redis slow to answer
            sharing.set()
            await never.wait()
        return None

    ids = list(range(1, 1201))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url) as client:
        client.share_chunk_sizes = share
        async with client.sendcloud.iter_push_shipments(ids, max_concurrency=1) as stream:
            await asyncio.wait_for(sharing.wait(), 30)
        result = stream.result()
    assert_every_id_accounted_once(result, ids, wemasy_emulator)
    assert not result.in_doubt
    assert result.summary.new_orders == FIRST_CHUNK_SIZE
