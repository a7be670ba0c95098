"""What a resource needs of the client: one way to send a call. Resources depend on this, not on the client."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, Protocol

import aiohttp

from ._chunk_size import ChunkSizer, ShareSizes
from ._protocol import RawResponse
from ._retry import RetryPolicy
from ._telemetry import Telemetry
from ._types import NotGiven, Timeout
from .budgets import Priority

__all__ = ["Deadline", "Exchange", "Sender"]

#: Seconds a whole call may take, budget waits and retries included; ``None`` for no limit;
#: ``NOT_GIVEN`` for the client's default.
Deadline = float | None | NotGiven


class Exchange(NamedTuple):
    """The final answer of a call, after retries and redirects (a tuple: made on every call)."""

    response: RawResponse
    #: The call was re-sent after a failure that may have reached the server (timeout, dropped connection).
    ambiguous_retry: bool


class Sender(Protocol):
    """Sends one call through the token's budget, with retries; :class:`WemasyClient` is one."""

    #: How failed calls are retried.
    retry: RetryPolicy

    #: The token's chunk sizer: what its pushes have learned of the server's request sizes.
    chunk_sizer: ChunkSizer
    #: Shares what the sizer learned with the fleet of a budget kept outside the process; None: no fleet.
    share_chunk_sizes: ShareSizes | None
    #: OpenTelemetry's spans and metrics of the sender's calls, or None (nothing records them).
    _telemetry: Telemetry | None
    #: The timeout of each HTTP exchange, unless a call gives its own.
    timeout: float | aiohttp.ClientTimeout | None

    @property
    def priority(self) -> Priority | None:
        """The class of the sender's calls for the budget (None: each call's own)."""
        ...

    def deadline_at(self, deadline: Deadline) -> float | None:
        """The ``time.monotonic()`` time by which a call given ``deadline`` must end (None: no limit).

        A resource asks this before anything else, so a client that cannot send (closed, or first used in
        another event loop) raises :class:`ClientClosedError` here, before a request or a batch begins.
        """
        ...

    def _send(  # noqa: PLR0913 -- the call's options, keyword-only
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: Timeout = ...,
        deadline_at: float | None = None,
        retry: RetryPolicy | None = None,
        on_sent: Callable[[], None] | None = None,
        priority: Priority | None = None,
        operation: str = ...,
    ) -> Coroutine[Any, Any, Exchange]: ...
