"""``client.sendcloud``: the SendCloud integration's status, and pushing orders to SendCloud shipments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from .._batching import check_create_label, validated_order_ids
from .._converter import structure_response
from .._models import PushDetails, PushResult, PushSummary, SendcloudIntegration
from .._protocol import decipher_response
from .._types import NOT_GIVEN, Timeout

if TYPE_CHECKING:
    from .._client import WemasyClient

__all__ = ["PUSH_PATH", "STATUS_PATH", "SendcloudResource"]

STATUS_PATH = "/services/webshop/v1/integrations/sendcloud/status"
PUSH_PATH = "/services/webshop/v1/orders/sendcloud/shipments/push"


class SendcloudResource:
    """The SendCloud endpoints, reached as ``client.sendcloud``."""

    def __init__(self, client: WemasyClient) -> None:
        self._client = client

    async def status(self, *, timeout: Timeout = NOT_GIVEN) -> SendcloudIntegration:
        """The webshop's SendCloud integration: whether it is active and connected.

        >>> integration = await client.sendcloud.status()
        >>> integration.active, integration.connected
        (True, True)
        """
        exchange = await self._client._send("GET", STATUS_PATH, timeout=timeout)
        data = decipher_response(exchange.response)
        return structure_response(exchange.response, data, SendcloudIntegration, key="integration")

    async def push_shipments(
        self,
        order_ids: Iterable[int],
        *,
        create_label: bool = False,
        timeout: Timeout = NOT_GIVEN,
    ) -> PushResult:
        """Validate the orders and queue them for SendCloud shipments (labels too if ``create_label``).

        Every id must be a positive int; a bad one raises :class:`InvalidOrderIdError` naming it and its
        position, before any request is sent. An empty input sends nothing and returns an empty result.
        A push is safe to retry: the server reports an already-queued order as skipped. If it was re-sent
        after a failure that may have reached the server, ``result.ambiguous_retry`` is True.

        >>> result = await client.sendcloud.push_shipments([1001, 1002], create_label=True)
        >>> result.summary.new_orders
        2
        """
        ids = validated_order_ids(order_ids)
        label = check_create_label(create_label)
        if not ids:
            return PushResult(summary=PushSummary(), details=PushDetails(), message="no order ids given")
        exchange = await self._client._send(
            "POST", PUSH_PATH, json_body={"create_label": label, "order_ids": ids}, timeout=timeout
        )
        data = decipher_response(exchange.response)
        result = structure_response(exchange.response, data, PushResult)
        if exchange.ambiguous_retry:
            result = attrs.evolve(result, ambiguous_retry=True)
        return result
