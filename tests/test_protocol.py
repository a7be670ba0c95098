"""The pure protocol: building requests and deciphering answers, with no sockets and no event loop."""

from __future__ import annotations

import email.utils
import json

import pytest

from wemasy_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    ServerError,
    ValidationError,
)
from wemasy_async._protocol import (
    RawResponse,
    build_request,
    ci_headers,
    decipher_response,
    follow_redirect,
    normalize_base_url,
    parse_rate_limit_headers,
    parse_retry_after,
    validate_token,
)

TOKEN = "tok-S3CRET-protocol"
NOW = 1_800_000_000.0


def answer(status: int, body: bytes | str | object, headers: dict[str, str] | None = None) -> RawResponse:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return RawResponse(status=status, headers=ci_headers(headers or {}), body=body, method="GET", url="https://h/api/x")


# --- building requests ---------------------------------------------------------------------------


def test_request_carries_bearer_token_json_accept_and_user_agent() -> None:
    """Every request has the bearer token, asks for JSON and names the SDK and its version."""
    request = build_request("get", "https://api.wemasy.nl/api", "/services/x", token=TOKEN)
    assert request.method == "GET"
    assert request.url == "https://api.wemasy.nl/api/services/x"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("wemasy-async/")
    assert request.body is None
    assert "Content-Type" not in request.headers


def test_json_body_is_compact_and_typed() -> None:
    """A JSON body is sent compact with a JSON content type."""
    request = build_request("POST", "https://h/api", "p", token=TOKEN, json_body={"order_ids": [1, 2]})
    assert request.url == "https://h/api/p"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == b'{"order_ids":[1,2]}'


def test_absolute_path_is_refused() -> None:
    """A path cannot point the token at another host."""
    with pytest.raises(ConfigurationError, match="relative"):
        build_request("GET", "https://h/api", "https://evil.example/steal", token=TOKEN)


def test_prepared_request_repr_hides_token() -> None:
    """The repr of a prepared request shows no token."""
    request = build_request("GET", "https://h/api", "/x", token=TOKEN)
    assert TOKEN not in repr(request)
    assert "<redacted>" in repr(request)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.wemasy.nl/api/", "https://api.wemasy.nl/api"),
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api"),
        ("http://localhost/api", "http://localhost/api"),
        ("http://[::1]:9000/api", "http://[::1]:9000/api"),
        ("http://127.8.9.10/api", "http://127.8.9.10/api"),
    ],
)
def test_https_and_loopback_http_base_urls_are_accepted(url: str, expected: str) -> None:
    """https anywhere and plain http on loopback are fine; a trailing slash is dropped."""
    assert normalize_base_url(url) == expected


def test_plain_http_to_a_remote_host_is_refused_unless_opted_in() -> None:
    """Plain http to a non-loopback host would leak the token, so it needs an explicit opt-in."""
    with pytest.raises(ConfigurationError, match=r"plain http://.*allow_insecure_http"):
        normalize_base_url("http://api.wemasy.nl/api")
    assert normalize_base_url("http://api.wemasy.nl/api", allow_insecure_http=True) == "http://api.wemasy.nl/api"


@pytest.mark.parametrize("url", ["", "api.wemasy.nl", "ftp://h/api", "https://user:pw@h/api", "https://h/api?x=1"])
def test_unusable_base_urls_are_refused(url: str) -> None:
    """A base URL that is not a plain absolute http(s) URL is refused before any request."""
    with pytest.raises(ConfigurationError):
        normalize_base_url(url)


def test_missing_token_error_names_the_environment_variable() -> None:
    """With no token the error says where a token can come from."""
    with pytest.raises(ConfigurationError, match="WEMASY_API_TOKEN"):
        validate_token(None)


def test_token_with_whitespace_is_refused_without_echoing_it() -> None:
    """A token with a newline (read from a file) is refused, and the error does not repeat it."""
    with pytest.raises(ConfigurationError) as info:
        validate_token(TOKEN + "\n")
    assert TOKEN not in str(info.value)


# --- Retry-After and rate-limit headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("12", 12.0), (" 3 ", 3.0), ("1.5", 1.5), ("-4", 0.0), ("", None), ("soon", None), ("inf", None)],
)
def test_retry_after_delay_seconds(value: str, seconds: float | None) -> None:
    """Delay-seconds parse to seconds, never negative; garbage is no hint at all."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_http_date_is_relative_to_now() -> None:
    """An HTTP-date Retry-After (RFC 9110) becomes seconds from now; a past date is 0."""
    assert parse_retry_after(email.utils.formatdate(NOW + 42, usegmt=True), now=NOW) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(NOW - 42, usegmt=True), now=NOW) == 0.0


def test_rate_limit_headers_are_read_case_insensitively_with_reset_as_fallback() -> None:
    """Limit and remaining are read; without Retry-After, X-RateLimit-Reset gives the wait."""
    headers = answer(
        429, "", {"x-ratelimit-limit": "60", "X-RATELIMIT-REMAINING": "0", "X-RateLimit-Reset": str(int(NOW) + 7)}
    ).headers
    hints = parse_rate_limit_headers(headers, now=NOW)
    assert (hints.limit, hints.remaining, hints.retry_after) == (60, 0, 7.0)


def test_unreadable_rate_limit_headers_are_missing_not_errors() -> None:
    """A proxy's garbage in the rate-limit headers is treated as absent."""
    headers = answer(200, "", {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "-3"}).headers
    assert parse_rate_limit_headers(headers, now=NOW) == parse_rate_limit_headers(answer(200, "").headers, now=NOW)


# --- deciphering answers -------------------------------------------------------------------------


def test_success_returns_decoded_json() -> None:
    """A 200 returns its JSON as is."""
    assert decipher_response(answer(200, {"error": False, "x": [1]})) == {"error": False, "x": [1]}


def test_no_content_is_none() -> None:
    """A 204 (or an empty 200) has no data."""
    assert decipher_response(answer(204, b"")) is None


@pytest.mark.parametrize("body", ["<html><body>Maintenance</body></html>", '{"error": false, "integ'])
def test_success_status_with_non_json_body_keeps_the_raw_text(body: str) -> None:
    """An HTML page or truncated JSON on a 200 is an InvalidResponseError holding the text."""
    with pytest.raises(InvalidResponseError) as info:
        decipher_response(answer(200, body))
    assert info.value.raw_text == body
    assert info.value.status_code == 200


def test_success_status_with_error_body_is_invalid() -> None:
    """A 200 that says error: true is not silently taken as success."""
    with pytest.raises(InvalidResponseError, match="Broken"):
        decipher_response(answer(200, {"error": True, "message": "Broken"}))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (422, ValidationError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (418, APIStatusError),
    ],
)
@pytest.mark.parametrize("shape", ["documented", "laravel"])
def test_each_error_status_maps_to_its_class_in_both_body_shapes(status: int, cls: type, shape: str) -> None:
    """Documented {"error": true, "message"} and stock Laravel {"message"} bodies both parse."""
    body = {"error": True, "message": "Nope."} if shape == "documented" else {"message": "Nope."}
    with pytest.raises(APIStatusError) as info:
        decipher_response(answer(status, body, {"X-RateLimit-Limit": "60"}))
    error = info.value
    assert type(error) is cls
    assert (error.status_code, error.message, error.body) == (status, "Nope.", body)
    assert error.headers["x-ratelimit-limit"] == "60"
    assert "Nope." in str(error)
    assert str(status) in str(error)


def test_validation_error_carries_field_errors_and_indices() -> None:
    """A 422 keeps its field -> messages mapping and reads order_ids.N keys as indices."""
    body = {
        "message": "The selected order_ids.5 is invalid. (and 1 more error)",
        "errors": {"order_ids.5": ["The selected order_ids.5 is invalid."], "create_label": "Must be bool."},
    }
    with pytest.raises(ValidationError) as info:
        decipher_response(answer(422, body))
    assert info.value.errors == {
        "order_ids.5": ("The selected order_ids.5 is invalid.",),
        "create_label": ("Must be bool.",),
    }
    assert info.value.index_errors() == {5: ("The selected order_ids.5 is invalid.",)}


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"Retry-After": "17"}, 17.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 9)}, 9.0),
        ({}, None),
    ],
)
def test_rate_limit_error_carries_retry_after(headers: dict[str, str], retry_after: float | None) -> None:
    """A 429's wait comes from Retry-After (seconds or HTTP-date), else X-RateLimit-Reset."""
    with pytest.raises(RateLimitError) as info:
        decipher_response(answer(429, {"message": "Too Many Attempts."}, headers), now=NOW)
    assert info.value.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)


def test_proxy_html_error_page_is_a_server_error_with_its_title_and_text() -> None:
    """A proxy's HTML 502 is a ServerError (so it can be retried) that keeps the page."""
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    with pytest.raises(ServerError) as info:
        decipher_response(answer(502, page, {"Content-Type": "text/html"}))
    assert info.value.body is None
    assert info.value.raw_text == page
    assert "502 Bad Gateway" in info.value.message


def test_redirect_status_is_a_redirect_error_with_location() -> None:
    """A redirect that reaches deciphering (not followed) is a RedirectError naming where it pointed."""
    with pytest.raises(RedirectError) as info:
        decipher_response(answer(302, b"", {"Location": "https://elsewhere.example/login"}))
    assert info.value.location == "https://elsewhere.example/login"


# --- redirects -----------------------------------------------------------------------------------


def redirect(status: int, location: str) -> RawResponse:
    return RawResponse(status=status, headers=ci_headers({"Location": location}), body=b"")


@pytest.mark.parametrize("status", [307, 308])
def test_same_origin_307_308_repeat_method_and_body(status: int) -> None:
    """A temporary or permanent redirect on the same origin repeats the push with its body."""
    request = build_request("POST", "https://h/api", "/push", token=TOKEN, json_body={"a": 1})
    followed = follow_redirect(request, redirect(status, "/api/v2/push"))
    assert followed is not None
    assert (followed.method, followed.url, followed.body) == ("POST", "https://h/api/v2/push", request.body)
    assert followed.headers["Authorization"] == f"Bearer {TOKEN}"


def test_302_is_followed_for_get_but_not_for_post() -> None:
    """A 302 would turn a push into a GET, so only a GET follows it."""
    get = build_request("GET", "https://h/api", "/status", token=TOKEN)
    post = build_request("POST", "https://h/api", "/push", token=TOKEN, json_body={})
    assert follow_redirect(get, redirect(302, "https://h/api/status2")) is not None
    assert follow_redirect(post, redirect(302, "https://h/api/push2")) is None


@pytest.mark.parametrize(
    "location",
    ["https://evil.example/api/status", "http://h/api/status", "https://h:8443/api/status", "//evil.example/x"],
)
def test_redirect_to_another_origin_is_not_followed(location: str) -> None:
    """Another host, scheme (a downgrade to http) or port never receives the token."""
    request = build_request("GET", "https://h/api", "/status", token=TOKEN)
    assert follow_redirect(request, redirect(307, location)) is None


@pytest.mark.parametrize(
    "location",
    ["https://h:99999/api/status", "https://h:port/api/status", "https://user:pw@h/api/status", "//user@h/x"],
)
def test_a_location_that_cannot_be_read_or_carries_userinfo_is_not_followed(location: str) -> None:
    """A bad port is not an exception, and a same-origin URL with credentials in it is not followed."""
    get = build_request("GET", "https://h/api", "/status", token=TOKEN)
    assert follow_redirect(get, redirect(302, location)) is None


def test_json_nested_deeper_than_python_goes_is_an_invalid_response() -> None:
    """A hostile body nested 100,000 deep raises InvalidResponseError, not RecursionError."""
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidResponseError, match="not JSON"):
        decipher_response(RawResponse(status=200, headers=ci_headers({}), body=body))


@pytest.mark.parametrize("key", ["order_ids.\u00b2", "order_ids.\u0663", "order_ids." + "9" * 5000, "order_ids.-1"])
def test_index_errors_ignore_keys_that_are_not_plain_indices(key: str) -> None:
    """ "order_ids.²" (a digit to isdigit(), not to int()) and other oddities are no index, and no error."""
    error = ValidationError(
        "bad", errors={key: ("x",), "order_ids.3": ("y",)}, status_code=422, body=None, raw_text="", headers=None
    )
    assert error.index_errors() == {3: ("y",)}
