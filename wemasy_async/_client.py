"""WemasyClient: configuration, session ownership, and the one path every request takes."""

from __future__ import annotations

import logging
import os
import time
from types import TracebackType
from typing import Any, Final, Literal

import aiohttp

from ._errors import ConfigurationError, WemasyError
from ._protocol import (
    DEFAULT_BASE_URL,
    TOKEN_ENV_VAR,
    USER_AGENT,
    RawResponse,
    build_request,
    decipher_response,
    follow_redirect,
    normalize_base_url,
    validate_token,
)
from ._transport import AiohttpTransport
from ._types import NOT_GIVEN, NotGiven, Timeout
from .resources.sendcloud import SendcloudResource

__all__ = ["BASE_URL_ENV_VAR", "WemasyClient"]

BASE_URL_ENV_VAR: Final = "WEMASY_BASE_URL"

logger = logging.getLogger("wemasy_async")


class WemasyClient:
    """An asyncio client of the Wemasy API.

    >>> async with WemasyClient(token="...") as client:
    ...     integration = await client.sendcloud.status()
    ...     result = await client.sendcloud.push_shipments([1001, 1002])

    Args:
        token: the API token; defaults to the ``WEMASY_API_TOKEN`` environment variable.
        base_url: defaults to ``WEMASY_BASE_URL``, else ``https://api.wemasy.nl/api``. Plain ``http://``
            is refused unless the host is loopback or ``allow_insecure_http=True``.
        session: an ``aiohttp.ClientSession`` you own; the client never closes it. Without one the
            client makes its own on first use and closes it in :meth:`close`.
        timeout: seconds for one HTTP exchange (``None``: no limit); each call may override it.
        max_redirects: same-origin redirects followed per call. Redirects to another origin are never
            followed, since they would carry the token.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = 30.0,
        allow_insecure_http: bool = False,
        max_redirects: int = 3,
        user_agent: str | None = None,
    ) -> None:
        self._token = validate_token(token if token is not None else os.environ.get(TOKEN_ENV_VAR))
        self.base_url = normalize_base_url(
            base_url or os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be positive seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.user_agent = f"{user_agent} {USER_AGENT}" if user_agent else USER_AGENT
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self.sendcloud = SendcloudResource(self)

    def __repr__(self) -> str:
        return f"WemasyClient(base_url={self.base_url!r}, token=<redacted>)"

    async def __aenter__(self) -> WemasyClient:
        self._transport()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client created it; a session passed in is left open."""
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _transport(self) -> AiohttpTransport:
        if self._closed:
            raise WemasyError("this WemasyClient is closed; make a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return AiohttpTransport(self._session)

    async def request(
        self,
        method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | str,
        path: str,
        *,
        json: Any = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> Any:
        """Call any Wemasy endpoint (``path`` relative to ``base_url``) and return its decoded JSON.

        Same auth, headers and error mapping as the modelled calls:

        >>> await client.request("GET", "/services/webshop/v1/integrations/sendcloud/status")
        {'error': False, 'integration': {...}}
        """
        response = await self._send(method, path, json_body=json, timeout=timeout)
        return decipher_response(response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> RawResponse:
        """Send one call, following same-origin redirects; the answer is not yet deciphered."""
        transport = self._transport()
        request = build_request(
            method, self.base_url, path, token=self._token, json_body=json_body, user_agent=self.user_agent
        )
        seconds = self.timeout if isinstance(timeout, NotGiven) else timeout
        for _ in range(self.max_redirects + 1):
            started = time.monotonic()
            response = await transport.send(request, timeout=seconds)
            logger.debug(
                "%s %s -> %d in %.3f s", request.method, request.url, response.status, time.monotonic() - started
            )
            next_request = follow_redirect(request, response)
            if next_request is None:
                return response
            request = next_request
        return response
