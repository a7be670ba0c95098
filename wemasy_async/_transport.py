"""The aiohttp transport: send a PreparedRequest, return a RawResponse. Nothing else lives here.

It reads and inflates bodies itself, so that the body cap bounds memory and not only what is kept, and
turns aiohttp's failures into the SDK's through one table (docs/design/client.md).
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import Mapping

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from ._errors import APIConnectionError, APITimeoutError, ClientClosedError, InvalidResponseError, WemasyError
from ._protocol import PreparedRequest, RawResponse, new_record

__all__ = ["MAX_BODY_BYTES", "READ_SIZE", "TIMEOUT_CACHE_SIZE", "AiohttpTransport", "small_reads_connector"]

#: The most bytes read of one answer's body, after decompression: these endpoints answer in kilobytes, so
#: anything near this is not theirs (a proxy's page, a gzip bomb), and is refused rather than held.
MAX_BODY_BYTES = 8 * 1024 * 1024

#: How much of a refused body its error keeps (``raw_text``), to show what answered.
EXCERPT_BYTES = 2048

#: The most one step of inflating produces: zlib builds its output in blocks and joins them, so a step
#: briefly holds twice its output.
INFLATE_STEP = 256 * 1024

#: The encodings the SDK asks for (its ``Accept-Encoding``) and inflates itself, a bounded step at a time:
#: aiohttp's own inflating is turned off on every request (a caller's session too): older aiohttp (3.9) inflates
#: each network read whole, a gzip bomb's 256 KiB read into hundreds of MB.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


#: The most distinct per-call ``timeout=`` values whose ``aiohttp.ClientTimeout`` is kept for reuse; a value
#: past them gets a new one for its call (the oldest kept one makes room), so a service that passes a
#: different timeout on every call holds a bounded number.
TIMEOUT_CACHE_SIZE = 64

#: Bytes asked of the socket per read on a plain-TCP connection. asyncio asks 256 KiB, above glibc's mmap
#: threshold, so a read of a few hundred bytes can cost an mmap, page faults and an munmap.
READ_SIZE = 64 * 1024


class AiohttpTransport:
    """Sends requests on an aiohttp session; redirects are never followed here (see ``follow_redirect``).

    ``session_headers`` and ``session_timeout`` say what a session the client made itself already sends
    with every request; only what differs is passed per request, since aiohttp's per-request merging of
    headers and options costs as much as the rest of the SDK's work on a call. A caller's session gets
    everything per request. ``proxy`` (and ``proxy_headers``, its credentials) is the proxy a session the
    client made goes through, read from the environment once when it was made; a caller's session keeps its
    own settings.

    No frame of :meth:`send` holds a mapping with the token, and no error it raises is chained to an
    aiohttp exception (whose ``request_info`` holds the request headers): crash reporters record both.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        session_headers: Mapping[str, str] | None = None,
        session_timeout: float | aiohttp.ClientTimeout | None = None,
        proxy: URL | None = None,
        proxy_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.session = session
        #: What the session sends with every request already (None for a caller's session).
        self.session_headers = session_headers
        self._session_timeout = session_timeout
        self._proxy = proxy
        self._proxy_headers = proxy_headers
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _client_timeout(self, timeout: float | aiohttp.ClientTimeout | None) -> aiohttp.ClientTimeout:
        if isinstance(timeout, aiohttp.ClientTimeout):
            return timeout  # the caller's own, or one made for this exchange (under a deadline): kept by nobody
        cache = self._timeouts
        client_timeout = cache.get(timeout)
        if client_timeout is None:
            if len(cache) >= TIMEOUT_CACHE_SIZE:
                del cache[next(iter(cache))]
            client_timeout = cache[timeout] = aiohttp.ClientTimeout(total=timeout)
        return client_timeout

    async def send(self, request: PreparedRequest, *, timeout: float | aiohttp.ClientTimeout | None) -> RawResponse:
        """One HTTP exchange; ``timeout`` in seconds (``None``: no limit) or an ``aiohttp.ClientTimeout``."""
        context = self._request(request, timeout)
        # aiohttp's exceptions hold the request headers, token included: each is turned into ours outside
        # its except block, so none is chained (not even as __context__), and the error keeps only text.
        error: WemasyError | None
        response: aiohttp.ClientResponse | None = None
        try:
            async with context as response:
                length = response.content_length
                if length is not None and length <= MAX_BODY_BYTES and "Content-Encoding" not in response.headers:
                    body = await response.read()
                else:  # no length, a length too large, or compressed: count what decompresses
                    try:
                        body = await _read_at_most(response, request)
                    except InvalidResponseError:
                        response.close()  # the rest is not read: the connection is dropped, not drained
                        raise
                return new_record(RawResponse, (response.status, response.headers, body, request.method, request.url))
        except (asyncio.TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            error = self._translated(exc, request, timeout)
            if error is None:
                raise
        # Out of the except blocks, so nothing is chained; the locals that held aiohttp's objects (and through
        # them the request's headers) are dropped.
        del context
        response = None
        try:
            raise error
        finally:
            # Python 3.10 resumes this coroutine inside asyncio's own handling of aiohttp's exception, and
            # chains that to any raise here: cut the link.
            error.__context__ = None

    def _request(
        self, request: PreparedRequest, timeout: float | aiohttp.ClientTimeout | None
    ) -> aiohttp.client._RequestContextManager:
        """The session's request for ``request``, passing only what the session does not already send."""
        # The headers that differ from the session's are worked out inside the call, so that no local of
        # this frame holds a mapping with the token.
        if self.session_headers is None:
            return self.session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                raise_for_status=False,
                timeout=self._client_timeout(timeout),
                auto_decompress=False,
            )
        if timeout == self._session_timeout:
            return self.session.request(
                request.method,
                request.url,
                # the client's cached body-less requests share the session's headers object
                headers=None
                if request.headers is self.session_headers
                else _differences(request.headers, self.session_headers),
                data=request.body,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                auto_decompress=False,
            )
        return self.session.request(
            request.method,
            request.url,
            headers=_differences(request.headers, self.session_headers),
            data=request.body,
            allow_redirects=False,
            timeout=self._client_timeout(timeout),
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
            auto_decompress=False,
        )

    def _translated(
        self, exc: BaseException, request: PreparedRequest, timeout: float | aiohttp.ClientTimeout | None
    ) -> WemasyError | None:
        """The SDK's error for what aiohttp raised (the one table of them); None: not one of its failures."""
        method, url = request.method, request.url
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
            return APITimeoutError(
                f"no answer within {_describe(timeout)} ({type(exc).__name__})", method=method, url=url
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return APIConnectionError(
                f"could not connect: {exc.os_error or exc}", method=method, url=url, ambiguous=False
            )
        if isinstance(exc, aiohttp.ClientError):
            return APIConnectionError(f"connection failed: {type(exc).__name__}: {exc}", method=method, url=url)
        if self.session.closed:
            # aiohttp's "Session is closed": the client was closed while this call was under way.
            return ClientClosedError(f"the client's session was closed while {method} {url} was under way")
        return None


class _SmallReads(ResponseHandler):
    """aiohttp's protocol of a connection, which has the socket read :data:`READ_SIZE` bytes at a time."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Only asyncio's socket transport has max_size; TLS (a reused buffer) and uvloop's keep their own reads.
        if isinstance(getattr(transport, "max_size", None), int):
            setattr(transport, "max_size", READ_SIZE)  # noqa: B010  # not in asyncio.Transport's type


def small_reads_connector() -> aiohttp.TCPConnector:
    """The connector of a session the client makes: aiohttp's, with connections that read :data:`READ_SIZE`
    bytes at a time, set once as each connection is made (nothing is done per request). An aiohttp whose
    connector makes its protocols another way keeps its own reads (only a cost in page faults)."""
    connector = aiohttp.TCPConnector()
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        # (mypy holds partial invariant; a _SmallReads is a ResponseHandler)
        connector._factory = functools.partial(_SmallReads, *factory.args, **factory.keywords)  # type: ignore[assignment]
    return connector


def _differences(headers: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str] | None:
    """The headers of a request that its session does not already send (None when there are none)."""
    return {k: v for k, v in headers.items() if defaults.get(k) != v} or None


def _describe(timeout: float | aiohttp.ClientTimeout | None) -> str:
    if isinstance(timeout, aiohttp.ClientTimeout):
        limits = [
            f"{name}={value:g} s"
            for name in ("total", "connect", "sock_connect", "sock_read")
            if (value := getattr(timeout, name)) is not None
        ]
        return "its timeout (" + ", ".join(limits) + ")" if limits else "its timeout"
    return f"{timeout} s"


async def _read_at_most(response: aiohttp.ClientResponse, request: PreparedRequest) -> bytes:
    """The body, inflated here (aiohttp's own inflating is off), refused past :data:`MAX_BODY_BYTES`.

    Memory stays bounded by the cap whatever arrives: a ``Content-Length`` past it is refused before the
    body is read (but for an excerpt), and each network chunk of a compressed body is inflated at most up
    to what the cap still allows, so a gzip bomb never inflates past it.
    """
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    wbits = _WBITS.get(encoding)
    if wbits is None and encoding != "identity":
        raise _refused(response, request, f"the answer is encoded as {encoding!r}, which was not asked for", b"")
    length = response.content_length
    if wbits is None and length is not None and length > MAX_BODY_BYTES:
        return await _refuse_large(response, request, await response.content.read(EXCERPT_BYTES))
    chunks: list[bytes] = []
    size = 0
    inflate = None if wbits is None else zlib.decompressobj(wbits)
    async for data in response.content.iter_any():
        while data:
            if inflate is None:
                chunk, data = data, b""
            else:
                if not size and not chunks and encoding == "deflate" and data[0] & 0x0F != 8:
                    inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send it
                try:
                    chunk = inflate.decompress(data, min(INFLATE_STEP, MAX_BODY_BYTES - size + 1))
                except zlib.error:
                    raise _refused(response, request, f"the answer's {encoding} encoding is damaged", b"") from None
                data = inflate.unconsumed_tail
                if inflate.eof:
                    data = b""
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                chunks.append(chunk)
                return await _refuse_large(response, request, _head(chunks))
            if chunk:
                chunks.append(chunk)
    return b"".join(chunks)


def _head(chunks: list[bytes]) -> bytes:
    """The first :data:`EXCERPT_BYTES` of the chunks, joining no more of them than that needs."""
    head = bytearray()
    for chunk in chunks:
        head += chunk[: EXCERPT_BYTES - len(head)]
        if len(head) >= EXCERPT_BYTES:
            break
    return bytes(head)


async def _refuse_large(response: aiohttp.ClientResponse, request: PreparedRequest, head: bytes) -> bytes:
    raise _refused(
        response,
        request,
        f"the answer's body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB (after decompression); "
        "it was not read further",
        head,
    )


def _refused(
    response: aiohttp.ClientResponse, request: PreparedRequest, message: str, head: bytes
) -> InvalidResponseError:
    return InvalidResponseError(
        message,
        status_code=response.status,
        headers=response.headers,
        raw_text=head[:EXCERPT_BYTES].decode("utf-8", errors="replace"),
        method=request.method,
        url=request.url,
    )
