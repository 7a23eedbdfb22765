# -*- test-case-name: tests.test_edge_compression -*-
"""
Response compression at the edge (C{routes[].compress}): zstd, brotli, gzip, streamed.

L{CompressingForwarder} decorates a route's L{IForwarder} the way the cache
does, and sits OUTSIDE the cache: the cache stores what the origin sent
(each origin encoding its own variant, by the origin's C{Vary}), and what
the cache serves, hit or miss, is compressed on the way to the client.  So
one stored entry serves every client whatever it accepts, and a hit costs
the compression of its body (cheap at the streaming levels used here).

The choice follows RFC 9110: the client's C{Accept-Encoding} q-values
decide (the route's C{encodings} order breaks ties), C{q=0} refuses; a
response already carrying C{Content-Encoding}, marked C{Cache-Control:
no-transform}, a range (206), of a type not in C{types}, or known to be
shorter than C{min_bytes} goes out untouched.  A compressible response gets
C{Vary: Accept-Encoding} whether or not this client got it compressed (the
representation depends on the header either way); a compressed one loses
C{Content-Length} (it is chunked) and its strong ETag becomes weak (the
bytes are no longer the origin's).

Streaming: each chunk the relay gets from upstream is compressed and
flushed at once (a sync flush: a few bytes per chunk), so a slow or
endless stream (server-sent events) reaches the client as it comes; the
whole body is never held.  The codecs are the C{zlib}, C{brotli} and
C{zstandard} libraries; C{brotli} and C{zstandard} are optional imports,
and an encoding whose library is missing is simply never chosen.

Request bodies are never decompressed: a request's C{Content-Encoding}
is forwarded as sent (request decompression is off, by design).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from txgateway.interfaces import IForwarder

try:
    import brotli
except ImportError:  # pragma: no cover - optional codec
    brotli = None  # type: ignore[assignment]
try:
    import zstandard
except ImportError:  # pragma: no cover - optional codec
    zstandard = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from txgateway.config.schema import CompressConfig
    from txgateway.context import RequestContext

__all__ = ["AVAILABLE", "CompressingForwarder", "chooseEncoding", "compressorFor"]

AVAILABLE = frozenset(c for c, lib in (("gzip", zlib), ("br", brotli), ("zstd", zstandard)) if lib is not None)


class _Compressor:
    """One body's streaming compressor: C{chunk} (compressed and flushed) and C{end}."""

    __slots__ = ("chunk", "end")

    def __init__(self, chunk: Callable[[bytes], bytes], end: Callable[[], bytes]) -> None:
        self.chunk = chunk
        self.end = end


def compressorFor(coding: str, level: int | None = None) -> _Compressor:
    """A fresh streaming compressor for C{coding} (C{gzip}, C{br} or C{zstd})."""
    if coding == "gzip":
        z = zlib.compressobj(min(level or 5, 9), zlib.DEFLATED, 31)  # 31: the gzip wrapper
        return _Compressor(lambda data: z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH), lambda: z.flush(zlib.Z_FINISH))
    if coding == "br":
        assert brotli is not None
        b = brotli.Compressor(quality=min(level or 4, 11))
        return _Compressor(lambda data: b.process(data) + b.flush(), b.finish)
    assert coding == "zstd" and zstandard is not None
    zc = zstandard.ZstdCompressor(level=min(level or 3, 19)).compressobj()
    block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    return _Compressor(lambda data: zc.compress(data) + zc.flush(block), zc.flush)


def _acceptable(values: Sequence[bytes] | None) -> dict[str, float]:
    """C{Accept-Encoding} as coding -> q (RFC 9110 12.5.3); a bad q counts as 0."""
    out: dict[str, float] = {}
    for value in values or ():
        for item in value.split(b","):
            parts = item.strip().split(b";")
            coding = parts[0].strip().lower().decode("latin-1")
            if not coding:
                continue
            q = 1.0
            for param in parts[1:]:
                k, _, v = param.strip().partition(b"=")
                if k.strip().lower() == b"q":
                    try:
                        q = min(1.0, max(0.0, float(v.strip())))
                    except ValueError:
                        q = 0.0
            out[coding] = q
    return out


def chooseEncoding(acceptEncoding: Sequence[bytes] | None, offered: Sequence[str]) -> str | None:
    """The coding to use: the highest q the client gives among C{offered} (their order breaks ties), or None."""
    accepted = _acceptable(acceptEncoding)
    if not accepted:
        return None
    star = accepted.get("*", 0.0)
    best, bestQ = None, 0.0
    for coding in offered:
        if coding not in AVAILABLE:
            continue
        q = accepted.get(coding, accepted.get("x-gzip", star) if coding == "gzip" else star)
        if q > bestQ:
            best, bestQ = coding, q
    return best


def _typeMatches(contentType: bytes | None, types: Sequence[str]) -> bool:
    if not contentType:
        return False
    media = contentType.split(b";", 1)[0].strip().lower().decode("latin-1")
    major = media.split("/", 1)[0]
    return any(t in (media, "*/*") or (t.endswith("/*") and t[:-2] == major) for t in types)


def _noTransform(values: Sequence[bytes] | None) -> bool:
    return any(d.strip().lower() == b"no-transform" for v in values or () for d in v.split(b","))


_NEVER = frozenset((204, 206, 304))


def _weaken(headers: Headers) -> None:
    """RFC 9110 8.8.1: a transformed representation's validator is weak."""
    etags = headers.getRawHeaders(b"etag")
    if etags:
        headers.setRawHeaders(b"etag", [e if e.startswith(b"W/") else b"W/" + e for e in etags])


@implementer(IForwarder)
class CompressingForwarder:
    """A route's forwarder (or its cache), with responses compressed on the way out."""

    __slots__ = ("upstream", "config", "encodings")

    def __init__(self, upstream: Any, config: CompressConfig) -> None:
        self.upstream = upstream
        self.config = config
        self.encodings = tuple(e for e in config.encodings if e in AVAILABLE)

    async def fetch(self, context: RequestContext, method: bytes | None = None,
                    extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        exchange = await self.upstream.fetch(context, method, extraHeaders)
        response = exchange.response
        if response.code == 304:
            # A 304 stands for the representation this client would get: the
            # compressed one's ETag is weak, so the 304's must be too.
            if chooseEncoding(context.request.requestHeaders.getRawHeaders(b"accept-encoding"), self.encodings):
                _weaken(response.headers)
            return exchange
        if not self.compressible(response, context.method == b"HEAD"):
            return exchange
        coding = chooseEncoding(context.request.requestHeaders.getRawHeaders(b"accept-encoding"), self.encodings)
        return _Exchange(exchange, _Compressed(response, coding, self.config.level))

    def compressible(self, response: IResponse, head: bool = False) -> bool:
        code = response.code
        if code < 200 or code in _NEVER:
            return False
        h = response.headers
        encoded = h.getRawHeaders(b"content-encoding")
        if encoded and any(v.strip().lower() not in (b"", b"identity") for v in encoded):
            return False
        if h.hasHeader(b"content-range") or _noTransform(h.getRawHeaders(b"cache-control")):
            return False
        length = response.length
        if head:  # no body came: the Content-Length says what a GET would get, so HEAD and GET agree
            declared = h.getRawHeaders(b"content-length")
            length = int(declared[0]) if declared and declared[0].isdigit() else UNKNOWN_LENGTH
        if length is not UNKNOWN_LENGTH and length < self.config.min_bytes:
            return False
        ct = h.getRawHeaders(b"content-type")
        return _typeMatches(ct[0] if ct else None, self.config.types)


class _Exchange:
    """The inner exchange with its response replaced; everything else (C{finish}) is the inner one's."""

    __slots__ = ("inner", "response")

    def __init__(self, inner: Any, response: IResponse) -> None:
        self.inner = inner
        self.response = response

    def finish(self, complete: bool, clientGone: bool) -> None:
        self.inner.finish(complete, clientGone)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@implementer(IResponse)
class _Compressed:
    """An C{IResponse} whose head says what the client gets and whose body is compressed as it streams."""

    def __init__(self, inner: IResponse, coding: str | None, level: int | None) -> None:
        self._inner = inner
        self._coding = coding
        self._level = level
        self.version = inner.version
        self.code = inner.code
        self.phrase = inner.phrase
        self.request = inner.request
        self.previousResponse = inner.previousResponse
        headers = Headers()
        for name, values in inner.headers.getAllRawHeaders():
            headers.setRawHeaders(name, list(values))
        vary = headers.getRawHeaders(b"vary") or []
        tokens = {t.strip().lower() for v in vary for t in v.split(b",")}
        if b"accept-encoding" not in tokens and b"*" not in tokens:
            headers.setRawHeaders(b"vary", [*vary, b"Accept-Encoding"])
        if coding is None:
            self.headers = headers
            self.length = inner.length
            return
        headers.setRawHeaders(b"content-encoding", [coding.encode()])
        headers.removeHeader(b"content-length")
        _weaken(headers)
        self.headers = headers
        self.length = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        if self._coding is None:
            self._inner.deliverBody(protocol)
        else:
            self._inner.deliverBody(_Compressing(protocol, compressorFor(self._coding, self._level)))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class _Compressing(Protocol):
    """Between the upstream body and the relay: each chunk compressed and flushed, the end written once."""

    def __init__(self, inner: Protocol, compressor: _Compressor) -> None:
        self.inner = inner
        self.compressor = compressor

    def connectionMade(self) -> None:
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        out = self.compressor.chunk(data)
        if out:
            self.inner.dataReceived(out)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            tail = self.compressor.end()
            if tail:
                self.inner.dataReceived(tail)
        self.inner.connectionLost(reason)
