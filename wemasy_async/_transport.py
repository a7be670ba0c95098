"""The aiohttp transport: send a PreparedRequest, return a RawResponse. Nothing else lives here."""

from __future__ import annotations

import asyncio

import aiohttp

from ._errors import APIConnectionError, APITimeoutError
from ._protocol import PreparedRequest, RawResponse

__all__ = ["AiohttpTransport"]


class AiohttpTransport:
    """Sends requests on an aiohttp session; redirects are never followed here (see ``follow_redirect``)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, request: PreparedRequest, *, timeout: float | None) -> RawResponse:
        # aiohttp's exceptions can hold the request headers, token included, so none is chained: the
        # error keeps only its type and text.
        try:
            async with self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                allow_redirects=False,
                raise_for_status=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                return RawResponse(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    method=request.method,
                    url=request.url,
                )
        except asyncio.TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise APITimeoutError(
                f"no answer within {timeout} s ({type(exc).__name__})", method=request.method, url=request.url
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise APIConnectionError(
                f"could not connect: {exc.os_error or exc}",
                method=request.method,
                url=request.url,
                ambiguous=False,
            ) from None
        except aiohttp.ClientError as exc:
            raise APIConnectionError(
                f"connection failed: {type(exc).__name__}: {exc}", method=request.method, url=request.url
            ) from None
