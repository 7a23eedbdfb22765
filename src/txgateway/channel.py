"""
The listening side: twisted.web's Site, Channel and Request, bounded.

twisted.web reads whatever a client sends; a gateway must cap the request
head (431) and body (413) before anything is buffered, count connections and
answer with its own small JSON errors instead of Twisted's HTML pages.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web import http, server

if TYPE_CHECKING:
    from .config import ServerConfig
    from .observe import Metrics


def errorBody(status: int, message: str, requestId: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": message, "status": status}
    if requestId is not None:
        body["request_id"] = requestId
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _rawResponse(status: int, reason: bytes, message: str) -> bytes:
    body = errorBody(status, message)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))


class GatewayRequest(server.Request):
    """A request that adds no default Content-Type and knows when its client left."""

    defaultContentType = None
    gone = False
    context: Any = None

    def gotLength(self, length: int | None) -> None:
        self._bodyBytes = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        channel: Any = self.channel
        limit = channel.site.limits.max_request_body
        self._bodyBytes += len(data)
        if self._bodyBytes > limit:
            channel.refuse(413, b"Content Too Large", f"request body over {limit} bytes")
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Any) -> None:
        self.gone = True
        super().connectionLost(reason)

    def processingFailed(self, reason: Any) -> None:
        # Never Twisted's HTML traceback page: log, then a JSON 500.
        from twisted.logger import Logger

        Logger(namespace="txgateway").failure("unhandled error handling a request", reason)
        if self.gone or self.finished:
            return None
        if not self.startedWriting:
            body = errorBody(500, "internal gateway error")
            self.setResponseCode(500)
            self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
            self.write(body)
            self.finish()
        else:
            self.channel.transport.abortConnection()  # type: ignore[union-attr]
        return None


class GatewayChannel(http.HTTPChannel):
    """Enforces the head and body limits before Twisted buffers anything."""

    site: Any

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connectionOpened(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.site.connectionClosed(self)
        super().connectionLost(reason)

    def refuse(self, status: int, reason: bytes, message: str) -> None:
        """Answer a request we will not read, then close: the rest of its bytes are untrusted."""
        if self.transport is None:
            return
        self.transport.write(_rawResponse(status, reason, message))
        self.transport.loseConnection()
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.lineReceived = lambda line: None  # type: ignore[method-assign]
        self.rawDataReceived = lambda data: None  # type: ignore[method-assign]

    def lineReceived(self, line: bytes) -> None:
        limit = self.site.limits.max_header_bytes
        if self._receivedHeaderSize + len(line) > limit:
            self.refuse(431, b"Request Header Fields Too Large", f"request head over {limit} bytes")
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        limit = self.site.limits.max_request_body
        if self.length is not None and self.length > limit:
            # Before Twisted would send "100 Continue": the client never uploads it.
            self.refuse(413, b"Content Too Large", f"request body over {limit} bytes")
            return
        super().allHeadersReceived()


class GatewaySite(server.Site):
    """A Site that swaps its resource tree atomically on reload and counts connections."""

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, resource: Any, limits: ServerConfig, metrics: Metrics, reactor: Any = None) -> None:
        super().__init__(resource, timeout=limits.timeouts.idle, reactor=reactor)
        self.limits = limits
        self.metrics = metrics
        self.channels: set[GatewayChannel] = set()
        self._allClosed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.totalHeadersSize = self.limits.max_header_bytes + 1
        return channel

    def connectionOpened(self, channel: GatewayChannel) -> None:
        self.channels.add(channel)
        self.metrics.activeConnections.inc()

    def connectionClosed(self, channel: GatewayChannel) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.metrics.activeConnections.dec()
        if not self.channels and self._allClosed:
            waiters, self._allClosed = self._allClosed, []
            for d in waiters:
                d.callback(None)

    def whenAllClosed(self) -> Deferred[None]:
        """
        Fires once every client connection is closed.  The drain waits for
        this, not just for requests to finish: a response still in the
        socket buffer when the reactor stops would be cut off.
        """
        d: Deferred[None] = Deferred()
        if not self.channels:
            d.callback(None)
        else:
            self._allClosed.append(d)
        return d

    def log(self, request: Any) -> None:
        # The gateway writes its own access log (observe.AccessLog).
        pass
