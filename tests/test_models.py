"""Typed results: parsing, tolerance of unknown fields, boolean views and shape errors."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from wemasy_async import InvalidResponseError, PushResult, SendcloudIntegration
from wemasy_async._converter import structure_response
from wemasy_async._models import parse_flag
from wemasy_async._protocol import RawResponse

PUSH_BODY: dict[str, Any] = {
    "error": False,
    "message": "2 orders queued",
    "summary": {"total_orders": 3, "new_orders": 1, "retry_orders": 1, "skipped_orders": 1, "queued_orders": 2},
    "details": {
        "new_orders": ["1"],
        "retry_orders": ["2"],
        "skipped_orders": ["3"],
        "queued_orders": [1, {"id": 2}],
    },
    "total_chunks": 1,
    "labels_will_be_created": "yes",
    "something_new": {"the": "future"},
}


def parse(data: Any, cls: type, key: str | None = None) -> Any:
    response = RawResponse(status=200, headers={}, body=json.dumps(data).encode())
    return structure_response(response, data, cls, key=key)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        ("False", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (2, None),
        ("pending", None),
        (None, None),
    ],
)
def test_flags_read_every_php_boolean_spelling(value: object, expected: bool | None) -> None:
    """ "1"/"0", "true"/"false", true/false and 1/0 are booleans; anything else is unknown (None)."""
    assert parse_flag(value) is expected


def test_integration_keeps_documented_strings_and_offers_booleans() -> None:
    """is_active/is_connected stay as sent and also read as booleans."""
    integration = parse(
        {"integration": {"id": 7, "is_active": "1", "is_connected": "0", "credentials": None, "extra": 1}},
        SendcloudIntegration,
        key="integration",
    )
    assert integration.id == "7"
    assert (integration.is_active, integration.active) == ("1", True)
    assert (integration.is_connected, integration.connected) == ("0", False)
    assert integration.credentials is None
    assert integration.raw["extra"] == 1


def test_php_empty_array_credentials_read_as_empty_object() -> None:
    """PHP sends an empty credentials object as []; it reads as {}."""
    integration = parse({"integration": {"credentials": []}}, SendcloudIntegration, key="integration")
    assert integration.credentials == {}


def test_credentials_are_kept_out_of_the_repr() -> None:
    """Credentials may hold the shop's SendCloud keys, so the repr leaves them out."""
    integration = parse(
        {"integration": {"id": "1", "credentials": {"secret_key": "sk_live_XYZ"}}},
        SendcloudIntegration,
        key="integration",
    )
    assert integration.credentials == {"secret_key": "sk_live_XYZ"}
    assert "sk_live_XYZ" not in repr(integration)


def test_models_are_frozen() -> None:
    """Results cannot be changed after the fact."""
    result = parse(PUSH_BODY, PushResult)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.message = "changed"


def test_push_result_parses_the_documented_body_and_keeps_the_rest_raw() -> None:
    """Every documented field is typed; unknown fields are tolerated and stay in raw."""
    result = parse(PUSH_BODY, PushResult)
    assert result.summary.total_orders == 3
    assert (result.summary.new_orders, result.summary.retry_orders, result.summary.skipped_orders) == (1, 1, 1)
    assert result.details.new_orders == ("1",)
    assert result.details.queued_orders == (1, {"id": 2})
    assert (result.total_chunks, result.labels_will_be_created, result.creates_labels) == (1, "yes", True)
    assert result.message == "2 orders queued"
    assert result.raw["something_new"] == {"the": "future"}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"summary": None}, "summary"),
        ({"summary": {"total_orders": "many"}}, "total_orders"),
        ({"summary": {"total_orders": 1.5}}, "total_orders"),
        ({"details": {"new_orders": "1,2"}}, "list"),
    ],
)
def test_wrong_shapes_raise_invalid_response_with_the_raw_text(change: dict[str, Any], complaint: str) -> None:
    """A body that is JSON but not the documented shape is an InvalidResponseError naming the field."""
    body = {**PUSH_BODY, **change}
    with pytest.raises(InvalidResponseError, match=complaint) as info:
        parse(body, PushResult)
    assert json.loads(info.value.raw_text) == body


def test_missing_integration_object_is_invalid() -> None:
    """A status answer without its integration object is an InvalidResponseError."""
    with pytest.raises(InvalidResponseError, match="integration"):
        parse({"error": False}, SendcloudIntegration, key="integration")
