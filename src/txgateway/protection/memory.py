# -*- test-case-name: tests.test_protection -*-
"""
Whole answers in memory: what a batch or a coalesced flight hands to each client.

A micro-batch answers many clients from one backend body, and a coalesced
flight answers many from one response; neither can stream one upstream body
to several clients, so the body is read whole (bounded) and each client gets
an exchange of its own over the same immutable bytes: L{MemoryResponse}, an
C{IResponse} whose body is delivered at once, and L{MemoryExchange}, whose
C{finish} has nothing to end (the upstream lease was finished when the body
had been read).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from txgateway.http.replay import StillTransport

__all__ = ["BodyTooLarge", "MemoryExchange", "MemoryResponse", "readWhole"]

_DONE = Failure(ResponseDone("Response body fully received"))


class BodyTooLarge(Exception):
    """
    An answer over the bound that may be held in memory for sharing.
    C{response} is the same answer, its body from the start (the part read
    so far, then the rest as it arrives), for the one client that may still
    have it.
    """

    def __init__(self, limit: int, response: IResponse) -> None:
        super().__init__(f"answer over {limit} bytes")
        self.response = response


@implementer(IResponse)
class MemoryResponse:
    """An answer whose body is already in memory."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, phrase: bytes = b"") -> None:
        self.code = code
        self.phrase = phrase or _PHRASES.get(code, b"")
        self.headers = Headers()
        for name, value in headers:
            self.headers.addRawHeader(name, value)
        self.body = body
        self.length = len(body)

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(StillTransport())  # type: ignore[arg-type]
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(_DONE)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response  # type: ignore[assignment]


_PHRASES = {200: b"OK", 400: b"Bad Request", 502: b"Bad Gateway", 503: b"Service Unavailable"}


class MemoryExchange:
    """An exchange over a L{MemoryResponse}: nothing upstream is left to end."""

    __slots__ = ("response",)

    def __init__(self, response: MemoryResponse) -> None:
        self.response = response

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        pass


class _Collect(Protocol):
    """
    Collects a body up to C{limit}; past it, keeps what it read and becomes
    the relay of the rest to whoever takes the L{_Continued} response.
    """

    def __init__(self, done: Deferred[bytes], limit: int, response: IResponse) -> None:
        self.done = done
        self.limit = limit
        self.response = response
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False
        self.target: Protocol | None = None
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.target is not None:
            self.target.dataReceived(data)
            return
        self.parts.append(data)
        if self.over:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.transport.pauseProducing()  # type: ignore[union-attr]  # until someone takes the rest
            self.done.errback(BodyTooLarge(self.limit, _Continued(self)))

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.over:
            if self.target is not None:
                self.target.connectionLost(reason)
            else:
                self.lost = reason
            return
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)

    def attach(self, protocol: Protocol) -> None:
        protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        parts, self.parts = self.parts, []
        for data in parts:
            protocol.dataReceived(data)
        if self.lost is not None:
            protocol.connectionLost(self.lost)
            return
        self.target = protocol
        self.transport.resumeProducing()  # type: ignore[union-attr]


@implementer(IResponse)
class _Continued:
    """An upstream answer whose body was partly read: the part read, then the rest as it streams."""

    previousResponse = None

    def __init__(self, collector: _Collect) -> None:
        original = collector.response
        self.collector = collector
        self.version = original.version
        self.code = original.code
        self.phrase = original.phrase
        self.headers = original.headers
        self.length = original.length
        self.request = original.request

    def deliverBody(self, protocol: Protocol) -> None:
        self.collector.attach(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response  # type: ignore[assignment]


def readWhole(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}; fails with L{BodyTooLarge} past C{limit} bytes
    (carrying the response, whole, for one reader), or as the body broke off.
    """
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done, limit, response))
    return done
