"""WemasyClient against the emulator over loopback: both endpoints, errors on the wire, sessions, safety."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN
from wemasy_async import (
    NO_RETRIES,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidOrderIdError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    ServerError,
    UsageError,
    ValidationError,
    WemasyClient,
    WemasyError,
    __version__,
)
from wemasy_async.testing import CannedResponse, Fault, WemasyEmulator

STATUS = "/services/webshop/v1/integrations/sendcloud/status"
PUSH = "/services/webshop/v1/orders/sendcloud/shipments/push"


# --- the two endpoints ---------------------------------------------------------------------------


async def test_status_returns_the_integration_with_boolean_views(client: WemasyClient) -> None:
    """status() gives the integration, its documented strings and their boolean readings."""
    integration = await client.sendcloud.status()
    assert integration.id == "1"
    assert (integration.is_active, integration.active) == ("1", True)
    assert (integration.is_connected, integration.connected) == ("1", True)
    assert integration.credentials == {}
    assert integration.raw["created_at"] == integration.created_at


@pytest.mark.wemasy_emulator(integration={"id": 9, "is_active": False, "is_connected": "false", "credentials": []})
async def test_status_tolerates_real_world_variants(client: WemasyClient) -> None:
    """A numeric id, JSON booleans and PHP's [] for an empty object all parse."""
    integration = await client.sendcloud.status()
    assert (integration.id, integration.active, integration.connected, integration.credentials) == (
        "9",
        False,
        False,
        {},
    )


@pytest.mark.wemasy_emulator(failed_order_ids={3})
async def test_push_reports_new_retry_and_skipped_orders(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A first push queues new orders, a previously failed one is a retry, a repeat is skipped."""
    first = await client.sendcloud.push_shipments([1, 2, 3])
    assert first.summary.total_orders == 3
    assert (first.summary.new_orders, first.summary.retry_orders, first.summary.queued_orders) == (2, 1, 3)
    assert first.details.new_orders == ("1", "2")
    assert first.details.retry_orders == ("3",)
    assert first.labels_will_be_created == "no"

    second = await client.sendcloud.push_shipments([2, 4], create_label=True)
    assert second.details.skipped_orders == ("2",)
    assert second.details.new_orders == ("4",)
    assert second.creates_labels is True
    assert wemasy_emulator.queued == [1, 2, 3, 4]


async def test_push_sends_the_documented_body(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """The push body has create_label and the ids as JSON integers."""
    await client.sendcloud.push_shipments(iter([5, 6]), create_label=True)
    (record,) = wemasy_emulator.requests
    assert (record.method, record.path, record.status, record.order_ids) == ("POST", PUSH, 200, (5, 6))
    assert record.headers["Content-Type"] == "application/json"


async def test_every_request_sends_auth_json_accept_and_user_agent(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """The server sees the bearer token, Accept: application/json and the SDK's User-Agent."""
    await client.sendcloud.status()
    (record,) = wemasy_emulator.requests
    assert record.token == TOKEN
    assert record.headers["Accept"] == "application/json"
    assert record.headers["User-Agent"] == f"wemasy-async/{__version__}"


async def test_generic_request_returns_decoded_json(client: WemasyClient) -> None:
    """request() reaches endpoints the SDK does not model, returning their JSON."""
    data = await client.request("GET", STATUS)
    assert data["error"] is False
    assert data["integration"]["id"] == "1"


async def test_generic_request_maps_errors_the_same_way(client: WemasyClient) -> None:
    """request() raises the same typed errors as the modelled calls."""
    with pytest.raises(NotFoundError, match="could not be found"):
        await client.request("GET", "/services/webshop/v1/nothing/here")
    with pytest.raises(ValidationError) as info:
        await client.request("POST", PUSH, json={"order_ids": [1]})
    assert info.value.errors == {"create_label": ("The create_label field is required.",)}


# --- errors on the wire --------------------------------------------------------------------------


@pytest.mark.wemasy_emulator(valid_tokens={"someone-else"})
async def test_invalid_token_is_an_authentication_error(client: WemasyClient) -> None:
    """401 from an unknown token."""
    with pytest.raises(AuthenticationError) as info:
        await client.sendcloud.status()
    assert info.value.status_code == 401
    assert info.value.message == "Unauthenticated."
    assert info.value.headers["X-RateLimit-Limit"] == "60"


@pytest.mark.wemasy_emulator(forbidden_tokens={TOKEN})
async def test_token_without_permission_is_permission_denied(client: WemasyClient) -> None:
    """403 from a token that lacks the permission."""
    with pytest.raises(PermissionDeniedError):
        await client.sendcloud.status()


@pytest.mark.wemasy_emulator(unknown_order_ids={20, 40})
async def test_unknown_order_ids_are_a_validation_error_naming_their_indices(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """422 lists each offending index; nothing is queued."""
    with pytest.raises(ValidationError) as info:
        await client.request("POST", PUSH, json={"create_label": False, "order_ids": [10, 20, 30, 40]})
    assert info.value.index_errors() == {
        1: ("The selected order_ids.1 is invalid.",),
        3: ("The selected order_ids.3 is invalid.",),
    }
    assert info.value.message == "The selected order_ids.1 is invalid. (and 1 more error)"
    assert wemasy_emulator.queued == []


@pytest.mark.wemasy_emulator(max_ids_per_request=3)
async def test_too_many_ids_is_a_whole_request_validation_error(client: WemasyClient) -> None:
    """More ids than the server takes at once is a 422 on order_ids itself."""
    with pytest.raises(ValidationError) as info:
        await client.request("POST", PUSH, json={"create_label": False, "order_ids": [1, 2, 3, 4]})
    assert info.value.errors == {"order_ids": ("The order_ids field must not have more than 3 items.",)}
    assert info.value.index_errors() == {}


@pytest.mark.wemasy_emulator(max_body_bytes=64)
async def test_oversized_body_is_payload_too_large(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """413 when the push body is larger than the server accepts; nothing is queued."""
    with pytest.raises(PayloadTooLargeError) as info:
        await client.request("POST", PUSH, json={"create_label": False, "order_ids": list(range(1, 40))})
    assert info.value.message == "The POST data is too large."
    assert wemasy_emulator.queued == []


async def test_bad_request_keeps_body_and_headers(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """400 (never documented, but possible) is a BadRequestError with the body and headers."""
    wemasy_emulator.inject(CannedResponse(400, {"message": "Malformed."}, {"X-Request-Id": "r-1"}))
    with pytest.raises(BadRequestError) as info:
        await client.sendcloud.status()
    assert (info.value.status_code, info.value.message, info.value.body) == (
        400,
        "Malformed.",
        {"message": "Malformed."},
    )
    assert info.value.headers["x-request-id"] == "r-1"
    assert info.value.headers["X-RateLimit-Remaining"] == "59"


@pytest.mark.parametrize(
    ("style", "low", "high"),
    [("seconds", 29, 30), ("rounded-up", 30, 30), ("http-date", 29, 31), ("fractional", 29.0, 30.0)],
)
async def test_throttled_call_raises_rate_limit_error_with_retry_after(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, style: Any, low: float, high: float
) -> None:
    """429 carries the wait however the server spells Retry-After."""
    wemasy_emulator.limit, wemasy_emulator.window_seconds = 1, 30.0
    wemasy_emulator.faults.retry_after = style
    wemasy_emulator.spend(TOKEN, 1)  # another client used the window up
    with pytest.raises(RateLimitError) as info:
        await client.sendcloud.status()
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high
    assert info.value.headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.parametrize("bodies", ["documented", "laravel"])
async def test_server_error_in_either_body_shape(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, bodies: Any
) -> None:
    """500 parses whether or not the body has the documented error key."""
    wemasy_emulator.error_bodies = bodies
    wemasy_emulator.inject(Fault.SERVER_ERROR)
    with pytest.raises(ServerError) as info:
        await client.sendcloud.status()
    assert info.value.message == "Server Error"
    assert ("error" in info.value.body) is (bodies == "documented")


async def test_proxy_html_page_is_a_server_error_keeping_the_page(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """An nginx 502 page (no JSON, no rate-limit headers) is a ServerError with its text."""
    wemasy_emulator.inject(Fault.BAD_GATEWAY_HTML)
    with pytest.raises(ServerError) as info:
        await client.sendcloud.status()
    assert info.value.status_code == 502
    assert info.value.body is None
    assert "<title>502 Bad Gateway</title>" in info.value.raw_text
    assert "X-RateLimit-Limit" not in info.value.headers


async def test_missing_rate_limit_headers_do_not_break_a_call(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A proxy that strips the rate-limit headers changes nothing for the caller."""
    wemasy_emulator.faults.rate_limit_headers = False
    assert (await client.sendcloud.status()).active is True


async def test_dropped_connection_is_a_connection_error(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A connection closed without an answer is an ambiguous APIConnectionError."""
    wemasy_emulator.inject(Fault.DROP_AFTER_PROCESSING)
    with pytest.raises(APIConnectionError) as info:
        await client.request("POST", PUSH, json={"create_label": False, "order_ids": [1]})
    assert info.value.ambiguous is True
    assert wemasy_emulator.queued == [1]  # the server did the work; only the answer was lost


async def test_refused_connection_is_not_ambiguous() -> None:
    """Nothing listening: the request surely did not reach a server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with WemasyClient(token=TOKEN, base_url=f"http://127.0.0.1:{port}/api", retry=NO_RETRIES) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.sendcloud.status()
    assert info.value.ambiguous is False
    assert not isinstance(info.value, APITimeoutError)


async def test_slow_answer_times_out_per_call(wemasy_emulator: WemasyEmulator) -> None:
    """The client's timeout applies per call, and a call can override it."""
    wemasy_emulator.faults.delay_seconds = 2.0
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, timeout=0.1, retry=NO_RETRIES) as client:
        with pytest.raises(APITimeoutError):
            await client.sendcloud.status()
        wemasy_emulator.faults.delay_seconds = 0.3
        integration = await client.sendcloud.status(timeout=5.0)
    assert integration.active is True


@pytest.mark.parametrize("fault", [Fault.HTML_OK, Fault.TRUNCATED_JSON])
async def test_success_status_with_undocumented_body_is_invalid_response(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, fault: Fault
) -> None:
    """A 200 that is HTML (a captive portal) or cut-short JSON raises InvalidResponseError with the text."""
    wemasy_emulator.inject(fault)
    with pytest.raises(InvalidResponseError) as info:
        await client.sendcloud.status()
    assert info.value.status_code == 200
    assert info.value.raw_text
    assert info.value.raw_text.startswith("<html>") is (fault is Fault.HTML_OK)


# --- bad input is refused before any request -----------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "position", "words"),
    [
        ([1, True, 3], 1, "bool"),
        ([1, 2, "3"], 2, "must be ints"),
        ([0], 0, "positive"),
        ([4, -5], 1, "positive"),
        ([1.0], 0, "must be ints"),
        ([7, None], 1, "must be ints"),
    ],
)
async def test_bad_order_ids_are_refused_naming_the_first_and_its_position(
    client: WemasyClient, wemasy_emulator: WemasyEmulator, ids: list[Any], position: int, words: str
) -> None:
    """The error names the bad id and where it is; the server hears nothing."""
    with pytest.raises(InvalidOrderIdError, match=words) as info:
        await client.sendcloud.push_shipments(ids)
    assert info.value.position == position
    assert f"position {position}" in str(info.value)
    assert wemasy_emulator.requests == []


@pytest.mark.parametrize("bad", ["yes", 1, None])
async def test_create_label_must_be_a_bool(client: WemasyClient, wemasy_emulator: WemasyEmulator, bad: Any) -> None:
    """A truthy string is not taken as create_label=True."""
    with pytest.raises(UsageError, match="create_label"):
        await client.sendcloud.push_shipments([1], create_label=bad)
    assert wemasy_emulator.requests == []


async def test_a_string_is_not_an_iterable_of_ids(client: WemasyClient) -> None:
    """ "123" would otherwise iterate as characters."""
    with pytest.raises(UsageError, match="iterable of ints"):
        await client.sendcloud.push_shipments("123")  # type: ignore[arg-type]


async def test_empty_input_sends_nothing(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """No ids, no request, an empty result."""
    result = await client.sendcloud.push_shipments([])
    assert result.summary.total_orders == 0
    assert wemasy_emulator.requests == []


# --- configuration, sessions ---------------------------------------------------------------------


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without token=..., WEMASY_API_TOKEN is used; an explicit token wins."""
    monkeypatch.setenv("WEMASY_API_TOKEN", "from-env")
    assert WemasyClient()._token == "from-env"
    assert WemasyClient(token="explicit")._token == "explicit"


def test_no_token_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error says how to give a token."""
    monkeypatch.delenv("WEMASY_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=r"token=.*WEMASY_API_TOKEN"):
        WemasyClient()


def test_plain_http_to_a_remote_host_is_refused() -> None:
    """The client will not send the token in clear text off the machine unless told to."""
    with pytest.raises(ConfigurationError, match="plain http"):
        WemasyClient(token=TOKEN, base_url="http://api.wemasy.nl/api")
    allowed = WemasyClient(token=TOKEN, base_url="http://api.wemasy.nl/api", allow_insecure_http=True)
    assert allowed.base_url == "http://api.wemasy.nl/api"


def test_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """WEMASY_BASE_URL points every client at a staging server or the emulator."""
    monkeypatch.setenv("WEMASY_BASE_URL", "http://127.0.0.1:9999/api/")
    assert WemasyClient(token=TOKEN).base_url == "http://127.0.0.1:9999/api"


async def test_a_session_passed_in_is_left_open(wemasy_emulator: WemasyEmulator) -> None:
    """The caller owns its session: the client uses it and does not close it."""
    async with aiohttp.ClientSession() as session:
        async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, session=session) as client:
            await client.sendcloud.status()
        assert not session.closed
        async with session.get(wemasy_emulator.base_url + STATUS, headers={"Accept": "application/json"}) as response:
            assert response.status == 401  # still usable, and the SDK did not leave its token on it


async def test_a_session_the_client_made_is_closed_with_it(wemasy_emulator: WemasyEmulator) -> None:
    """The client's own session closes on exit, and the closed client refuses more calls."""
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url) as client:
        await client.sendcloud.status()
        session = client._session
        assert session is not None
    assert session.closed
    with pytest.raises(WemasyError, match="closed"):
        await client.sendcloud.status()


async def test_client_works_without_async_with(wemasy_emulator: WemasyEmulator) -> None:
    """A client can be made once and closed explicitly, as a web service does at shutdown."""
    client = WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url)
    try:
        assert (await client.sendcloud.status()).active is True
    finally:
        await client.close()


def record_connections(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.BaseTransport]:
    """The transports the running loop makes from now on."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseTransport] = []
    create_connection = loop.create_connection

    async def recording(*args: Any, **kwargs: Any) -> Any:
        transport, protocol = await create_connection(*args, **kwargs)
        made.append(transport)
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", recording)
    return made


async def test_a_connection_reads_a_bounded_step_at_a_time(
    client: WemasyClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain-TCP connection reads READ_SIZE bytes at a time after its first answer, not asyncio's 256 KiB
    (a read that large goes past glibc's mmap threshold: a system call and page faults on every read)."""
    from wemasy_async._transport import READ_SIZE

    made = record_connections(monkeypatch)
    await client.sendcloud.status()
    await client.sendcloud.status()
    assert len(made) == 1  # the connection was kept for the second call
    assert READ_SIZE < 256 * 1024
    assert made[0].max_size == READ_SIZE  # type: ignore[attr-defined]


async def test_a_callers_session_keeps_its_own_read_size(
    wemasy_emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session passed in is used as it is: its connections read as asyncio has them read."""
    made = record_connections(monkeypatch)
    async with aiohttp.ClientSession() as session:
        async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, session=session) as client:
            await client.sendcloud.status()
            await client.sendcloud.status()
        assert len(made) == 1
        assert made[0].max_size == 256 * 1024  # type: ignore[attr-defined]


# --- redirects -----------------------------------------------------------------------------------


async def test_same_origin_redirect_is_followed(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A 307 to another path of the same server is followed with the token."""
    wemasy_emulator.redirects["/old/status"] = (307, wemasy_emulator.base_url + STATUS)
    data = await client.request("GET", "/old/status")
    assert data["integration"]["id"] == "1"
    assert [r.status for r in wemasy_emulator.requests] == [307, 200]
    assert wemasy_emulator.requests[1].token == TOKEN


async def test_redirect_to_another_origin_is_not_followed(
    client: WemasyClient, wemasy_emulator: WemasyEmulator
) -> None:
    """A redirect to another host:port raises RedirectError and the other server hears nothing."""
    async with WemasyEmulator() as elsewhere:
        wemasy_emulator.redirects[STATUS] = (307, elsewhere.base_url + STATUS)
        with pytest.raises(RedirectError) as info:
            await client.sendcloud.status()
        assert elsewhere.requests == []
    assert info.value.location == elsewhere.base_url + STATUS


async def test_redirect_loops_stop(client: WemasyClient, wemasy_emulator: WemasyEmulator) -> None:
    """A same-origin redirect loop ends in RedirectError after max_redirects."""
    wemasy_emulator.redirects["/loop"] = (307, wemasy_emulator.base_url + "/loop")
    with pytest.raises(RedirectError):
        await client.request("GET", "/loop")
    assert len(wemasy_emulator.requests) == client.max_redirects + 1


# --- the token never leaks -----------------------------------------------------------------------


async def test_token_never_appears_in_reprs_errors_or_logs(
    wemasy_emulator: WemasyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Across every kind of failure, no repr, error text, traceback or log line holds the token."""
    caplog.set_level(logging.DEBUG)
    wemasy_emulator.unknown_order_ids = {13}
    errors: list[BaseException] = []
    async with WemasyClient(token=TOKEN, base_url=wemasy_emulator.base_url, timeout=0.2, retry=NO_RETRIES) as client:
        texts = [repr(client), str(client), repr(client.rate_limit)]

        async def collect(call: Callable[[], Any]) -> None:
            try:
                await call()
            except WemasyError as exc:
                errors.append(exc)

        await collect(lambda: client.request("POST", PUSH, json={"create_label": False, "order_ids": [13]}))  # 422
        wemasy_emulator.inject(Fault.SERVER_ERROR, Fault.BAD_GATEWAY_HTML, Fault.DROP)
        await collect(client.sendcloud.status)  # 500
        await collect(client.sendcloud.status)  # a proxy's 502
        await collect(lambda: client.request("POST", PUSH, json={"create_label": False, "order_ids": [1]}))  # dropped
        wemasy_emulator.faults.delay_seconds = 1.0
        await collect(client.sendcloud.status)  # timeout
        wemasy_emulator.faults.delay_seconds = 0.0
        wemasy_emulator.spend(TOKEN, wemasy_emulator.limit)
        await collect(client.sendcloud.status)  # 429: another client spent the window
    kinds = {type(e) for e in errors}
    assert kinds >= {ValidationError, ServerError, APIConnectionError, RateLimitError, APITimeoutError}
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error)), repr(vars(error))]
    texts += [record.getMessage() for record in caplog.records]
    assert any(r.name == "wemasy_async" for r in caplog.records)
    for text in texts:
        assert TOKEN not in text


@pytest.mark.parametrize("compressed", [False, True])
async def test_a_body_too_large_is_refused_not_held(compressed: bool) -> None:
    """An answer of 50 MB (a proxy gone wrong), or a gzip bomb that inflates to it, fails the call with
    InvalidResponseError after 8 MiB, keeping an excerpt, instead of filling memory."""
    import gzip

    from aiohttp import web

    from wemasy_async._transport import MAX_BODY_BYTES

    payload = b"0" * (50 * 1024 * 1024)
    body = gzip.compress(payload, compresslevel=9) if compressed else payload

    async def huge(request: web.Request) -> web.Response:
        headers = {"Content-Type": "application/json"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/api/services/webshop/v1/integrations/sendcloud/status", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with WemasyClient(token=TOKEN, base_url=f"http://127.0.0.1:{port}/api", retry=NO_RETRIES) as client:
            with pytest.raises(InvalidResponseError, match="larger than 8 MiB") as info:
                await client.sendcloud.status()
    finally:
        await runner.cleanup()
    assert len(info.value.raw_text) <= 2048 < MAX_BODY_BYTES
