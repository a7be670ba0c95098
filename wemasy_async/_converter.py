"""The one cattrs converter, with every structure hook the SDK needs in this file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._models import PushDetails, PushResult, PushSummary, SendcloudIntegration
from ._protocol import RawResponse, invalid_shape

__all__ = ["converter", "record_converter", "structure_response"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)


def _text_or_none(value: object, _: object = None) -> str | None:
    # Ids and timestamps are documented as strings; an id sent as a number is kept, as text.
    if value is None or type(value) is str:
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _credentials(value: object, _: object = None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if value == []:  # PHP encodes an empty associative array as []
        return {}
    raise ValueError(f"expected an object or null, got {type(value).__name__}")


def _integration(data: Any, _: object = None) -> SendcloudIntegration:
    if not isinstance(data, dict):
        raise ValueError(f"integration must be an object, got {type(data).__name__}")
    get = data.get
    credentials = get("credentials")
    return SendcloudIntegration(
        _text_or_none(get("id")),
        get("is_active"),
        get("is_connected"),
        credentials if type(credentials) is dict else _credentials(credentials),
        _text_or_none(get("created_at")),
        _text_or_none(get("updated_at")),
        data,
    )


def _strict_int(value: object, _: object = None) -> int:
    # cattrs' default int() would accept 1.9 or True; a count that is not an integer is a wrong shape.
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _id_list(value: object, _: object = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):  # PHP sends a list with holes as an object keyed by index
        value = list(value.values())
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return tuple(map(str, value))  # str() of a str is itself; map keeps a million ids cheap


def _any_list(value: object, _: object = None) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(value.values())
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return tuple(value)


converter.register_structure_hook(SendcloudIntegration, _integration)
converter.register_structure_hook(int, _strict_int)


def _details(data: Any, _: object = None) -> PushDetails:
    if not isinstance(data, dict):
        raise ValueError(f"details must be an object, got {type(data).__name__}")
    fields: dict[str, Any] = {}
    for name in ("new_orders", "retry_orders", "skipped_orders", "queued_orders"):
        try:
            fields[name] = (_any_list if name == "queued_orders" else _id_list)(data.get(name))
        except ValueError as exc:
            raise ValueError(f"details.{name}: {exc}") from None
    return PushDetails(**fields)


converter.register_structure_hook(PushDetails, _details)
converter.register_structure_hook(PushSummary, make_dict_structure_fn(PushSummary, converter))
_push_result = make_dict_structure_fn(
    PushResult,
    converter,
    raw=override(omit=True),
    ambiguous_retry=override(omit=True),
    journal_error=override(omit=True),
    message=override(struct_hook=lambda v, _: "" if v is None else str(v)),
    labels_will_be_created=override(struct_hook=lambda v, _: "" if v is None else str(v).strip()),
)
converter.register_structure_hook(PushResult, lambda d, t: _with_raw(_push_result(d, t), d))


def _with_raw(model: T, data: Mapping[str, Any]) -> T:
    object.__setattr__(model, "raw", data)
    return model


def _leaf_message(exc: BaseException, type_: Any) -> str:
    return str(exc) if isinstance(exc, ValueError) and str(exc) else cattrs.v.format_exception(exc, type_)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, format_exception=_leaf_message))
    return str(exc)


_hooks: dict[type[Any], Callable[[Any, Any], Any]] = {}


def _hook(cls: type[Any]) -> Callable[[Any, Any], Any]:
    # Looked up once per class: the models are parsed on every call.
    hook = _hooks.get(cls)
    if hook is None:
        hook = _hooks[cls] = converter.get_structure_hook(cls)
    return hook


def structure_response(response: RawResponse, data: Any, cls: type[T], *, key: str | None = None) -> T:
    """Build ``cls`` from ``data`` (or from ``data[key]``); a wrong shape raises InvalidResponseError."""
    if not isinstance(data, dict):
        raise invalid_shape(response, f"expected a JSON object, got {type(data).__name__}")
    if key is not None:
        if key not in data:
            raise invalid_shape(response, f"no {key!r} field")
        data = data[key]
    try:
        result: T = _hook(cls)(data, cls)
    except (ValueError, TypeError, KeyError, AttributeError, cattrs.BaseValidationError) as exc:
        raise invalid_shape(response, _describe(exc)) from None
    return result


def _strict_bool(value: object, _: object = None) -> bool:
    # The int hook refuses booleans; a record's flag is a JSON true or false, nothing else.
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected a boolean, got {value!r}")


#: The converter for the SDK's own stored records (the journal's rows): the same hooks, and strict booleans.
record_converter = converter.copy()
record_converter.register_structure_hook(bool, _strict_bool)
