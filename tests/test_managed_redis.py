"""The fleet budget on Redis as managed services give it: a real three-master Redis Cluster, a real Sentinel,
and TLS, each started on 127.0.0.1 by these tests (they fail, never skip, when one cannot start)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from tests.conftest import TOKEN
from tests.helpers import FLEET_LIMIT, FLEET_WINDOW, at_fleet_pace, fleet_client
from tests.redis_server import RedisClusterServers, RedisServer, SentinelServers, Tls
from wemasy_async import BudgetEvent, ConfigurationError, RateLimitHeaders, WemasyClient
from wemasy_async._chunk_size import LearnedSizes
from wemasy_async.budgets._redis import RedisBudget, redis_keys
from wemasy_async.testing import WemasyEmulator

LIMIT, WINDOW = FLEET_LIMIT, FLEET_WINDOW
#: Run once in CI, on the coverage Python (noxfile.py): these test the servers and redis-py's clients of
#: them, not this Python, and start five Redis deployments.
pytestmark = pytest.mark.once


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls(tempfile.mkdtemp(prefix="wemasy-tls-"))


def _running(server: RedisServer | RedisClusterServers | SentinelServers) -> Iterator[str]:
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def deployments(cluster: RedisClusterServers, tls: Tls) -> Iterator[dict[str, str]]:
    """The URL of each way managed Redis comes: a cluster (named as one, or by a node's plain URL), a
    Sentinel's master, one server over TLS, a cluster over TLS."""
    others = {
        "sentinel": SentinelServers(),
        "TLS": RedisServer(tls=tls),
        "TLS cluster": RedisClusterServers(tls=tls),
        "TLS sentinel": SentinelServers(tls=tls),
    }
    started = []
    try:
        for server in others.values():
            server.start()
            started.append(server)
        tls_cluster = others["TLS cluster"]
        assert isinstance(tls_cluster, RedisClusterServers)
        yield {
            "cluster": cluster.url,
            "cluster, from a node's plain URL": cluster.node_url,
            "sentinel": others["sentinel"].url,
            "TLS": others["TLS"].url,
            "TLS cluster": tls_cluster.url,
            "TLS cluster, from a node's plain URL": tls_cluster.node_url,
            "TLS sentinel": others["TLS sentinel"].url,
        }
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def emulator(wemasy_emulator: WemasyEmulator) -> WemasyEmulator:
    return at_fleet_pace(wemasy_emulator)


@pytest.mark.parametrize(
    "deployment",
    [
        "cluster",
        "cluster, from a node's plain URL",
        "sentinel",
        "TLS",
        "TLS cluster",
        "TLS cluster, from a node's plain URL",
        "TLS sentinel",
    ],
)
async def test_a_fleet_on_managed_redis_holds_what_it_holds_on_one_server(
    emulator: WemasyEmulator, deployments: dict[str, str], deployment: str
) -> None:
    """Three clients with budgets of their own, sharing only the managed Redis, send 15 calls at once:
    exactly 15 requests, no 429, and the budget stayed in Redis (no fall-back to a process's own)."""
    url = deployments[deployment]
    events: list[object] = []

    async def process(name: str) -> None:
        async with fleet_client(emulator, url, name, on_event=events.append) as client:
            await asyncio.gather(*(client.sendcloud.status() for _ in range(5)))

    await asyncio.gather(*(process(f"p{i}") for i in range(3)))
    assert [r.status for r in emulator.requests] == [200] * 15
    assert not [e for e in events if isinstance(e, BudgetEvent)]


def test_processes_on_a_cluster_share_the_budget(emulator: WemasyEmulator, cluster: RedisClusterServers) -> None:
    """Two real processes (the CLI, each pushing 20 ids in chunks of 2) on one token through the cluster:
    no 429, exactly the 20 requests the ids need, and the budget's state lives in the cluster."""
    cluster.flush()
    command = [sys.executable, "-m", "wemasy_async", "push", "--json", "--chunk-size", "2", "--concurrency", "4"]
    command += ["--window-seconds", str(WINDOW), "--base-url", emulator.base_url, "--token", TOKEN]
    command += ["--redis-url", cluster.url]
    children = [
        subprocess.Popen([*command, ids], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ids in ("1-20", "101-120")
    ]
    for child in children:
        _out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert [r.status for r in emulator.requests] == [200] * 20
    admin = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        assert int(admin.hget(redis_keys(emulator.base_url, TOKEN)[0], "st_sent") or 0) == 20
    finally:
        admin.close()


async def test_a_cluster_node_restart_fails_no_call(emulator: WemasyEmulator, cluster: RedisClusterServers) -> None:
    """The node holding the token's keys stops mid-run: calls go on with the process's own budget; when it
    is back (and the cluster ok again), the budget is the fleet's again; no call failed."""
    state_key = redis_keys(emulator.base_url, TOKEN)[0]
    admin = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        port = admin.get_node_from_key(state_key).port
    finally:
        admin.close()
    [node] = [n for n in cluster.nodes if n.port == port]
    events: list[object] = []
    async with fleet_client(emulator, cluster.url, "a", on_event=events.append) as client:
        await client.sendcloud.status()
        node.stop()
        try:
            results = await asyncio.gather(*(client.sendcloud.status() for _ in range(8)))
            assert len(results) == 8
        finally:
            node.start()
            cluster.wait_ok()
        client._budget._down_until = 0.0  # type: ignore[attr-defined]  # try Redis now, not in a while
        await client.sendcloud.status()
        assert [e.backend for e in events if isinstance(e, BudgetEvent)] == ["local", "redis"]
    assert [r.status for r in emulator.requests] == [200] * 10


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379/",  # no service
        "redis+sentinel:///wemasy",  # no sentinel
        "redis+sentinel://127.0.0.1:port/wemasy",  # a port that is no number
        "redis+cluster+sentinel://127.0.0.1/",
    ],
)
def test_a_managed_redis_url_that_names_none_is_refused_at_once(url: str) -> None:
    """A URL that names no Redis: a ConfigurationError before any call, never repeating the URL."""
    with pytest.raises(ConfigurationError) as raised:
        WemasyClient(token=TOKEN, base_url="http://127.0.0.1:1/api", redis_url=url)
    assert "127.0.0.1" not in str(raised.value)


def test_a_sentinel_url_never_shows_its_password() -> None:
    client = WemasyClient(
        token=TOKEN, base_url="http://127.0.0.1:1/api", redis_url="redis+sentinel://:hunter2-secret@127.0.0.1:1/svc"
    )
    assert "hunter2" not in repr(client._budget)
    assert isinstance(redis.__version__, str)


async def test_a_cluster_out_of_reach_fails_no_call(emulator: WemasyEmulator) -> None:
    """redis+cluster:// naming nothing that answers: the calls go on with the process's own budget, and
    the client closes, with no raw redis-py error; a cluster URL with a database is refused at once."""
    events: list[object] = []
    async with fleet_client(emulator, "redis+cluster://127.0.0.1:1", "a", on_event=events.append) as client:
        await client.sendcloud.status()
        await client.sendcloud.status()
    assert [e.backend for e in events if isinstance(e, BudgetEvent)] == ["local"]
    with pytest.raises(ConfigurationError, match="not a usable Redis URL"):
        fleet_client(emulator, "redis+cluster://127.0.0.1:1/2", "a")


async def test_callers_that_meet_moved_together_all_go_through_the_cluster(cluster: RedisClusterServers) -> None:
    """Named by the plain URL of a node that does not hold the token's keys, two callers (one per class)
    ask at once, both get MOVED: the budget switches to the cluster once, and both get their tickets
    from it (no fall-back to the process's own budget)."""
    token, base_url = f"moved-{id(cluster)}", "http://127.0.0.1/api"
    admin = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        holder = admin.get_node_from_key(redis_keys(base_url, token)[0]).port
    finally:
        admin.close()
    other = next(n for n in cluster.nodes if n.port != holder)
    opener = RedisBudget(cluster.url, base_url, token, window_seconds=60)
    try:  # another process opened the window: two answers heard, so two requests may be in flight at once
        for left in (9, 8):
            await opener.answered(await opener.acquire(), 200, RateLimitHeaders(10, left))
    finally:
        await opener.aclose()
    events: list[object] = []
    budget = RedisBudget(
        f"redis://127.0.0.1:{other.port}/0", base_url, token, window_seconds=60, on_event=events.append
    )
    try:
        tickets = await asyncio.gather(budget.acquire(), budget.acquire(priority="bulk"))
        assert all(ticket.lease is not None for ticket in tickets)
        assert not [e for e in events if isinstance(e, BudgetEvent)]
        for ticket in tickets:
            await budget.release(ticket)
    finally:
        await budget.aclose()


async def test_the_fleets_learned_maximum_is_forgotten_when_it_has_held_its_time(
    cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A maximum shared by a batch holds for the fleet's later batches, and is forgotten once it has held
    MAXIMUM_HOLDS_SECONDS (so a server that now takes more is probed again)."""
    import wemasy_async.budgets._redis as fleet

    budget = RedisBudget(cluster.url, "http://127.0.0.1/api", f"sizes-{id(monkeypatch)}", window_seconds=60)
    try:
        assert await budget.share_chunk_sizes(LearnedSizes(4000, 4000)) == LearnedSizes(4000, 4000)
        assert await budget.share_chunk_sizes(LearnedSizes(None, 0)) == LearnedSizes(4000, 4000)
        monkeypatch.setattr(fleet, "MAXIMUM_HOLDS_SECONDS", -1)
        assert await budget.share_chunk_sizes(LearnedSizes(None, 0)) == LearnedSizes(None, 4000)
    finally:
        await budget.aclose()
