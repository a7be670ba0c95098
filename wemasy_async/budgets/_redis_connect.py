"""How the fleet budget reaches Redis, as managed services give it: one server, a Redis Cluster, or the
master a Sentinel names, each with TLS or without, all from one URL.

``redis://`` and ``rediss://`` (TLS) name one server (a cluster found behind one is switched to by the
budget, see RedisBudget.run); ``redis+cluster://`` and ``rediss+cluster://`` a cluster by one of its nodes;
``redis+sentinel://`` and ``rediss+sentinel://[:password@]host:port[,host:port...]/service[/db]`` the master
of a Sentinel's service (``?sentinel_password=`` for sentinels that have one). Query parameters
(``ssl_ca_certs``, ``ssl_cert_reqs``...) are redis-py's.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import attrs
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

__all__ = ["TLS_CONNECT_SECONDS", "RedisTarget", "cluster_of", "connect", "connect_seconds"]

_SENTINEL_PORT = 26379
#: The longest a TLS connection to Redis may take to make (its handshake included).
TLS_CONNECT_SECONDS = 5.0
#: Query parameters that set TLS (for a Sentinel's master and its sentinels alike).
_SSL_PARAMETERS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


@attrs.frozen
class RedisTarget:
    """Where the budget's Redis is: the client to run its scripts with, and how to name it in logs."""

    client: Any  # redis.asyncio.Redis or RedisCluster
    #: ``host:port`` (and the kind), never the URL: it may hold a password.
    where: str
    cluster: bool = False
    #: Other clients it holds, closed with it (a Sentinel's connections to its sentinels).
    others: tuple[Any, ...] = ()
    #: How long a call may wait until Redis has answered once: connections to make, a TLS handshake, a
    #: cluster's nodes and slots to learn (see connect_seconds).
    first_contact_seconds: float = 0.0

    async def aclose(self) -> None:
        """Close every connection it holds."""
        for client in (self.client, *self.others):
            await client.aclose()


def connect(redis_url: str, timeout: float) -> RedisTarget:
    """A client for ``redis_url`` whose commands give up after ``timeout`` seconds (ValueError: a URL that
    names no Redis)."""
    parts = urllib.parse.urlsplit(redis_url)
    scheme = parts.scheme.lower()
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_seconds(redis_url, timeout)}
    if scheme in ("redis+cluster", "rediss+cluster"):
        return cluster_of(parts._replace(scheme=scheme.split("+")[0]).geturl(), timeout)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_master(parts, tls=scheme == "rediss+sentinel", options=options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("not a Redis URL")
    # After a Redis restart every pooled connection is dead: each is re-made once, at once, rather than
    # failing (and sending this process to its own budget for a while).
    client = aioredis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1), **options)
    pool = client.connection_pool.connection_kwargs
    where = f"{pool.get('host', pool.get('path', '?'))}:{pool.get('port', '?')}"
    return RedisTarget(client, where, first_contact_seconds=options["socket_connect_timeout"])


def cluster_of(redis_url: str, timeout: float) -> RedisTarget:
    """A Redis Cluster client starting from the node ``redis_url`` names (``redis://`` or ``rediss://``)."""
    if urllib.parse.urlsplit(redis_url).path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    connecting = connect_seconds(redis_url, timeout)
    client = RedisCluster.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=connecting)
    parts = urllib.parse.urlsplit(redis_url)
    where = f"cluster {parts.hostname or '?'}:{parts.port or 6379}"
    # The first call learns the cluster's nodes and slots and connects to them: the allowance a TLS
    # connection has, whatever the scheme.
    return RedisTarget(client, where, cluster=True, first_contact_seconds=max(timeout, TLS_CONNECT_SECONDS))


def connect_seconds(redis_url: str, timeout: float) -> float:
    """How long making a connection may take: ``timeout``, but a TLS handshake (tens of milliseconds of CPU
    each, several at once as a burst of calls opens its pool) gets up to TLS_CONNECT_SECONDS."""
    return max(timeout, TLS_CONNECT_SECONDS) if redis_url.lower().startswith("rediss") else timeout


def _sentinel_master(parts: urllib.parse.SplitResult, *, tls: bool, options: dict[str, Any]) -> RedisTarget:
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_host_port(host) for host in hosts.split(",") if host]
    path = [piece for piece in parts.path.split("/") if piece]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL names its sentinels and a service: redis+sentinel://host:port/service")
    service, db = path[0], int(path[1]) if len(path) == 2 else 0
    username, _, password = userinfo.partition(":")
    query = dict(urllib.parse.parse_qsl(parts.query))
    ssl: dict[str, Any] = {"ssl": True, **{k: query[k] for k in _SSL_PARAMETERS if k in query}} if tls else {}
    if "ssl_check_hostname" in ssl:
        ssl["ssl_check_hostname"] = ssl["ssl_check_hostname"].lower() in ("1", "true", "yes")
    if ssl.get("ssl_cert_reqs") == "none":
        ssl["ssl_cert_reqs"] = None
    credentials = {
        "username": urllib.parse.unquote(username) or None,
        "password": urllib.parse.unquote(password) or None,
    }
    # The URL's user and password are the master's; sentinels with a password of their own take it from
    # the query's sentinel_password.
    guard = {"password": query["sentinel_password"]} if "sentinel_password" in query else {}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs={**options, **ssl, **guard}, **options, **ssl, **credentials
    )
    client = sentinel.master_for(service, db=db, retry=Retry(NoBackoff(), 1))
    first = sentinels[0]
    where = f"sentinel {first[0]}:{first[1]}/{service}"
    # The first call asks a sentinel for the master, then connects to it.
    first_contact = max(float(options["socket_timeout"]), TLS_CONNECT_SECONDS)
    return RedisTarget(client, where, others=tuple(sentinel.sentinels), first_contact_seconds=first_contact)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        host, port = port, ""
    if port and not port.isdigit():
        raise ValueError("a sentinel's port must be a number")
    return host.strip("[]"), int(port) if port else _SENTINEL_PORT
