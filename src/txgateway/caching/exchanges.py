# -*- test-case-name: tests.test_caching -*-
"""
The exchanges the cache gives back: stored answers, and upstream ones whose body it keeps.

An exchange (see L{txgateway.forwarding}) is a response and the call that
ends it.  L{storedResponse} makes an C{IResponse} of a stored entry (its
fields as a fresh answer carries them: C{Age}, C{Content-Length}, or a 304
for a client that already has it); L{TeeResponse} is an upstream response
whose body is also collected for the store while it is relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from txgateway.caching import policy
from txgateway.caching.ranges import UNSATISFIABLE
from txgateway.context import RequestContext
from txgateway.http.replay import StillTransport

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.caching.policy import StoredResponse

__all__ = ["BodyCollector", "DetachedRequest", "Exchange", "Tee", "TeeResponse", "detached", "storedResponse"]

_DONE = Failure(ResponseDone("Response body fully received"))
# Fields a stored response does not carry over as they are: made afresh, or connection-specific.
_NOT_REPLAYED = frozenset((b"age", b"content-length")) | policy.HOP_BY_HOP


class Exchange:
    """A response, and what ends it: the exchange it came from (if any), then C{onFinish}."""

    __slots__ = ("response", "inner", "onFinish")

    def __init__(self, response: IResponse, inner: Any, onFinish: Callable[[], None] | None = None) -> None:
        self.response = response
        self.inner = inner
        self.onFinish = onFinish

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        try:
            if self.inner is not None:
                self.inner.finish(complete, clientGone)
        finally:
            if self.onFinish is not None:
                self.onFinish()


@implementer(IResponse)
class StoredBody:
    """A stored response as an C{IResponse}: its body delivered at once."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, phrase: bytes | None, headers: Headers, body: bytes) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        # The Content-Length is in the fields (a HEAD answer carries it too).
        self.length = UNKNOWN_LENGTH
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StillTransport())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(_DONE)

    def setPreviousResponse(self, response: IResponse) -> None:
        pass


def storedResponse(entry: StoredResponse, age: float, notModified: bool,
                   span: tuple[int, int] | None = None) -> StoredBody:
    """
    C{entry} as an answer: its fields but for those made afresh (C{Age}
    per §4.2.3, C{Content-Length}); a 304 with §4.1's fields instead when
    C{notModified}; the bytes C{span} (first, last) of its body as a 206
    with C{Content-Range}, or a 416 for L{ranges.UNSATISFIABLE} (RFC 9110
    §14.4, §15.3.7, §15.5.17).
    """
    code = 304 if notModified else entry.code
    phrase = None if notModified else (entry.phrase or None)
    headers = Headers()
    for k, v in (policy.notModifiedFields(entry.headers) if notModified else entry.headers):
        if k.lower() not in _NOT_REPLAYED:
            headers.addRawHeader(k, v)
    headers.setRawHeaders(b"Age", [policy.formatDelta(age)])
    body = entry.body
    if span is not None and not notModified:
        total = len(body)
        if span == UNSATISFIABLE:
            code, phrase, body = 416, b"Range Not Satisfiable", b""
            headers.setRawHeaders(b"Content-Range", [b"bytes */%d" % total])
        else:
            first, last = span
            code, phrase, body = 206, b"Partial Content", body[first:last + 1]
            headers.setRawHeaders(b"Content-Range", [b"bytes %d-%d/%d" % (first, last, total)])
    if notModified or code < 200 or code in (204, 304):
        body = b""
    else:
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    return StoredBody(code, phrase, headers, body)


class Tee:
    """Collects a relayed body for the store until it grows past the object limit."""

    __slots__ = ("limit", "chunks", "size", "overflow", "onOverflow")

    def __init__(self, limit: int, onOverflow: Callable[[], None]) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.onOverflow = onOverflow

    def __call__(self, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.chunks = []
            self.onOverflow()
            return
        self.chunks.append(data)



@implementer(IResponse)
class TeeResponse:
    """An upstream response whose body also goes to a L{Tee}; C{bodyEnded(complete)} once it ends."""

    def __init__(self, response: IResponse, tee: Tee, bodyEnded: Callable[[bool], None]) -> None:
        self._response = response
        self.version = getattr(response, "version", (b"HTTP", 1, 1))
        self.code = response.code
        self.phrase = response.phrase
        self.headers = response.headers
        self.length = response.length
        self.request = getattr(response, "request", None)
        self.previousResponse = getattr(response, "previousResponse", None)
        self._tee = tee
        self._bodyEnded = bodyEnded

    def deliverBody(self, protocol: Any) -> None:
        self._response.deliverBody(_Teeing(protocol, self._tee, self._bodyEnded))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class _Teeing(Protocol):
    def __init__(self, protocol: Any, tee: Tee, bodyEnded: Callable[[bool], None]) -> None:
        self.protocol = protocol
        self.tee = tee
        self.bodyEnded = bodyEnded

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.tee(data)
        self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        # Stored (and waiters released) before the relay ends the exchange.
        try:
            self.bodyEnded(isinstance(reason.value, (ResponseDone, PotentialDataLoss)))
        finally:
            self.protocol.connectionLost(reason)


class BodyCollector(Protocol):
    """
    Reads a body nobody is waiting for (background revalidation); fires
    with C{(body, gaveUp)}: the body, or None when it was too big (C{gaveUp})
    or cut off by the target.
    """

    def __init__(self, limit: int, done: Deferred[tuple[bytes | None, bool]]) -> None:
        self.done = done
        self.tee = Tee(limit, self._tooBig)

    def _tooBig(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.tee(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        overflow = self.tee.overflow
        complete = reason.check(ResponseDone, PotentialDataLoss) is not None and not overflow
        self.done.callback((b"".join(self.tee.chunks) if complete else None, overflow))


class DetachedRequest:
    """
    What a background revalidation needs of the client's request once the
    client's own exchange may be over (Twisted frees a finished request's
    body and channel): its header fields and whether it came over TLS.
    """

    method = b"GET"
    content = None

    def __init__(self, request: Any) -> None:
        self.requestHeaders = Headers()
        for k, vs in request.requestHeaders.getAllRawHeaders():
            self.requestHeaders.setRawHeaders(k, list(vs))
        self._secure = bool(request.isSecure())
        self.uri = request.uri

    def isSecure(self) -> bool:
        return self._secure


def detached(context: RequestContext, clock: IReactorTime) -> RequestContext:
    bg = RequestContext(DetachedRequest(context.request), clock.seconds(), context.requestId,  # type: ignore[arg-type]
                        context.clientIP, context.peerIP, b"GET", context.host, context.path, context.query)
    bg.route = context.route
    bg.upstreamPath = context.upstreamPath
    bg.identity = context.identity
    bg.forwardHeaders = list(context.forwardHeaders)
    bg.removeHeaders = list(context.removeHeaders)
    bg.traceId, bg.spanId, bg.traceFlags, bg.tracestate = (context.traceId, context.spanId, context.traceFlags,
                                                          context.tracestate)
    return bg


