# -*- test-case-name: tests.test_websocket_http,tests.e2e.test_websocket -*-
"""
The target side of a WebSocket upgrade: a connection of its own, the
upgrade request written as it is, the answer's head read by hand.

Why not the upstream's Agent and pool: the Agent's client protocol reads an
HTTP/1.1 message and then either hands the connection back to the pool or
closes it; after a 101 the connection is not HTTP any more, and its bytes
must go to the client as they come.  So an upgrade never takes a pooled
connection and never returns one: L{connectTarget} makes a connection
through the same endpoint the upstream's client would use (its TLS for an
C{https://} target, the in-memory origins of L{txgateway.testing}), writes
the head, and L{TargetProtocol} reads the answer's head.  A 101 turns the
protocol into a pipe (L{TargetProtocol.pipeTo}); any other answer is an
L{IResponse} whose body is read with the framing its head declares, so the
gateway relays it as it relays every response (L{txgateway.forwarding.relay}).

Private Twisted names used here: C{Agent._getEndpoint} (the endpoint of a
target URL, as the Agent makes it) and C{twisted.web.http._ChunkedTransferDecoder}
(a chunked body of a refused upgrade), held to stock behaviour by
tests/test_websocket_handshake.py; C{Headers._rawHeaders}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone
from twisted.web.http import _ChunkedTransferDecoder
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from txgateway.http.headers import NO_BODY_STATUS

__all__ = ["HandshakeResponse", "TargetProtocol", "UpgradeRefused", "connectTarget", "requestHead"]

# A response head bigger than this is not a WebSocket server's answer.
MAX_HEAD = 64 * 1024


class UpgradeRefused(Exception):
    """The target's answer could not be read as HTTP (or it closed before answering)."""


def requestHead(target: bytes, headers: Headers) -> bytes:
    """The upgrade request's head: C{GET target HTTP/1.1} and C{headers} as they are."""
    parts = [b"GET ", target, b" HTTP/1.1\r\n"]
    for name, values in headers._rawHeaders.items():
        for value in values:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def connectTarget(agent: Any, url: bytes, head: bytes) -> Deferred[TargetProtocol]:
    """
    Connect to the target of C{url} the way C{agent} (an upstream's
    L{UpstreamAgent <txgateway.http.client.agent.UpstreamAgent>}) would, and
    send C{head}; fires with the protocol once connected.
    """
    endpoint = agent._getEndpoint(URI.fromBytes(url))
    return connectProtocol(endpoint, TargetProtocol(head))  # type: ignore[no-any-return]


@implementer(IResponse)
class HandshakeResponse:
    """The target's answer to an upgrade request, as an C{IResponse}."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, phrase: bytes, headers: Headers, length: Any, source: TargetProtocol) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._source = source

    def deliverBody(self, protocol: Any) -> None:
        self._source.deliver(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response  # type: ignore[assignment]


class TargetProtocol(Protocol):
    """
    One upgrade request on its own connection.

    L{answered} fires with the L{HandshakeResponse} once its head is in, or
    fails with L{UpgradeRefused}.  After a 101, L{pipeTo} says where the
    bytes that follow go; after anything else, the body goes to the
    protocol given to C{deliverBody}, then the connection closes.
    """

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.answered: Deferred[HandshakeResponse] = Deferred(lambda _: self.abort())
        self.response: HandshakeResponse | None = None
        self._buffer = b""
        self._sink: Callable[[bytes], None] | None = None
        self._onLost: Callable[[Failure], None] | None = None
        self._body: Any = None  # the body's reader, for an answer other than 101
        self._bodyLeft = -1  # Content-Length bytes still to come (-1: chunked or to the close)
        self._held: list[bytes] = []  # body bytes that came before deliverBody
        self._ended: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        noDelay = getattr(self.transport, "setTcpNoDelay", None)  # (a TLS transport passes it to its socket)
        if noDelay is not None:
            # A WebSocket sends small frames both ways: Nagle's algorithm would hold each behind the
            # previous one's delayed ACK (up to 40 ms), as the client side already avoids (HTTPChannel).
            try:
                noDelay(True)
            except OSError:
                pass
        self.transport.write(self.head)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def pipeTo(self, sink: Callable[[bytes], None], onLost: Callable[[Failure], None]) -> bytes:
        """After a 101: bytes from now on go to C{sink}; returns those that came with the head."""
        self._sink = sink
        self._onLost = onLost
        rest, self._buffer = self._buffer, b""
        return rest

    def dataReceived(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
        elif self.response is None:
            self._headIn(data)
        else:
            self._bodyIn(data)

    def _headIn(self, data: bytes) -> None:
        buffered = self._buffer + data
        end = buffered.find(b"\r\n\r\n")
        if end == -1:
            self._buffer = buffered
            if len(buffered) > MAX_HEAD:
                self._refuse(f"response head over {MAX_HEAD} bytes")
            return
        try:
            code, phrase, headers = _parseHead(buffered[:end])
            length = _bodyLength(code, headers)
        except ValueError as e:
            self._refuse(str(e))
            return
        rest = buffered[end + 4:]
        if code == 101:
            self.response = HandshakeResponse(code, phrase, headers, 0, self)
            self._buffer = rest
            self.answered.callback(self.response)
            return
        self._buffer = b""
        self.response = HandshakeResponse(code, phrase, headers, length, self)
        if headers.getRawHeaders(b"transfer-encoding"):
            self._body = _ChunkedTransferDecoder(self._bodyData, self._bodyEnd)
        elif length is not UNKNOWN_LENGTH:
            self._bodyLeft = length
        self.answered.callback(self.response)
        if rest or self._bodyLeft == 0:
            self._bodyIn(rest)

    def _refuse(self, why: str) -> None:
        self._buffer = b""
        self.abort()
        if not self.answered.called:
            self.answered.errback(UpgradeRefused(why))

    def _bodyIn(self, data: bytes) -> None:
        if self._body is not None:
            try:
                self._body.dataReceived(data)
            except Exception as e:  # noqa: BLE001 - a malformed chunk: the body is cut
                self._bodyEnd(b"", Failure(e))
            return
        left = self._bodyLeft
        if left >= 0:
            data = data[:left]
            self._bodyLeft = left - len(data)
        if data:
            self._bodyData(data)
        if self._bodyLeft == 0:
            self._bodyEnd(b"")

    def _bodyData(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is None:
            self._held.append(data)
        else:
            receiver.dataReceived(data)

    _receiver: Any = None

    def _bodyEnd(self, rest: bytes, failure: Failure | None = None) -> None:
        if self._ended is not None:
            return
        self._ended = failure or Failure(ResponseDone())
        self._body = None
        self._bodyLeft = -2  # nothing more is read
        if self.transport is not None:
            self.transport.loseConnection()  # an upgrade's connection is never reused
        if self._receiver is not None:
            self._receiver.connectionLost(self._ended)

    def deliver(self, protocol: Any) -> None:
        """The body of a non-101 answer goes to C{protocol} (with the connection as its producer)."""
        self._receiver = protocol
        protocol.makeConnection(self.transport)
        held, self._held = self._held, []
        for data in held:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if not self.answered.called:
            self.answered.errback(UpgradeRefused("the target closed the connection before answering"))
            return
        if self._onLost is not None:
            self._onLost(reason)
        elif self.response is not None and self.response.code != 101 and self._ended is None:
            # Read to the close (no length declared), or cut short.
            complete = self.response.length is UNKNOWN_LENGTH and self._body is None
            self._bodyEnd(b"", Failure(ResponseDone()) if complete else reason)


def _parseHead(head: bytes) -> tuple[int, bytes, Headers]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b"\n" in line or b"\x00" in line:
            raise ValueError(f"malformed header line: {line[:80]!r}")
        headers.addRawHeader(name, value.strip(b" \t"))
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", headers


def _bodyLength(code: int, headers: Headers) -> Any:
    if code in NO_BODY_STATUS or code < 200:
        return 0
    if headers.getRawHeaders(b"transfer-encoding"):
        return UNKNOWN_LENGTH
    declared = headers.getRawHeaders(b"content-length")
    if declared:
        if len(set(declared)) != 1 or not declared[0].isdigit():
            raise ValueError(f"bad Content-Length: {declared!r}")
        return int(declared[0])
    return UNKNOWN_LENGTH
