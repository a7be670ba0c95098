"""The aiohttp transport: send a PreparedRequest, return a RawResponse. Nothing else lives here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from ._errors import APIConnectionError, APITimeoutError, ClientClosedError, InvalidResponseError
from ._protocol import PreparedRequest, RawResponse

__all__ = ["MAX_BODY_BYTES", "AiohttpTransport"]

#: The most bytes read of one answer's body, after decompression: these endpoints answer in kilobytes, so
#: anything near this is not theirs (a proxy's page, a gzip bomb), and is refused rather than held.
MAX_BODY_BYTES = 8 * 1024 * 1024


class AiohttpTransport:
    """Sends requests on an aiohttp session; redirects are never followed here (see ``follow_redirect``).

    ``session_headers`` and ``session_timeout`` say what a session the client made itself already sends
    with every request; only what differs is passed per request, since aiohttp's per-request merging of
    headers and options costs as much as the rest of the SDK's work on a call. A caller's session gets
    everything per request.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        session_headers: Mapping[str, str] | None = None,
        session_timeout: float | None = None,
    ) -> None:
        self.session = session
        #: What the session sends with every request already (None for a caller's session).
        self.session_headers = session_headers
        self._session_timeout = session_timeout
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    async def send(self, request: PreparedRequest, *, timeout: float | None) -> RawResponse:
        defaults = self.session_headers
        if defaults is not None and timeout == self._session_timeout:
            if request.headers is defaults:  # the client's cached body-less requests share the object
                extra = None
            else:
                extra = {k: v for k, v in request.headers.items() if defaults.get(k) != v}
            context = self.session.request(
                request.method, request.url, headers=extra or None, data=request.body, allow_redirects=False
            )
        else:
            client_timeout = self._timeouts.get(timeout)
            if client_timeout is None:
                client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
            context = self.session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                raise_for_status=False,
                timeout=client_timeout,
            )
        # aiohttp's exceptions can hold the request headers, token included, so none is chained: the
        # error keeps only its type and text.
        try:
            async with context as response:
                length = response.content_length
                if length is not None and length <= MAX_BODY_BYTES and "Content-Encoding" not in response.headers:
                    body = await response.read()
                else:  # no length, a length too large, or compressed: count what decompresses
                    body = await _read_at_most(response, request)
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
        except RuntimeError:
            if not self.session.closed:
                raise
            # aiohttp's "Session is closed": the client was closed while this call was under way.
            raise ClientClosedError(
                f"the client's session was closed while {request.method} {request.url} was under way"
            ) from None


async def _read_at_most(response: aiohttp.ClientResponse, request: PreparedRequest) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            excerpt = b"".join(chunks)[:2048].decode("utf-8", errors="replace")
            raise InvalidResponseError(
                f"the answer's body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB (after decompression); "
                "it was not read further",
                status_code=response.status,
                headers=response.headers,
                raw_text=excerpt,
                method=request.method,
                url=request.url,
            )
        chunks.append(chunk)
    return b"".join(chunks)
