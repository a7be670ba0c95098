"""The client's options as users of other SDKs expect them: with_options and max_retries, aiohttp timeouts,
proxies from the environment, a clear error for a closed client or a bad option, no token reachable from
an exception, and a bounded timeout cache."""

from __future__ import annotations

import asyncio
import os
import socket
import types
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN
from wemasy_async import (
    NO_RETRIES,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    InvalidResponseError,
    RetryPolicy,
    ServerError,
    UsageError,
    WemasyClient,
    WemasyError,
)
from wemasy_async._transport import TIMEOUT_CACHE_SIZE
from wemasy_async.testing import Fault, WemasyEmulator

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"


def make_client(emulator: WemasyEmulator, **options: Any) -> WemasyClient:
    options.setdefault("retry", NO_RETRIES)
    return WemasyClient(token=TOKEN, base_url=emulator.base_url, window_seconds=emulator.window_seconds, **options)


# --- with_options and max_retries ----------------------------------------------------------------


async def test_with_options_changes_only_the_copys_defaults(wemasy_emulator: WemasyEmulator) -> None:
    """A copy has its own timeout, deadline and retries; the client it came from keeps its own."""
    async with make_client(wemasy_emulator, timeout=30.0) as client:
        copy = client.with_options(timeout=5.0, deadline=50.0, max_retries=2)
        assert (copy.timeout, copy.deadline, copy.retry) == (5.0, 50.0, RetryPolicy(max_attempts=3))
        assert (client.timeout, client.deadline, client.retry) == (30.0, None, NO_RETRIES)
        assert client.with_options(timeout=None).retry is NO_RETRIES  # what is not given stays
        policy = RetryPolicy(max_attempts=4, backoff_base=0)
        assert client.with_options(retry=policy).retry is policy
        assert (await copy.sendcloud.status()).active is True


async def test_a_copy_shares_session_budget_and_slots(wemasy_emulator: WemasyEmulator) -> None:
    """Calls through a copy go over the same connection pool and count against the same budget and slots."""
    async with make_client(wemasy_emulator, max_concurrency=1) as client:
        copy = client.with_options(timeout=10.0)
        await client.sendcloud.status()
        await copy.sendcloud.status()
        assert copy._session is client._session
        assert client.rate_limit.remaining == wemasy_emulator.throttle.limit - 2
        # One slot between them: while the copy holds it, a call through the client waits.
        await copy._slots.acquire()
        waiting = asyncio.ensure_future(client.sendcloud.status())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiting.done()
        assert len(wemasy_emulator.requests) == 2
        copy._slots.release()
        assert (await waiting).active is True


async def test_closing_a_copy_leaves_the_client_and_its_session_open(wemasy_emulator: WemasyEmulator) -> None:
    """Leaving `async with` on a copy closes only the copy: the session belongs to the client."""
    async with make_client(wemasy_emulator) as client:
        async with client.with_options(timeout=5.0) as copy:
            await copy.sendcloud.status()
        session = client._session
        assert session is not None
        assert not session.closed
        assert (await client.sendcloud.status()).active is True
        with pytest.raises(ClientClosedError, match="closed; make a new one"):
            await copy.sendcloud.status()


async def test_closing_the_client_closes_its_copies(wemasy_emulator: WemasyEmulator) -> None:
    """After the client closes, a copy made before refuses calls, naming where it came from."""
    client = make_client(wemasy_emulator)
    copy = client.with_options(max_retries=1)
    await copy.sendcloud.status()  # the copy made the shared session; the client owns it all the same
    session = client._session
    await client.close()
    assert session is not None
    assert session.closed
    with pytest.raises(ClientClosedError, match="with_options"):
        await copy.sendcloud.status()
    assert len(wemasy_emulator.requests) == 1


async def test_max_retries_counts_resends_after_the_first(wemasy_emulator: WemasyEmulator) -> None:
    """max_retries=2 sends a failing call three times; max_retries=0 once."""
    async with make_client(wemasy_emulator, retry=None, max_retries=2) as client:
        assert client.retry == RetryPolicy(max_attempts=3)
        fast = client.with_options(retry=RetryPolicy(max_attempts=3, backoff_base=0))
        wemasy_emulator.inject(*[Fault.SERVER_ERROR] * 5)
        with pytest.raises(ServerError):
            await fast.sendcloud.status()
        assert len(wemasy_emulator.requests) == 3
        with pytest.raises(ServerError):
            await client.with_options(max_retries=0).sendcloud.status()
        assert len(wemasy_emulator.requests) == 4
    assert WemasyClient(token=TOKEN, max_retries=0).retry is NO_RETRIES


@pytest.mark.parametrize("max_retries", [-1, 1.5, "3", True])
def test_max_retries_must_be_a_count(max_retries: object) -> None:
    """A max_retries that is not an int of at least 0 is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="max_retries must be an int of at least 0"):
        WemasyClient(token=TOKEN, max_retries=max_retries)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_retries"):
        WemasyClient(token=TOKEN).with_options(max_retries=max_retries)  # type: ignore[arg-type]


def test_retry_and_max_retries_together_are_refused() -> None:
    """Both retry= and max_retries= is ambiguous: a ConfigurationError, in the constructor and with_options."""
    with pytest.raises(ConfigurationError, match="not both"):
        WemasyClient(token=TOKEN, retry=NO_RETRIES, max_retries=2)
    with pytest.raises(ConfigurationError, match="not both"):
        WemasyClient(token=TOKEN).with_options(retry=NO_RETRIES, max_retries=2)


def test_with_options_checks_what_it_is_given() -> None:
    """A bad timeout or deadline given to with_options is refused there."""
    client = WemasyClient(token=TOKEN)
    with pytest.raises(ConfigurationError, match="timeout"):
        client.with_options(timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="deadline"):
        client.with_options(deadline=-1)
    with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy"):
        client.with_options(retry=3)  # type: ignore[arg-type]


# --- aiohttp.ClientTimeout -----------------------------------------------------------------------


async def test_timeout_may_be_an_aiohttp_client_timeout(wemasy_emulator: WemasyEmulator) -> None:
    """A ClientTimeout works for the client and per call, as seconds do."""
    wemasy_emulator.faults.delay_seconds = 2.0
    async with make_client(wemasy_emulator, timeout=aiohttp.ClientTimeout(sock_read=0.1)) as client:
        with pytest.raises(APITimeoutError, match=r"sock_read=0\.1"):
            await client.sendcloud.status()
        wemasy_emulator.faults.delay_seconds = 0.3
        integration = await client.sendcloud.status(timeout=aiohttp.ClientTimeout(total=30))
        assert integration.active is True
        wemasy_emulator.faults.delay_seconds = 2.0
        with pytest.raises(APITimeoutError):
            await client.with_options(timeout=30).sendcloud.status(timeout=aiohttp.ClientTimeout(total=0.1))


async def test_a_client_timeout_is_cut_short_by_the_deadline(wemasy_emulator: WemasyEmulator) -> None:
    """Under a deadline a ClientTimeout's total shrinks to what is left of it."""
    wemasy_emulator.faults.delay_seconds = 2.0
    async with make_client(wemasy_emulator, timeout=aiohttp.ClientTimeout(total=60)) as client:
        with pytest.raises(APITimeoutError):
            await client.sendcloud.status(deadline=0.2)


@pytest.mark.parametrize(
    "timeout", ["5", True, 0, -1.0, float("nan"), float("inf"), aiohttp.ClientTimeout(total=0), [5]]
)
async def test_an_unusable_timeout_is_refused_before_sending(wemasy_emulator: WemasyEmulator, timeout: object) -> None:
    """A timeout that is not positive seconds, a ClientTimeout or None fails as a ConfigurationError, per call
    too, and nothing is sent."""
    with pytest.raises(ConfigurationError, match="timeout"):
        make_client(wemasy_emulator, timeout=timeout)
    async with make_client(wemasy_emulator) as client:
        with pytest.raises(ConfigurationError, match="timeout"):
            await client.sendcloud.status(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="timeout"):
            await client.request("GET", STATUS, timeout=timeout)  # type: ignore[arg-type]
    assert wemasy_emulator.requests == []


# --- proxies from the environment ----------------------------------------------------------------


class RecordingProxy:
    """A forward proxy on 127.0.0.1 that records each request line and answers the status itself."""

    BODY = b'{"error":false,"integration":{"id":"proxied","is_active":"1","is_connected":"1","credentials":[]}}'

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self.headers: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *headers = head.decode("latin-1").split("\r\n")
        self.request_lines.append(line)
        self.headers.extend(headers)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY)
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def __aenter__(self) -> RecordingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RecordingProxy]:
    """A recording proxy, named by HTTP_PROXY and HTTPS_PROXY (and nothing else in the environment)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    async with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        yield proxy


async def test_the_environments_proxy_is_used_by_default(
    proxy: RecordingProxy, wemasy_emulator: WemasyEmulator
) -> None:
    """With HTTP_PROXY set, the request goes to the proxy (in absolute form), not straight to the server."""
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES) as client:
        integration = await client.sendcloud.status()
    assert integration.id == "proxied"
    assert proxy.request_lines == [f"GET {wemasy_emulator.base_url}{STATUS} HTTP/1.1"]
    assert wemasy_emulator.requests == []


async def test_the_token_never_goes_to_the_proxy_as_its_own_credentials(
    proxy: RecordingProxy, wemasy_emulator: WemasyEmulator
) -> None:
    """Through a proxy the token goes only in the API request's Authorization: not as Proxy-Authorization,
    and nowhere in the CONNECT that opens an https tunnel (which the proxy reads in the clear)."""
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES) as client:
        await client.sendcloud.status()
    assert f"Authorization: Bearer {TOKEN}" in proxy.headers  # the API needs it: plain http, proxy sees it
    assert not [header for header in proxy.headers if header.lower().startswith("proxy-authorization")]
    proxy.headers.clear()
    async with WemasyClient(token=TOKEN, base_url="https://127.0.0.1:9/api", retry=NO_RETRIES) as client:
        with pytest.raises(APIConnectionError):  # the recording proxy does not open tunnels
            await client.sendcloud.status()
    assert proxy.request_lines[-1] == "CONNECT 127.0.0.1:9 HTTP/1.1"
    assert proxy.headers
    assert not [header for header in proxy.headers if TOKEN in header]


async def test_proxy_credentials_go_as_proxy_authorization(
    proxy: RecordingProxy, wemasy_emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """user:password in the proxy's URL is sent to the proxy as Proxy-Authorization, not in the URL."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://puser:ppass@"))
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES) as client:
        await client.sendcloud.status()
    assert "Proxy-Authorization: Basic cHVzZXI6cHBhc3M=" in proxy.headers


async def test_no_proxy_lists_hosts_reached_directly(
    proxy: RecordingProxy, wemasy_emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host in NO_PROXY is reached directly."""
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES) as client:
        assert (await client.sendcloud.status()).id == "1"
    assert proxy.request_lines == []
    assert len(wemasy_emulator.requests) == 1


async def test_trust_env_false_ignores_the_environments_proxy(
    proxy: RecordingProxy, wemasy_emulator: WemasyEmulator
) -> None:
    """trust_env=False connects directly whatever HTTP_PROXY says."""
    async with WemasyClient(
        token=TOKEN, base_url=wemasy_emulator.base_url, retry=NO_RETRIES, trust_env=False
    ) as client:
        assert (await client.sendcloud.status()).id == "1"
    assert proxy.request_lines == []
    assert len(wemasy_emulator.requests) == 1


def test_an_unusable_proxy_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy URL that cannot be used is a ConfigurationError naming the variable, without its password."""
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:hunter2@proxy.example:21")
    with pytest.raises(ConfigurationError, match=r"HTTPS_PROXY.*trust_env=False") as info:
        WemasyClient(token=TOKEN)
    assert "hunter2" not in str(info.value)
    assert WemasyClient(token=TOKEN, trust_env=False).base_url


# --- a closed client, or one from another event loop ---------------------------------------------


def calls(client: WemasyClient) -> dict[str, Any]:
    """Every way to send through a client, each as a coroutine factory."""

    async def iterate() -> None:
        async with client.sendcloud.iter_push_shipments([1, 2]) as stream:
            async for _ in stream:
                pass

    async def enter() -> None:
        async with client:
            pass

    return {
        "status": lambda: client.sendcloud.status(),
        "push_shipments": lambda: client.sendcloud.push_shipments([1, 2, 3]),
        "iter_push_shipments": iterate,
        "request": lambda: client.request("GET", STATUS),
        "async with": enter,
    }


@pytest.mark.parametrize("method", list(calls(WemasyClient(token=TOKEN))))
async def test_a_closed_client_raises_before_sending(wemasy_emulator: WemasyEmulator, method: str) -> None:
    """After close(), every method raises ClientClosedError saying to make a new client; nothing is sent."""
    client = make_client(wemasy_emulator)
    await client.sendcloud.status()
    await client.close()
    with pytest.raises(ClientClosedError, match="make a new one") as info:
        await calls(client)[method]()
    assert info.value.result is None  # raised before the batch began, not as every id "failed"
    assert len(wemasy_emulator.requests) == 1


@pytest.mark.parametrize("method", list(calls(WemasyClient(token=TOKEN))))
def test_a_client_reused_in_a_later_event_loop_says_what_to_do(wemasy_emulator: WemasyEmulator, method: str) -> None:
    """A client used in one asyncio.run() and again in a second raises ClientClosedError, for every method."""
    client = make_client(wemasy_emulator)

    async def first() -> None:
        await client.sendcloud.status()
        session = client._session
        assert session is not None
        assert session.connector is not None
        await session.connector.close()  # the test's tidying: the loop's sockets go with it

    asyncio.run(first())

    async def second() -> None:
        with pytest.raises(ClientClosedError, match=r"another event loop, which has closed.*asyncio\.run"):
            await calls(client)[method]()
        await client.close()

    asyncio.run(second())
    assert len(wemasy_emulator.requests) == 1


# --- configuration mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_redirects": -1}, "max_redirects must be an int of at least 0"),
        ({"max_redirects": 2.5}, "max_redirects must be an int"),
        ({"max_redirects": "3"}, "max_redirects must be an int"),
        ({"max_concurrency": 0}, "max_concurrency must be an int of at least 1"),
        ({"max_concurrency": "8"}, "max_concurrency must be an int"),
        ({"rate_ceiling": (5,)}, r"rate_ceiling must be \(requests, seconds\)"),
        ({"rate_ceiling": (5, "1")}, "rate_ceiling must be"),
        ({"rate_ceiling": 5}, "rate_ceiling must be"),
        ({"base_url": "http://[::1"}, "base_url is not a valid URL"),
        ({"base_url": "https://h:99999/api"}, "base_url is not a valid URL"),
        ({"base_url": "https://h/a pi"}, "whitespace"),
        ({"user_agent": "my-app/1\r\nX-Evil: 1"}, "user_agent must be one line"),
        ({"user_agent": b"my-app"}, "user_agent must be a str"),
        ({"timeout": "30"}, "timeout must be positive seconds"),
        ({"deadline": "30"}, "deadline must be positive seconds"),
        ({"window_seconds": "60"}, "window_seconds must be positive seconds"),
        ({"retry": 3}, "retry must be a RetryPolicy"),
        ({"session": "session"}, "session must be an aiohttp.ClientSession"),
        ({"trust_env": "no"}, "trust_env must be True or False"),
        ({"on_event": "print"}, "on_event must be a callable"),
    ],
)
def test_configuration_mistakes_are_named(options: dict[str, Any], message: str) -> None:
    """Each bad option raises ConfigurationError naming it, never a raw Python error."""
    with pytest.raises(ConfigurationError, match=message):
        WemasyClient(token=TOKEN, **options)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cr3t-pw@api.example/api?x=1",
        "ftp://user:s3cr3t-pw@api.example/api",
        "http://user:s3cr3t-pw@[::1",
        "https://user:s3cr3t-pw@h:99999/api",
        "https://user:s3cr3t-pw@api.example/api",
    ],
)
def test_an_error_about_a_base_url_never_repeats_its_password(url: str) -> None:
    """Whatever is wrong with a base URL, the error does not repeat the password in it."""
    with pytest.raises(ConfigurationError) as info:
        WemasyClient(token=TOKEN, base_url=url)
    assert "s3cr3t-pw" not in str(info.value)


async def test_a_bad_request_is_a_usage_error(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A method, path or JSON body request() cannot send is a UsageError; nothing is sent."""
    with pytest.raises(UsageError, match="method"):
        await client.request("GET /x", STATUS)
    with pytest.raises(UsageError, match="path must be a str"):
        await client.request("GET", ["x"])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="JSON body"):
        await client.request("POST", STATUS, json={"when": object()})
    with pytest.raises(UsageError, match="JSON body"):
        await client.request("POST", STATUS, json={"x": float("nan")})
    assert wemasy_emulator.requests == []


# --- the token is not reachable from an exception ------------------------------------------------


def reachable_text(value: object) -> Iterator[str]:
    """What a crash reporter would record of a frame's local: its repr, and a mapping's or sequence's items."""
    yield repr(value)
    if isinstance(value, (str, bytes)):
        yield str(value)
    elif isinstance(value, Mapping):
        for key, item in list(value.items()):
            yield repr(key)
            yield repr(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield from (repr(item) for item in value)


def assert_token_unreachable(error: BaseException) -> None:
    """Neither the error's chain nor any frame local on its traceback leads to the token."""
    seen: set[int] = set()
    chain: BaseException | None = error
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        assert not isinstance(chain, aiohttp.ClientError), f"chained to aiohttp's {chain!r}"
        assert TOKEN not in str(chain)
        assert TOKEN not in repr(chain)
        tb: types.TracebackType | None = chain.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                for text in reachable_text(value):
                    assert TOKEN not in text, f"{tb.tb_frame.f_code.co_name}() local {name!r} holds the token"
            tb = tb.tb_next
        chain = chain.__cause__ or chain.__context__


async def raised_by(call: Any, what: object = None) -> BaseException:
    try:
        await call()
    except WemasyError as error:
        return error
    raise AssertionError(f"no error from {call} ({what})")


async def test_the_token_is_unreachable_from_errors_of_the_send_path(wemasy_emulator: WemasyEmulator) -> None:
    """For each way a call fails, no chained exception is aiohttp's (they hold the request headers) and no
    frame local on the traceback holds the token, for an own session and a caller's alike."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        for extra in ({}, {"session": session}):
            async with make_client(wemasy_emulator, timeout=0.2, **extra) as client:
                errors = []
                for fault in (Fault.HTML_OK, Fault.TRUNCATED_JSON, Fault.BAD_GATEWAY_HTML):
                    wemasy_emulator.inject(fault)
                    errors.append(await raised_by(client.sendcloud.status, (fault, extra)))
                wemasy_emulator.inject(Fault.DROP)  # a POST: aiohttp itself re-sends a GET on a dropped connection
                errors.append(await raised_by(lambda: client.request("POST", PUSH, json={"order_ids": [1]})))
                wemasy_emulator.valid_tokens = {"someone-else"}
                errors.append(await raised_by(client.sendcloud.status))
                errors.append(await raised_by(lambda: client.sendcloud.push_shipments([1], strict=True)))
                wemasy_emulator.valid_tokens = None
                errors.append(await raised_by(lambda: client.request("POST", STATUS, json={"x": object()})))
                wemasy_emulator.faults.delay_seconds = 2.0
                errors.append(await raised_by(client.sendcloud.status))
                wemasy_emulator.faults.delay_seconds = 0.0
            async with WemasyClient(
                token=TOKEN, base_url=f"http://127.0.0.1:{closed_port}/api", retry=NO_RETRIES, **extra
            ) as unreachable:
                errors.append(await raised_by(unreachable.sendcloud.status))
            kinds = {type(error) for error in errors}
            assert {APITimeoutError, APIConnectionError, InvalidResponseError, AuthenticationError, UsageError} <= kinds
            for error in errors:
                assert_token_unreachable(error)


# --- the per-call timeout cache ------------------------------------------------------------------


@pytest.mark.wemasy_emulator(limit=100_000)
async def test_distinct_timeouts_leave_the_timeout_cache_bounded(wemasy_emulator: WemasyEmulator) -> None:
    """A service passing a different timeout on every call keeps at most TIMEOUT_CACHE_SIZE of them, and a
    deadline's ever-shrinking exchange timeouts are not kept at all."""
    async with make_client(wemasy_emulator) as client:
        for i in range(200):
            await client.sendcloud.status(timeout=10.0 + i / 1000)
        for _ in range(20):
            await client.sendcloud.status(timeout=5.0, deadline=3.0)
        transport = client._transport()
        assert len(transport._timeouts) == TIMEOUT_CACHE_SIZE
        for i in range(10_000):
            transport._client_timeout(1.0 + i / 100_000)
        assert len(transport._timeouts) == TIMEOUT_CACHE_SIZE
        assert transport._client_timeout(7.5) is transport._client_timeout(7.5)  # still a cache


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_wemasy_log_switches_the_librarys_log_on_for_a_client_in_code() -> None:
    """WEMASY_LOG=debug works for library users too, not only the command line: a client made in a program
    logs each exchange to stderr, without the token."""
    import subprocess
    import sys
    import textwrap

    program = textwrap.dedent(
        f"""
        import asyncio
        from wemasy_async import WemasyClient
        from wemasy_async.testing import WemasyEmulator

        async def main():
            async with WemasyEmulator() as emulator:
                async with WemasyClient(token={TOKEN!r}, base_url=emulator.base_url) as client:
                    await client.sendcloud.status()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "WEMASY_LOG": "debug"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GET http://127.0.0.1" in done.stderr
    assert TOKEN not in done.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "WEMASY_LOG"},
        timeout=120,
    )
    assert quiet.stderr == ""


async def test_a_client_s_options_set_after_a_call_apply_to_its_next_calls(wemasy_emulator: WemasyEmulator) -> None:
    """The client keeps each body-less call it has made for reuse; setting its ``retry`` (or ``timeout``)
    afterwards still governs the next call, and a copy's options stay its own."""
    async with make_client(wemasy_emulator, retry=RetryPolicy(max_attempts=3, backoff_base=0)) as client:
        copy = client.with_options(max_retries=0)
        await client.sendcloud.status()
        await copy.sendcloud.status()
        wemasy_emulator.inject(*[Fault.SERVER_ERROR] * 5)
        with pytest.raises(ServerError):
            await copy.sendcloud.status()
        assert len(wemasy_emulator.requests) == 3  # the copy sent once, as its own options say
        client.retry = NO_RETRIES
        with pytest.raises(ServerError):
            await client.sendcloud.status()
        assert len(wemasy_emulator.requests) == 4  # once: the policy set after the first call


def test_an_error_is_named_where_users_import_it_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """A traceback names an error by its public path (wemasy_async.ConfigurationError), never by the
    private module that defines it; every exported error, and each still pickles (multiprocessing)."""
    import pickle
    import traceback

    import wemasy_async

    monkeypatch.delenv("WEMASY_API_TOKEN", raising=False)
    with pytest.raises(wemasy_async.ConfigurationError) as caught:
        WemasyClient()
    last = traceback.format_exception(caught.value)[-1]
    assert last.startswith("wemasy_async.ConfigurationError: no API token")
    errors = [getattr(wemasy_async, name) for name in wemasy_async.__all__]
    errors = [error for error in errors if isinstance(error, type) and issubclass(error, Exception)]
    assert len(errors) > 10
    assert {error.__module__ for error in errors} == {"wemasy_async"}
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is wemasy_async.ConfigurationError
